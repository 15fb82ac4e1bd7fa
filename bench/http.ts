/**
 * The HTTP part of `npm run bench`: requests per second through each framework's rate-limit
 * middleware, rate-sync (memory, PostgreSQL, Redis) against the framework's usual limiter and the
 * framework with no limiter, in one run. Each server is a process of its own (`httpServer.ts`);
 * autocannon loads it from this process over loopback with keep-alive connections. Every request is
 * one client's and nothing is refused, so a figure is what deciding costs per request. Contenders
 * alternate within a round; a figure is the median over rounds.
 */
import { spawn, type ChildProcess } from "node:child_process"
import autocannon from "autocannon"

export interface HttpRow {
  readonly framework: string
  readonly limiter: string
  readonly perSecond: number
  readonly p50: number
  readonly p99: number
  /** Answers other than 2xx, and socket errors: must be 0 for the row to mean anything. */
  readonly failures: number
}

/** What each server runs: the framework alone, its usual limiter, and rate-sync on each store. */
export const CONTENDERS: ReadonlyArray<readonly [framework: string, limiter: string, label: string]> = [
  ["express", "none", "no limiter"],
  ["express", "usual-memory", "express-rate-limit, memory store"],
  ["express", "usual-redis", "express-rate-limit, rate-limit-redis"],
  ["express", "memory", "rate-sync/express, memory"],
  ["express", "postgres", "rate-sync/express, PostgreSQL"],
  ["express", "redis", "rate-sync/express, Redis"],
  ["fastify", "none", "no limiter"],
  ["fastify", "usual-memory", "@fastify/rate-limit, memory"],
  ["fastify", "memory", "rate-sync/fastify, memory"],
  ["fastify", "postgres", "rate-sync/fastify, PostgreSQL"],
  ["fastify", "redis", "rate-sync/fastify, Redis"],
  ["effect", "none", "no limiter"],
  ["effect", "memory", "rate-sync/http, memory"],
  ["effect", "postgres", "rate-sync/http, PostgreSQL"],
  ["effect", "redis", "rate-sync/http, Redis"]
]

const CONNECTIONS = 16

/** Starts a server process; resolves with its port once it serves. */
const start = (framework: string, limiter: string): Promise<{ readonly port: number; readonly process: ChildProcess }> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", new URL("./httpServer.ts", import.meta.url).pathname, framework, limiter], {
      stdio: ["ignore", "pipe", "inherit"]
    })
    let text = ""
    child.stdout.on("data", (chunk: Buffer) => {
      text += chunk.toString()
      const port = text.match(/port (\d+)/)?.[1]
      if (port !== undefined) resolve({ port: Number(port), process: child })
    })
    child.on("exit", (code) => reject(new Error(`the ${framework} server (${limiter}) exited with ${code} before serving`)))
  })

const load = (port: number, seconds: number) =>
  autocannon({ url: `http://127.0.0.1:${port}/`, connections: CONNECTIONS, duration: seconds })

/** Every contender, `runs` rounds of `seconds` each (after a one-second warm-up per server start). */
export const runHttp = async (seconds: number, runs: number): Promise<ReadonlyArray<HttpRow>> => {
  const samples = new Map<string, Array<HttpRow>>()
  // BENCH_HTTP ("express", "effect/redis"...): only the servers whose "framework/limiter" contains it.
  const only = process.env["BENCH_HTTP"]
  const chosen = CONTENDERS.filter(([framework, limiter]) => only === undefined || `${framework}/${limiter}`.includes(only))
  for (let round = 0; round < runs; round++) {
    for (const [framework, limiter, label] of chosen) {
      const server = await start(framework, limiter)
      try {
        await load(server.port, 1)
        const result = await load(server.port, seconds)
        const row: HttpRow = {
          framework,
          limiter: label,
          perSecond: result.requests.total / seconds,
          p50: result.latency.p50,
          p99: result.latency.p99,
          failures: result.non2xx + result.errors
        }
        const key = `${framework}\u0000${label}`
        samples.set(key, [...(samples.get(key) ?? []), row])
        console.log(`  ${framework} / ${label}: ${Math.round(row.perSecond).toLocaleString("en-US")} req/s, p50 ${row.p50} ms, p99 ${row.p99} ms${row.failures > 0 ? `, ${row.failures} failures` : ""}`)
      } finally {
        server.process.kill()
      }
    }
  }
  return [...samples.values()].map((rows) => {
    const sorted = [...rows].sort((a, b) => a.perSecond - b.perSecond)
    const median = sorted[Math.floor(sorted.length / 2)]!
    return { ...median, failures: rows.reduce((n, r) => n + r.failures, 0) }
  })
}

/** The section of bench/RESULTS.md. */
export const httpSection = (rows: ReadonlyArray<HttpRow>, seconds: number, runs: number): Array<string> => {
  const floor = (framework: string) => rows.find((r) => r.framework === framework && r.limiter === "no limiter")?.perSecond ?? Number.NaN
  return [
    "## HTTP: requests per second through each framework's rate-limit middleware",
    "",
    `One server process per row, loaded by autocannon over loopback (${CONNECTIONS} keep-alive connections, ${seconds} s after a 1 s warm-up, median of ${runs} rounds);`,
    "every request is one client's (one hot key) and the limit is never reached, so the difference from \"no limiter\" is what deciding costs.",
    "rate-sync's PostgreSQL store runs with `synchronous_commit = false`.",
    "",
    "| framework | limiter | requests/s | of no limiter | p50 ms | p99 ms | failed |",
    "|---|---|---:|---:|---:|---:|---:|",
    ...rows.map((r) =>
      `| ${r.framework} | ${r.limiter} | ${Math.round(r.perSecond).toLocaleString("en-US")} | ${(100 * r.perSecond / floor(r.framework)).toFixed(0)}% | ${r.p50} | ${r.p99} | ${r.failures} |`
    ),
    ""
  ]
}

/**
 * `npm run bench`: this library against its peers and the physical floors, on the same servers in
 * one run. Every workload runs every contender once per round, contenders alternating, for several
 * rounds; a figure is the median over rounds and a ratio is the median of the ratios taken within
 * each round. Writes bench/RESULTS.md and the SVG charts it shows.
 *
 * BENCH_SECONDS (default 2) and BENCH_RUNS (default 3) set the length and number of rounds;
 * BENCH_STORES (say "redis" or "memory,postgres") and BENCH_WORKLOADS (a part of a workload's label,
 * say "8 callers", or "http" for the HTTP middleware alone, "handoff" for the lease hand-off alone) run a part of it, for a quick look: RESULTS.md is
 * then not written. The HTTP section (bench/http.ts) runs every framework's middleware with and
 * without rate-sync.
 */
import { execFileSync } from "node:child_process"
import { readFileSync, writeFileSync } from "node:fs"
import { cpus, totalmem } from "node:os"
import { Redis } from "ioredis"
import pg from "pg"
import { postgresUrl } from "../scripts/stores.js"
import { all, type Contender, type StoreName, type Workload } from "./contenders.js"
import { handoffSection, runHandoff } from "./handoff.js"
import { httpSection, runHttp } from "./http.js"
import { KEYS } from "./memory.js"
import { barChart } from "./svg.js"

const SECONDS = Number(process.env["BENCH_SECONDS"] ?? 2)
const RUNS = Number(process.env["BENCH_RUNS"] ?? 3)
const REDIS_URL = process.env["REDIS_URL"] ?? "redis://127.0.0.1:6379"

const ALL_WORKLOADS: ReadonlyArray<Workload> = [
  { label: "one hot key, 1 caller", callers: 1, keys: 1 },
  { label: "one hot key, 8 callers", callers: 8, keys: 1 },
  { label: "one hot key, 64 callers", callers: 64, keys: 1 },
  { label: "10,000 keys, 8 callers", callers: 8, keys: 10_000 }
]
const ONLY_STORES = process.env["BENCH_STORES"]?.split(",")
const ONLY_WORKLOADS = process.env["BENCH_WORKLOADS"]
const PARTIAL = ONLY_STORES !== undefined || ONLY_WORKLOADS !== undefined
const WORKLOADS = ALL_WORKLOADS.filter((w) => ONLY_WORKLOADS === undefined || w.label.includes(ONLY_WORKLOADS))

interface Sample {
  readonly perSecond: number
  readonly p50: number
  readonly p99: number
}

const percentile = (sorted: ReadonlyArray<number>, p: number) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? 0

const summarize = (latencies: Array<number>): Sample => {
  latencies.sort((a, b) => a - b)
  return { perSecond: latencies.length / SECONDS, p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99) }
}

const median = (values: ReadonlyArray<number>) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? 0

const version = (name: string) => {
  const pkg: unknown = JSON.parse(readFileSync(new URL(`../node_modules/${name}/package.json`, import.meta.url), "utf8"))
  return typeof pkg === "object" && pkg !== null && "version" in pkg ? String(pkg.version) : "?"
}

const serverVersions = async (databaseUrl: string) => {
  const client = new pg.Client({ connectionString: databaseUrl })
  const postgres = await client.connect().then(() => client.query("SHOW server_version")).then(
    (r) => String(r.rows[0]?.server_version ?? "?"),
    () => "?"
  )
  await client.end().catch(() => {})
  const redis = new Redis(REDIS_URL)
  const info = await redis.info("server").catch(() => "")
  await redis.quit().catch(() => {})
  return { postgres, redis: /redis_version:(\S+)/.exec(info)?.[1] ?? "?" }
}

/** Heap held by 100,000 idle keys, each library in a process of its own. */
const idleMemory = () =>
  ["rate-sync", "rate-limiter-flexible", "effect-experimental"].map((library) => {
    process.stdout.write(`memory per ${KEYS.toLocaleString("en-US")} idle keys: ${library}... `)
    const output = execFileSync(process.execPath, ["--expose-gc", "--import", "tsx", new URL("./memory.ts", import.meta.url).pathname, library], {
      encoding: "utf8"
    })
    const bytes = Number(output.trim())
    console.log(`${(bytes / 2 ** 20).toFixed(1)} MiB`)
    return { library, bytes }
  })

const main = async () => {
  const database = await postgresUrl()
  const contenders = all(database.url, REDIS_URL).filter((c) => ONLY_STORES === undefined || ONLY_STORES.includes(c.store))
  const samples = new Map<string, Array<Sample>>()
  const id = (workload: Workload, contender: Contender) => `${workload.label}|${contender.store}|${contender.name}`

  for (const contender of contenders) {
    process.stdout.write(`starting ${contender.store}: ${contender.name}... `)
    await contender.start()
    console.log("ready")
  }
  const total = WORKLOADS.length * RUNS * contenders.length
  let done = 0
  for (const workload of WORKLOADS) {
    for (let run = 1; run <= RUNS; run++) {
      for (const contender of contenders) {
        done++
        process.stdout.write(`[${done}/${total}] ${workload.label}, round ${run}/${RUNS}: ${contender.store} ${contender.name}... `)
        const sample = summarize(await contender.run(workload, SECONDS))
        const list = samples.get(id(workload, contender)) ?? []
        list.push(sample)
        samples.set(id(workload, contender), list)
        console.log(`${Math.round(sample.perSecond).toLocaleString("en-US")}/s, p50 ${sample.p50.toFixed(3)} ms, p99 ${sample.p99.toFixed(3)} ms`)
      }
    }
  }
  for (const contender of contenders) await contender.stop()
  // The HTTP servers find the same PostgreSQL through DATABASE_URL.
  process.env["DATABASE_URL"] = database.url
  const http = !PARTIAL || ONLY_WORKLOADS === "http" ? await runHttp(SECONDS, RUNS) : []
  const handoffStores = (["memory", "postgres", "redis"] as const).filter((s) => ONLY_STORES === undefined || ONLY_STORES.includes(s))
  const handoff = !PARTIAL || ONLY_WORKLOADS === "handoff" ? await runHandoff(handoffStores, database.url, REDIS_URL) : []
  if (PARTIAL) {
    if (http.length > 0) console.log("\n" + httpSection(http, SECONDS, RUNS).join("\n"))
    if (handoff.length > 0) console.log("\n" + handoffSection(handoff).join("\n"))
    await database.stop()
    return
  }
  const servers = await serverVersions(database.url)
  await database.stop()
  const memory = idleMemory()

  const lines: Array<string> = [
    "# Benchmark results",
    "",
    `Measured ${new Date().toISOString().slice(0, 10)} by \`npm run bench\` on ${cpus().length} cores (${cpus()[0]?.model ?? "unknown CPU"}), ${Math.round(totalmem() / 2 ** 30)} GiB,`,
    `Node ${process.version}, PostgreSQL ${servers.postgres}, Redis ${servers.redis}, all on the same machine. Peers: rate-limiter-flexible ${version("rate-limiter-flexible")},`,
    `@effect/experimental ${version("@effect/experimental")}; drivers pg ${version("pg")}, ioredis ${version("ioredis")}.`,
    "",
    `Each limiter admits without ever waiting (its rate is far above what is reached), so the figures are the cost of a`,
    `decision. Effect libraries run their callers as fibers in one runtime; the others as async loops. A figure is the`,
    `median of ${RUNS} rounds of ${SECONDS} s, contenders alternating within each round; a ratio is the median of the ratios`,
    `taken within each round. Floors are one round trip of the same driver doing the least a limiter could (on`,
    `PostgreSQL the first floor, synchronous_commit on, is the one compared): a limiter that waits for its store on`,
    `every call cannot beat it; rate-sync can, because the waiters of a process share a call and reserve slots ahead.`,
    ""
  ]
  const stores: ReadonlyArray<StoreName> = ["memory", "postgres", "redis"]
  for (const workload of WORKLOADS) {
    lines.push(
      `## ${workload.label}`,
      "",
      "| store | library | admissions/s | p50 | p99 | x rate-limiter-flexible | x faster peer | x floor |",
      "|---|---|---:|---:|---:|---:|---:|---:|"
    )
    for (const store of stores) {
      const here = contenders.filter((c) => c.store === store)
      const flexible = here.find((c) => c.name.startsWith("rate-limiter-flexible"))!
      const floor = here.find((c) => c.kind === "floor")
      const peers = here.filter((c) => c.kind === "peer")
      /** This contender's throughput over another's (or the faster of several), taken within each round, median over rounds. */
      const ratio = (contender: Contender, other: Contender | ReadonlyArray<Contender> | undefined) => {
        const others = other === undefined ? [] : Array.isArray(other) ? other : [other]
        if (others.length === 0 || others.includes(contender) || contender.kind === "floor") return ""
        const mine = samples.get(id(workload, contender)) ?? []
        const theirs = (i: number) => Math.max(...others.map((o) => samples.get(id(workload, o))?.[i]?.perSecond ?? Infinity))
        return `${median(mine.map((s, i) => s.perSecond / theirs(i))).toFixed(2)}x`
      }
      for (const contender of here) {
        const list = samples.get(id(workload, contender)) ?? []
        lines.push(
          `| ${store} | ${contender.kind === "rate-sync" ? `**${contender.name}**` : contender.name} | ${Math.round(median(list.map((s) => s.perSecond))).toLocaleString("en-US")} | ${median(list.map((s) => s.p50)).toFixed(3)} ms | ${median(list.map((s) => s.p99)).toFixed(3)} ms | ${ratio(contender, flexible)} | ${ratio(contender, peers)} | ${ratio(contender, floor)} |`
        )
      }
    }
    lines.push("")
  }
  lines.push(
    `## Memory per ${KEYS.toLocaleString("en-US")} idle keys (memory stores)`,
    "",
    "| library | heap held | per key |",
    "|---|---:|---:|",
    ...memory.map((m) => `| ${m.library} | ${(m.bytes / 2 ** 20).toFixed(1)} MiB | ${Math.round(m.bytes / KEYS)} B |`),
    "",
    "![Throughput, one hot key, 8 callers](throughput-hot-8.svg)",
    "",
    "![Throughput, 10,000 keys, 8 callers](throughput-keys.svg)",
    "",
    ...handoffSection(handoff),
    ...httpSection(http, SECONDS, RUNS)
  )
  writeFileSync(new URL("./RESULTS.md", import.meta.url), lines.join("\n"))

  const chart = (workload: Workload, file: string) => {
    const bars = stores.flatMap((store) =>
      contenders.filter((c) => c.store === store).map((c) => ({
        group: store,
        label: c.name,
        value: median((samples.get(id(workload, c)) ?? []).map((s) => s.perSecond)),
        highlight: c.kind === "rate-sync"
      }))
    )
    writeFileSync(new URL(file, import.meta.url), barChart(`Admissions per second: ${workload.label}`, "admissions per second", bars))
  }
  chart(WORKLOADS[1]!, "./throughput-hot-8.svg")
  chart(WORKLOADS[3]!, "./throughput-keys.svg")
  console.log("\n" + lines.join("\n"))
}

main().then(() => process.exit(0), (error) => {
  console.error(error)
  process.exit(1)
})

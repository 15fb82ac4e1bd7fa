/**
 * The lease hand-off part of `npm run bench`: how soon a released permit reaches a waiter, in this
 * process and in another. Two worker processes (`tsx bench/handoff.ts --child STORE`) share one
 * limiter with `max_concurrent = 2`, 8 fibers each always waiting, every holder keeping its permit
 * 100 ms; each records when it acquired and released on the machine's monotonic clock (one clock for
 * every process). Every acquisition after the first two is matched with the earliest release not yet
 * matched before it: the gap is the hand-off. Also reported: the time the jobs took against what
 * two slots would need with instant hand-offs.
 */
import { spawn } from "node:child_process"
import { Duration, Effect, Layer, Schema } from "effect"
import { RateLimiter, RateSync, Stores } from "./library.js"

const HOLD_MS = 100
const JOBS_PER_PROCESS = 20
const FIBERS = 8
const PROCESSES = 2

export interface HandoffRow {
  readonly store: string
  readonly p50: number
  readonly p99: number
  readonly max: number
  readonly jobs: number
  readonly totalMs: number
  readonly idealMs: number
}

const ChildReport = Schema.Struct({ acquired: Schema.Array(Schema.Number), released: Schema.Array(Schema.Number) })
type ChildReport = typeof ChildReport.Type

const now = () => Number(process.hrtime.bigint()) / 1e6

const storeConfig = (store: string, databaseUrl: string, redisUrl: string, run: string) =>
  store === "memory"
    ? { engine: "memory" as const }
    : store === "redis"
    ? { engine: "redis" as const, url: redisUrl, key_prefix: `bench-handoff:${run}:` }
    : { engine: "postgres" as const, url: databaseUrl, auto_create: true, table_name: "bench_handoff_state" }

/** One worker: `JOBS_PER_PROCESS` jobs through `FIBERS` fibers, starting at the instant `startAt`. */
const child = (store: string, databaseUrl: string, redisUrl: string, run: string, startAt: number) => {
  const acquired: Array<number> = []
  const released: Array<number> = []
  let left = JOBS_PER_PROCESS
  const job = Effect.scoped(Effect.gen(function*() {
    yield* RateLimiter.acquire("jobs", { key: run })
    acquired.push(now())
    yield* Effect.sleep(Duration.millis(HOLD_MS))
    released.push(now())
  }))
  const fiber = Effect.gen(function*() {
    while (left > 0) {
      left--
      yield* job
    }
  })
  const program = Effect.gen(function*() {
    yield* Effect.sleep(Duration.millis(Math.max(0, startAt - now())))
    yield* Effect.all(Array.from({ length: FIBERS }, () => fiber), { concurrency: "unbounded" })
  }).pipe(Effect.provide(
    RateSync.layer({ stores: { s: storeConfig(store, databaseUrl, redisUrl, run) }, limiters: { jobs: { store: "s", max_concurrent: 2 } } }).pipe(
      Layer.provide(Stores.layer)
    )
  ))
  return Effect.runPromise(program).then(() => ({ acquired, released } satisfies ChildReport))
}

const spawnChild = (args: ReadonlyArray<string>): Promise<ChildReport> =>
  new Promise((resolve, reject) => {
    const worker = spawn(process.execPath, ["--import", "tsx", new URL(import.meta.url).pathname, "--child", ...args], { stdio: ["ignore", "pipe", "inherit"] })
    let text = ""
    worker.stdout.on("data", (chunk: Buffer) => (text += chunk.toString()))
    worker.on("exit", (code) => (code === 0 ? resolve(Schema.decodeUnknownSync(ChildReport)(JSON.parse(text))) : reject(new Error(`hand-off worker exited with ${code}`))))
  })

const percentile = (sorted: ReadonlyArray<number>, p: number) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? Number.NaN

/** One run per store: two processes of 20 jobs each (memory: one). */
export const runHandoff = async (stores: ReadonlyArray<string>, databaseUrl: string, redisUrl: string): Promise<ReadonlyArray<HandoffRow>> => {
  const rows: Array<HandoffRow> = []
  for (const store of stores) {
    const run = `${process.pid}-${Date.now()}`
    // Memory is one process's: its two "processes" are fibers of this one.
    const startAt = now() + (store === "memory" ? 200 : 3_000)
    const reports = store === "memory"
      ? [await child(store, databaseUrl, redisUrl, run, startAt)]
      : await Promise.all(Array.from({ length: PROCESSES }, () => spawnChild([store, databaseUrl, redisUrl, run, String(startAt)])))
    const acquired = reports.flatMap((r) => r.acquired).sort((a, b) => a - b)
    const released = reports.flatMap((r) => r.released).sort((a, b) => a - b)
    const gaps: Array<number> = []
    let next = 0
    // The first two took free slots; every later one waited for the earliest release not yet matched.
    for (const at of acquired.slice(2)) {
      if (next < released.length && released[next]! <= at) gaps.push(at - released[next++]!)
    }
    gaps.sort((a, b) => a - b)
    const jobs = acquired.length
    rows.push({
      store,
      p50: percentile(gaps, 0.5),
      p99: percentile(gaps, 0.99),
      max: gaps[gaps.length - 1] ?? Number.NaN,
      jobs,
      totalMs: (released[released.length - 1] ?? Number.NaN) - (acquired[0] ?? Number.NaN),
      idealMs: (jobs / 2) * HOLD_MS
    })
    console.log(`  hand-off ${store}: p50 ${rows.at(-1)!.p50.toFixed(1)} ms, p99 ${rows.at(-1)!.p99.toFixed(1)} ms`)
  }
  return rows
}

export const handoffSection = (rows: ReadonlyArray<HandoffRow>): Array<string> => [
  "## Lease hand-off: how soon a released permit reaches a waiter",
  "",
  `\`max_concurrent = 2\`, ${PROCESSES} processes x ${FIBERS} fibers always waiting (memory: one process), each holder keeping its permit`,
  `${HOLD_MS} ms; the gap from a release to the next acquisition, in any process, on the machine's monotonic clock.`,
  "",
  "| store | hand-off p50 | p99 | max | jobs | took | with instant hand-offs |",
  "|---|---:|---:|---:|---:|---:|---:|",
  ...rows.map((r) =>
    `| ${r.store} | ${r.p50.toFixed(1)} ms | ${r.p99.toFixed(1)} ms | ${r.max.toFixed(1)} ms | ${r.jobs} | ${(r.totalMs / 1000).toFixed(2)} s | ${(r.idealMs / 1000).toFixed(2)} s |`
  ),
  ""
]

const args = process.argv.slice(2)
if (args[0] === "--child") {
  const [, store, databaseUrl, redisUrl, run, startAt] = args
  child(store!, databaseUrl!, redisUrl!, run!, Number(startAt)).then(
    (report) => process.stdout.write(JSON.stringify(report), () => process.exit(0)),
    (error) => {
      console.error(error)
      process.exit(1)
    }
  )
}

/**
 * `npm run bench`: admissions per second and latency on one hot key, this library against its
 * peers, each measured in the same run on the same server, alternating, median of several runs.
 * Writes bench/RESULTS.md.
 */
import { writeFileSync } from "node:fs"
import { cpus, totalmem } from "node:os"
import { Effect, Layer, ManagedRuntime } from "effect"
import pg from "pg"
import { RateLimiterMemory, RateLimiterPostgres } from "rate-limiter-flexible"
import { RateLimiter, RateSync, Stores } from "../src/index.js"
import { postgresUrl } from "../scripts/stores.js"

const SECONDS = Number(process.env["BENCH_SECONDS"] ?? 3)
const RUNS = Number(process.env["BENCH_RUNS"] ?? 3)
const CALLERS = 8

interface Sample {
  readonly perSecond: number
  readonly p50: number
  readonly p99: number
}

interface Contender {
  readonly name: string
  readonly group: string
  readonly start: () => Promise<void>
  /** CALLERS concurrent callers for SECONDS, each call's latency in ms. */
  readonly run: () => Promise<Array<number>>
  readonly stop: () => Promise<void>
}

const percentile = (sorted: ReadonlyArray<number>, p: number) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? 0

const summarize = (latencies: Array<number>): Sample => {
  latencies.sort((a, b) => a - b)
  return { perSecond: latencies.length / SECONDS, p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99) }
}

/** A Promise-based peer: CALLERS concurrent async loops. */
const promiseLoops = async (call: () => Promise<unknown>): Promise<Array<number>> => {
  const latencies: Array<number> = []
  const end = performance.now() + SECONDS * 1000
  await Promise.all(Array.from({ length: CALLERS }, async () => {
    while (performance.now() < end) {
      const started = performance.now()
      await call()
      latencies.push(performance.now() - started)
    }
  }))
  return latencies
}

const median = (samples: ReadonlyArray<Sample>): Sample => {
  const mid = (values: Array<number>) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)]!
  return {
    perSecond: mid(samples.map((s) => s.perSecond)),
    p50: mid(samples.map((s) => s.p50)),
    p99: mid(samples.map((s) => s.p99))
  }
}

/** rate-sync as Effect programs use it: CALLERS fibers in one runtime, built once. */
const rateSync = (name: string, group: string, store: Parameters<typeof RateSync.layer>[0]["stores"]): Contender => {
  let runtime: ManagedRuntime.ManagedRuntime<RateLimiter, unknown> | undefined
  const acquire = Effect.scoped(RateLimiter.acquire("bench", { key: "hot" }))
  const fibers = Effect.suspend(() => {
    const latencies: Array<number> = []
    const end = performance.now() + SECONDS * 1000
    const caller = Effect.suspend(() => {
      const started = performance.now()
      return Effect.map(acquire, () => latencies.push(performance.now() - started))
    }).pipe(Effect.repeat({ while: () => performance.now() < end }))
    return Effect.as(Effect.all(Array.from({ length: CALLERS }, () => caller), { concurrency: "unbounded" }), latencies)
  })
  return {
    name,
    group,
    start: async () => {
      runtime = ManagedRuntime.make(
        RateSync.layer({ stores: store, limiters: { bench: { store: "s", rate_per_second: 1_000_000, burst: 1_000_000 } } })
          .pipe(Layer.provide(Stores.layer))
      )
      await runtime.runPromise(acquire)
    },
    run: () => runtime!.runPromise(fibers),
    stop: async () => {
      await runtime?.dispose()
    }
  }
}

const main = async () => {
  const database = await postgresUrl()
  const pool = new pg.Pool({ connectionString: database.url, max: 10 })
  let flexible: RateLimiterPostgres | undefined
  const contenders: Array<Contender> = [
    rateSync("rate-sync memory", "memory", { s: { engine: "memory" } }),
    (() => {
      const limiter = new RateLimiterMemory({ points: 1_000_000_000, duration: 1 })
      return {
        name: "rate-limiter-flexible RateLimiterMemory",
        group: "memory",
        start: async () => {},
        run: () => promiseLoops(() => limiter.consume("hot")),
        stop: async () => {}
      }
    })(),
    rateSync("rate-sync postgres", "postgres", { s: { engine: "postgres", url: database.url, auto_create: true, pool_max_size: 10 } }),
    rateSync("rate-sync postgres, synchronous_commit = false", "postgres", {
      s: { engine: "postgres", url: database.url, auto_create: true, pool_max_size: 10, synchronous_commit: false }
    }),
    rateSync("rate-sync postgres, unlogged = true", "postgres", {
      s: { engine: "postgres", url: database.url, auto_create: true, pool_max_size: 10, unlogged: true, table_name: "rate_sync_bench_unlogged" }
    }),
    {
      name: "rate-limiter-flexible RateLimiterPostgres",
      group: "postgres",
      start: () =>
        new Promise<void>((resolve, reject) => {
          flexible = new RateLimiterPostgres(
            { storeClient: pool, tableName: "rlflx_bench", points: 1_000_000_000, duration: 1 },
            (error?: unknown) => (error ? reject(error) : resolve())
          )
        }),
      run: () => promiseLoops(() => flexible!.consume("hot")),
      stop: async () => {}
    }
  ]

  const samples = new Map<string, Array<Sample>>(contenders.map((c) => [c.name, []]))
  for (const contender of contenders) await contender.start()
  for (let run = 1; run <= RUNS; run++) {
    for (const contender of contenders) {
      process.stdout.write(`run ${run}/${RUNS}: ${contender.name} (${SECONDS} s, ${CALLERS} callers, one hot key)... `)
      const sample = summarize(await contender.run())
      samples.get(contender.name)!.push(sample)
      console.log(`${Math.round(sample.perSecond)}/s, p50 ${sample.p50.toFixed(2)} ms, p99 ${sample.p99.toFixed(2)} ms`)
    }
  }
  for (const contender of contenders) await contender.stop()
  await pool.end()
  await database.stop()

  const server = new pg.Client({ connectionString: database.url })
  const version = await server.connect().then(() => server.query("SHOW server_version")).then((r) => String(r.rows[0]?.server_version ?? "?"), () => "?")
  await server.end().catch(() => {})

  const rows = contenders.map((c) => ({ contender: c, result: median(samples.get(c.name)!) }))
  const lines = [
    "# Benchmark results",
    "",
    `Measured ${new Date().toISOString().slice(0, 10)} by \`npm run bench\` on ${cpus().length} cores (${cpus()[0]?.model ?? "unknown CPU"}), ${Math.round(totalmem() / 2 ** 30)} GiB,`,
    `Node ${process.version}, PostgreSQL ${version}. One hot key, ${CALLERS} concurrent callers (rate-sync: fibers in one Effect`,
    `runtime; rate-limiter-flexible: async loops), a rate high enough never to wait;`,
    `each figure is the median of ${RUNS} runs of ${SECONDS} s, contenders alternating within each run.`,
    "",
    "| store | library | admissions/s | p50 latency | p99 latency | vs rate-limiter-flexible |",
    "|---|---|---:|---:|---:|---:|"
  ]
  for (const { contender, result } of rows) {
    const peer = rows.find((r) => r.contender.group === contender.group && r.contender.name.startsWith("rate-limiter-flexible"))
    const ratio = peer === undefined || peer.contender === contender ? "" : `${(result.perSecond / peer.result.perSecond).toFixed(2)}x`
    lines.push(`| ${contender.group} | ${contender.name} | ${Math.round(result.perSecond).toLocaleString("en-US")} | ${result.p50.toFixed(2)} ms | ${result.p99.toFixed(2)} ms | ${ratio} |`)
  }
  writeFileSync(new URL("./RESULTS.md", import.meta.url), lines.join("\n") + "\n")
  console.log("\n" + lines.join("\n"))
}

main().then(() => process.exit(0), (error) => {
  console.error(error)
  process.exit(1)
})

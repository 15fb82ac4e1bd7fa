/**
 * `npm run accuracy`: real processes share one limiter, saturated, and record every admission on the
 * machine's monotonic clock. It measures what users run first:
 *
 * - default: the limiter has only `rate_per_second` (burst is the library's default) and the store no
 *   `timing_margin_ms` (the store's default applies);
 * - tuned: the store has `timing_margin_ms = 50`, burst still the default, so both sections are held
 *   to the same bound.
 *
 * Every store (memory in 1 process; PostgreSQL and Redis in 4 processes x 16 fibers) at 1, 200 and
 * 2,000/s, and Redis also at 20,000/s. Options:
 *
 *   --store memory|postgres|redis   one store            --rate R          one rate
 *   --burst B, --margin M           a custom configuration instead of the tuned one (reported as "custom")
 *   --seconds S (10; at least 20 below 10/s)
 *   --min-warmup A (5), --warmup W (10)  seconds on the limiter before recording: A once the processes
 *                                   together reach 97% of the rate in a second, else up to W
 *   --processes P (4), --fibers F (16), --max-concurrent N
 *   --defaults-only                 skip the tuned (or custom) section
 *   --strict-tuned                  tuned/custom failures also make the exit status non-zero
 *   --cpu-prof DIR                  each worker process writes a V8 CPU profile into DIR
 *
 * Checks per run: the most admitted in any 1 s where callers proceed, at most (burst + rate) x 1.01;
 * the achieved rate once warm, at least 97% of the configured one; no failed acquire other than the
 * timeouts at the end; with --max-concurrent, the peak of permits held. The most admitted in any 1/rate
 * window is printed as information: it is a property of the store's schedule, which the compliance
 * suite checks at the store, and measured where callers proceed it mostly shows scheduling jitter.
 * The exit status is non-zero when a default run fails a check.
 *
 * Each run: the worker processes build the limiter, then all start on one instant of the machine's
 * monotonic clock (process.hrtime.bigint(), the same in every process). The warm-up (on the measured
 * limiter: it compiles hot code, opens connections and lets each process learn the key's demand)
 * ends after --min-warmup seconds if the processes together admitted 97% of the rate in the last
 * whole second, else when they do, at most after --warmup seconds; then every admission is recorded.
 *
 * Writes bench/accuracy-NAME.md per store (default table, then tuned) with a chart per default run,
 * and prints a summary table of every store at the end, to paste into the README.
 */
import { spawn, type ChildProcessByStdio } from "node:child_process"
import { writeFileSync } from "node:fs"
import { cpus } from "node:os"
import type { Readable, Writable } from "node:stream"
import { parseArgs } from "node:util"
import { Deferred, Duration, Effect, Layer, Metric, Schema } from "effect"
import { RateLimiter, RateSync, Settings, Stores } from "../src/index.js"
import type { LimiterConfigInput, StoreConfigInput } from "../src/Settings.js"
import { seriesChart } from "../bench/svg.js"
import { peakHeld, windowPeak } from "../test/compliance/bounds.js"
import { resolveStore, type StoreTarget } from "./stores.js"

const { values } = parseArgs({
  options: {
    store: { type: "string" },
    processes: { type: "string" },
    fibers: { type: "string", default: "16" },
    rate: { type: "string" },
    burst: { type: "string" },
    margin: { type: "string" },
    seconds: { type: "string", default: "10" },
    warmup: { type: "string", default: "10" },
    "min-warmup": { type: "string", default: "5" },
    "max-concurrent": { type: "string" },
    "defaults-only": { type: "boolean", default: false },
    "strict-tuned": { type: "boolean", default: false },
    "cpu-prof": { type: "string" },
    child: { type: "string" }
  }
})

// ---------------------------------------------------------------------------------------------
// The clock: CLOCK_MONOTONIC through process.hrtime.bigint(), one clock for every process on the
// machine (performance.timeOrigin differs between processes by a fraction of a millisecond). The
// parent picks the warm-up start (ns on that clock) and, later, the measurement start; children
// record milliseconds after the warm-up start.

const profileFlags = values["cpu-prof"] === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${values["cpu-prof"]}`]

const hrNow = () => process.hrtime.bigint()

/** How far ahead of the instants it picks the parent sends them. */
const LEAD_MS = 100
/** Past the latest end a run can have, a worker stops without waiting to be told. */
const SLACK_MS = 1_000
/**
 * The fibers keep asking this long after the measurement ends, so that its last slots are taken as
 * every other (a fiber stops at its timeout, which a store may report at once when no slot comes before it).
 */
const TAIL_MS = 500

/** What the parent asks of one worker process. */
interface ChildPlan {
  readonly store: StoreConfigInput
  readonly limiterName: string
  readonly limiter: LimiterConfigInput
  readonly fibers: number
  /** The longest warm-up the parent may choose: the acquires' timeout until the end is known. */
  readonly maxWarmupMs: number
  readonly measureMs: number
  readonly recordHolds: boolean
}

interface ChildReport {
  /** Admissions in [start, end), ms after the measurement start. */
  readonly admissions: Array<number>
  /** end - start: measureMs unless the worker had to stop before it was told the start. */
  readonly measuredMs: number
  /** Admissions per whole second of the warm-up. */
  readonly warmup: Array<number>
  readonly holds: Array<readonly [number, number]>
  readonly failures: number
  readonly warmupFailures: number
  readonly failureKinds: Record<string, number>
  /** Acquires that ended with AcquireTimeout: during the warm-up, during the measurement, after it. */
  readonly timeouts: readonly [number, number, number]
  /** Slots reserved and given up unused (stale or dropped from the pool) while the measurement ran. */
  readonly givenUp: number
}

/** The lines of a stream, one at a time. */
const lineReader = (input: Readable) => {
  const lines: Array<string> = []
  const waiting: Array<(line: string | undefined) => void> = []
  let text = ""
  let ended = false
  input.on("data", (chunk: Buffer) => {
    text += chunk.toString()
    let newline: number
    while ((newline = text.indexOf("\n")) >= 0) {
      const line = text.slice(0, newline)
      text = text.slice(newline + 1)
      const next = waiting.shift()
      if (next === undefined) lines.push(line)
      else next(line)
    }
  })
  input.on("end", () => {
    ended = true
    for (const next of waiting.splice(0)) next(undefined)
  })
  return (): Promise<string> =>
    new Promise((resolve, reject) => {
      const line = lines.shift()
      if (line !== undefined) resolve(line)
      else if (ended) reject(new Error("the parent closed the pipe early"))
      else waiting.push((next) => (next === undefined ? reject(new Error("the parent closed the pipe early")) : resolve(next)))
    })
}

const WARM_REPORT_DELAY_MS = 20

/** Slots this process reserved and gave up unused so far (every limiter). */
const slotsGivenUp = Effect.map(Metric.snapshot, (pairs) =>
  pairs.reduce((n, pair) => {
    const state: unknown = pair.metricState
    return pair.metricKey.name === "rate_sync_slots_given_up_total" && typeof state === "object" && state !== null && "count" in state && typeof state.count === "number"
      ? n + state.count
      : n
  }, 0))

const runChild = (plan: ChildPlan) =>
  Effect.gen(function*() {
    const nextLine = lineReader(process.stdin)
    // The limiter is built: say so, then wait for the warm-up start.
    process.stdout.write("ready\n")
    const origin = BigInt(yield* Effect.promise(nextLine))
    const at = () => Number(hrNow() - origin) / 1e6
    // Known once the parent has seen the rate reached (or the longest warm-up pass). A worker whose
    // event loop is too busy to read its pipe in time still stops after the latest end there can be.
    let start: number | undefined
    const latestEnd = plan.maxWarmupMs + LEAD_MS + plan.measureMs + TAIL_MS + SLACK_MS
    // When the fibers stop: TAIL_MS after the measurement.
    let end = latestEnd
    const endKnown = yield* Deferred.make<void>()
    // Every admission, in the order taken (one thread: that is time order).
    const times: Array<number> = []
    const holds: Array<readonly [number, number]> = []
    const failureTimes: Array<number> = []
    const failureKinds: Record<string, number> = {}
    const timeoutTimes: Array<number> = []
    let givenUpAtStart = 0
    let givenUpAtEnd = 0
    yield* Effect.sleep(Duration.millis(Math.max(0, -at())))
    // Every fiber asks again as soon as it is admitted, from the warm-up start to the end. The warm-up
    // compiles hot code, opens connections and lets each process learn the key's demand, on the limiter
    // that is measured.
    const worker = Effect.gen(function*() {
      while (true) {
        const left = end - at()
        if (left <= 0) return
        const outcome = yield* Effect.scoped(Effect.gen(function*() {
          yield* RateLimiter.acquire(plan.limiterName, { timeout: Duration.millis(left) })
          const t = at()
          times.push(t)
          if (plan.recordHolds) {
            yield* Effect.sleep("2 millis")
            holds.push([t, at()])
          }
          return "admitted" as const
        })).pipe(Effect.catchAll((error) =>
          Effect.sync(() => {
            // The timeout is the end of the run: no slot before it (a store may say so at once).
            if (error._tag === "AcquireTimeout") {
              timeoutTimes.push(at())
              return start === undefined && at() < latestEnd ? "wait" as const : "done" as const
            }
            failureTimes.push(at())
            failureKinds[error._tag] = (failureKinds[error._tag] ?? 0) + 1
            return "failed" as const
          })
        ))
        if (outcome === "done") return
        // No slot within the longest run there could be: ask again once the end is known.
        if (outcome === "wait") yield* Deferred.await(endKnown)
        // A failing store is not spun on.
        if (outcome === "failed") yield* Effect.sleep("1 millis")
      }
    })
    // Until the measurement starts, the admissions of each whole second go to the parent, which
    // decides when the warm-up has done its work.
    const reporter = Effect.gen(function*() {
      let next = 0
      for (let second = 0; start === undefined; second++) {
        yield* Effect.sleep(Duration.millis(Math.max(0, (second + 1) * 1000 + WARM_REPORT_DELAY_MS - at())))
        let n = 0
        while (next < times.length && times[next]! < (second + 1) * 1000) {
          next++
          n++
        }
        if (start === undefined) process.stdout.write(`warm ${second} ${n}\n`)
      }
    })
    // The measurement start (ms after the warm-up start); an acquire still waiting at the end is interrupted.
    const control = Effect.gen(function*() {
      start = Number(yield* Effect.promise(nextLine))
      end = Math.min(start + plan.measureMs + TAIL_MS, latestEnd)
      yield* Deferred.succeed(endKnown, undefined)
      yield* Effect.sleep(Duration.millis(Math.max(0, start - at())))
      givenUpAtStart = yield* slotsGivenUp
      yield* Effect.sleep(Duration.millis(Math.max(0, start + plan.measureMs - at())))
      givenUpAtEnd = yield* slotsGivenUp
      yield* Effect.sleep(Duration.millis(Math.max(0, end - at()) + 50))
    })
    yield* Effect.all([Effect.all(Array.from({ length: plan.fibers }, () => worker), { concurrency: "unbounded" }), reporter], {
      concurrency: "unbounded"
    }).pipe(Effect.raceFirst(control))
    const from = start ?? 0
    const to = Math.min(from + plan.measureMs, end)
    const inRun = (t: number) => t >= from && t < to
    const warmup = new Array<number>(Math.floor(from / 1000)).fill(0)
    for (const t of times) {
      const second = Math.floor(t / 1000)
      if (second >= 0 && second < warmup.length) warmup[second]!++
    }
    return {
      admissions: times.filter(inRun).map((t) => Math.round((t - from) * 1000) / 1000),
      measuredMs: to - from,
      warmup,
      holds: holds.filter(([t]) => inRun(t)).map(([a, b]) => [a - from, b - from] as const),
      failures: failureTimes.length,
      warmupFailures: failureTimes.filter((t) => t < from).length,
      failureKinds,
      timeouts: [
        timeoutTimes.filter((t) => t < from).length,
        timeoutTimes.filter(inRun).length,
        timeoutTimes.filter((t) => t >= to).length
      ],
      givenUp: givenUpAtEnd - givenUpAtStart
    } satisfies ChildReport
  }).pipe(
    Effect.provide(
      RateSync.layer({
        stores: { s: plan.store },
        limiters: { [plan.limiterName]: plan.limiter }
      }).pipe(Layer.provide(Stores.layer))
    )
  )

// ---------------------------------------------------------------------------------------------
// The parent: spawns the workers, waits until every one has built its limiter, then gives them all
// the same warm-up start, a short lead ahead. The warm-up lasts at least --min-warmup seconds and
// ends at the first whole second after that in which all processes together admitted 97% of the rate
// (at once below 10/s, where a second holds too few admissions to tell), or after --warmup seconds.

const READY_TIMEOUT_MS = 120_000

interface Worker {
  readonly child: ChildProcessByStdio<Writable, Readable, null>
  readonly ready: Promise<void>
  readonly report: Promise<ChildReport>
}

const spawnWorker = (plan: ChildPlan, onWarm: (second: number, admitted: number) => void): Worker => {
  const child = spawn(process.execPath, [...profileFlags, "--import", "tsx", new URL(import.meta.url).pathname, "--child", JSON.stringify(plan)], {
    stdio: ["pipe", "pipe", "inherit"]
  })
  let isReady = false
  let markReady: () => void = () => {}
  let notReady: (error: Error) => void = () => {}
  const ready = new Promise<void>((resolve, reject) => {
    markReady = resolve
    notReady = reject
  })
  const timer = setTimeout(() => notReady(new Error(`accuracy worker not ready after ${READY_TIMEOUT_MS / 1000} s`)), READY_TIMEOUT_MS)
  let text = ""
  let last = ""
  child.stdout.on("data", (chunk: Buffer) => {
    text += chunk.toString()
    let newline: number
    while ((newline = text.indexOf("\n")) >= 0) {
      const line = text.slice(0, newline)
      text = text.slice(newline + 1)
      if (line === "ready" && !isReady) {
        isReady = true
        clearTimeout(timer)
        markReady()
      } else if (line.startsWith("warm ")) {
        const [, second, admitted] = line.split(" ")
        onWarm(Number(second), Number(admitted))
      } else if (line.length > 0) last = line
    }
  })
  const report = new Promise<ChildReport>((resolve, reject) => {
    child.on("exit", (code, signal) => {
      clearTimeout(timer)
      if (!isReady) notReady(new Error(`accuracy worker exited with ${code ?? signal} before it was ready`))
      if (code === 0 && last.startsWith("{")) resolve(JSON.parse(last) as ChildReport)
      else reject(new Error(`accuracy worker exited with ${code ?? signal}`))
    })
  })
  // Awaited later, or not at all when another worker failed first.
  report.catch(() => {})
  ready.catch(() => {})
  child.stdin.on("error", () => {})
  return { child, ready, report }
}

interface Warmup {
  readonly minSeconds: number
  readonly maxSeconds: number
}

const runWorkers = async (
  plan: ChildPlan,
  processes: number,
  rate: number,
  warmup: Warmup
): Promise<{ readonly reports: Array<ChildReport>; readonly warmupMs: number }> => {
  const perSecond = new Map<number, { processes: number; admitted: number }>()
  let decide: (second: number, admitted: number) => void = () => {}
  const workers = Array.from({ length: processes }, () =>
    spawnWorker(plan, (second, admitted) => {
      const sum = perSecond.get(second) ?? { processes: 0, admitted: 0 }
      sum.processes++
      sum.admitted += admitted
      perSecond.set(second, sum)
      if (sum.processes === processes) decide(second, sum.admitted)
    }))
  const stopAll = () => {
    for (const w of workers) if (w.child.exitCode === null && w.child.signalCode === null) w.child.kill()
  }
  try {
    await Promise.all(workers.map((w) => w.ready))
    const origin = hrNow() + BigInt(LEAD_MS * 1e6)
    for (const w of workers) w.child.stdin.write(`${origin}\n`)
    const warmupMs = await new Promise<number>((resolve, reject) => {
      // The longest warm-up is timed here: a worker's reports are late when its event loop is busy.
      const timer = setTimeout(() => finish(), LEAD_MS + warmup.maxSeconds * 1000)
      const finish = () => {
        clearTimeout(timer)
        resolve(Math.ceil(Number(hrNow() - origin) / 1e6) + LEAD_MS)
      }
      decide = (second, admitted) => {
        if (second + 1 >= warmup.minSeconds && (rate < 10 || admitted >= 0.97 * rate)) finish()
      }
      // A worker that fails ends the wait.
      Promise.all(workers.map((w) => w.report)).catch((error: unknown) => {
        clearTimeout(timer)
        reject(error)
      })
    })
    decide = () => {}
    for (const w of workers) w.child.stdin.end(`${warmupMs}\n`)
    return { reports: await Promise.all(workers.map((w) => w.report)), warmupMs }
  } catch (error) {
    stopAll()
    throw error
  }
}

// ---------------------------------------------------------------------------------------------
// Configurations, options and what the library does by default (read from its Settings).

type Section = "default" | "tuned" | "custom"

interface Configuration {
  readonly section: Section
  /** Undefined: the limiter has no `burst` key. */
  readonly burst: number | undefined
  /** Undefined: the store has no `timing_margin_ms` key. */
  readonly margin: number | undefined
}

const TUNED_MARGIN_MS = 50
const MIN_SECONDS_BELOW_10 = 20
const RATES: Record<string, ReadonlyArray<number>> = {
  memory: [1, 200, 2_000],
  postgres: [1, 200, 2_000],
  redis: [1, 200, 2_000, 20_000]
}
const STORES = ["memory", "postgres", "redis"] as const

const usage = (message: string): never => {
  console.error(`accuracy: ${message}`)
  process.exit(2)
}

const numberOption = (name: string, text: string | undefined, integer: boolean, min: number): number | undefined => {
  if (text === undefined) return undefined
  const n = Number(text)
  if (!Number.isFinite(n) || n < min || (integer && !Number.isInteger(n))) {
    return usage(`--${name} expects ${integer ? "an integer" : "a number"} of at least ${min}, found "${text}"`)
  }
  return n
}

const StoreConfig = Schema.Union(Settings.MemoryStoreConfig, Settings.PostgresStoreConfig, Settings.RedisStoreConfig)

/** The store's timing_margin_ms once its defaults apply. */
const effectiveMargin = (store: StoreConfigInput): number => Schema.decodeUnknownSync(StoreConfig)(store).timing_margin_ms

/** The limiter's burst once the library's defaults apply. */
const effectiveBurst = (limiter: LimiterConfigInput): number => {
  const rate = Settings.toLimiterSpec("accuracy", Schema.decodeUnknownSync(Settings.LimiterConfig)(limiter)).rate
  if (rate?._tag !== "TokenBucket") throw new Error("the accuracy limiter is expected to be a token bucket")
  return rate.burst
}

const fmt = (n: number, digits = 0) => n.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits })

// ---------------------------------------------------------------------------------------------
// One run: a store, a configuration, a rate.

interface Check {
  readonly name: string
  readonly what: string
  readonly ok: boolean
}

interface RunResult {
  readonly store: string
  readonly configuration: Configuration
  readonly rate: number
  readonly burst: number
  readonly marginLabel: string
  readonly processes: number
  readonly fibers: number
  readonly seconds: number
  readonly warmupMs: number
  readonly perSecond: number | undefined
  readonly bound: number
  readonly achieved: number | undefined
  readonly failures: number | undefined
  readonly checks: ReadonlyArray<Check>
  readonly info: ReadonlyArray<string>
  readonly series: ReadonlyArray<number>
  readonly warmupSeries: ReadonlyArray<number>
  readonly bucketMs: number
  readonly buckets: ReadonlyArray<number>
  readonly ok: boolean
}

interface Options {
  readonly fibers: number
  readonly seconds: number
  readonly warmup: Warmup
  readonly maxConcurrent: number | undefined
}

const secondsFor = (rate: number, seconds: number) => (rate < 10 ? Math.max(seconds, MIN_SECONDS_BELOW_10) : seconds)

/** The store and limiter a run configures: a key left out is left to the library's default. */
const settingsFor = (target: StoreTarget, configuration: Configuration, rate: number, options: Options) => {
  const store: StoreConfigInput = configuration.margin === undefined ? target.store : { ...target.store, timing_margin_ms: configuration.margin }
  const limiter: LimiterConfigInput = {
    store: "s",
    rate_per_second: rate,
    ...(configuration.burst === undefined ? {} : { burst: configuration.burst }),
    ...(options.maxConcurrent === undefined ? {} : { max_concurrent: options.maxConcurrent, lease_ttl_seconds: 5 })
  }
  return { store, limiter }
}

/** The library's verdict on a run's settings: undefined when valid. */
const settingsIssues = (target: StoreTarget, configuration: Configuration, rate: number, options: Options): string | undefined => {
  const { limiter, store } = settingsFor(target, configuration, rate, options)
  return Effect.runSync(
    Settings.decodeSettings({ stores: { s: store }, limiters: { accuracy: limiter } }).pipe(
      Effect.match({ onFailure: (error) => error.message, onSuccess: () => undefined })
    )
  )
}

const measure = async (
  target: StoreTarget,
  processes: number,
  configuration: Configuration,
  rate: number,
  options: Options
): Promise<RunResult> => {
  const seconds = secondsFor(rate, options.seconds)
  const { limiter, store } = settingsFor(target, configuration, rate, options)
  const burst = effectiveBurst(limiter)
  const margin = effectiveMargin(store)
  const burstLabel = configuration.burst === undefined ? `${burst} (default)` : `${burst}`
  const marginLabel = configuration.margin === undefined ? `default (${margin} ms)` : `${margin}`
  const plan: ChildPlan = {
    store,
    limiterName: `accuracy_${Date.now().toString(36)}_${configuration.section}_${rate}`,
    limiter,
    fibers: options.fibers,
    maxWarmupMs: options.warmup.maxSeconds * 1000,
    measureMs: seconds * 1000,
    recordHolds: options.maxConcurrent !== undefined
  }
  console.log(
    `\n${target.label}, ${configuration.section}: ${processes} process${processes === 1 ? "" : "es"} x ${options.fibers} fibers, ${fmt(rate)}/s, burst ${burstLabel}, ` +
      `timing_margin_ms ${marginLabel}${options.maxConcurrent === undefined ? "" : `, max_concurrent ${options.maxConcurrent}`}; ` +
      `warm-up ${options.warmup.minSeconds} to ${options.warmup.maxSeconds} s, then ${seconds} s measured${seconds > options.seconds ? ` (at least ${MIN_SECONDS_BELOW_10} s below 10/s)` : ""}`
  )
  const bound = Math.floor((burst + rate) * 1.01)
  const bucketMs = rate < 100 ? 1000 : 100
  const base = {
    store: target.label,
    configuration,
    rate,
    burst,
    marginLabel,
    processes,
    fibers: options.fibers,
    seconds,
    bound,
    bucketMs
  }
  const run = await runWorkers(plan, processes, rate, options.warmup).then(
    (done) => ({ ...done, error: undefined }),
    (error: unknown) => ({ reports: [], warmupMs: 0, error: error instanceof Error ? error.message : String(error) })
  )
  const { reports, warmupMs } = run
  if (run.error !== undefined) {
    const what = `the run did not complete: ${run.error}`
    console.log(`  FAIL ${what}`)
    return {
      ...base,
      warmupMs: 0,
      perSecond: undefined,
      achieved: undefined,
      failures: undefined,
      checks: [{ name: "run", what, ok: false }],
      info: [],
      series: [],
      warmupSeries: [],
      buckets: [],
      ok: false
    }
  }
  const times = reports.flatMap((r) => r.admissions).sort((a, b) => a - b)
  const failures = reports.reduce((n, r) => n + r.failures, 0)
  const warmupFailures = reports.reduce((n, r) => n + r.warmupFailures, 0)
  const failureKinds: Record<string, number> = {}
  for (const r of reports) for (const [kind, n] of Object.entries(r.failureKinds)) failureKinds[kind] = (failureKinds[kind] ?? 0) + n
  const slots = times.map((slot) => ({ slot, cost: 1 }))
  const perSecond = windowPeak(slots, 1000)
  const interval = 1000 / rate
  const perInterval = windowPeak(slots, interval)
  const achieved = times.length / seconds
  const held = options.maxConcurrent === undefined ? undefined : peakHeld(reports.flatMap((r) => r.holds))
  const measuredMs = Math.min(...reports.map((r) => r.measuredMs))
  const checks: Array<Check> = [
    ...(measuredMs < seconds * 1000
      ? [{ name: "run", what: `the run was cut short: ${fmt(measuredMs / 1000, 3)} s measured in some process`, ok: false }]
      : []),
    {
      name: "1 s",
      what: `most in any 1 s: ${fmt(perSecond)} (bound floor((burst + rate) x 1.01) = ${fmt(bound)}; burst + rate = ${fmt(burst + rate)})`,
      ok: perSecond <= bound
    },
    {
      name: "achieved",
      what: `achieved ${fmt(achieved, 1)}/s = ${((100 * achieved) / rate).toFixed(1)}% of ${fmt(rate)}/s (at least 97%)`,
      ok: achieved >= 0.97 * rate
    },
    {
      name: "failures",
      what: `failed acquires other than timeouts at the end: ${failures}${warmupFailures === 0 ? "" : ` (${warmupFailures} during the warm-up)`}${
        failures === 0 ? "" : ` ${JSON.stringify(failureKinds)}`
      }`,
      ok: failures === 0
    },
    ...(held === undefined || options.maxConcurrent === undefined
      ? []
      : [{ name: "held", what: `peak permits held at once: ${held} (bound max_concurrent = ${options.maxConcurrent})`, ok: held <= options.maxConcurrent }])
  ]
  const info = [
    `most in any ${interval < 1 ? interval.toFixed(3) : fmt(interval, interval < 10 ? 1 : 0)} ms (1/rate) where callers proceed: ${fmt(perInterval)} ` +
    `(not a check: the store's schedule admits at most burst + 1 = ${fmt(burst + 1)} there, which the compliance suite checks at the store; ` +
    `measured where callers proceed it mostly shows scheduling jitter)`
  ]
  const series = new Array<number>(seconds).fill(0)
  const buckets = new Array<number>(Math.ceil((seconds * 1000) / bucketMs)).fill(0)
  for (const t of times) {
    series[Math.floor(t / 1000)]!++
    buckets[Math.floor(t / bucketMs)]!++
  }
  const warmupSeries = new Array<number>(Math.floor(warmupMs / 1000)).fill(0)
  for (const r of reports) r.warmup.forEach((n, i) => (warmupSeries[i] = (warmupSeries[i] ?? 0) + n))
  console.log(`  warm-up ${(warmupMs / 1000).toFixed(1)} s, admitted per whole second: ${warmupSeries.join(" ")}`)
  // Each acquire's timeout is the end of the run (during the warm-up, the latest end it could have),
  // and a store may report at once that no slot comes before it: a fiber stops at its timeout.
  const [warmupTimeouts, measuredTimeouts, lateTimeouts] = [0, 1, 2].map((i) => reports.reduce((n, r) => n + r.timeouts[i]!, 0))
  info.push(
    `acquires ended by AcquireTimeout, whose timeout is the end of the run (${TAIL_MS} ms after the measurement): ` +
      `${warmupTimeouts} during the warm-up, ${measuredTimeouts} during the measurement, ${lateTimeouts} after it`
  )
  const givenUp = reports.reduce((n, r) => n + r.givenUp, 0)
  info.push(
    `slots reserved and given up unused during the measurement (late wake-ups, slow answers, a pool's spares nobody took in time; rate_sync_slots_given_up_total): ` +
      `${fmt(givenUp)} (${((100 * givenUp) / (rate * seconds)).toFixed(1)}% of the rate)`
  )
  const lastWarm = warmupSeries[warmupSeries.length - 1]
  if (lastWarm !== undefined && warmupMs >= options.warmup.maxSeconds * 1000) {
    info.push(
      `the warm-up ran its longest, ${options.warmup.maxSeconds} s; its last whole second admitted ${fmt(lastWarm)} (${((100 * lastWarm) / rate).toFixed(1)}% of the rate)` +
        (lastWarm < 0.97 * rate ? ": either that is too short for this configuration or it does not reach the rate at all" : "")
    )
  }
  console.log(`  admitted per second: ${series.join(" ")}`)
  for (const check of checks) console.log(`  ${check.ok ? "ok  " : "FAIL"} ${check.what}`)
  for (const line of info) console.log(`  info ${line}`)
  return {
    ...base,
    warmupMs,
    perSecond,
    achieved,
    failures,
    checks,
    info,
    series,
    warmupSeries,
    buckets,
    ok: checks.every((c) => c.ok)
  }
}

// ---------------------------------------------------------------------------------------------
// Tables and pages.

const storeCell = (r: RunResult) => (r.perSecond === undefined ? "-" : `${fmt(r.perSecond)} (${fmt(r.bound)}; burst + rate ${fmt(r.burst + r.rate)})`)
const achievedCell = (r: RunResult) => (r.achieved === undefined ? "-" : `${fmt(r.achieved, 1)}/s (${((100 * r.achieved) / r.rate).toFixed(1)}%)`)
const checksCell = (r: RunResult) => (r.ok ? "ok" : `FAIL: ${r.checks.filter((c) => !c.ok).map((c) => c.name).join(", ")}`)

const storeTable = (results: ReadonlyArray<RunResult>): Array<string> => [
  "| rate | burst | timing_margin_ms | most in any 1 s (bound) | achieved (%) | failed acquires | checks |",
  "|---:|---:|---|---:|---:|---:|---|",
  ...results.map((r) =>
    `| ${fmt(r.rate)}/s | ${r.burst} | ${r.marginLabel} | ${storeCell(r)} | ${achievedCell(r)} | ${r.failures ?? "-"} | ${checksCell(r)} |`
  )
]

const summaryTable = (results: ReadonlyArray<RunResult>): Array<string> => [
  "| store | configuration | processes x fibers | rate | burst | timing_margin_ms | most in any 1 s (bound) | achieved (%) | failed acquires | checks |",
  "|---|---|---|---:|---:|---|---:|---:|---:|---|",
  ...results.map((r) =>
    `| ${r.store} | ${r.configuration.section} | ${r.processes} x ${r.fibers} | ${fmt(r.rate)}/s | ${r.burst} | ${r.marginLabel} | ${storeCell(r)} | ${
      achievedCell(r)
    } | ${r.failures ?? "-"} | ${checksCell(r)} |`
  )
]

const sectionTitle = (configuration: Configuration) => {
  switch (configuration.section) {
    case "default":
      return "Defaults: only rate_per_second on the limiter, no timing_margin_ms on the store"
    case "tuned":
      return `Tuned: timing_margin_ms = ${TUNED_MARGIN_MS}, burst still the default`
    case "custom":
      return `Custom: ${configuration.burst === undefined ? "burst the default" : `burst = ${configuration.burst}`}, ${
        configuration.margin === undefined ? "timing_margin_ms the store's default" : `timing_margin_ms = ${configuration.margin}`
      }`
  }
}

const writePage = (label: string, command: string, options: Options, processes: number, configurations: ReadonlyArray<Configuration>, results: ReadonlyArray<RunResult>) => {
  const lines = [
    `# Accuracy: ${label}`,
    "",
    `Measured ${new Date().toISOString().slice(0, 10)} by \`${command}\` on ${cpus().length} cores, Node ${process.version}:`,
    `${processes} process${processes === 1 ? "" : "es"} x ${options.fibers} fibers on one limiter, every fiber asking again as soon as it is admitted.`,
    `Each run warms up on the measured limiter (${options.warmup.minSeconds} s once the rate is reached in a second, else up to ${options.warmup.maxSeconds} s),`,
    `then records every admission for ${options.seconds} s`,
    `(at least ${MIN_SECONDS_BELOW_10} s below 10/s) on the machine's monotonic clock (\`process.hrtime.bigint()\`, one clock for all processes).`,
    "",
    "Checks: the most admitted in any 1 s where callers proceed, at most floor((burst + rate) x 1.01); the rate achieved,",
    "at least 97% of the configured one; no failed acquire other than the timeouts at the end of the run. The most admitted",
    "in any 1/rate window is information only: it is a property of the store's schedule, which the compliance suite checks",
    "at the store; measured where callers proceed it mostly shows scheduling jitter.",
    ""
  ]
  for (const configuration of configurations) {
    const rows = results.filter((r) => r.configuration.section === configuration.section)
    if (rows.length > 0) lines.push(`## ${sectionTitle(configuration)}`, "", ...storeTable(rows), "")
  }
  lines.push("## Runs", "")
  for (const r of results) {
    lines.push(`### ${r.configuration.section}: ${fmt(r.rate)}/s, burst ${r.burst}, timing_margin_ms ${r.marginLabel}`, "")
    lines.push(...r.checks.map((c) => `- ${c.ok ? "ok" : "FAIL"}: ${c.what}`), ...r.info.map((i) => `- info: ${i}`), "")
    if (r.series.length > 0) {
      lines.push(`Warm-up ${(r.warmupMs / 1000).toFixed(1)} s, admitted per whole second: ${r.warmupSeries.join(" ")}; measured, per second: ${r.series.join(" ")}.`, "")
    }
    if (r.configuration.section === "default" && r.buckets.length > 0) {
      const file = `accuracy-${label}-${r.rate}.svg`
      writeFileSync(
        new URL(`../bench/${file}`, import.meta.url),
        seriesChart(
          `${label}, defaults: ${fmt(r.rate)}/s, burst ${r.burst}, timing_margin_ms ${r.marginLabel}, ${processes} x ${options.fibers}`,
          r.bucketMs,
          r.buckets,
          r.rate
        )
      )
      lines.push(`![admissions over time](${file})`, "")
    }
  }
  writeFileSync(new URL(`../bench/accuracy-${label}.md`, import.meta.url), lines.join("\n"))
}

// ---------------------------------------------------------------------------------------------

if (values.child !== undefined) {
  const plan = JSON.parse(values.child) as ChildPlan
  Effect.runPromise(runChild(plan)).then(
    // A large report must be flushed to the pipe before the process exits.
    (report) => process.stdout.write(`${JSON.stringify(report)}\n`, () => process.exit(0)),
    (error) => {
      console.error(error)
      process.exit(1)
    }
  )
} else {
  const started = Date.now()
  if (values.store !== undefined && !(STORES as ReadonlyArray<string>).includes(values.store)) usage(`unknown store "${values.store}" (${STORES.join(", ")})`)
  const storeNames = values.store === undefined ? [...STORES] : [values.store]
  const rate = numberOption("rate", values.rate, false, Number.MIN_VALUE)
  const burst = numberOption("burst", values.burst, false, 1)
  const margin = numberOption("margin", values.margin, true, 0)
  const processesOption = numberOption("processes", values.processes, true, 1)
  const options: Options = {
    fibers: numberOption("fibers", values.fibers, true, 1) ?? 16,
    seconds: numberOption("seconds", values.seconds, true, 1) ?? 10,
    warmup: {
      minSeconds: numberOption("min-warmup", values["min-warmup"], true, 1) ?? 5,
      maxSeconds: numberOption("warmup", values.warmup, true, 1) ?? 10
    },
    maxConcurrent: numberOption("max-concurrent", values["max-concurrent"], true, 1)
  }
  if (values.store === "memory" && processesOption !== undefined && processesOption > 1) {
    usage("the memory store is per process: use --processes 1, or a shared store")
  }
  const custom = burst !== undefined || margin !== undefined
  if (custom && values["defaults-only"]) usage("--burst and --margin set the custom section, which --defaults-only skips")
  const configurations: Array<Configuration> = [
    { section: "default", burst: undefined, margin: undefined },
    ...(values["defaults-only"] ? [] : [custom ? { section: "custom" as const, burst, margin } : { section: "tuned" as const, burst: undefined, margin: TUNED_MARGIN_MS }])
  ]
  const ratesFor = (name: string) => (rate === undefined ? RATES[name] ?? [] : [rate])
  const runs = configurations.flatMap(() => storeNames.flatMap((name) => ratesFor(name)))
  if (options.warmup.minSeconds > options.warmup.maxSeconds) usage("--min-warmup is more than --warmup")
  const estimate = (warmupSeconds: number) => runs.reduce((s, r) => s + warmupSeconds + secondsFor(r, options.seconds) + 3, 0) / 60
  console.log(
    `${runs.length} run${runs.length === 1 ? "" : "s"} (${configurations.map((c) => c.section).join(", then ")}), ` +
      `${estimate(options.warmup.minSeconds).toFixed(1)} to ${estimate(options.warmup.maxSeconds).toFixed(1)} min. ` +
      `Rates below 10/s are measured for at least ${MIN_SECONDS_BELOW_10} s.`
  )
  const targets: Array<{ readonly target: StoreTarget; readonly processes: number }> = []
  try {
    for (const name of storeNames) {
      const target = await resolveStore(name)
      // A memory store lives in one process: sharing it across processes would measure nothing.
      targets.push({ target, processes: target.shared ? processesOption ?? 4 : 1 })
    }
    // Settings the library rejects are reported before anything runs.
    const rejected = configurations.flatMap((configuration) =>
      targets.flatMap(({ target }) =>
        ratesFor(target.label).flatMap((r) => {
          const issues = settingsIssues(target, configuration, r, options)
          return issues === undefined ? [] : [`${target.label}, ${configuration.section}, ${r}/s: ${issues.replace(/\n/g, "; ")}`]
        })
      )
    )
    if (rejected.length > 0) {
      for (const { target } of targets.splice(0)) await target.stop()
      usage(rejected.join("\n"))
    }
    const results: Array<RunResult> = []
    // Every store's defaults first, then the second section.
    for (const configuration of configurations) {
      for (const { target, processes } of targets) {
        for (const r of ratesFor(target.label)) results.push(await measure(target, processes, configuration, r, options))
      }
    }
    const command = `npm run accuracy${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(" ")}` : ""}`
    for (const { target, processes } of targets) {
      writePage(target.label, command, options, processes, configurations, results.filter((r) => r.store === target.label))
    }
    const ordered = configurations.flatMap((c) => results.filter((r) => r.configuration.section === c.section))
    console.log(`\nSummary (${((Date.now() - started) / 60_000).toFixed(1)} min; pages in bench/accuracy-NAME.md):\n`)
    console.log(summaryTable(ordered).join("\n"))
    const defaultsFailed = results.filter((r) => r.configuration.section === "default" && !r.ok)
    const othersFailed = results.filter((r) => r.configuration.section !== "default" && !r.ok)
    console.log(
      `\n${defaultsFailed.length} of ${results.filter((r) => r.configuration.section === "default").length} default runs failed a check` +
        (configurations.length > 1
          ? `; ${othersFailed.length} of ${results.length - results.filter((r) => r.configuration.section === "default").length} ${configurations[1]!.section} runs` +
            (values["strict-tuned"] ? "" : " (reported only; --strict-tuned makes them count)")
          : "") + "."
    )
    process.exitCode = defaultsFailed.length > 0 || (values["strict-tuned"] && othersFailed.length > 0) ? 1 : 0
  } finally {
    for (const { target } of targets) await target.stop()
  }
  process.exit(process.exitCode ?? 0)
}

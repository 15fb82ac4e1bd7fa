/**
 * `npm run accuracy -- --store postgres [--processes 4 --fibers 16 --rate R --burst B --seconds 10
 *   --max-concurrent N]`: real processes share one limiter and record every admission on the
 * machine's clock. Prints the most admitted in any 1 s window and in any 1/rate window, the
 * achieved rate, and the peak number of permits held at once; exits non-zero when a bound of the
 * contract is broken (or the achieved rate is under 97% of the configured one). Without --rate it
 * runs at 200/s and at 2,000/s (Redis: 20,000/s).
 *
 * Callers proceed a little after their slot, by however late the store's answer arrives; on a
 * loaded machine that differs by tens of ms between processes. `--margin` (default 50 ms) is the
 * store's timing_margin_ms, which takes that jitter out of the burst allowance, and the default
 * burst (1 + rate x margin) leaves the schedule evenly paced.
 */
import { spawn } from "node:child_process"
import { writeFileSync } from "node:fs"
import { cpus } from "node:os"
import { parseArgs } from "node:util"
import { Duration, Effect, Layer } from "effect"
import { RateLimiter, RateSync, Stores } from "../src/index.js"
import { seriesChart } from "../bench/svg.js"
import { peakHeld, windowPeak } from "../test/compliance/bounds.js"
import { resolveStore, type StoreTarget } from "./stores.js"

const { values } = parseArgs({
  options: {
    store: { type: "string", default: "memory" },
    processes: { type: "string" },
    fibers: { type: "string", default: "16" },
    rate: { type: "string" },
    burst: { type: "string" },
    seconds: { type: "string", default: "10" },
    "max-concurrent": { type: "string" },
    margin: { type: "string", default: "50" },
    child: { type: "string" }
  }
})

interface ChildPlan {
  readonly target: StoreTarget
  readonly margin: number
  readonly limiter: string
  readonly rate: number
  readonly burst: number
  readonly maxConcurrent: number | undefined
  readonly fibers: number
  readonly seconds: number
  readonly startAt: number
}

interface ChildReport {
  readonly admissions: Array<number>
  readonly holds: Array<readonly [number, number]>
  readonly failures: number
  readonly failureKinds: Record<string, number>
}

const wallClock = () => performance.timeOrigin + performance.now()

const runChild = (plan: ChildPlan) =>
  Effect.gen(function*() {
    const admissions: Array<number> = []
    const holds: Array<readonly [number, number]> = []
    let failures = 0
    const failureKinds: Record<string, number> = {}
    const end = plan.startAt + plan.seconds * 1000
    // The fibers run from the child's start to the end; only [startAt, end) is recorded. What comes
    // before warms up compiled code paths, connections and the limiter itself, on the same key.
    const worker = Effect.gen(function*() {
      while (wallClock() < end) {
        yield* Effect.scoped(Effect.gen(function*() {
          yield* RateLimiter.acquire(plan.limiter, { timeout: Duration.millis(Math.max(0, end - wallClock())) })
          const at = wallClock()
          const record = at >= plan.startAt && at < end
          if (record) admissions.push(at)
          if (plan.maxConcurrent !== undefined) {
            yield* Effect.sleep("2 millis")
            if (record) holds.push([at, wallClock()])
          }
        })).pipe(Effect.catchAll((error) => Effect.sync(() => {
          if (error._tag !== "AcquireTimeout" && wallClock() >= plan.startAt) {
            failures++
            failureKinds[error._tag] = (failureKinds[error._tag] ?? 0) + 1
          }
        })))
      }
    })
    yield* Effect.all(Array.from({ length: plan.fibers }, () => worker), { concurrency: "unbounded" })
    return { admissions, holds, failures, failureKinds } satisfies ChildReport
  }).pipe(
    Effect.provide(
      RateSync.layer({
        stores: { s: { ...plan.target.store, timing_margin_ms: plan.margin } },
        limiters: {
          [plan.limiter]: {
            store: "s",
            rate_per_second: plan.rate,
            burst: plan.burst,
            ...(plan.maxConcurrent === undefined ? {} : { max_concurrent: plan.maxConcurrent, lease_ttl_seconds: 5 })
          }
        }
      }).pipe(Layer.provide(Stores.layer))
    )
  )

const childReport = (plan: ChildPlan): Promise<ChildReport> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", new URL(import.meta.url).pathname, "--child", JSON.stringify(plan)], {
      stdio: ["ignore", "pipe", "inherit"]
    })
    let out = ""
    child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()))
    child.on("exit", (code) => {
      const line = out.trim().split("\n").pop() ?? ""
      if (code === 0 && line.startsWith("{")) resolve(JSON.parse(line) as ChildReport)
      else reject(new Error(`accuracy worker exited with ${code}`))
    })
  })

const measure = async (target: StoreTarget, rate: number, processes: number) => {
  const margin = Number(values.margin)
  // A burst that covers the margin keeps the schedule evenly paced while absorbing up to `margin` of jitter.
  const burst = values.burst === undefined ? 1 + Math.ceil((rate * margin) / 1000) : Number(values.burst)
  const seconds = Number(values.seconds)
  const maxConcurrent = values["max-concurrent"] === undefined ? undefined : Number(values["max-concurrent"])
  const plan: ChildPlan = {
    target,
    margin,
    limiter: `accuracy_${Date.now().toString(36)}_${rate}`,
    rate,
    burst,
    maxConcurrent,
    fibers: Number(values.fibers),
    seconds,
    startAt: wallClock() + 10_000
  }
  console.log(`${target.label}: ${processes} processes x ${plan.fibers} fibers, ${rate}/s, burst ${burst}, timing_margin_ms ${margin}, ${seconds} s${maxConcurrent === undefined ? "" : `, max_concurrent ${maxConcurrent}`}`)
  const reports = await Promise.all(Array.from({ length: processes }, () => childReport(plan)))
  const times = reports.flatMap((r) => r.admissions).sort((a, b) => a - b)
  const failures = reports.reduce((n, r) => n + r.failures, 0)
  const slots = times.map((slot) => ({ slot, cost: 1 }))
  const perSecond = windowPeak(slots, 1000)
  const interval = 1000 / rate
  const perInterval = windowPeak(slots, interval)
  const achieved = times.length / seconds
  const held = maxConcurrent === undefined ? undefined : peakHeld(reports.flatMap((r) => r.holds))
  const checks = [
    { what: `most in any 1 s: ${perSecond} (bound burst + rate = ${burst + rate})`, ok: perSecond <= burst + rate },
    { what: `most in any ${interval.toFixed(3)} ms (1/rate): ${perInterval} (bound burst + 1 = ${burst + 1})`, ok: perInterval <= burst + 1 },
    { what: `achieved ${achieved.toFixed(1)}/s = ${((100 * achieved) / rate).toFixed(1)}% of ${rate}/s (at least 97%)`, ok: achieved >= 0.97 * rate },
    {
      what: `failed acquires (other than timeouts at the end): ${failures}${failures === 0 ? "" : ` ${JSON.stringify(Object.assign({}, ...reports.map((r) => r.failureKinds)))}`}`,
      ok: failures === 0
    },
    ...(held === undefined ? [] : [{ what: `peak permits held at once: ${held} (bound ${maxConcurrent})`, ok: held <= maxConcurrent! }])
  ]
  const series = Array.from({ length: seconds }, (_, i) => times.filter((t) => t >= plan.startAt + i * 1000 && t < plan.startAt + (i + 1) * 1000).length)
  console.log(`  admitted per second: ${series.join(" ")}`)
  for (const check of checks) console.log(`  ${check.ok ? "ok  " : "FAIL"} ${check.what}`)
  // Finer buckets for the chart: admissions per 100 ms against the configured rate.
  const buckets = new Array<number>(seconds * 10).fill(0)
  for (const t of times) {
    const i = Math.floor((t - plan.startAt) / 100)
    if (i >= 0 && i < buckets.length) buckets[i]!++
  }
  return { rate, burst, perSecond, perInterval, achieved, held, series, buckets, checks, ok: checks.every((c) => c.ok) }
}

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
  const target = await resolveStore(values.store ?? "memory")
  // A memory store lives in one process: sharing it across processes would measure nothing.
  const processes = values.processes === undefined ? (target.shared ? 4 : 1) : Number(values.processes)
  if (!target.shared && processes > 1) {
    console.error("the memory store is per process: use --processes 1, or a shared store")
    process.exit(2)
  }
  // Each store at a tight rate and at a high one it is built to serve.
  const rates = values.rate !== undefined ? [Number(values.rate)] : target.label === "redis" ? [200, 20_000] : [200, 2_000]
  const results = []
  for (const rate of rates) results.push(await measure(target, rate, processes))
  await target.stop()
  // The results page: a summary and, per rate, a chart of admissions over time.
  const lines = [
    `# Accuracy: ${target.label}`,
    "",
    `Measured ${new Date().toISOString().slice(0, 10)} by \`npm run accuracy -- --store ${target.label}\` on ${cpus().length} cores, Node ${process.version}:`,
    `${processes} processes x ${values.fibers} fibers on one limiter for ${values.seconds} s, timing_margin_ms ${values.margin}, every`,
    "admission recorded on the machine's clock (after a warm-up on the same limiter).",
    ""
  ]
  for (const result of results) {
    const file = `accuracy-${target.label}-${result.rate}.svg`
    writeFileSync(
      new URL(`../bench/${file}`, import.meta.url),
      seriesChart(`${target.label}: ${result.rate}/s, burst ${result.burst}, ${processes} processes x ${values.fibers} fibers`, 100, result.buckets, result.rate)
    )
    lines.push(`## ${result.rate}/s, burst ${result.burst}`, "", ...result.checks.map((c) => `- ${c.ok ? "ok" : "FAIL"}: ${c.what}`), "", `![admissions over time](${file})`, "")
  }
  writeFileSync(new URL(`../bench/accuracy-${target.label}.md`, import.meta.url), lines.join("\n"))
  process.exit(results.every((r) => r.ok) ? 0 : 1)
}

/**
 * A load process for the fault tests: `node --import tsx test/support/loader.ts '<plan json>'`. Its
 * fibers acquire one limiter in a loop until `endAt` and record, on the machine's clock, every
 * admission from `startAt` on and every failure. With `skewMs` the process's own clocks (Effect's
 * `Clock` and `Date.now`) run that far off the machine's, as on a host whose clock is wrong.
 * Prints one JSON line, a `LoadReport`, and exits 0; a crash exits non-zero.
 */
import { spawn } from "node:child_process"
import { existsSync, writeFileSync } from "node:fs"
import { pathToFileURL } from "node:url"
import { Cause, Clock, Duration, Effect, Layer, Option } from "effect"
import { RateLimiter } from "../../src/RateLimiter.js"
import * as RateSync from "../../src/RateSync.js"
import type { SettingsInput } from "../../src/Settings.js"
import * as Stores from "../../src/Stores.js"

export interface LoadPlan {
  readonly settings: SettingsInput
  readonly limiter: string
  readonly fibers: number
  /** Machine-clock ms: recording starts at startAt, the fibers stop at endAt. */
  readonly startAt: number
  readonly endAt: number
  readonly skewMs: number
  /** How long each permit is held before its scope closes (for concurrency limits). */
  readonly holdMs?: number
  /**
   * Records an acquire that dies (a defect, not a typed failure) in `failed` as `Die:<tag>`, the
   * defect's `_tag` or class name, and carries on; without it a defect crashes the process.
   */
  readonly recordDefects?: boolean
  /** Created, empty, at the process's first permit: it is up and served by its store. */
  readonly readyFile?: string
  /** The fibers also stop, before `endAt`, once this file exists. */
  readonly stopFile?: string
}

export interface LoadReport {
  /** Machine-clock ms of each admission; `degraded` ones were let through while the store was down. */
  readonly admitted: Array<number>
  readonly degraded: Array<number>
  /** [machine-clock ms, error tag] of each failed acquire (with `recordDefects`, `Die:<tag>` for a defect). */
  readonly failed: Array<readonly [number, string]>
  /** With `holdMs`: [admitted, about to release] of each recorded permit, on the machine clock. */
  readonly holds: Array<readonly [number, number]>
  /** How far the process's Effect clock and Date.now ran from the machine's, as measured inside it. */
  readonly skewSeen: { readonly effectClock: number; readonly dateNow: number }
}

/** The tag a defect is recorded under: `Die:` and its `_tag`, else its class name. */
export const defectTag = (defect: unknown): string => {
  if (typeof defect !== "object" || defect === null) return `Die:${typeof defect}`
  const tag: unknown = Reflect.get(defect, "_tag")
  return `Die:${typeof tag === "string" ? tag : defect.constructor.name}`
}

/** The machine's clock, untouched by the skew below. */
export const machineClock = () => performance.timeOrigin + performance.now()

/** Runs a load process with `plan`; rejects when it crashes. */
export const runLoader = (plan: LoadPlan): Promise<LoadReport> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", new URL(import.meta.url).pathname, JSON.stringify(plan)], {
      stdio: ["ignore", "pipe", "inherit"]
    })
    let out = ""
    child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()))
    child.once("exit", (code, signal) => {
      const line = out.trim().split("\n").pop() ?? ""
      if (code === 0 && line.startsWith("{")) resolve(JSON.parse(line))
      else reject(new Error(`load process exited with ${code ?? signal}`))
    })
  })

export const sleepUntil = (at: number) => new Promise((resolve) => setTimeout(resolve, Math.max(0, at - machineClock())))

/**
 * Waits until every ready file exists (each load process has had its first permit), polling; fails
 * once `withinMs` have passed since `since`, and stops waiting as soon as `crashed()`.
 */
export const untilReady = async (files: ReadonlyArray<string>, since: number, withinMs: number, crashed: () => boolean) => {
  while (!crashed() && !files.every((file) => existsSync(file))) {
    if (machineClock() - since > withinMs) throw new Error(`the load processes were not served within ${withinMs} ms`)
    await sleepUntil(machineClock() + 50)
  }
}

/** Admissions observed on the machine clock land after their slot by the caller's wake-up lateness (tens of ms on 2 loaded cores): a tenth of a second of rate is allowed for it. */
export const lateness = (rate: number) => Math.ceil(rate / 10)

const skewedClock = (skewMs: number): Clock.Clock => {
  const system = Clock.make()
  const millis = () => machineClock() + skewMs
  const nanos = () => BigInt(Math.round(millis() * 1e6))
  return {
    [Clock.ClockTypeId]: Clock.ClockTypeId,
    unsafeCurrentTimeMillis: millis,
    unsafeCurrentTimeNanos: nanos,
    currentTimeMillis: Effect.sync(millis),
    currentTimeNanos: Effect.sync(nanos),
    sleep: (duration) => system.sleep(duration)
  }
}

const run = (plan: LoadPlan) =>
  Effect.gen(function*() {
    const effectClock = (yield* Clock.currentTimeMillis) - machineClock()
    const report: LoadReport = { admitted: [], degraded: [], failed: [], holds: [], skewSeen: { effectClock, dateNow: Date.now() - machineClock() } }
    const { readyFile, stopFile } = plan
    let ready = false
    const worker = Effect.gen(function*() {
      while (machineClock() < plan.endAt && (stopFile === undefined || !existsSync(stopFile))) {
        yield* Effect.scoped(Effect.gen(function*() {
          const permit = yield* RateLimiter.acquire(plan.limiter, { timeout: Duration.seconds(1) })
          const at = machineClock()
          if (readyFile !== undefined && !ready) {
            ready = true
            writeFileSync(readyFile, "")
          }
          const recorded = at >= plan.startAt && at < plan.endAt
          if (recorded) (permit.degraded ? report.degraded : report.admitted).push(at)
          if (plan.holdMs !== undefined) {
            yield* Effect.sleep(Duration.millis(plan.holdMs))
            if (recorded) report.holds.push([at, machineClock()])
          }
        })).pipe(
          Effect.matchCauseEffect({
            onSuccess: () => Effect.void,
            onFailure: (cause) => {
              // A failure is answered at once; a real client would back off a little before asking again.
              const failed = (tag: string) => Effect.zipRight(Effect.sync(() => report.failed.push([machineClock(), tag])), Effect.sleep("10 millis"))
              const error = Cause.failureOption(cause)
              if (Option.isSome(error)) return failed(error.value._tag)
              const defect = Cause.dieOption(cause)
              return plan.recordDefects === true && Option.isSome(defect) ? failed(defectTag(defect.value)) : Effect.failCause(cause)
            }
          })
        )
      }
    })
    yield* Effect.all(Array.from({ length: plan.fibers }, () => worker), { concurrency: "unbounded", discard: true })
    return report
  }).pipe(
    Effect.provide(RateSync.layer(plan.settings).pipe(Layer.provide(Stores.layer))),
    Effect.withClock(skewedClock(plan.skewMs))
  )

// Run only as a process of its own, not when a test imports its types and clock.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const plan: LoadPlan = JSON.parse(process.argv[2] ?? "")
  const realNow = Date.now
  Date.now = () => realNow() + plan.skewMs
  Effect.runPromise(run(plan)).then(
    // A large report must be flushed to the pipe before the process exits.
    (report) => process.stdout.write(`${JSON.stringify(report)}\n`, () => process.exit(0)),
    (error) => {
      console.error(error)
      process.exit(1)
    }
  )
}

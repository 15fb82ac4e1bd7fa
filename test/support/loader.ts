/**
 * A load process for the fault tests: `node --import tsx test/support/loader.ts '<plan json>'`. Its
 * fibers acquire one limiter in a loop until `endAt` and record, on the machine's clock, every
 * admission from `startAt` on and every failure. With `skewMs` the process's own clocks (Effect's
 * `Clock` and `Date.now`) run that far off the machine's, as on a host whose clock is wrong.
 * Prints one JSON line, a `LoadReport`, and exits 0; a crash exits non-zero.
 */
import { pathToFileURL } from "node:url"
import { Clock, Duration, Effect, Layer } from "effect"
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
}

export interface LoadReport {
  /** Machine-clock ms of each admission; `degraded` ones were let through while the store was down. */
  readonly admitted: Array<number>
  readonly degraded: Array<number>
  /** [machine-clock ms, error tag] of each failed acquire. */
  readonly failed: Array<readonly [number, string]>
}

/** The machine's clock, untouched by the skew below. */
export const machineClock = () => performance.timeOrigin + performance.now()

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
    const report: LoadReport = { admitted: [], degraded: [], failed: [] }
    const worker = Effect.gen(function*() {
      while (machineClock() < plan.endAt) {
        yield* Effect.scoped(RateLimiter.acquire(plan.limiter, { timeout: Duration.seconds(1) })).pipe(
          Effect.matchEffect({
            onSuccess: (permit) =>
              Effect.sync(() => {
                const at = machineClock()
                if (at >= plan.startAt && at < plan.endAt) (permit.degraded ? report.degraded : report.admitted).push(at)
              }),
            // A failure is answered at once; a real client would back off a little before asking again.
            onFailure: (error) => Effect.zipRight(Effect.sync(() => report.failed.push([machineClock(), error._tag])), Effect.sleep("10 millis"))
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

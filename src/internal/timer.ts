/**
 * Timers for the hot paths. On Effect's own clock a sleep is a plain `setTimeout`, so these use one
 * directly (an Effect sleep, race or timeout costs tens of fiber steps, and at thousands of
 * admissions a second per process those steps are most of an admission's CPU). On any other clock
 * (`TestClock`) they go through the clock, so time logic stays testable.
 */
import type * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as FiberId from "effect/FiberId"

/** The longest a JavaScript timer can wait; Effect treats a longer sleep as one that never ends. */
export const MAX_TIMER_MS = 2 ** 31 - 1

/** Sleeps until a slot however far ahead it lies (a long window, a backoff of months), in timer-sized steps. */
export const sleepFor = (ms: number): Effect.Effect<void> =>
  ms <= MAX_TIMER_MS
    ? Effect.sleep(Duration.millis(ms))
    : Effect.zipRight(Effect.sleep(Duration.millis(MAX_TIMER_MS)), Effect.suspend(() => sleepFor(ms - MAX_TIMER_MS)))

/** Effect's default clock, whose sleeps are plain timers. */
const liveClock = Effect.runSync(Effect.clock)

/**
 * Lets timers and I/O run once. After a timer wakes a waiter, a backoff's message may already sit
 * unread on a socket (the event loop runs timers before it reads): reading it first lets the check
 * that follows see it. A store that is down can also fail a call within the same microtask chain
 * (ioredis rejects at once while disconnected): a caller that asks again straight away, as a
 * fail-open loop does, lets the event loop reach the reconnect through it.
 */
export const turnEventLoop: Effect.Effect<void> = Effect.async<void>((resume) => {
  const handle = setImmediate(() => resume(Effect.void))
  return Effect.sync(() => clearImmediate(handle))
})

/** Sleeps `ms` of `clock`, then turns the event loop once. */
export const sleepThenTurn = (clock: Clock.Clock, ms: number): Effect.Effect<void> =>
  clock !== liveClock || ms > MAX_TIMER_MS
    ? Effect.zipRight(sleepFor(ms), turnEventLoop)
    : Effect.async<void>((resume) => {
      let turn: NodeJS.Immediate | undefined
      const timer = setTimeout(() => {
        turn = setImmediate(() => resume(Effect.void))
      }, ms)
      return Effect.sync(() => {
        clearTimeout(timer)
        if (turn !== undefined) clearImmediate(turn)
      })
    })

/** Calls `fire` once `ms` of `clock` have passed (never for Infinity); the result cancels it. */
export const startTimer = (clock: Clock.Clock, ms: number, fire: () => void): Effect.Effect<() => void> => {
  if (!Number.isFinite(ms)) return Effect.succeed(() => {})
  if (clock === liveClock && ms <= MAX_TIMER_MS) {
    return Effect.sync(() => {
      const handle = setTimeout(fire, Math.max(0, ms))
      return () => clearTimeout(handle)
    })
  }
  return Effect.map(
    // Interruptible whatever region it is started from (a fork inherits it), so that cancelling works.
    Effect.forkDaemon(Effect.interruptible(Effect.zipRight(sleepFor(Math.max(0, ms)), Effect.sync(fire)))),
    (fiber) => () => fiber.unsafeInterruptAsFork(FiberId.none)
  )
}

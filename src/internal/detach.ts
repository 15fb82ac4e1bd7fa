/**
 * Store calls a caller waits for at most a while. The call runs in a fiber of its own and the caller
 * waits for it or for a timer, whichever comes first (one timer and one hand-off: an Effect race or
 * timeout costs several fibers and tens of steps, on every store call of a busy limiter).
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberId from "effect/FiberId"
import * as Option from "effect/Option"
import * as Handoff from "./handoff.js"
import { startTimer } from "./timer.js"

/**
 * Waits at most `waitMs` (of the caller's clock) for `call`, run in a fiber of its own: its result,
 * or None when the time ran out. When the caller stops waiting (the time ran out, or it was
 * interrupted), `left` is handed the call's fiber.
 */
const awaitAtMost = <A, E>(
  call: Effect.Effect<A, E>,
  waitMs: number,
  left: (fiber: Fiber.RuntimeFiber<A, E>) => Effect.Effect<void>
): Effect.Effect<Option.Option<A>, E> =>
  Effect.clockWith((clock) =>
    Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(Effect.forkDaemon(call), (fiber) => {
        const first = Handoff.make<Option.Option<A>, E>()
        fiber.addObserver((exit) => first.done(Exit.map(exit, Option.some)))
        return Effect.flatMap(startTimer(clock, waitMs, () => first.done(Exit.succeed(Option.none()))), (cancel) =>
          restore(first.await).pipe(
            Effect.onExit((exit) => {
              cancel()
              // Left: the time ran out, or the caller was interrupted (a failure of the call itself reached it).
              const gone = Exit.isSuccess(exit) ? Option.isNone(exit.value) : Cause.isInterruptedOnly(exit.cause)
              return gone ? left(fiber) : Effect.void
            })
          ))
      })
    )
  )

/**
 * A store call the caller can stop waiting for without stopping it: the caller waits at most
 * `waitMs` (and can be interrupted); once it has gone, the call still completes, and `abandoned` is
 * handed its result, so whatever the store granted to nobody (a lease, a place in line, a rate slot)
 * can be given back in order, after the store applied it.
 */
export const detached = <A, E>(
  call: Effect.Effect<A, E>,
  waitMs: number,
  abandoned: (exit: Exit.Exit<A, E>) => Effect.Effect<void>
): Effect.Effect<Option.Option<A>, E> =>
  awaitAtMost(call, waitMs, (fiber) => Effect.asVoid(Effect.forkDaemon(Effect.flatMap(Fiber.await(fiber), abandoned))))

/**
 * `operation` bounded by `waitMs`: past it the caller fails with `onTimeout()`, and the operation is
 * interrupted in the background (interrupting a statement asks the server to cancel it, which the
 * caller does not wait for); so is it when the caller is interrupted.
 */
export const interruptAfter = <A, E, E2>(
  operation: Effect.Effect<A, E>,
  waitMs: number,
  onTimeout: () => E2
): Effect.Effect<A, E | E2> =>
  Effect.flatMap(
    // Forked from an uninterruptible region, whose status the fiber would inherit.
    awaitAtMost(Effect.interruptible(operation), waitMs, (fiber) => Effect.sync(() => fiber.unsafeInterruptAsFork(FiberId.none))),
    Option.match({ onNone: () => Effect.fail(onTimeout()), onSome: Effect.succeed })
  )

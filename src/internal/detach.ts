/**
 * A store call the caller can stop waiting for without stopping it. The call runs in a fiber of its
 * own: the caller waits at most `waitMs` (and can be interrupted); once it has gone, the call still
 * completes, and `abandoned` is handed its result, so whatever the store granted to nobody (a lease,
 * a place in line, a rate slot) can be given back in order, after the store applied it.
 */
import * as Effect from "effect/Effect"
import type * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"

export const detached = <A, E>(
  call: Effect.Effect<A, E>,
  waitMs: number,
  abandoned: (exit: Exit.Exit<A, E>) => Effect.Effect<void>
): Effect.Effect<Option.Option<A>, E> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(Effect.forkDaemon(call), (fiber) => {
      const giveUp = Effect.forkDaemon(Effect.flatMap(Fiber.await(fiber), abandoned))
      const joined = Fiber.join(fiber)
      const waited = Number.isFinite(waitMs) ? Effect.timeoutOption(joined, Math.max(0, waitMs)) : Effect.asSome(joined)
      return restore(waited).pipe(
        Effect.onInterrupt(() => giveUp),
        Effect.tap((result) => (Option.isNone(result) ? giveUp : Effect.void))
      )
    })
  )

/**
 * A one-shot hand-off of a result to one waiting fiber: a `Deferred` without its cost (making a
 * `Deferred` copies Effect's whole prototype object, a measurable share of a busy limiter's CPU, and
 * one is needed per queued caller and per bounded store call).
 */
import * as Effect from "effect/Effect"
import type * as Exit from "effect/Exit"

export interface Handoff<A, E> {
  /** Completes the hand-off; later calls change nothing. */
  readonly done: (exit: Exit.Exit<A, E>) => void
  /** Waits for the result (interruptible; an interrupted waiter just stops waiting). */
  readonly await: Effect.Effect<A, E>
}

export const make = <A, E>(): Handoff<A, E> => {
  let settled: Exit.Exit<A, E> | undefined
  let waiter: ((exit: Exit.Exit<A, E>) => void) | undefined
  return {
    done: (exit) => {
      if (settled !== undefined) return
      settled = exit
      const resume = waiter
      waiter = undefined
      resume?.(exit)
    },
    await: Effect.async<A, E>((resume) => {
      if (settled !== undefined) return resume(settled)
      waiter = resume
      return Effect.sync(() => {
        waiter = undefined
      })
    })
  }
}

/**
 * Wake-ups for waiters of a lease: a waiter subscribes to a key before it asks the store, so a
 * release between its refusal and its wait is not missed, and is woken by the first release after.
 * Entries are counted by their subscribers and dropped when the last one leaves, so keys whose
 * waiters gave up (refused, timed out, interrupted) leave nothing behind.
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import type * as Scope from "effect/Scope"

interface Entry {
  readonly deferred: Deferred.Deferred<void>
  refs: number
}

export interface Wakeups {
  /** Wakes the current subscribers of `id`; later subscribers wait for the next signal. */
  readonly signal: (id: string) => void
  /** Wakes every subscriber (after wake-ups may have been missed). */
  readonly signalAll: () => void
  /** Subscribes for the scope; the returned effect completes at the first signal after subscribing. */
  readonly subscribe: (id: string) => Effect.Effect<Effect.Effect<void>, never, Scope.Scope>
  /** Keys with subscribers (for tests). */
  readonly size: () => number
}

export const make = (): Wakeups => {
  const entries = new Map<string, Entry>()
  return {
    signal: (id) => {
      const entry = entries.get(id)
      if (entry === undefined) return
      entries.delete(id)
      Deferred.unsafeDone(entry.deferred, Exit.void)
    },
    signalAll: () => {
      const all = [...entries.values()]
      entries.clear()
      for (const entry of all) Deferred.unsafeDone(entry.deferred, Exit.void)
    },
    subscribe: (id) =>
      Effect.acquireRelease(
        Effect.sync(() => {
          let entry = entries.get(id)
          if (entry === undefined) {
            entry = { deferred: Deferred.unsafeMake<void>(FiberId.none), refs: 0 }
            entries.set(id, entry)
          }
          entry.refs++
          return entry
        }),
        (entry) =>
          Effect.sync(() => {
            if (--entry.refs === 0 && entries.get(id) === entry) entries.delete(id)
          })
      ).pipe(Effect.map((entry) => Deferred.await(entry.deferred))),
    size: () => entries.size
  }
}

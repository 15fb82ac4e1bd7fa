/**
 * Writes of different keys of one store, batched: a caller that finds fewer than `maxInFlight`
 * writes under way runs its own at once, in its own fiber (a lone caller never waits for a batch);
 * one that finds them all busy queues, and the queued items go together in the next write, as soon
 * as one ends. So a process pays one round trip per batch of keys instead of one per key, and its
 * writes stay in order of arrival. A failed write fails every item in it.
 *
 * Each key has at most one item here at a time (the per-key coalescer decides a key's requests
 * together), so a write never carries the same key twice.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Scope from "effect/Scope"
import * as Handoff from "./handoff.js"

export interface Options<I, O, E> {
  /** Where queued writes run: closing it ends them. */
  readonly scope: Scope.Scope
  readonly maxBatch: number
  readonly maxInFlight: number
  /** Writes `items` at once: one result per item, in order. */
  readonly write: (items: ReadonlyArray<I>) => Effect.Effect<ReadonlyArray<O>, E>
  /**
   * Bounds a queued write, which runs in the background (a caller's own write is bounded by its
   * caller), so one stuck write cannot keep its place for ever.
   */
  readonly bound: (write: Effect.Effect<ReadonlyArray<O>, E>) => Effect.Effect<ReadonlyArray<O>, E>
  /** What the items still queued learn when the store is closed under them. */
  readonly closed: E
}

export interface Batcher<I, O, E> {
  readonly submit: (item: I) => Effect.Effect<O, E>
  /** Writes under way and items queued, and writes and items so far (for tests and tools). */
  readonly load: () => { readonly inFlight: number; readonly queued: number; readonly writes: number; readonly items: number }
}

interface Pending<I, O, E> {
  readonly item: I
  readonly done: Handoff.Handoff<O, E>
}

export const make = <I, O, E>(options: Options<I, O, E>): Batcher<I, O, E> => {
  const queue: Array<Pending<I, O, E>> = []
  let inFlight = 0
  let writes = 0
  let items = 0
  const write = (batch: ReadonlyArray<I>) => {
    writes++
    items += batch.length
    return options.write(batch)
  }

  const settle = (batch: ReadonlyArray<Pending<I, O, E>>, exit: Exit.Exit<ReadonlyArray<O>, E>) => {
    for (let i = 0; i < batch.length; i++) batch[i]!.done.done(Exit.map(exit, (results) => results[i]!))
  }

  /** Starts writes of what is queued while fewer than `maxInFlight` are under way. */
  const kick = (): Effect.Effect<void> =>
    Effect.suspend(() => {
      const starts: Array<Effect.Effect<unknown>> = []
      while (inFlight < options.maxInFlight && queue.length > 0) {
        const batch = queue.splice(0, options.maxBatch)
        inFlight++
        const run = Effect.exit(options.bound(write(batch.map((p) => p.item)))).pipe(
          Effect.flatMap((exit) => Effect.sync(() => settle(batch, exit))),
          Effect.onExit(() => Effect.suspend(() => (inFlight--, kick()))),
          Effect.onInterrupt(() => Effect.sync(() => settle(batch, Exit.fail(options.closed))))
        )
        starts.push(Effect.forkIn(Effect.interruptible(run), options.scope))
      }
      return starts.length === 0 ? Effect.void : Effect.all(starts, { discard: true })
    })

  const submit = (item: I): Effect.Effect<O, E> =>
    Effect.uninterruptibleMask((restore) =>
      Effect.suspend(() => {
        if (inFlight >= options.maxInFlight) {
          const done = Handoff.make<O, E>()
          queue.push({ item, done })
          return restore(done.await)
        }
        // Nobody is waiting: the caller writes alone, now, in its own fiber; whoever queues meanwhile
        // goes in the next write, started when this one ends, however it ends.
        inFlight++
        return restore(write([item])).pipe(
          Effect.onExit(() => Effect.suspend(() => (inFlight--, kick()))),
          Effect.map((results) => results[0]!)
        )
      })
    )

  return { submit, load: () => ({ inFlight, queued: queue.length, writes, items }) }
}

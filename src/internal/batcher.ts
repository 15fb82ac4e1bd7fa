/**
 * Writes of different keys of one store, batched: up to `maxInFlight` writer fibers, started once
 * and kept, each taking whatever is queued (up to `maxBatch` items) as soon as it is free. A lone
 * caller finds a writer idle, whose write starts at once with its item alone (it never waits for a
 * batch); callers that arrive while every writer is busy queue, and go together in the next write.
 * So a process pays one round trip per batch of keys instead of one per key, its writes stay in
 * order of arrival, and no fiber is forked per write (a fork costs more than the rest of a write's
 * bookkeeping). A failed write fails every item in it.
 *
 * Each key has at most one item here at a time (the per-key coalescer decides a key's requests
 * together), so a write never carries the same key twice.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Scope from "effect/Scope"
import * as Handoff from "./handoff.js"

export interface Options<I, O, E> {
  /** Where the writers run: closing it ends them, and fails what is queued or being written. */
  readonly scope: Scope.Scope
  readonly maxBatch: number
  readonly maxInFlight: number
  /** Writes `items` at once: one result per item, in order. */
  readonly write: (items: ReadonlyArray<I>) => Effect.Effect<ReadonlyArray<O>, E>
  /**
   * Bounds a write, which runs in a writer of the store's rather than in its callers' fibers, so one
   * stuck write cannot keep its writer for ever.
   */
  readonly bound: (write: Effect.Effect<ReadonlyArray<O>, E>) => Effect.Effect<ReadonlyArray<O>, E>
  /** What the items queued or being written learn when the store is closed under them. */
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
  /** Writers waiting for work: waking one lets it take the queue when it runs. */
  const idle: Array<() => void> = []
  let writers = 0
  let inFlight = 0
  let writes = 0
  let items = 0

  const settle = (batch: ReadonlyArray<Pending<I, O, E>>, exit: Exit.Exit<ReadonlyArray<O>, E>) => {
    for (let i = 0; i < batch.length; i++) batch[i]!.done.done(Exit.map(exit, (results) => results[i]!))
  }

  /** What is queued, once there is something. */
  const work = Effect.async<Array<Pending<I, O, E>>>((resume) => {
    const take = () => resume(Effect.sync(() => queue.splice(0, options.maxBatch)))
    if (queue.length > 0) return take()
    idle.push(take)
    return Effect.sync(() => {
      const at = idle.indexOf(take)
      if (at >= 0) idle.splice(at, 1)
    })
  })

  const writeBatch = (batch: ReadonlyArray<Pending<I, O, E>>) =>
    Effect.suspend(() => {
      if (batch.length === 0) return Effect.void
      inFlight++
      writes++
      items += batch.length
      return Effect.exit(options.bound(options.write(batch.map((p) => p.item)))).pipe(
        Effect.map((exit) => settle(batch, exit)),
        Effect.onInterrupt(() => Effect.sync(() => settle(batch, Exit.fail(options.closed)))),
        Effect.ensuring(Effect.sync(() => inFlight--))
      )
    })

  const writer = Effect.forever(Effect.flatMap(work, writeBatch)).pipe(
    Effect.onInterrupt(() =>
      Effect.sync(() => {
        writers--
        // The store is closing: what no writer will take learns it.
        if (writers === 0) settle(queue.splice(0), Exit.fail(options.closed))
      })
    )
  )

  const submit = (item: I): Effect.Effect<O, E> =>
    Effect.suspend(() => {
      const pending: Pending<I, O, E> = { item, done: Handoff.make<O, E>() }
      queue.push(pending)
      const wake = idle.pop()
      wake?.()
      const start = wake === undefined && writers < options.maxInFlight
        ? (writers++, Effect.asVoid(Effect.forkIn(Effect.interruptible(writer), options.scope)))
        : Effect.void
      // A caller that gives up while its item is still queued takes it out: nothing is written for it.
      return Effect.zipRight(start, pending.done.await).pipe(
        Effect.onInterrupt(() =>
          Effect.sync(() => {
            const at = queue.indexOf(pending)
            if (at >= 0) queue.splice(at, 1)
          })
        )
      )
    })

  return { submit, load: () => ({ inFlight, queued: queue.length, writes, items }) }
}

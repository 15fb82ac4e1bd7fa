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
import { startTimer } from "./timer.js"

export interface Options<I, O, E> {
  /** Where the writers run: closing it ends them, and fails what is queued or being written. */
  readonly scope: Scope.Scope
  readonly maxBatch: number
  readonly maxInFlight: number
  /**
   * Writes `items` at once: one result per item, in order. It must end within a bound of its own: it
   * runs in a writer of the store's rather than in its callers' fibers, and one stuck write would
   * keep its writer for ever.
   */
  readonly write: (items: ReadonlyArray<I>) => Effect.Effect<ReadonlyArray<O>, E>
  /** What the items queued or being written learn when the store is closed under them. */
  readonly closed: E
  /** What a caller learns that stopped waiting after `submit`'s `waitMs` (required to pass one). */
  readonly timedOut?: () => E
}

export interface Batcher<I, O, E> {
  /**
   * The item's result. With `waitMs` (of the fiber's clock), the caller waits at most that long and
   * then fails with `timedOut()`, its item taken out if still queued (a write under way is bounded
   * by `write` itself): a bound that needs no fiber of the caller's own, as `Effect.timeout` would.
   */
  readonly submit: (item: I, waitMs?: number) => Effect.Effect<O, E>
  /** Writes under way and items queued, and writes and items so far (for tests and tools). */
  readonly load: () => { readonly inFlight: number; readonly queued: number; readonly writes: number; readonly items: number }
}

interface Pending<I, O, E> {
  readonly item: I
  readonly done: Handoff.Handoff<O, E>
  /** Cancels the caller's timer, if it set one. */
  cancel: (() => void) | undefined
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
    for (let i = 0; i < batch.length; i++) {
      const pending = batch[i]!
      pending.cancel?.()
      pending.done.done(Exit.map(exit, (results) => results[i]!))
    }
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
      return Effect.exit(options.write(batch.map((p) => p.item))).pipe(
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

  /** Takes `pending` out of the queue, if still there: nothing is written for it. */
  const drop = (pending: Pending<I, O, E>) => {
    const at = queue.indexOf(pending)
    if (at >= 0) queue.splice(at, 1)
  }

  const enqueue = (item: I) =>
    Effect.suspend(() => {
      const pending: Pending<I, O, E> = { item, done: Handoff.make<O, E>(), cancel: undefined }
      queue.push(pending)
      const wake = idle.pop()
      wake?.()
      const start = wake === undefined && writers < options.maxInFlight
        ? (writers++, Effect.asVoid(Effect.forkIn(Effect.interruptible(writer), options.scope)))
        : Effect.void
      return Effect.as(start, pending)
    })

  // A caller that gives up while its item is still queued takes it out.
  const waitFor = (pending: Pending<I, O, E>) =>
    Effect.onInterrupt(pending.done.await, () => Effect.sync(() => (drop(pending), pending.cancel?.())))

  const submit = (item: I, waitMs?: number): Effect.Effect<O, E> => {
    const timedOut = options.timedOut
    if (waitMs === undefined || timedOut === undefined) return Effect.flatMap(enqueue(item), waitFor)
    return Effect.clockWith((clock) =>
      Effect.flatMap(enqueue(item), (pending) =>
        Effect.flatMap(
          startTimer(clock, waitMs, () => {
            drop(pending)
            pending.done.done(Exit.fail(timedOut()))
          }),
          // Cancelled as the result is handed over (settle), without a step of the caller's.
          (cancel) => (pending.cancel = cancel, waitFor(pending))
        ))
    )
  }

  return { submit, load: () => ({ inFlight, queued: queue.length, writes, items }) }
}

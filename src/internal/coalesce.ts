/**
 * One writer per key and process: requests for a key that arrive while its batch is being decided
 * queue up and are decided together by the next call, so the waiters of a process cost one store
 * round trip per batch instead of one each (and, under optimistic locking, no conflicts among
 * themselves). Requests are decided in the order they arrived.
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import type * as Scope from "effect/Scope"
import type { StoreError } from "../Errors.js"
import type { AcquireOutcome, AcquireRequest } from "../Store.js"

interface Pending {
  readonly request: AcquireRequest
  readonly done: Deferred.Deferred<AcquireOutcome, StoreError>
}

export interface Options {
  /** Where the per-key drains run: closing it ends them. */
  readonly scope: Scope.Scope
  readonly maxBatch: number
  /** Decides a batch of requests for one key (all of the same limiter), one outcome per request. */
  readonly decide: (id: string, batch: ReadonlyArray<AcquireRequest>) => Effect.Effect<ReadonlyArray<AcquireOutcome>, StoreError>
  /** What the requests still waiting learn when the store is closed under them. */
  readonly closed: StoreError
}

export const make = (options: Options) => {
  const queues = new Map<string, Array<Pending>>()

  const drain = (id: string, queue: Array<Pending>): Effect.Effect<void> => {
    let batch: Array<Pending> = []
    return Effect.gen(function*() {
      while (queue.length > 0) {
        // Let the other fibers of this process that are about to ask join this batch.
        yield* Effect.yieldNow()
        batch = queue.splice(0, options.maxBatch)
        const exit = yield* Effect.exit(options.decide(id, batch.map((p) => p.request)))
        batch.forEach((pending, i) => Deferred.unsafeDone(pending.done, Exit.map(exit, (outcomes) => outcomes[i]!)))
        batch = []
      }
      queues.delete(id)
    }).pipe(
      Effect.interruptible,
      Effect.onInterrupt(() =>
        Effect.sync(() => {
          queues.delete(id)
          for (const pending of [...batch, ...queue.splice(0)]) Deferred.unsafeDone(pending.done, Exit.fail(options.closed))
        })
      )
    )
  }

  /** Decides `request` with whatever else is waiting for the key `id` in this process. */
  const submit = (id: string, request: AcquireRequest): Effect.Effect<AcquireOutcome, StoreError> =>
    Effect.suspend(() => {
      const done = Deferred.unsafeMake<AcquireOutcome, StoreError>(FiberId.none)
      const queue = queues.get(id)
      if (queue !== undefined) {
        queue.push({ request, done })
        return Deferred.await(done)
      }
      const fresh = [{ request, done }]
      queues.set(id, fresh)
      return Effect.zipRight(Effect.forkIn(drain(id, fresh), options.scope), Deferred.await(done))
    })

  return { submit }
}

/**
 * Concurrency leases over the slot rows (slots.ts): a slot whose expiry passed is free again, so a
 * crashed holder's slot comes back by itself. A lease is taken in one transaction (claim a free slot,
 * then the rate if the limiter has one; a refusal rolls it back), renewed and released by upserts
 * that check the token after the slot's lock. Waiters of this process line up per key, in the order
 * they asked; only the first asks the database, and a release wakes the next (here and, by NOTIFY,
 * elsewhere).
 */
import { randomInt } from "node:crypto"
import type { SqlError } from "@effect/sql/SqlError"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import type { StoreError } from "../Errors.js"
import * as Wakeups from "../internal/wakeups.js"
import { capacity, type LimiterSpec, stateKey } from "../LimiterSpec.js"
import { type AcquireOutcome, admittedFree, type LeaseRequest, type RateOutcome, type RateRequest } from "../Store.js"
import { type Conflict, isSqlError, retrying } from "./conflicts.js"
import type { Context } from "./context.js"
import { notifyKey, rateId, slotIds } from "./keys.js"
import * as Slots from "./slots.js"

/** A lease transaction rolled back: the slot was free, the rate refused. */
class Refused extends Data.TaggedError("Refused")<{ readonly retryAfterMs: number; readonly remaining: number }> {}

interface Held {
  readonly slot: string
  readonly token: number
}

/** How the rate of a lease's limiter is decided inside its transaction (the bucket's or the window's attempt). */
export type RateAttempt = (id: string, request: RateRequest) => Effect.Effect<ReadonlyArray<RateOutcome>, Conflict | SqlError | StoreError>

export const make = (ctx: Context, rateAttempt: RateAttempt) => {
  const { bounded, sql, toError } = ctx
  const slots = Slots.make(ctx)
  const held = new Map<string, Held>()
  /** Waiters of this process for a lease, per key, in the order they asked. */
  const lines = new Map<string, Array<string>>()
  const wakeups = Wakeups.make()
  const signal = wakeups.signal

  const leaveLine = (key: string, leaseId: string) => {
    const line = lines.get(key)
    if (line === undefined) return false
    const index = line.indexOf(leaseId)
    if (index < 0) return false
    line.splice(index, 1)
    if (line.length === 0) lines.delete(key)
    return true
  }

  // It commits only after a write that read the instant C (the claim's, or the rate's and the ttl's),
  // so with synchronous_commit = false ASYNC_COMMIT holds at its COMMIT; every other end rolls back.
  const attempt = (request: LeaseRequest) =>
    sql.withTransaction(Effect.gen(function*() {
      const { key, leaseId, limiter } = request
      const token = randomInt(1, 2_147_483_647)
      const slot = yield* slots.claim(limiter, slotIds(limiter, key), token)
      let outcome: AcquireOutcome = admittedFree
      if (limiter.rate !== undefined) {
        const [decided] = yield* rateAttempt(rateId(limiter, key), request)
        if (decided?._tag === "RateLimited") {
          return yield* new Refused({ retryAfterMs: decided.retryAfterMs, remaining: decided.remaining })
        }
        outcome = decided!
        // The rate's write may have waited on its row's lock: the lease runs its ttl from the time
        // after that, not from the claim. The slot is locked by this transaction, so this waits for nothing.
        yield* slots.restart(limiter, slot, token)
      }
      held.set(leaseId, { slot, token })
      return outcome
    })).pipe(
      // A COMMIT or ROLLBACK that fails (the connection died) is a defect of the driver's: it is an
      // ordinary failure here, and whether the lease was granted is settled by releasing it.
      Effect.catchAllDefect((defect) => isSqlError(defect) ? Effect.fail(defect) : Effect.die(defect))
    )

  const acquire = (request: LeaseRequest): Effect.Effect<AcquireOutcome, StoreError> => {
    const { key, leaseId, limiter } = request
    const local = stateKey(limiter.name, key)
    const max = limiter.concurrency?.max ?? 0
    const line = lines.get(local)
    // Waiters of this process go in the order they asked; only the first in line asks the database.
    if (line !== undefined && line[0] !== leaseId && !held.has(leaseId)) {
      if (request.queue && !line.includes(leaseId)) line.push(leaseId)
      return Effect.succeed({ _tag: "ConcurrencyFull", expiresInMs: undefined, held: max, limit: max })
    }
    return retrying(ctx, limiter, attempt(request)).pipe(
      bounded,
      Effect.map((outcome) => {
        if (leaveLine(local, leaseId) && lines.has(local)) signal(notifyKey(limiter, key))
        return outcome
      }),
      Effect.catchTags({
        Refused: (refused): Effect.Effect<AcquireOutcome> => {
          leaveLine(local, leaseId)
          return Effect.succeed({
            _tag: "RateLimited",
            retryAfterMs: refused.retryAfterMs,
            limit: capacity(limiter.rate) ?? 0,
            remaining: refused.remaining
          })
        },
        Full: (full): Effect.Effect<AcquireOutcome> => {
          if (request.queue) {
            const waiting = lines.get(local) ?? []
            if (!waiting.includes(leaseId)) waiting.push(leaseId)
            lines.set(local, waiting)
          }
          return Effect.succeed({ _tag: "ConcurrencyFull", expiresInMs: full.expiresInMs, held: full.held, limit: max })
        }
      }),
      // A failed call keeps no place in this process's line: the next in line asks instead.
      Effect.tapError(() =>
        Effect.sync(() => {
          if (leaveLine(local, leaseId) && lines.has(local)) signal(notifyKey(limiter, key))
        })
      )
    )
  }

  const release = (limiter: LimiterSpec, key: string, leaseId: string) =>
    Effect.suspend(() => {
      const local = stateKey(limiter.name, key)
      const hash = notifyKey(limiter, key)
      const left = leaveLine(local, leaseId)
      const lease = held.get(leaseId)
      if (lease === undefined) {
        if (left) signal(hash)
        return Effect.void
      }
      return slots.free(lease.slot, lease.token, hash).pipe(
        // Forgotten only once the database took it: a release that failed can be tried again.
        Effect.zipRight(Effect.sync(() => {
          held.delete(leaseId)
          signal(hash)
        })),
        Effect.mapError(toError),
        bounded,
        Effect.asVoid
      )
    })

  const renew = (limiter: LimiterSpec, leaseId: string) =>
    Effect.suspend(() => {
      const lease = held.get(leaseId)
      if (lease === undefined) return Effect.succeed(false)
      return slots.extend(limiter, lease.slot, lease.token).pipe(
        Effect.map((renewed) => {
          if (!renewed) held.delete(leaseId)
          return renewed
        }),
        Effect.mapError(toError),
        bounded
      )
    })

  /** How many leases of the key are held (in the database), and how many of this process wait in line. */
  const state = (limiter: LimiterSpec, key: string) =>
    Effect.map(
      limiter.concurrency === undefined ? Effect.succeed({ held: 0 }) : slots.info(slotIds(limiter, key)),
      (info) => ({ held: info.held, waiting: lines.get(stateKey(limiter.name, key))?.length ?? 0 })
    )

  return {
    acquire,
    release,
    renew,
    state,
    /** Wakes the waiters of a key digest (a release heard through NOTIFY), or all of them (after a reconnect). */
    signal,
    signalAll: wakeups.signalAll,
    subscribe: (limiter: LimiterSpec, key: string) => wakeups.subscribe(notifyKey(limiter, key)),
    waiters: () => ({ subscribed: wakeups.size(), queued: lines.size })
  }
}

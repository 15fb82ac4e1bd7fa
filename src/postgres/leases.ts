/**
 * Concurrency leases: `max_concurrent` slot rows per key; `last_acquisition_at` is the lease's expiry
 * and `version` its holder's token. A slot whose expiry passed is free again, so a crashed holder's
 * slot comes back by itself. A lease is taken in one transaction (claim a free slot, then the rate
 * if the limiter has one; a refusal rolls it back), renewed and released by upserts that check the
 * token after the slot's lock. Waiters of this process line up per key, in the order they asked;
 * only the first asks the database, and a release wakes the next (here and, by NOTIFY, elsewhere).
 */
import { randomInt } from "node:crypto"
import type { SqlError } from "@effect/sql/SqlError"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import type { StoreError } from "../Errors.js"
import * as Wakeups from "../internal/wakeups.js"
import { capacity, type LimiterSpec, stateKey } from "../LimiterSpec.js"
import type { AcquireOutcome, AcquireRequest } from "../Store.js"
import { type Conflict, isSqlError, retrying } from "./conflicts.js"
import type { Context } from "./context.js"
import { notifyKey, rateId, slotIds } from "./keys.js"

/** A lease transaction rolled back: every slot is held. */
class Full extends Data.TaggedError("Full")<{ readonly held: number; readonly expiresInMs: number | undefined }> {}

/** A lease transaction rolled back: the slot was free, the rate refused. */
class Refused extends Data.TaggedError("Refused")<{ readonly retryAfterMs: number; readonly remaining: number }> {}

interface Held {
  readonly slot: string
  readonly token: number
}

/** How the rate of a lease's limiter is decided inside its transaction (the bucket's or the window's attempt). */
export type RateAttempt = (id: string, request: AcquireRequest) => Effect.Effect<ReadonlyArray<AcquireOutcome>, Conflict | SqlError>

export const make = (ctx: Context, rateAttempt: RateAttempt) => {
  const { C, FROM_SETTING, NOW, AT, T, channel, sql, bounded, toError } = ctx
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

  const ttlMicros = (limiter: LimiterSpec) => Math.round((limiter.concurrency?.leaseTtlMs ?? 0) * 1000)
  const ttlOf = (limiter: LimiterSpec) => sql`${ttlMicros(limiter)}::float8 * interval '1 microsecond'`

  // The slot's lock comes from SKIP LOCKED, which never waits: the instant is read once it is held.
  const claim = (limiter: LimiterSpec, slots: ReadonlyArray<string>, token: number) =>
    sql<{ group_id: string }>`
      UPDATE ${T} SET (version, last_acquisition_at, updated_at) = (SELECT ${token}::int, c.t + ${ttlOf(limiter)}, c.t FROM ${C})
      WHERE group_id = (
        SELECT group_id FROM ${T} WHERE group_id = ANY(${slots}) AND last_acquisition_at <= clock_timestamp()
        ORDER BY group_id LIMIT 1 FOR UPDATE SKIP LOCKED
      ) AND last_acquisition_at <= clock_timestamp()
      RETURNING group_id`

  /**
   * Sets the lease on `slot` to run its ttl from now, if `token` still holds it: in the upsert, the
   * row is locked before the time is read. The insert is there only for its conflict: a slot row that
   * is gone is not created.
   */
  const extend = (limiter: LimiterSpec, slot: string, token: number) =>
    sql<{ version: number }>`
      INSERT INTO ${T} AS s (group_id, last_acquisition_at, version)
      SELECT ${slot}, '-infinity', 0 ${FROM_SETTING} WHERE EXISTS (SELECT 1 FROM ${T} WHERE group_id = ${slot})
      ON CONFLICT (group_id) DO UPDATE SET (last_acquisition_at, updated_at) = (SELECT c.t + ${ttlOf(limiter)}, c.t FROM ${C})
      WHERE s.version = ${token} AND s.last_acquisition_at > clock_timestamp()
      RETURNING version`.pipe(Effect.map((rows) => rows.some((row) => row.version === token)))

  const slotInfo = (slots: ReadonlyArray<string>) =>
    Effect.map(
      sql<{ total: number; held: number; soonest: number | null; now: number }>`
        SELECT count(*)::int AS total,
          count(*) FILTER (WHERE s.last_acquisition_at > statement_timestamp())::int AS held,
          min(${AT}) FILTER (WHERE s.last_acquisition_at > statement_timestamp()) AS soonest,
          ${NOW} AS now
        FROM ${T} s WHERE s.group_id = ANY(${slots})`,
      (rows) => rows[0]!
    )

  /** A free slot claimed with `token`, the slot rows created first when some are missing; Full when every one is held. */
  const claimSlot = (limiter: LimiterSpec, slots: ReadonlyArray<string>, token: number) =>
    Effect.gen(function*() {
      const claimed = yield* claim(limiter, slots, token)
      if (claimed.length > 0) return claimed[0]!.group_id
      const info = yield* slotInfo(slots)
      if (info.total < slots.length) {
        yield* sql`INSERT INTO ${T} (group_id, last_acquisition_at, version)
          SELECT id, '-infinity', 0 FROM unnest(${slots}::text[]) AS id ON CONFLICT (group_id) DO NOTHING`
        const [again] = yield* claim(limiter, slots, token)
        if (again !== undefined) return again.group_id
      }
      return yield* new Full({ held: info.held, expiresInMs: info.soonest === null ? undefined : info.soonest - info.now })
    })

  // It commits only after a write that read the instant C (the claim's, or the rate's and the ttl's),
  // so with synchronous_commit = false ASYNC_COMMIT holds at its COMMIT; every other end rolls back.
  const attempt = (request: AcquireRequest, leaseId: string) =>
    sql.withTransaction(Effect.gen(function*() {
      const { key, limiter } = request
      const token = randomInt(1, 2_147_483_647)
      const slot = yield* claimSlot(limiter, slotIds(limiter, key), token)
      let outcome: AcquireOutcome = { _tag: "Admitted", waitMs: 0, reservation: undefined, limit: undefined, remaining: undefined }
      if (limiter.rate !== undefined) {
        const [decided] = yield* rateAttempt(rateId(limiter, key), request)
        if (decided?._tag === "RateLimited") {
          return yield* new Refused({ retryAfterMs: decided.retryAfterMs, remaining: decided.remaining })
        }
        outcome = decided!
        // The rate's write may have waited on its row's lock: the lease runs its ttl from the time
        // after that, not from the claim. The slot is locked by this transaction, so this waits for nothing.
        yield* sql`UPDATE ${T} SET (last_acquisition_at, updated_at) = (SELECT c.t + ${ttlOf(limiter)}, c.t FROM ${C})
          WHERE group_id = ${slot} AND version = ${token}`
      }
      held.set(leaseId, { slot, token })
      return outcome
    })).pipe(
      // A COMMIT or ROLLBACK that fails (the connection died) is a defect of the driver's: it is an
      // ordinary failure here, and whether the lease was granted is settled by releasing it.
      Effect.catchAllDefect((defect) => isSqlError(defect) ? Effect.fail(defect) : Effect.die(defect))
    )

  const acquire = (request: AcquireRequest, leaseId: string): Effect.Effect<AcquireOutcome, StoreError> => {
    const { key, limiter } = request
    const local = stateKey(limiter.name, key)
    const max = limiter.concurrency?.max ?? 0
    const line = lines.get(local)
    // Waiters of this process go in the order they asked; only the first in line asks the database.
    if (line !== undefined && line[0] !== leaseId && !held.has(leaseId)) {
      if (request.queue && !line.includes(leaseId)) line.push(leaseId)
      return Effect.succeed({ _tag: "ConcurrencyFull", expiresInMs: undefined, held: max, limit: max })
    }
    return retrying(ctx, limiter, attempt(request, leaseId)).pipe(
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
      // As in `extend`: an upsert, so whether the lease is still held is read after the slot's lock.
      return sql`
        WITH r AS (
          INSERT INTO ${T} AS s (group_id, last_acquisition_at, version)
          SELECT ${lease.slot}, '-infinity', 0 ${FROM_SETTING} WHERE EXISTS (SELECT 1 FROM ${T} WHERE group_id = ${lease.slot})
          ON CONFLICT (group_id) DO UPDATE SET last_acquisition_at = '-infinity', updated_at = clock_timestamp()
          WHERE s.version = ${lease.token} AND s.last_acquisition_at > clock_timestamp()
          RETURNING version
        )
        SELECT pg_notify(${channel}, ${hash}) FROM r WHERE r.version = ${lease.token}`.pipe(
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
      return extend(limiter, lease.slot, lease.token).pipe(
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
      limiter.concurrency === undefined ? Effect.succeed({ held: 0 }) : slotInfo(slotIds(limiter, key)),
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

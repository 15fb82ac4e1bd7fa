/**
 * Several keys' rate slots in one transaction (`Store.acquireAll`): the members' rows (token bucket
 * rows, window headers) are locked first, in one order (their ids byte-wise, as the store's every
 * several-key write takes them, so two calls never wait for each other in a cycle); then read, with
 * the windows' ring rows (written only under their header's lock), at an instant after the last
 * lock; decided together (internal/acquireAllPlan.ts); and written in one statement at one instant,
 * every member at the same wait from it. A refusal rolls the transaction back: nothing is written.
 * No optimistic retry is needed, as nothing can change the rows between the read and the write.
 *
 * The writes go on the transaction's own connection, never through the token bucket's several-key
 * batcher (bucketWrites.ts), whose statements run outside any transaction.
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import type { StoreError } from "../Errors.js"
import * as Composite from "../internal/acquireAllPlan.js"
import * as Gcra from "../internal/gcra.js"
import * as WindowAlgorithm from "../internal/window.js"
import { capacity } from "../LimiterSpec.js"
import { type Admitted, admittedFree, type CompositeOutcome, type RateLimited, type RateRequest } from "../Store.js"
import { isSqlError } from "./conflicts.js"
import { ceilMicros, type Context } from "./context.js"
import { rateId, ringIds } from "./keys.js"
import { claimOldest, logOf } from "./window.js"

/** The transaction rolled back: `index` refused. */
class Refused extends Data.TaggedError("Refused")<{ readonly index: number; readonly refusal: RateLimited }> {}

/** One row of the write: a bucket ('b': its arrival time moves), a window header ('h': its version), a ring row ('r': an admission). */
interface RowWrite {
  readonly id: string
  readonly kind: "b" | "h" | "r"
  /** What is added: a bucket's cost in whole µs; a ring row's offset after the common instant (0 but for float noise). */
  readonly micros: number
}

/** A member as read: its rows' ids and its rate state. */
interface Read {
  readonly head: string | undefined
  readonly ring: Array<{ readonly id: string; at: number }>
  readonly state: Composite.RateState
}

export const make = (ctx: Context, forget: (id: string) => void) => {
  const { AT, FROM_SETTING, NEXT_S, NOW, T, margin, sql } = ctx
  const TAT = ctx.atOf("last_acquisition_at")
  const UPDATED = ctx.atOf("updated_at")

  /** Locks the rows in byte order; one not there yet is created idle, and is gone again if the transaction rolls back. */
  const lock = (ids: ReadonlyArray<string>) =>
    sql`
      INSERT INTO ${T} AS s (group_id, last_acquisition_at, version, updated_at)
      SELECT u.id, '-infinity', 1, statement_timestamp() FROM unnest(${ids}::text[]) AS u(id) ORDER BY u.id COLLATE "C"
      ON CONFLICT (group_id) DO UPDATE SET version = s.version`

  /** Read after the locks: `now` is this statement's start, later than every lock. */
  const read = (ids: ReadonlyArray<string>) =>
    sql<{ group_id: string | null; at: number | null; now: number }>`
      SELECT s.group_id, ${AT} AS at, ${NOW} AS now FROM (SELECT 1) AS one LEFT JOIN ${T} s ON s.group_id = ANY(${ids})`

  /**
   * Writes every row at one instant `c.t` (a CTE, read once): a bucket's arrival time becomes the
   * later of its own and the common slot, plus its cost; a ring row is the common slot.
   */
  const write = (rows: ReadonlyArray<RowWrite>, waitMicros: number) => {
    const wait = sql`${waitMicros}::float8 * interval '1 microsecond'`
    return sql<{ id: string; tat: number; version: number; now: number }>`
      WITH c AS MATERIALIZED (SELECT clock_timestamp() AS t ${FROM_SETTING}),
        u (id, kind, micros) AS (
          SELECT * FROM unnest(${rows.map((r) => r.id)}::text[], ${rows.map((r) => r.kind)}::text[], ${rows.map((r) => r.micros)}::float8[]))
      INSERT INTO ${T} AS s (group_id, last_acquisition_at, version, updated_at)
      SELECT u.id, c.t + ${wait} + u.micros * interval '1 microsecond', 1, c.t FROM u, c ORDER BY u.id COLLATE "C"
      ON CONFLICT (group_id) DO UPDATE SET (last_acquisition_at, version, updated_at) = (
        SELECT CASE u.kind
            WHEN 'b' THEN GREATEST(s.last_acquisition_at, EXCLUDED.updated_at + ${wait}) + u.micros * interval '1 microsecond'
            WHEN 'r' THEN EXCLUDED.last_acquisition_at
            ELSE s.last_acquisition_at END,
          CASE u.kind WHEN 'r' THEN s.version ELSE ${NEXT_S} END,
          EXCLUDED.updated_at
        FROM u WHERE u.id = EXCLUDED.group_id)
      RETURNING s.group_id AS id, ${TAT} AS tat, version, ${UPDATED} AS now`
  }

  const readAll = (requests: ReadonlyArray<RateRequest>) =>
    Effect.gen(function*() {
      const heads = requests.map((r) => (r.limiter.rate === undefined ? undefined : rateId(r.limiter, r.key)))
      const ringsOf = requests.map((r, i) => (r.limiter.rate?._tag === "SlidingWindow" ? ringIds(heads[i]!, r.limiter.rate.limit) : []))
      const locked = heads.filter((id): id is string => id !== undefined)
      yield* lock(locked)
      const rows = yield* read([...locked, ...ringsOf.flat()])
      const at = new Map(rows.flatMap((row) => (row.group_id === null ? [] : [[row.group_id, row.at ?? -Infinity] as const])))
      const members = requests.map((r, i): Read => {
        const head = heads[i]
        const headAt = head === undefined ? -Infinity : at.get(head) ?? -Infinity
        const ring = ringsOf[i]!.map((id) => ({ id, at: at.get(id) ?? -Infinity }))
        const window = r.limiter.rate?._tag === "SlidingWindow"
        return { head, ring, state: { tat: window ? -Infinity : headAt, log: logOf(ring), blockedUntil: window ? headAt : -Infinity } }
      })
      return { now: rows[0]!.now, members }
    })

  const decide = (requests: ReadonlyArray<RateRequest>, afterMs: number) =>
    Effect.gen(function*() {
      const { members, now } = yield* readAll(requests)
      const plan = Composite.plan(requests, members.map((m) => m.state), now, afterMs, margin)
      if (plan._tag === "Refused") {
        const { index, retryAfterMs } = plan
        const { limiter } = requests[index]!
        const remaining = remainingOf(requests[index]!, members[index]!.state, now, margin)
        return yield* new Refused({ index, refusal: { _tag: "RateLimited", retryAfterMs, limit: capacity(limiter.rate) ?? 0, remaining } })
      }
      const instant = now + plan.waitMs
      const rows: Array<RowWrite> = []
      requests.forEach((request, i) => {
        const { head, ring } = members[i]!
        const placed = plan.placed[i]
        if (head === undefined || placed === undefined) return
        if (request.limiter.rate?._tag === "TokenBucket") {
          rows.push({ id: head, kind: "b", micros: ceilMicros(request.cost * request.limiter.rate.intervalMs) })
          return
        }
        rows.push({ id: head, kind: "h", micros: 0 })
        const claimed = new Map<string, number>()
        claimOldest(ring, request.cost, placed.slotMs, claimed)
        for (const id of claimed.keys()) rows.push({ id, kind: "r", micros: ceilMicros(Math.max(0, placed.slotMs - instant)) })
      })
      const written = new Map((yield* write(rows, ceilMicros(plan.waitMs))).map((row) => [row.id, row]))
      const outcomes = requests.map((request, i) => {
        const { head, ring } = members[i]!
        return outcomeOf(request, head === undefined ? undefined : written.get(head), ring, ceilMicros(plan.waitMs) / 1000, instant)
      })
      // The token bucket's per-key cache of its last write no longer holds for these rows.
      for (const { head } of members) if (head !== undefined) forget(head)
      return { _tag: "Admitted", outcomes, refundCosts: refundCosts(requests, plan.refundCosts) } satisfies CompositeOutcome
    })

  /** What a member was granted: its slot `waitMs` after the write's instant. */
  const outcomeOf = (
    request: RateRequest,
    row: { readonly tat: number; readonly version: number; readonly now: number } | undefined,
    ring: ReadonlyArray<{ readonly at: number }>,
    waitMs: number,
    instant: number
  ): Admitted => {
    const rate = request.limiter.rate
    if (rate === undefined || row === undefined) return admittedFree
    const slotMs = row.now + waitMs
    if (rate._tag === "TokenBucket") {
      const reservation = { slotMs, tatMs: row.tat, version: row.version }
      return { _tag: "Admitted", waitMs, reservation, limit: rate.burst, remaining: Gcra.remaining(row.tat, slotMs, rate) }
    }
    // The ring as planned, in the read's time: what counts at the common instant.
    const counted = logOf(ring).filter((e) => e.at > instant - rate.windowMs - margin)
    const remaining = Math.max(0, rate.limit - WindowAlgorithm.used(counted))
    return { _tag: "Admitted", waitMs, reservation: { slotMs, tatMs: 0, version: undefined }, limit: rate.limit, remaining }
  }

  const acquireAll = (requests: ReadonlyArray<RateRequest>, afterMs: number): Effect.Effect<CompositeOutcome, StoreError> => {
    if (requests.every((r) => r.limiter.rate === undefined)) {
      return Effect.succeed({ _tag: "Admitted", outcomes: requests.map(() => admittedFree), refundCosts: requests.map((r) => r.cost) })
    }
    return sql.withTransaction(decide(requests, afterMs)).pipe(
      // A failed COMMIT or ROLLBACK (a connection that died) is a defect of the driver's: an ordinary failure here.
      Effect.catchAllDefect((defect) => (isSqlError(defect) ? Effect.fail(defect) : Effect.die(defect))),
      Effect.catchTag("Refused", ({ index, refusal }) => Effect.succeed<CompositeOutcome>({ _tag: "Refused", index, refusal })),
      Effect.mapError(ctx.toError),
      ctx.bounded
    )
  }

  return { acquireAll }
}

/** What a refused member has free now. */
const remainingOf = (request: RateRequest, state: Composite.RateState, now: number, margin: number): number => {
  const rate = request.limiter.rate
  if (rate === undefined) return 0
  if (rate._tag === "TokenBucket") return Gcra.remaining(state.tat, now, rate)
  const spanned = WindowAlgorithm.span(rate, margin)
  return Math.max(0, rate.limit - WindowAlgorithm.used(state.log.filter((e) => e.at > now - spanned.windowMs)))
}

/**
 * A refund subtracts its cost in whole µs rounded up (bucket.ts), as the write added it: the part by
 * which a bucket's arrival time moved ahead goes in whole µs rounded down, so the refund never takes
 * back more than the write added.
 */
const refundCosts = (requests: ReadonlyArray<RateRequest>, costs: ReadonlyArray<number>): Array<number> =>
  requests.map((request, i) => {
    const rate = request.limiter.rate
    if (rate?._tag !== "TokenBucket") return costs[i]!
    const aheadMicros = Math.floor((costs[i]! - request.cost) * rate.intervalMs * 1000)
    return request.cost + Math.max(0, aheadMicros) / 1000 / rate.intervalMs
  })

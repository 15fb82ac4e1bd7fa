/**
 * The sliding window: a header row (the lock, and `last_acquisition_at` = blocked until) and up to
 * `limit` ring rows, each holding one admission's time; ring rows are reused, never deleted. A batch
 * is planned against one read of all of them (`Window.reserve`) and written in one statement that
 * takes the header's lock on the version it read.
 */
import type { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import * as Window from "../internal/window.js"
import type { SlidingWindow } from "../LimiterSpec.js"
import type { RateOutcome, RateRequest } from "../Store.js"
import { Conflict } from "./conflicts.js"
import { ceilMicros, type Context, nextVersion } from "./context.js"
import { ringIds } from "./keys.js"

interface Reading {
  readonly now: number
  readonly version: number | null
  readonly blockedUntil: number
  readonly ring: ReadonlyArray<{ readonly id: string; readonly at: number }>
}

/** The admissions a ring holds, oldest first. */
export const logOf = (ring: ReadonlyArray<{ at: number }>): Array<Window.Entry> =>
  ring.filter((r) => r.at > -Infinity).map((r) => ({ at: r.at, count: 1 })).sort((a, b) => a.at - b.at)

/** An admission of `cost` at `slotMs` takes the ring's oldest rows, which no longer count then: each is set to it in `ring` and `written`. */
export const claimOldest = (ring: ReadonlyArray<{ id: string; at: number }>, cost: number, slotMs: number, written: Map<string, number>): void => {
  for (const row of [...ring].sort((a, b) => a.at - b.at).slice(0, cost)) {
    row.at = slotMs
    written.set(row.id, slotMs)
  }
}

export interface SlidingWindowRows {
  readonly attempt: (header: string, policy: SlidingWindow, batch: ReadonlyArray<RateRequest>) => Effect.Effect<Array<RateOutcome>, Conflict | SqlError>
  /** What `state` shows of the window. */
  readonly view: (header: string, policy: SlidingWindow) => Effect.Effect<
    { readonly limit: number; readonly remaining: number; readonly resetAfterMs: number; readonly nextSlotAfterMs: number },
    SqlError
  >
}

export const make = (ctx: Context): SlidingWindowRows => {
  const { AT, C, NEXT_S, NOW, T, margin, sql } = ctx
  const UPDATED = ctx.atOf("updated_at")

  const read = (header: string, limit: number): Effect.Effect<Reading, SqlError> =>
    Effect.gen(function*() {
      const ids = ringIds(header, limit)
      const rows = yield* sql<{ group_id: string | null; at: number | null; version: number | null; now: number }>`
        SELECT s.group_id, ${AT} AS at, s.version, ${NOW} AS now
        FROM (SELECT 1) AS one LEFT JOIN ${T} s ON s.group_id = ANY(${[header, ...ids]})`
      const now = rows[0]!.now
      const byId = new Map(rows.flatMap((r) => (r.group_id === null ? [] : [[r.group_id, r] as const])))
      const head = byId.get(header)
      const ring = ids.map((id) => ({ id, at: byId.get(id)?.at ?? -Infinity }))
      return { now, version: head?.version ?? null, blockedUntil: head?.at ?? -Infinity, ring }
    })

  const attempt: SlidingWindowRows["attempt"] = (header, policy, batch) =>
    Effect.gen(function*() {
      const state = yield* read(header, policy.limit)
      const spanned = Window.span(policy, margin)
      const ring = state.ring.map((r) => ({ ...r }))
      const written = new Map<string, number>()
      const plan = batch.map((request) => {
        const decision = Window.reserve(logOf(ring), state.now, state.blockedUntil, spanned, request.cost, request.maxWaitMs)
        if (!decision.admitted) return decision
        claimOldest(ring, request.cost, decision.slotMs, written)
        return decision
      })
      const used = (now: number) => logOf(ring).filter((e) => e.at > now - spanned.windowMs).length
      if (written.size === 0) {
        return plan.map((step): RateOutcome => ({
          _tag: "RateLimited",
          retryAfterMs: step.admitted ? 0 : step.retryAfterMs,
          limit: policy.limit,
          remaining: Math.max(0, policy.limit - used(state.now))
        }))
      }
      // The header's upsert takes its lock (a header created here is written as the version after the
      // expected one, as if created empty and then written) and returns the instant it decided at;
      // the entries are written from that instant, and it is what the statement returns.
      const expected = state.version ?? 1
      const rows = yield* sql<{ now: number }>`
        WITH h AS (
          INSERT INTO ${T} AS s (group_id, last_acquisition_at, version, updated_at)
          SELECT ${header}, '-infinity', ${nextVersion(expected)}, c.t FROM ${C}
          ON CONFLICT (group_id) DO UPDATE SET (version, updated_at) = (SELECT ${NEXT_S}, c.t FROM ${C})
          WHERE s.version = ${expected}
          RETURNING updated_at AS t
        )
        INSERT INTO ${T} AS s (group_id, last_acquisition_at, version, updated_at)
        SELECT u.id, ${ctx.fromMicros(sql.literal("u.at"))} + GREATEST(interval '0', h.t - ${ctx.fromMicros(ceilMicros(state.now))}), 1, h.t
        FROM h, unnest(${[...written.keys()]}::text[], ${[...written.values()].map(ceilMicros)}::bigint[]) AS u(id, at)
        ON CONFLICT (group_id) DO UPDATE SET last_acquisition_at = EXCLUDED.last_acquisition_at, updated_at = EXCLUDED.updated_at
        RETURNING ${UPDATED} AS now`
      const row = rows[0]
      if (row === undefined) return yield* new Conflict()
      // The batch was planned at the read's time and written at the header's instant: every entry
      // moved by the same amount, so the entries keep their spacing and none lies before the write.
      const shift = Math.max(0, row.now - state.now)
      return plan.map((step): RateOutcome =>
        step.admitted
          ? {
            _tag: "Admitted",
            waitMs: step.waitMs,
            reservation: { slotMs: step.slotMs + shift, tatMs: 0, version: undefined },
            limit: policy.limit,
            remaining: Math.max(0, policy.limit - used(row.now))
          }
          : { _tag: "RateLimited", retryAfterMs: step.retryAfterMs, limit: policy.limit, remaining: 0 }
      )
    })

  const view: SlidingWindowRows["view"] = (header, policy) =>
    Effect.map(read(header, policy.limit), (window) => {
      const spanned = Window.span(policy, margin)
      const log = logOf(window.ring).filter((e) => e.at > window.now - spanned.windowMs)
      const last = log[log.length - 1]
      return {
        limit: policy.limit,
        remaining: Math.max(0, policy.limit - log.length),
        resetAfterMs: Math.max(0, last === undefined ? 0 : last.at + spanned.windowMs - window.now, window.blockedUntil - window.now),
        nextSlotAfterMs: Window.earliestSlot(log, Math.max(window.now, window.blockedUntil), spanned, 1) - window.now
      }
    })

  return { attempt, view }
}

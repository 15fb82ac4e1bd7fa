/**
 * The statements on a key's lease slots: `max_concurrent` rows, `last_acquisition_at` the lease's
 * expiry and `version` its holder's token; a slot whose expiry passed is free. Each decides against
 * the time read after the slot's lock: a claim takes its lock by SKIP LOCKED (never waiting), the
 * others are upserts, whose conflict locks the row before the condition and the new values are read.
 */
import type { SqlError } from "@effect/sql/SqlError"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import type { LimiterSpec } from "../LimiterSpec.js"
import type { Context } from "./context.js"

/** Every slot is held (a lease transaction rolls back with it). */
export class Full extends Data.TaggedError("Full")<{ readonly held: number; readonly expiresInMs: number | undefined }> {}

export const make = (ctx: Context) => {
  const { AT, C, FROM_SETTING, NOW, T, channel, sql } = ctx
  const ttlMicros = (limiter: LimiterSpec) => Math.round((limiter.concurrency?.leaseTtlMs ?? 0) * 1000)
  const ttlOf = (limiter: LimiterSpec) => sql`${ttlMicros(limiter)}::float8 * interval '1 microsecond'`

  // The slot's lock comes first (by default SKIP LOCKED, which never waits); the instant is read once
  // it is held, and the slot is free if its expiry passed by then.
  const claimFree = (limiter: LimiterSpec, slots: ReadonlyArray<string>, token: number, lock: "skip" | "wait") =>
    sql<{ group_id: string }>`
      UPDATE ${T} SET (version, last_acquisition_at, updated_at) = (SELECT ${token}::int, c.t + ${ttlOf(limiter)}, c.t FROM ${C})
      WHERE group_id = (
        SELECT group_id FROM ${T} WHERE group_id = ANY(${slots}) AND last_acquisition_at <= clock_timestamp()
        ORDER BY group_id LIMIT 1 FOR UPDATE ${lock === "skip" ? sql.literal("SKIP LOCKED") : sql.literal("")}
      ) AND last_acquisition_at <= clock_timestamp()
      RETURNING group_id`

  /** How many of the slots exist and are held, and when the soonest held one expires (ms after the base). */
  const info = (slots: ReadonlyArray<string>) =>
    Effect.map(
      sql<{ total: number; held: number; soonest: number | null; now: number }>`
        SELECT count(*)::int AS total,
          count(*) FILTER (WHERE s.last_acquisition_at > statement_timestamp())::int AS held,
          min(${AT}) FILTER (WHERE s.last_acquisition_at > statement_timestamp()) AS soonest,
          ${NOW} AS now
        FROM ${T} s WHERE s.group_id = ANY(${slots})`,
      (rows) => rows[0]!
    )

  /**
   * A free slot claimed with `token`, the slot rows created first when some are missing; `Full` when every
   * one is held. A free slot that was only locked (being released, or claimed by a transaction that may
   * still roll back) is waited for, once, rather than taken for a held one.
   */
  const claim = (limiter: LimiterSpec, slots: ReadonlyArray<string>, token: number): Effect.Effect<string, Full | SqlError> =>
    Effect.gen(function*() {
      const claimed = yield* claimFree(limiter, slots, token, "skip")
      if (claimed.length > 0) return claimed[0]!.group_id
      const found = yield* info(slots)
      if (found.total < slots.length || found.held < found.total) {
        if (found.total < slots.length) {
          yield* sql`INSERT INTO ${T} (group_id, last_acquisition_at, version)
            SELECT id, '-infinity', 0 FROM unnest(${slots}::text[]) AS id ON CONFLICT (group_id) DO NOTHING`
        }
        const [again] = yield* claimFree(limiter, slots, token, "wait")
        if (again !== undefined) return again.group_id
      }
      return yield* new Full({ held: found.held, expiresInMs: found.soonest === null ? undefined : found.soonest - found.now })
    })

  /** Runs the lease's ttl from now; inside the transaction that claimed the slot, so it waits for nothing. */
  const restart = (limiter: LimiterSpec, slot: string, token: number) =>
    sql`UPDATE ${T} SET (last_acquisition_at, updated_at) = (SELECT c.t + ${ttlOf(limiter)}, c.t FROM ${C})
      WHERE group_id = ${slot} AND version = ${token}`

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

  /** Frees `slot` if `token` still holds it (as in `extend`, read after the lock), and then NOTIFYs `hash`. */
  const free = (slot: string, token: number, hash: string) =>
    sql`
      WITH r AS (
        INSERT INTO ${T} AS s (group_id, last_acquisition_at, version)
        SELECT ${slot}, '-infinity', 0 ${FROM_SETTING} WHERE EXISTS (SELECT 1 FROM ${T} WHERE group_id = ${slot})
        ON CONFLICT (group_id) DO UPDATE SET last_acquisition_at = '-infinity', updated_at = clock_timestamp()
        WHERE s.version = ${token} AND s.last_acquisition_at > clock_timestamp()
        RETURNING version
      )
      SELECT pg_notify(${channel}, ${hash}) FROM r WHERE r.version = ${token}`

  return { claim, restart, extend, free, info }
}

/**
 * The token bucket's conditional upserts, of one key or of several in one statement. A process's
 * writes to different keys that are ready while another write is under way go together (the
 * store-wide batcher, internal/batcher.ts), so many keys cost one round trip (and one commit) per
 * batch instead of one each. Every row of a batch keeps the rule of a lone write: it is written on
 * the version the plan read, or while its debt still lies within the plan's slack; a row that does
 * not is not written and reads as a conflict for that key alone.
 *
 * Rows are locked in one order (their ids, byte-wise) by every process, so two batches never wait
 * for each other in a cycle.
 */
import type { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type { StoreError } from "../Errors.js"
import * as Batcher from "../internal/batcher.js"
import { type Context, nextVersion } from "./context.js"

/** One key's planned write. */
export interface Write {
  readonly id: string
  /** What the batch adds to the row's theoretical arrival time, in whole microseconds. */
  readonly micros: number
  /** The version the plan read (1 for no row: a row created here is written as the one after it). */
  readonly expected: number
  /** Planned as if the row were idle, with no read: only the slack lets it hold. */
  readonly blind: boolean
  /** How far (ms) the row's arrival time may lie past the write's instant for the plan to hold (`Infinity`: no bound). */
  readonly slack: number
}

/** The row a write left: tat and the write's instant in ms after the store's base; undefined when the plan no longer held. */
export interface Written {
  readonly tat: number
  readonly version: number
  readonly now: number
}

/** The most keys one statement writes. */
const MAX_KEYS = 256

/** The two statements: one key's write, and several keys' in one. */
export const statements = (ctx: Context) => {
  const { C, NEXT_S, run, T, sql } = ctx
  const TAT = ctx.atOf("last_acquisition_at")
  const UPDATED = ctx.atOf("updated_at")

  /** `send`: the store's runner (named statements on its pool), or the fiber's own connection's. */
  const one = (w: Write, send: Context["run"] = run) => {
    // Read after the row's lock, a moment before the SET's instant: a debt within the slack then
    // is within it at the write too.
    const stillValid = Number.isFinite(w.slack)
      ? sql`s.last_acquisition_at <= clock_timestamp() + ${w.slack}::float8 * interval '1 millisecond'`
      : sql.literal("TRUE")
    const added = sql`${w.micros}::float8 * interval '1 microsecond'`
    return send(sql<Written>`
      INSERT INTO ${T} AS s (group_id, last_acquisition_at, version, updated_at)
      SELECT ${w.id}, c.t + ${added}, ${nextVersion(w.expected)}, c.t FROM ${C}
      ON CONFLICT (group_id) DO UPDATE SET (last_acquisition_at, version, updated_at) = (
        SELECT GREATEST(s.last_acquisition_at, c.t) + ${added}, ${NEXT_S}, c.t FROM ${C})
      WHERE ${w.blind ? stillValid : sql`(s.version = ${w.expected} OR ${stillValid})`}
      RETURNING ${TAT} AS tat, version, ${UPDATED} AS now`).pipe(Effect.map((rows) => [rows[0]]))
  }

  // What a row adds is its inserted values' difference (c.t + added - c.t, exact in whole
  // microseconds); the rule of its own write is looked up by its id.
  const many = (writes: ReadonlyArray<Write>) =>
    run(sql<Written & { readonly id: string }>`
      WITH b (id, micros, expected, next, slack, blind) AS (
        SELECT * FROM unnest(${writes.map((w) => w.id)}::text[], ${writes.map((w) => w.micros)}::float8[],
          ${writes.map((w) => w.expected)}::int4[], ${writes.map((w) => nextVersion(w.expected))}::int4[],
          ${writes.map((w) => (Number.isFinite(w.slack) ? w.slack : null))}::float8[], ${writes.map((w) => w.blind)}::bool[]))
      INSERT INTO ${T} AS s (group_id, last_acquisition_at, version, updated_at)
      SELECT b.id, c.t + b.micros * interval '1 microsecond', b.next, c.t FROM b, ${C} ORDER BY b.id COLLATE "C"
      ON CONFLICT (group_id) DO UPDATE SET (last_acquisition_at, version, updated_at) = (
        SELECT GREATEST(s.last_acquisition_at, c.t) + (EXCLUDED.last_acquisition_at - EXCLUDED.updated_at), ${NEXT_S}, c.t FROM ${C})
      WHERE (SELECT (NOT b.blind AND s.version = b.expected) OR b.slack IS NULL
          OR s.last_acquisition_at <= clock_timestamp() + b.slack * interval '1 millisecond'
        FROM b WHERE b.id = EXCLUDED.group_id)
      RETURNING s.group_id AS id, ${TAT} AS tat, version, ${UPDATED} AS now`).pipe(
      Effect.map((rows) => {
        const byId = new Map(rows.map((row) => [row.id, row]))
        return writes.map((w) => byId.get(w.id))
      })
    )

  return { one, many }
}

/** `closed`: what writes still queued learn when the store closes under them. */
export const make = (ctx: Context, scope: Scope.Scope, closed: StoreError) => {
  const { one, many } = statements(ctx)

  const batcher = Batcher.make<Write, Written | undefined, SqlError | StoreError>({
    scope,
    maxBatch: MAX_KEYS,
    // Two writes under way: one statement's round trip overlaps the other's, and what arrives meanwhile
    // waits for the next (more in flight meant smaller batches and, measured, fewer admissions a second).
    maxInFlight: Math.min(2, ctx.config.pool_max_size),
    write: (writes) => (writes.length === 1 ? one(writes[0]!) : many(writes)),
    closed,
    timedOut: ctx.timedOut
  })
  return {
    /**
     * The write, with other keys' when others are ready (never inside a caller's transaction); with
     * `waitMs`, the caller waits at most that long (StoreTimeout).
     */
    submit: batcher.submit,
    /** The write alone, on the fiber's own connection (its transaction's, inside one). */
    alone: (write: Write) => Effect.map(one(write, (statement) => statement), (rows) => rows[0]),
    load: batcher.load
  }
}

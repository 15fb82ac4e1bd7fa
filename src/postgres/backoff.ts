/**
 * Back-pressure from upstream: `backoff` pushes a key's rate out for every process (token bucket:
 * the next slot no earlier than now + retryAfter; window: blocked until then) and tells every process
 * by NOTIFY ("b:<ms>:<origin>:<rate id>"), so that slots its waiters reserved earlier are not used
 * inside it. What this process heard of is kept in `holds`, by rate id.
 */
import { randomUUID } from "node:crypto"
import type { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import * as Gcra from "../internal/gcra.js"
import * as Holds from "../internal/holds.js"
import type { LimiterSpec } from "../LimiterSpec.js"
import { type Context, nextVersion } from "./context.js"

export const make = (ctx: Context) =>
  Effect.map(Effect.clock, (clock) => {
    const { C, NEXT_S, T, channel, sql } = ctx
    /** Backoffs of every process, by rate id; heard of through the LISTEN connection once this process waits. */
    const holds = Holds.make()
    /** Tells this store's own backoff messages from others'. */
    const origin = randomUUID().slice(0, 8)
    const hold = (id: string, retryAfterMs: number) => {
      const now = clock.unsafeCurrentTimeMillis()
      holds.hold(id, now + retryAfterMs, now)
    }

    /** Pushes the rate row `id` out by `retryAfterMs`, measured from the time after its lock, like every decision. */
    const push = (limiter: LimiterSpec, id: string, retryAfterMs: number): Effect.Effect<void, SqlError> => {
      const rate = limiter.rate!
      // Token bucket: the next slot is no earlier than now + retryAfter. Window: blocked until then.
      const pushMs = rate._tag === "TokenBucket" ? Gcra.floorFor(retryAfterMs, rate) : retryAfterMs
      const by = sql`${pushMs}::float8 * interval '1 millisecond'`
      // A row created here is written, like the rate's, as a version no plan against a missing row
      // expects. Every process hears of it; this one's (`hold`, once it is written) need not wait for the message.
      return sql`
        WITH b AS (
          INSERT INTO ${T} AS s (group_id, last_acquisition_at, version, updated_at)
          SELECT ${id}, c.t + ${by}, ${nextVersion(1)}, c.t FROM ${C}
          ON CONFLICT (group_id) DO UPDATE SET (last_acquisition_at, version, updated_at) = (
            SELECT GREATEST(s.last_acquisition_at, c.t + ${by}), ${NEXT_S}, c.t FROM ${C})
          RETURNING 1
        )
        SELECT pg_notify(${channel}, ${`b:${retryAfterMs}:${origin}:${id}`}) FROM b`.pipe(Effect.asVoid)
    }

    /**
     * A payload heard on the channel: another process's backoff is held; anything else (a release's
     * key digest, never with a colon) is passed to `release`.
     */
    const onNotify = (payload: string, release: (digest: string) => void) => {
      const first = payload.startsWith("b:") ? payload.indexOf(":", 2) : -1
      const second = first < 0 ? -1 : payload.indexOf(":", first + 1)
      if (second < 0) return release(payload)
      if (payload.slice(first + 1, second) !== origin) hold(payload.slice(second + 1), Number(payload.slice(2, first)))
    }

    return { holds, hold, push, onNotify }
  })

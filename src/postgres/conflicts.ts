/**
 * Optimistic writes: a write whose condition no longer holds (another writer came first) fails with
 * `Conflict`, and the operation is tried again under the limiter's retry `Schedule`, each conflict
 * counted; conflicts that outlast it are `ConflictRetriesExhausted`. A `SqlError` becomes the
 * library's error here too.
 */
import type { SqlError } from "@effect/sql/SqlError"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import { identity } from "effect/Function"
import * as Metric from "effect/Metric"
import { ConflictRetriesExhausted } from "../Errors.js"
import type { LimiterSpec } from "../LimiterSpec.js"
import * as Metrics from "../Metrics.js"
import * as Retry from "../Retry.js"
import type { Context } from "./context.js"

/** Another writer changed the row since it was read: the attempt wrote nothing and may be tried again. */
export class Conflict extends Data.TaggedError("Conflict") {}

const isConflict = (error: unknown): error is Conflict => error instanceof Conflict

export const isSqlError = (u: unknown): u is SqlError =>
  typeof u === "object" && u !== null && "_tag" in u && u._tag === "SqlError"

/**
 * Retries conflicts under the limiter's schedule, counting each; other failures pass through. The
 * first attempt runs bare (a retry's schedule costs as much as the rest of a store call, and most
 * calls have no conflict); after a conflict, the retry replays it first, so the schedule's
 * attempts and delays are exactly those of a retry from the start.
 */
export const retrying = <A, E, E2 = never>(
  ctx: Context,
  limiter: LimiterSpec,
  attempt: Effect.Effect<A, E | Conflict | SqlError>,
  /** Bounds the retries after a first conflict (the first attempt being bounded by the caller). */
  boundRetries: <B, F>(retries: Effect.Effect<B, F>) => Effect.Effect<B, F | E2> = identity
) => {
  let conflicts = 0
  const counted = attempt.pipe(
    Effect.tapError((error) =>
      isConflict(error)
        ? Effect.zipRight(Effect.sync(() => conflicts++), Metric.increment(ctx.tag(limiter)(Metrics.conflicts)))
        : Effect.void
    )
  )
  return counted.pipe(
    Effect.catchIf(isConflict, (first) => {
      let replayed = false
      const again = Effect.suspend(() => replayed ? counted : ((replayed = true), Effect.fail(first)))
      return boundRetries(Effect.retry(again, { schedule: Retry.schedule(limiter.retry), while: isConflict }).pipe(
        Effect.catchIf(isConflict, () =>
          Effect.fail(new ConflictRetriesExhausted({ store: ctx.name, limiter: limiter.name, attempts: conflicts })))
      ))
    }),
    Effect.catchIf(isSqlError, (error) => Effect.fail(ctx.toError(error)))
  )
}

/**
 * The documented cleanup, as an operation: deletes the rows no limiter has touched for `olderThan`
 * (at least a minute) and whose state lies that far in the past. It is the only statement of the
 * library that needs `DELETE` granted; nothing else ever deletes.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import { ConfigIssue, ConfigurationError } from "../Errors.js"
import type { Context } from "./context.js"
import * as Errors from "./errors.js"
import { codeOf } from "./setup.js"

/** Deletes the idle rows; returns how many went. `deleted` runs once they are gone (the bucket's cache refers to them). */
export const cleanup = (ctx: Context, olderThan: Duration.DurationInput, deleted: () => void) =>
  Effect.suspend((): Effect.Effect<number, Errors.PostgresError | ConfigurationError> => {
    const ms = Duration.toMillis(Duration.decode(olderThan))
    if (!(ms >= 60_000)) {
      return Effect.fail(
        new ConfigurationError({
          issues: [new ConfigIssue({ path: "cleanup.older_than", message: `Expected at least one minute, found ${ms} ms` })]
        })
      )
    }
    // A row can be in a writer's read-modify-write only while it is recent: after a minute untouched it is not.
    return ctx.sql<{ deleted: string }>`
      WITH d AS (
        DELETE FROM ${ctx.T}
        WHERE last_acquisition_at < statement_timestamp() - ${ms}::float8 * interval '1 millisecond'
          AND updated_at < statement_timestamp() - ${ms}::float8 * interval '1 millisecond'
        RETURNING 1
      )
      SELECT count(*)::text AS deleted FROM d`.pipe(
      Effect.map((rows) => Number(rows[0]?.deleted ?? 0)),
      Effect.tap(() => Effect.sync(deleted)),
      Effect.mapError((error) => codeOf(error) === "42501" ? Errors.cleanupDenied(ctx.name, ctx.table, error.cause) : ctx.toError(error))
    )
  })

/**
 * Every failure rate-sync can report, as `Schema.TaggedError` classes so they can be
 * matched with `Effect.catchTag`, serialised, and compared structurally in tests.
 */
import { toMillis } from "effect/Duration"
import * as Schema from "effect/Schema"

/** One problem in a configuration, located by its dotted key path (`limiters.api.rate_per_second`). */
export class ConfigIssue extends Schema.Class<ConfigIssue>("ConfigIssue")({
  path: Schema.String,
  message: Schema.String
}) {}

/** Invalid configuration: raised when a layer is built, never on first use. */
export class ConfigurationError extends Schema.TaggedError<ConfigurationError>()("ConfigurationError", {
  issues: Schema.Array(ConfigIssue)
}) {
  override get message(): string {
    return this.issues.map((issue) => issue.path === "" ? issue.message : `${issue.path}: ${issue.message}`).join("\n")
  }
}

export class LimiterNotFound extends Schema.TaggedError<LimiterNotFound>()("LimiterNotFound", {
  limiter: Schema.String,
  known: Schema.Array(Schema.String)
}) {
  override get message(): string {
    const known = this.known.length === 0 ? "none are configured" : `configured: ${this.known.join(", ")}`
    return `No limiter named "${this.limiter}" (${known})`
  }
}

/** The permit could not be had within the timeout. Nothing was consumed. */
export class AcquireTimeout extends Schema.TaggedError<AcquireTimeout>()("AcquireTimeout", {
  limiter: Schema.String,
  key: Schema.String,
  timeout: Schema.DurationFromMillis,
  /** How long after the deadline a rate slot would have been free, when that is known. */
  retryAfter: Schema.optional(Schema.DurationFromMillis)
}) {
  override get message(): string {
    return `Limiter "${this.limiter}": no permit within ${Math.round(this.timeout.pipe(toMillis))} ms`
  }
}

/** `tryAcquire` found no free permit. Nothing was consumed. */
export class RateLimitExceeded extends Schema.TaggedError<RateLimitExceeded>()("RateLimitExceeded", {
  limiter: Schema.String,
  key: Schema.String,
  /** When a permit is expected to be free; zero when only a concurrency release can free one. */
  retryAfter: Schema.DurationFromMillis,
  limit: Schema.Number,
  remaining: Schema.Number
}) {
  override get message(): string {
    return `Limiter "${this.limiter}": rate limit exceeded, retry after ${Math.ceil(this.retryAfter.pipe(toMillis))} ms`
  }
}

/** The request asks for more than the limiter can ever grant (a cost above `burst` or `limit`). */
export class CostExceedsCapacity extends Schema.TaggedError<CostExceedsCapacity>()("CostExceedsCapacity", {
  limiter: Schema.String,
  cost: Schema.Number,
  capacity: Schema.Number
}) {
  override get message(): string {
    return `Limiter "${this.limiter}": a cost of ${this.cost} can never fit a capacity of ${this.capacity}`
  }
}

/** A cost that is not a whole number of 1 or more. */
export class InvalidCost extends Schema.TaggedError<InvalidCost>()("InvalidCost", {
  limiter: Schema.String,
  cost: Schema.Number
}) {
  override get message(): string {
    return `Limiter "${this.limiter}": cost must be a whole number of 1 or more, found ${this.cost}`
  }
}

/** `consume` was asked of a limiter with `max_concurrent`: its permits are leases, held for a scope. */
export class LeaseNeedsScope extends Schema.TaggedError<LeaseNeedsScope>()("LeaseNeedsScope", {
  limiter: Schema.String
}) {
  override get message(): string {
    return `Limiter "${this.limiter}" has max_concurrent: its permits are leases, held until released: use acquire (released when its scope closes, or by release() in rate-sync/promise) or withPermit`
  }
}

/**
 * The store could not be reached (an outage: refused or lost connections, a server restarting).
 * This, and only this, is what `fail_closed = false` admits through; `message` says how to fix it
 * when known. `reason` tells which outage: no connection could be made (`unreachable`), one was lost
 * under a call (`disconnected`), the server answered that it cannot serve for now (`server`: starting,
 * shutting down, out of connections or memory, read-only after a failover), or the store itself was
 * closed under the call (`closed`). Code branches on `reason`, never on `message`.
 */
export class StoreUnavailable extends Schema.TaggedError<StoreUnavailable>()("StoreUnavailable", {
  store: Schema.String,
  engine: Schema.String,
  /** Which outage; `unreachable` when the maker of the error did not say. */
  reason: Schema.optionalWith(Schema.Literal("unreachable", "disconnected", "server", "closed"), {
    default: () => "unreachable" as const
  }),
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * The store did not answer within its operation bound (`operation_timeout_ms` on PostgreSQL,
 * `command_timeout_ms` on Redis). A slow store is not an outage: this never admits a call, whatever
 * `fail_closed` says; an `acquire` with a timeout reports it as `AcquireTimeout`.
 */
export class StoreTimeout extends Schema.TaggedError<StoreTimeout>()("StoreTimeout", {
  store: Schema.String,
  engine: Schema.String,
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * The store answered, and refused in a way retrying cannot mend: a wrong password, a missing
 * database, role, table or grant, a Redis Cluster node redirecting the key, or a statement the store
 * rejected. It never admits a call, whatever `fail_closed` says: limiting is not switched off by a
 * mistake. `reason` tells which; `message` gives the store's own words and the fix.
 */
export class StoreMisconfigured extends Schema.TaggedError<StoreMisconfigured>()("StoreMisconfigured", {
  store: Schema.String,
  engine: Schema.String,
  reason: Schema.Literal("authentication", "database", "schema", "permission", "redirect", "statement"),
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/** An option of a call that is not a value it accepts (a key that is not a string, a timeout that is not a duration). */
export class InvalidOption extends Schema.TaggedError<InvalidOption>()("InvalidOption", {
  limiter: Schema.String,
  option: Schema.String,
  found: Schema.String,
  expected: Schema.String
}) {
  override get message(): string {
    return `Limiter "${this.limiter}": option ${this.option} must be ${this.expected}, found ${this.found}`
  }
}

/** Optimistic-lock conflicts outlasted the limiter's retry schedule. */
export class ConflictRetriesExhausted extends Schema.TaggedError<ConflictRetriesExhausted>()(
  "ConflictRetriesExhausted",
  {
    store: Schema.String,
    limiter: Schema.String,
    attempts: Schema.Number
  }
) {
  override get message(): string {
    return `Limiter "${this.limiter}" on store "${this.store}": gave up after ${this.attempts} optimistic-lock conflicts`
  }
}

/** What a store operation can fail with. */
export type StoreError = StoreUnavailable | StoreTimeout | StoreMisconfigured | ConflictRetriesExhausted

/** What building a store (and so a layer) can fail with. */
export type BuildError = ConfigurationError | StoreUnavailable | StoreTimeout | StoreMisconfigured

/** What `acquire` can fail with. */
export type AcquireError = LimiterNotFound | AcquireTimeout | CostExceedsCapacity | InvalidCost | InvalidOption | StoreError

/** What `consume` can fail with. */
export type ConsumeError = AcquireError | LeaseNeedsScope

/** What `tryAcquire` can fail with. */
export type TryAcquireError = LimiterNotFound | RateLimitExceeded | CostExceedsCapacity | InvalidCost | InvalidOption | StoreError


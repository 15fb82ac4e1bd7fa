/** The framework stores' own errors: a setup the limiter cannot answer honestly, refused by name. */
import * as Schema from "effect/Schema"

/**
 * The framework's limit is not the limiter's capacity (`burst`, or a sliding window's `limit`): its
 * headers and its `totalHits > limit` test would disagree with the limiter's decision.
 */
export class LimitMismatch extends Schema.TaggedError<LimitMismatch>()("LimitMismatch", {
  limiter: Schema.String,
  /** The framework and the option, as its users write it (`express-rate-limit limit`). */
  framework: Schema.String,
  expected: Schema.Number,
  limit: Schema.Number
}) {
  override get message(): string {
    return `Limiter "${this.limiter}" takes at most ${this.limit} at once (its burst, or its window's limit), ` +
      `but ${this.framework} is ${this.expected}: set it to ${this.limit}, so that the framework's headers and ` +
      `its decision agree with the limiter`
  }
}

/** A framework option or store method that a rate-sync limiter cannot honour. */
export class Unsupported extends Schema.TaggedError<Unsupported>()("Unsupported", {
  limiter: Schema.String,
  /** The option or method, as the framework's users write it. */
  feature: Schema.String,
  /** Why, and what to do instead. */
  reason: Schema.String
}) {
  override get message(): string {
    return `Limiter "${this.limiter}": ${this.feature} is not supported: ${this.reason}`
  }
}

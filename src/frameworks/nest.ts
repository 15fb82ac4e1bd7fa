/**
 * `rate-sync/nest`: a `ThrottlerStorage` for @nestjs/throttler backed by rate-sync limiters, so that
 * several processes share one limit through PostgreSQL or Redis.
 *
 * ```ts
 * import { ThrottlerModule } from "@nestjs/throttler"
 * import { RateSyncThrottlerStorage } from "rate-sync/nest"
 *
 * // after loadConfig() from rate-sync/promise: [limiters.api] rate_per_second = 1, burst = 10
 * ThrottlerModule.forRoot({
 *   throttlers: [{ ttl: 10_000, limit: 10 }],
 *   storage: new RateSyncThrottlerStorage({ limiter: "api" })
 * })
 * ```
 *
 * Each throttler's `limit` must be its limiter's capacity (`burst`, or a sliding window's `limit`):
 * another number fails the request with `LimitMismatch`. `ttl` and `blockDuration` are not used: the
 * limiter's own rate decides when a unit is free again, and the `X-RateLimit-Reset` and
 * `Retry-After` headers say so. @nestjs/throttler is not loaded by this module.
 */
import { Unsupported } from "./errors.js"
import { hit } from "./hits.js"

export { LimitMismatch, Unsupported } from "./errors.js"

/** The answer @nestjs/throttler's guard reads (its `ThrottlerStorageRecord`). */
export interface ThrottlerStorageRecord {
  /** Units in use, counting this request; `limit + 1` when refused. */
  readonly totalHits: number
  /** Seconds until the key's rate is full again (admitted), or until the next unit is free (refused). */
  readonly timeToExpire: number
  /** The request is refused. */
  readonly isBlocked: boolean
  /** Seconds until the next unit is free, when refused (the guard's `Retry-After`); 0 otherwise. */
  readonly timeToBlockExpire: number
}

export interface RateSyncThrottlerStorageOptions {
  /**
   * The rate-sync limiter (`[limiters.NAME]`) requests are counted against: one for every throttler,
   * or one per throttler name (`{ default: "api", burst: "api_burst" }`).
   */
  readonly limiter: string | Readonly<Record<string, string>>
}

/**
 * @nestjs/throttler's `ThrottlerStorage` on rate-sync limiters without `max_concurrent`. The guard's
 * keys (per route and client) are the limiter's keys; every process on the same store shares them.
 */
export class RateSyncThrottlerStorage {
  readonly #limiter: RateSyncThrottlerStorageOptions["limiter"]

  constructor(options: RateSyncThrottlerStorageOptions) {
    this.#limiter = options.limiter
  }

  #limiterFor(throttlerName: string): string {
    if (typeof this.#limiter === "string") return this.#limiter
    const limiter = Object.hasOwn(this.#limiter, throttlerName) ? this.#limiter[throttlerName] : undefined
    if (limiter !== undefined) return limiter
    throw new Unsupported({
      limiter: "",
      feature: `the throttler "${throttlerName}"`,
      reason: `no rate-sync limiter is named for it (named: ${Object.keys(this.#limiter).join(", ")})`
    })
  }

  async increment(
    key: string,
    _ttl: number,
    limit: number,
    _blockDuration: number,
    throttlerName: string
  ): Promise<ThrottlerStorageRecord> {
    const answer = await hit(this.#limiterFor(throttlerName), key, `the throttler "${throttlerName}"'s limit`, limit)
    const seconds = Math.ceil((answer.resetMs ?? 0) / 1000)
    return {
      totalHits: answer.totalHits,
      timeToExpire: seconds,
      isBlocked: !answer.admitted,
      timeToBlockExpire: answer.admitted ? 0 : seconds
    }
  }
}

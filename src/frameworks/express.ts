/**
 * `rate-sync/express`: a store for express-rate-limit (and hono-rate-limiter, whose store interface
 * is the same) backed by a rate-sync limiter, so that several processes share one limit through
 * PostgreSQL or Redis.
 *
 * ```ts
 * import { rateLimit } from "express-rate-limit"
 * import { loadConfig } from "rate-sync/promise"
 * import { RateSyncStore } from "rate-sync/express"
 *
 * await loadConfig()   // [limiters.api] rate_per_second = 1, burst = 10
 * app.use(rateLimit({ limit: 10, windowMs: 10_000, standardHeaders: "draft-8", store: new RateSyncStore({ limiter: "api" }) }))
 * ```
 *
 * `limit` must be the limiter's capacity (`burst`, or a sliding window's `limit`); a number that
 * differs fails every request with `LimitMismatch`. `windowMs` only names the policy in the headers
 * (`w=`): give it the time the limiter takes to refill (`burst / rate_per_second` seconds, or
 * `window_seconds`). Neither express-rate-limit nor hono-rate-limiter is loaded by this module.
 */
import { close } from "../promise.js"
import { Unsupported } from "./errors.js"
import { hit, peek } from "./hits.js"

export { LimitMismatch, Unsupported } from "./errors.js"

/** What the store reads of the middleware's options (express-rate-limit's and hono-rate-limiter's alike). */
export interface MiddlewareOptions {
  readonly limit?: unknown
  readonly skipFailedRequests?: boolean | undefined
  readonly skipSuccessfulRequests?: boolean | undefined
}

/** A client's count as the middleware reads it: `totalHits` against its `limit`, and when it resets. */
export interface ClientRateLimitInfo {
  totalHits: number
  resetTime: Date | undefined
}

export interface RateSyncStoreOptions {
  /** The rate-sync limiter (`[limiters.NAME]`) every key of this middleware is counted against. */
  readonly limiter: string
}

const resetTime = (resetMs: number | undefined): Date | undefined =>
  resetMs === undefined ? undefined : new Date(Date.now() + resetMs)

/**
 * express-rate-limit's `Store` (and hono-rate-limiter's) on a rate-sync limiter without
 * `max_concurrent`. One instance per middleware, as express-rate-limit requires; instances on the
 * same limiter share its keys' state, in this process and in every other one on the same store.
 */
export class RateSyncStore {
  readonly limiter: string
  /** Counts live in the limiter's store, shared by every instance and process. */
  readonly localKeys = false
  /** Keys are the limiter's own: two middlewares on two limiters never count the same state. */
  readonly prefix: string
  #limit: number | undefined = undefined
  #refused: Unsupported | undefined = undefined

  constructor(options: RateSyncStoreOptions) {
    this.limiter = options.limiter
    this.prefix = `${options.limiter}:`
  }

  /**
   * Reads the middleware's limit (checked against the limiter's capacity at each request) and refuses
   * `skipFailedRequests` / `skipSuccessfulRequests`: a limiter never gives a unit back, so every
   * request would go on counting. The refusal is thrown here (express-rate-limit logs it,
   * hono-rate-limiter throws it from `rateLimiter()`) and every request then fails with it.
   */
  init(options: MiddlewareOptions): void {
    this.#limit = typeof options.limit === "number" ? options.limit : undefined
    const skip = options.skipFailedRequests === true
      ? "skipFailedRequests"
      : options.skipSuccessfulRequests === true
      ? "skipSuccessfulRequests"
      : undefined
    if (skip === undefined) return
    this.#refused = new Unsupported({
      limiter: this.limiter,
      feature: skip,
      reason: "a rate-sync limiter never gives a unit back (its state returns to full as time passes), so every request would still count; " +
        "leave it unset, or count only the requests to limit with `skip`"
    })
    throw this.#refused
  }

  /** Counts one request: admitted while the limiter has a unit free, `limit + 1` when it refuses. */
  async increment(key: string): Promise<ClientRateLimitInfo> {
    if (this.#refused !== undefined) throw this.#refused
    const answer = await hit(this.limiter, key, "the middleware's limit", this.#limit)
    return { totalHits: answer.totalHits, resetTime: resetTime(answer.resetMs) }
  }

  /** The key's units in use now and when its rate is full again; undefined for a key with none in use. */
  async get(key: string): Promise<ClientRateLimitInfo | undefined> {
    const view = await peek(this.limiter, key)
    return view === undefined ? undefined : { totalHits: view.totalHits, resetTime: resetTime(view.resetMs) }
  }

  /** Rejects with `Unsupported`: `init` refuses the options that make the middleware call it. */
  decrement(_key: string): Promise<void> {
    return Promise.reject(
      new Unsupported({ limiter: this.limiter, feature: "decrement", reason: "a rate-sync limiter never gives a unit back" })
    )
  }

  /** Rejects with `Unsupported`: a limiter's state only returns to full as time passes. */
  resetKey(_key: string): Promise<void> {
    return Promise.reject(
      new Unsupported({
        limiter: this.limiter,
        feature: "resetKey",
        reason: "a rate-sync limiter never gives units back; its state is full again after resetTime (`get`)"
      })
    )
  }

  /** Closes rate-sync's store connections (every store's: they are shared); the next call reconnects. */
  shutdown(): Promise<void> {
    return close()
  }
}

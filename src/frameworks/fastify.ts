/**
 * `rate-sync/fastify`: a store for @fastify/rate-limit backed by a rate-sync limiter, so that several
 * processes share one limit through PostgreSQL or Redis.
 *
 * ```ts
 * import rateLimit from "@fastify/rate-limit"
 * import { loadConfig } from "rate-sync/promise"
 * import { rateSyncStore } from "rate-sync/fastify"
 *
 * await loadConfig()   // [limiters.api] rate_per_second = 1, burst = 10
 * await app.register(rateLimit, { max: 10, timeWindow: 10_000, store: rateSyncStore({ limiter: "api" }) })
 * ```
 *
 * `max` must be the limiter's capacity (`burst`, or a sliding window's `limit`): another number fails
 * the request with `LimitMismatch`. `timeWindow` is not used: the limiter's own rate decides when a
 * unit is free again, and `x-ratelimit-reset` / `retry-after` say so. @fastify/rate-limit is not
 * loaded by this module.
 */
import { Unsupported } from "./errors.js"
import { hit } from "./hits.js"

export { LimitMismatch, Unsupported } from "./errors.js"

/**
 * The plugin's options, globally or for a route: the store reads `continueExceeding`,
 * `exponentialBackoff`, `ban` and `routeInfo` (`method`, `url`) of them.
 */
export type PluginOptions = object

const option = (options: object, name: string): unknown => (options as Record<string, unknown>)[name]

export interface RateLimitResult {
  /** Units in use, counting this request; `max + 1` when refused. */
  readonly current: number
  /** Milliseconds until the key's rate is full again (admitted), or until the next unit is free (refused). */
  readonly ttl: number
}

export interface FastifyRateLimitStore {
  incr(key: string, callback: (error: Error | null, result?: RateLimitResult) => void, timeWindow?: number, max?: number): void
  child(routeOptions: PluginOptions): FastifyRateLimitStore
}

export interface RateSyncStoreOptions {
  /** The rate-sync limiter (`[limiters.NAME]`) the plugin's keys are counted against. */
  readonly limiter: string
}

/** Escalations that need the count of refused requests, which a limiter does not keep: refused by name. */
const refuse = (limiter: string, options: PluginOptions): void => {
  const ban = option(options, "ban")
  const feature = option(options, "continueExceeding") === true
    ? "continueExceeding"
    : option(options, "exponentialBackoff") === true
    ? "exponentialBackoff"
    : typeof ban === "number" && ban >= 0
    ? "ban"
    : undefined
  if (feature === undefined) return
  throw new Unsupported({
    limiter,
    feature,
    reason: "a rate-sync limiter does not count refused requests (a refusal writes nothing), so it cannot escalate on them"
  })
}

class Store implements FastifyRateLimitStore {
  constructor(readonly limiter: string, readonly prefix: string, options: PluginOptions) {
    refuse(limiter, options)
  }

  incr(key: string, callback: (error: Error | null, result?: RateLimitResult) => void, _timeWindow?: number, max?: number): void {
    hit(this.limiter, this.prefix + key, "the plugin's max", max).then(
      (answer) => callback(null, { current: answer.totalHits, ttl: answer.resetMs ?? 0 }),
      (error: unknown) => callback(error instanceof Error ? error : new Error(String(error)))
    )
  }

  /** A route's own limit: its keys counted apart from other routes' (as @fastify/rate-limit's Redis store does). */
  child(routeOptions: PluginOptions): FastifyRateLimitStore {
    const route = option(routeOptions, "routeInfo")
    const scope = typeof route === "object" && route !== null
      ? `${String(option(route, "method"))}${String(option(route, "url"))}-`
      : ""
    return new Store(this.limiter, this.prefix + scope, routeOptions)
  }
}

/**
 * The `store` option of @fastify/rate-limit (a class it instantiates) on a rate-sync limiter without
 * `max_concurrent`. Routes with their own `config.rateLimit` count their keys apart; every process on
 * the same store shares each key's state. `continueExceeding`, `exponentialBackoff` and `ban` are
 * refused with `Unsupported` when the plugin is registered.
 */
export const rateSyncStore = (options: RateSyncStoreOptions): new(pluginOptions: PluginOptions) => FastifyRateLimitStore =>
  class extends Store {
    constructor(pluginOptions: PluginOptions) {
      super(options.limiter, "", pluginOptions)
    }
  }

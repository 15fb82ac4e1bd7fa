/**
 * `rate-sync/hono`: hono-rate-limiter's store interface is express-rate-limit's, so the same store
 * serves it (a `keyGenerator` is required by hono-rate-limiter itself).
 *
 * ```ts
 * import { rateLimiter } from "hono-rate-limiter"
 * import { RateSyncStore } from "rate-sync/hono"
 *
 * app.use(rateLimiter({ limit: 10, windowMs: 10_000, keyGenerator, store: new RateSyncStore({ limiter: "api" }) }))
 * ```
 */
export { type ClientRateLimitInfo, LimitMismatch, RateSyncStore, type RateSyncStoreOptions, Unsupported } from "./express.js"

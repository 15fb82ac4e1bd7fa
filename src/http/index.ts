/**
 * `rate-sync/http`: rate limits at the HTTP edge for `@effect/platform` apps, with the IETF
 * `RateLimit-Policy` / `RateLimit` headers, `Retry-After` and a `quota-exceeded` problem body.
 */
export * as ClientAddress from "./ClientAddress.js"
export { ClientAddressError, HttpRateLimitConfigError } from "./errors.js"
export * as HttpRateLimit from "./HttpRateLimit.js"
export * as HttpApiRateLimit from "./HttpApiRateLimit.js"

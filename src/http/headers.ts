/**
 * What a limiter's settings and a decision say in HTTP: the quota policy and the service limit of
 * draft-ietf-httpapi-ratelimit-headers-10 (`RateLimit-Policy: "api";q=100;w=1`, `RateLimit:
 * "api";r=9;t=1`), draft-7's combined fields, the legacy `X-RateLimit-*` ones, `Retry-After`, and
 * the `quota-exceeded` problem body. Computed from the permit or the refusal alone: no store call.
 */
import * as Duration from "effect/Duration"
import type { RateLimitExceeded } from "../Errors.js"
import type { LimiterSpec } from "../LimiterSpec.js"
import type { Permit } from "../RateLimiter.js"

/** A quota policy: `q` units per `w` seconds (no window for a concurrency bound). */
export interface Policy {
  readonly name: string
  readonly quota: number
  readonly windowSeconds: number | undefined
  readonly unit: "requests" | "concurrent-requests"
}

/** A service limit: `r` units left, more in `t` seconds (when known). */
export interface Limit {
  readonly name: string
  readonly remaining: number
  readonly resetSeconds: number | undefined
}

/**
 * A token bucket of `burst` at `rate`/s is advertised over the time it takes to refill (at least
 * 1 s, the draft's unit): `w = ceil(burst / rate)`, `q` the units the rate earns in it (at least the
 * burst). So `q / w` never exceeds the rate, and `q` is never below what may go at once. A sliding
 * window is its `limit` per its window (rounded up to whole seconds: stricter).
 */
export const policyOf = (spec: LimiterSpec): Policy | undefined => {
  const rate = spec.rate
  if (rate === undefined) {
    return spec.concurrency === undefined
      ? undefined
      : { name: spec.name, quota: spec.concurrency.max, windowSeconds: undefined, unit: "concurrent-requests" }
  }
  if (rate._tag === "SlidingWindow") {
    return { name: spec.name, quota: rate.limit, windowSeconds: Math.max(1, Math.ceil(rate.windowMs / 1000)), unit: "requests" }
  }
  const windowSeconds = Math.max(1, Math.ceil((rate.burst * rate.intervalMs) / 1000 - 1e-9))
  const earned = Math.floor((windowSeconds * 1000) / rate.intervalMs + 1e-9)
  return { name: spec.name, quota: Math.max(rate.burst, earned), windowSeconds, unit: "requests" }
}

const seconds = (ms: number) => Math.ceil(ms / 1000 - 1e-9)

/**
 * After an admission: `r` is what the permit left, `t` when the next unit comes back. For a token
 * bucket that is within one emission interval, so `t` is the interval rounded up (exact for rates of
 * 1/s and more); for a sliding window it is at most the window, which `t` says.
 */
export const afterAdmission = (spec: LimiterSpec, permit: Permit): Limit | undefined => {
  const rate = spec.rate
  if (rate === undefined || permit.degraded || permit.remaining === undefined) return undefined
  const full = rate._tag === "TokenBucket" ? permit.remaining >= rate.burst : permit.remaining >= rate.limit
  return {
    name: spec.name,
    remaining: permit.remaining,
    resetSeconds: full ? undefined : rate._tag === "TokenBucket" ? seconds(rate.intervalMs) : seconds(rate.windowMs)
  }
}

/**
 * Whether a refusal is the concurrency bound's (every lease held) rather than the rate's: its limit
 * is the concurrency bound and not the rate's capacity (when both are equal, the rate is assumed:
 * the longer wait).
 */
const byConcurrency = (spec: LimiterSpec, error: RateLimitExceeded): boolean =>
  spec.concurrency !== undefined && error.limit === spec.concurrency.max &&
  (spec.rate === undefined || error.limit !== (spec.rate._tag === "TokenBucket" ? spec.rate.burst : spec.rate.limit))

/**
 * After a refusal: `r` as refused, `t` when the next unit comes back. For a token bucket that is the
 * refusal's wait less the units the request needed beyond the next one (`cost - r - 1` intervals);
 * for a sliding window the wait itself (never later than `Retry-After`, as the draft asks). A
 * concurrency refusal has no `t`: a lease comes back when a request in flight ends, which nothing
 * foresees.
 */
export const afterRefusal = (spec: LimiterSpec, error: RateLimitExceeded, cost: number): Limit => {
  if (byConcurrency(spec, error)) return { name: spec.name, remaining: 0, resetSeconds: undefined }
  const waitMs = Duration.toMillis(error.retryAfter)
  const rate = spec.rate
  const nextMs = rate !== undefined && rate._tag === "TokenBucket"
    ? Math.max(0, waitMs - Math.max(0, cost - error.remaining - 1) * rate.intervalMs)
    : waitMs
  return { name: spec.name, remaining: error.remaining, resetSeconds: seconds(nextMs) }
}

/**
 * `Retry-After` in whole seconds, at least 1. A concurrency refusal says 1: the refusal's own
 * `retryAfter` is when the soonest lease would expire unrenewed (up to `lease_ttl_seconds`), while
 * a request in flight usually ends much sooner.
 */
export const retryAfterSeconds = (spec: LimiterSpec, error: RateLimitExceeded): number =>
  byConcurrency(spec, error) ? 1 : Math.max(1, seconds(Duration.toMillis(error.retryAfter)))

/** An sf-string (RFC 8941): limiter names are letters, digits, `_`, `-`, `.`, so nothing needs escaping, but quotes are. */
const sfString = (value: string) => `"${value.replace(/[\\"]/g, (c) => `\\${c}`)}"`

const policyItem = (policy: Policy) =>
  `${sfString(policy.name)};q=${policy.quota}` +
  (policy.unit === "requests" ? "" : `;qu="${policy.unit}"`) +
  (policy.windowSeconds === undefined ? "" : `;w=${policy.windowSeconds}`)

const limitItem = (limit: Limit) =>
  `${sfString(limit.name)};r=${limit.remaining}` + (limit.resetSeconds === undefined ? "" : `;t=${limit.resetSeconds}`)

export type Standard = "draft-10" | "draft-7"

export interface Advertised {
  readonly policies: ReadonlyArray<Policy>
  readonly limits: ReadonlyArray<Limit>
  /** The limit a single-policy format reports: the refused one, else the one with least left. */
  readonly primary: Limit | undefined
}

/** The fields to add, as [name, value] pairs; a list field already set by another middleware is extended. */
export const fields = (
  advertised: Advertised,
  options: { readonly standard: Standard | false; readonly legacy: boolean; readonly nowMs: number }
): Array<readonly [string, string]> => {
  const out: Array<readonly [string, string]> = []
  const { limits, policies, primary } = advertised
  if (options.standard === "draft-10") {
    if (policies.length > 0) out.push(["ratelimit-policy", policies.map(policyItem).join(", ")])
    if (limits.length > 0) out.push(["ratelimit", limits.map(limitItem).join(", ")])
  }
  const policy = primary === undefined ? undefined : policies.find((p) => p.name === primary.name)
  if (primary === undefined || policy === undefined) return out
  const reset = primary.resetSeconds ?? 0
  if (options.standard === "draft-7") {
    out.push(["ratelimit-policy", `${policy.quota}${policy.windowSeconds === undefined ? "" : `;w=${policy.windowSeconds}`}`])
    out.push(["ratelimit", `limit=${policy.quota}, remaining=${primary.remaining}, reset=${reset}`])
  }
  if (options.legacy) {
    out.push(["x-ratelimit-limit", String(policy.quota)])
    out.push(["x-ratelimit-remaining", String(primary.remaining)])
    // Seconds since the epoch, as GitHub and express-rate-limit send it.
    out.push(["x-ratelimit-reset", String(Math.ceil(options.nowMs / 1000) + reset)])
  }
  return out
}

/** The limit with least left (a ratio of its quota), for the single-policy formats. */
export const tightest = (limits: ReadonlyArray<Limit>, policies: ReadonlyArray<Policy>): Limit | undefined => {
  let best: Limit | undefined
  let bestRatio = Infinity
  for (const limit of limits) {
    const quota = policies.find((p) => p.name === limit.name)?.quota ?? 1
    const ratio = limit.remaining / Math.max(1, quota)
    if (ratio < bestRatio) {
      best = limit
      bestRatio = ratio
    }
  }
  return best
}

export const QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded" as const

/** The draft's `quota-exceeded` problem (RFC 9457), naming the policies the request exceeded. */
export const problem = (violated: ReadonlyArray<string>, retryAfter: number) => ({
  type: QUOTA_EXCEEDED,
  title: "Request cannot be satisfied as assigned quota has been exceeded",
  status: 429 as const,
  detail: `Retry after ${retryAfter} s`,
  "violated-policies": violated
})

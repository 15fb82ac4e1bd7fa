import type { LimiterConfig } from "./Settings.js"

/**
 * A limiter's settings after validation, in the units the engines compute with (milliseconds).
 * Engines receive the spec with every call, so one store serves any number of limiters.
 */
export interface TokenBucket {
  readonly _tag: "TokenBucket"
  readonly ratePerSecond: number
  readonly burst: number
  /** Milliseconds between admissions at the sustained rate (GCRA's emission interval). */
  readonly intervalMs: number
}

export interface SlidingWindow {
  readonly _tag: "SlidingWindow"
  readonly limit: number
  readonly windowMs: number
}

export type RatePolicy = TokenBucket | SlidingWindow

export interface ConcurrencyPolicy {
  readonly max: number
  readonly leaseTtlMs: number
}

/** Optimistic-lock retries: jittered exponential back-off, bounded in attempts. */
export interface RetryPolicy {
  readonly maxAttempts: number
  readonly baseDelayMs: number
  readonly maxDelayMs: number
}

export interface LimiterSpec {
  readonly name: string
  readonly store: string
  readonly rate: RatePolicy | undefined
  readonly concurrency: ConcurrencyPolicy | undefined
  /** Default wait bound for `acquire`; undefined waits as long as it takes. */
  readonly timeoutMs: number | undefined
  readonly failClosed: boolean
  /** Shadow mode: calls proceed at once and the store's decisions are only counted (internal/shadow.ts). */
  readonly shadow?: boolean | undefined
  readonly retry: RetryPolicy
}

/** The most units one request can ever take at once, or undefined when only concurrency is bounded. */
export const capacity = (rate: RatePolicy | undefined): number | undefined =>
  rate === undefined ? undefined : rate._tag === "TokenBucket" ? rate.burst : rate.limit

/**
 * The state key of a limiter's key. Limiter names are validated identifiers without ':',
 * so the first ':' separates them from the caller's key, whatever characters that key holds.
 */
export const stateKey = (limiter: string, key: string): string => `${limiter}:${key}`

/** The engines' view of a validated limiter, in milliseconds. */
export const fromConfig = (name: string, config: LimiterConfig): LimiterSpec => {
  let rate: RatePolicy | undefined
  if (config.algorithm === "sliding_window" && config.limit !== undefined && config.window_seconds !== undefined) {
    rate = { _tag: "SlidingWindow", limit: config.limit, windowMs: config.window_seconds * 1000 }
  } else if (config.rate_per_second !== undefined) {
    rate = {
      _tag: "TokenBucket",
      ratePerSecond: config.rate_per_second,
      burst: config.burst ?? 1,
      intervalMs: 1000 / config.rate_per_second
    }
  }
  return {
    name,
    store: config.store,
    rate,
    concurrency: config.max_concurrent === undefined
      ? undefined
      : { max: config.max_concurrent, leaseTtlMs: config.lease_ttl_seconds * 1000 },
    // A timeout of more than about 1.8e305 s would be an infinite number of ms.
    timeoutMs: config.timeout === undefined ? undefined : Math.min(config.timeout * 1000, Number.MAX_VALUE),
    failClosed: config.fail_closed,
    shadow: config.mode === "shadow",
    retry: {
      maxAttempts: config.retry_max_attempts,
      baseDelayMs: config.retry_base_delay_ms,
      maxDelayMs: config.retry_max_delay_ms
    }
  }
}

/**
 * Limiters for tests: tables as a configuration gives them, specs as engines receive them, and the
 * rate policies alone, each valid by default and with any field overridden.
 */
import * as Effect from "effect/Effect"
import type { LimiterSpec, SlidingWindow, TokenBucket } from "../../src/LimiterSpec.js"
import { decodeSettings, type LimiterConfigInput, toLimiterSpec } from "../../src/Settings.js"

/** A limiter's table without its store (the test's harness names the store). */
export type LimiterTable = Omit<LimiterConfigInput, "store">

/** A token bucket: 1 a second, burst 1. */
export const tokenBucketTable = (overrides: LimiterTable = {}): LimiterTable => ({ rate_per_second: 1, ...overrides })

/** A sliding window: 1 a second. */
export const slidingWindowTable = (overrides: LimiterTable = {}): LimiterTable => ({
  algorithm: "sliding_window",
  limit: 1,
  window_seconds: 1,
  ...overrides
})

/** Concurrency alone: 1 lease at a time, held 5 s unless renewed. */
export const leasedTable = (overrides: LimiterTable = {}): LimiterTable => ({ max_concurrent: 1, lease_ttl_seconds: 5, ...overrides })

/** A token bucket and leases together: 1 a second, 1 lease at a time. */
export const bothTable = (overrides: LimiterTable = {}): LimiterTable => ({ ...tokenBucketTable(), ...leasedTable(), ...overrides })

/**
 * The spec the library derives from `table` for limiter `name` on store "s", through the same
 * decoding as a configuration file, so it is what a limiter passes to its store.
 */
export const limiterSpec = (name: string, table: LimiterTable): LimiterSpec =>
  Effect.runSync(
    Effect.map(
      decodeSettings({ stores: { s: { engine: "memory" } }, limiters: { [name]: { ...table, store: "s" } } }),
      (settings) => toLimiterSpec(name, settings.limiters[name]!)
    )
  )

/** A token bucket's policy in ms (GCRA's emission interval), for the algorithms in `src/internal`. */
export const tokenBucket = (overrides: { readonly burst?: number; readonly intervalMs?: number } = {}): TokenBucket => {
  const intervalMs = overrides.intervalMs ?? 1_000
  return { _tag: "TokenBucket", ratePerSecond: 1_000 / intervalMs, burst: overrides.burst ?? 1, intervalMs }
}

/** A sliding window's policy in ms. */
export const slidingWindow = (overrides: { readonly limit?: number; readonly windowMs?: number } = {}): SlidingWindow => ({
  _tag: "SlidingWindow",
  limit: overrides.limit ?? 1,
  windowMs: overrides.windowMs ?? 1_000
})

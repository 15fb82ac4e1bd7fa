/** State per limiter and key: any characters, long names and keys, limiters side by side on one store. */
import { describe, expect } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { leasedTable, type LimiterTable, slidingWindowTable, tokenBucketTable } from "../support/fixtures.js"
import { type Compliance, RateLimiter, unique } from "./harness.js"

/** One of each algorithm, each admitting 1 on a key and then nothing for a long while. */
const singles: ReadonlyArray<LimiterTable> = [
  tokenBucketTable({ rate_per_second: 0.1 }),
  slidingWindowTable({ window_seconds: 10 }),
  leasedTable({ lease_ttl_seconds: 30 })
]

export const keys = ({ limiters, test }: Compliance) => {
  describe("per-key state", () => {
    const keys = ["", "a", "b", "it's \"quoted\"", "ключ-🔑", "'; DROP TABLE rate_limiter_state; --", "{tag}:KEYS[1]", "x".repeat(10_000), "x".repeat(9_999) + "y",
      // Lone surrogates: UTF-8 would turn each into U+FFFD, making these one key.
      "a\uD800", "a\uDC00", "a\uFFFD", "\uDC00\uD800", "\uD800\uDC00"]
    test("every key has its own limit, whatever characters it holds", () => {
      const name = unique("keys")
      return Effect.gen(function*() {
        for (const key of keys) yield* Effect.scoped(RateLimiter.tryAcquire(name, { key }))
        for (const key of keys) {
          const denied = yield* Effect.scoped(RateLimiter.tryAcquire(name, { key })).pipe(Effect.flip)
          expect(denied._tag).toBe("RateLimitExceeded")
        }
      }).pipe(Effect.provide(limiters({ [name]: tokenBucketTable({ rate_per_second: 0.1 }) })))
    }, 30_000)

    test("a limiter name near the longest with a long plain key works on every algorithm, each key its own", () => {
      const names = singles.map((table, i) => [`${"nwc"[i]!.repeat(96)}_${unique("l")}`.slice(0, 128), table] as const)
      const long = ["k".repeat(150), "k".repeat(149) + "j"]
      return Effect.gen(function*() {
        for (const [limiter] of names) {
          yield* Effect.scoped(Effect.gen(function*() {
            for (const key of long) {
              const permit = yield* RateLimiter.tryAcquire(limiter, { key })
              expect(permit.degraded).toBe(false)
            }
            for (const key of long) {
              expect((yield* RateLimiter.tryAcquire(limiter, { key }).pipe(Effect.flip))._tag).toBe("RateLimitExceeded")
            }
          }))
        }
      }).pipe(Effect.provide(limiters(Object.fromEntries(names))))
    }, 30_000)

    test("limiters sharing a store do not share state", () => {
      const pairs = singles.map((table) => [unique("la"), unique("lb"), table] as const)
      return Effect.gen(function*() {
        // On every algorithm, exhausting one limiter on a key leaves the other's limit on that key whole, either way round.
        for (const [a, b] of pairs) {
          for (const [spent, other, key] of [[a, b, "k"], [b, a, "j"]] as const) {
            yield* Effect.scoped(Effect.gen(function*() {
              yield* RateLimiter.tryAcquire(spent, { key })
              expect((yield* RateLimiter.tryAcquire(spent, { key }).pipe(Effect.flip))._tag).toBe("RateLimitExceeded")
              const permit = yield* RateLimiter.tryAcquire(other, { key })
              expect(permit.degraded).toBe(false)
              expect((yield* RateLimiter.tryAcquire(other, { key }).pipe(Effect.flip))._tag).toBe("RateLimitExceeded")
            }))
          }
        }
      }).pipe(Effect.provide(limiters(Object.fromEntries(pairs.flatMap(([a, b, table]) => [[a, table], [b, table]])))))
    }, 30_000)
  })
}

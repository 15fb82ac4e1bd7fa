/**
 * `@effect/experimental`'s `RateLimiterStore` on Redis: its fixed window and token bucket, one Lua
 * script each on Redis `TIME`, over an ioredis client the program provides. Keys are
 * `PREFIXx:fw:{KEY}` and `PREFIXx:tb:{KEY}` (one hash slot each), and expire once they no longer
 * differ from a fresh one.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type { Redis } from "ioredis"
import { RateLimitStoreError, type RateLimiterStore } from "@effect/experimental/RateLimiter"
import { isWellFormed, wtf8 } from "../internal/keys.js"

export interface RedisOptions {
  /** Prepended to every key (rate-sync's stores default to "rate-sync:"). */
  readonly key_prefix?: string | undefined
}

/** Redis TIME in ms (a double: exact to the microsecond for centuries). */
const NOW = `local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000`

/** KEYS[1] the window; ARGV: tokens, ms each token adds to the window, limit (-1: none). Returns {count, ttl ms}. */
const FIXED_WINDOW = `${NOW}
local tokens = tonumber(ARGV[1])
local step = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local count = tonumber(redis.call('HGET', KEYS[1], 'count') or '0')
local ends = tonumber(redis.call('HGET', KEYS[1], 'ends') or '0')
if ends <= now then count = 0; ends = now end
if limit >= 0 and count + tokens > limit then return {tostring(count + tokens), tostring(ends - now)} end
count = count + tokens
ends = ends + step * tokens
redis.call('HSET', KEYS[1], 'count', tostring(count), 'ends', tostring(ends))
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil(ends - now)))
return {tostring(count), tostring(ends - now)}`

/** KEYS[1] the bucket; ARGV: tokens, limit, ms per token, overflow (1/0). Returns the tokens left (below 0: short by). */
const TOKEN_BUCKET = `${NOW}
local tokens = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local per = tonumber(ARGV[3])
local overflow = ARGV[4] == '1'
local have = tonumber(redis.call('HGET', KEYS[1], 'tokens') or tostring(limit))
local refilled = tonumber(redis.call('HGET', KEYS[1], 'refilled') or tostring(now))
local n = math.max(0, math.floor((now - refilled) / per))
if n > 0 then have = math.min(limit, have + n); refilled = refilled + n * per end
local left = have - tokens
if overflow or left >= 0 then
  redis.call('HSET', KEYS[1], 'tokens', tostring(left), 'refilled', tostring(refilled))
  redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil(refilled + (limit - left) * per - now)))
end
return tostring(left)`

const storeError = (cause: unknown) =>
  new RateLimitStoreError({ message: `rate-sync (Redis): ${cause instanceof Error ? cause.message : String(cause)}`, cause })

/** The store over `client`. */
export const makeRedis = (client: Redis, options: RedisOptions = {}): RateLimiterStore["Type"] => {
  const prefix = options.key_prefix ?? "rate-sync:"
  // A key with lone surrogates is sent as its WTF-8 bytes: as a string it would be sent as UTF-8, one key for many.
  const keyOf = (kind: "fw" | "tb", key: string): string | Buffer =>
    isWellFormed(key) ? `${prefix}x:${kind}:{${key}}` : Buffer.concat([Buffer.from(`${prefix}x:${kind}:{`), wtf8(key), Buffer.from("}")])
  const run = (lua: string, key: string | Buffer, args: ReadonlyArray<string>) =>
    Effect.tryPromise({ try: () => client.eval(lua, 1, key, ...args), catch: storeError })
  return {
    fixedWindow: ({ key, limit, refillRate, tokens }) =>
      Effect.flatMap(
        run(FIXED_WINDOW, keyOf("fw", key), [String(tokens), String(Duration.toMillis(refillRate)), String(limit ?? -1)]),
        (reply) =>
          Array.isArray(reply) && reply.length === 2
            ? Effect.succeed([Number(reply[0]), Number(reply[1])] as const)
            : Effect.fail(storeError(`unexpected reply ${JSON.stringify(reply)}`))
      ),
    tokenBucket: ({ allowOverflow, key, limit, refillRate, tokens }) =>
      Effect.flatMap(
        run(TOKEN_BUCKET, keyOf("tb", key), [String(tokens), String(limit), String(Duration.toMillis(refillRate)), allowOverflow ? "1" : "0"]),
        (reply) => typeof reply === "string" ? Effect.succeed(Number(reply)) : Effect.fail(storeError(`unexpected reply ${JSON.stringify(reply)}`))
      )
  }
}

/**
 * `rate-sync/experimental`: a `RateLimiterStore` for `@effect/experimental`'s `RateLimiter` (and what
 * is built on it, such as `@effect/workflow`'s `DurableRateLimiter`) on rate-sync's engines, so a
 * program that uses that API gets limits shared through PostgreSQL or Redis, on the store's clock,
 * by swapping one layer:
 *
 * ```ts
 * RateLimiter.layer.pipe(Layer.provide(Experimental.layerPostgres()), Layer.provide(PgClient.layer({ url })))
 * ```
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import { RateLimiterStore } from "@effect/experimental/RateLimiter"
import * as Layer from "effect/Layer"
import type { Redis } from "ioredis"
import { makePostgres, type PostgresOptions } from "./postgres.js"
import { makeRedis, type RedisOptions } from "./redis.js"

export { makePostgres, makeRedis, type PostgresOptions, type RedisOptions }

/** The store in rate-sync's PostgreSQL table, over the program's `PgClient` (as `SqlClient`). */
export const layerPostgres = (options?: PostgresOptions): Layer.Layer<RateLimiterStore, never, SqlClient.SqlClient> =>
  Layer.effect(RateLimiterStore, makePostgres(options))

/** The store on Redis, over the program's ioredis client. */
export const layerRedis = (client: Redis, options?: RedisOptions): Layer.Layer<RateLimiterStore> =>
  Layer.succeed(RateLimiterStore, makeRedis(client, options))

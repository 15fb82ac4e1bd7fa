/**
 * The Schemas of one entry of each table, keys as documented (snake_case): a store's table (a union
 * discriminated by `engine`) and a limiter's table. Values decode as `configValues.ts` says.
 */
import * as Schema from "effect/Schema"
import type { Engine } from "../Settings.js"
import {
  BooleanLike,
  describe,
  Identifier,
  isTable,
  NonEmptyString,
  oneOf,
  optional,
  ranged,
  ranges,
  Str,
  withDefault
} from "./configValues.js"

export const MemoryStoreConfig = Schema.Struct({
  engine: Schema.Literal("memory"),
  timing_margin_ms: withDefault(ranged(ranges.memory.timing_margin_ms), 0)
})

export const PostgresStoreConfig = Schema.Struct({
  engine: Schema.Literal("postgres"),
  url: NonEmptyString,
  /**
   * A direct connection (or a session-mode pool) for the one LISTEN connection, when `url` goes
   * through a pooler in transaction mode, where LISTEN cannot hold. Unset: LISTEN goes through `url`.
   */
  listen_url: optional(NonEmptyString),
  table_name: withDefault(Identifier, "rate_limiter_state"),
  schema_name: withDefault(Identifier, "public"),
  auto_create: withDefault(BooleanLike, false),
  pool_min_size: withDefault(ranged(ranges.postgres.pool_min_size), 2),
  pool_max_size: withDefault(ranged(ranges.postgres.pool_max_size), 10),
  timing_margin_ms: withDefault(ranged(ranges.postgres.timing_margin_ms), 10),
  /** Speed knob: an UNLOGGED table (with auto_create); its state is lost if the server crashes. */
  unlogged: withDefault(BooleanLike, false),
  /** Speed knob: the limiter's own commits are not waited for on disk. */
  synchronous_commit: withDefault(BooleanLike, true),
  /** How long an operation waits for a free pooled connection before failing. */
  pool_timeout_ms: withDefault(ranged(ranges.postgres.pool_timeout_ms), 5_000),
  /** The longest one store operation may take (a row lock held elsewhere, an overloaded server) before it fails with StoreTimeout. */
  operation_timeout_ms: withDefault(ranged(ranges.postgres.operation_timeout_ms), 2_000)
})

export const RedisStoreConfig = Schema.Struct({
  engine: Schema.Literal("redis"),
  url: NonEmptyString,
  key_prefix: withDefault(Str, "rate-sync:"),
  pool_max_size: withDefault(ranged(ranges.redis.pool_max_size), 1),
  timing_margin_ms: withDefault(ranged(ranges.redis.timing_margin_ms), 10),
  connect_timeout_ms: withDefault(ranged(ranges.redis.connect_timeout_ms), 5_000),
  command_timeout_ms: withDefault(ranged(ranges.redis.command_timeout_ms), 2_000),
  /** A Redis Cluster: `url` holds seed nodes, comma-separated (the others are found from them). */
  cluster: withDefault(BooleanLike, false)
})

export const LimiterConfig = Schema.Struct({
  store: NonEmptyString,
  algorithm: withDefault(oneOf("token_bucket", "sliding_window"), "token_bucket"),
  rate_per_second: optional(ranged(ranges.limiter.rate_per_second)),
  burst: optional(ranged(ranges.limiter.burst)),
  limit: optional(ranged(ranges.limiter.limit)),
  window_seconds: optional(ranged(ranges.limiter.window_seconds)),
  max_concurrent: optional(ranged(ranges.limiter.max_concurrent)),
  /** Any finite wait: one too long for a timer is no bound at all. */
  timeout: optional(ranged(ranges.limiter.timeout)),
  lease_ttl_seconds: withDefault(ranged(ranges.limiter.lease_ttl_seconds), 30),
  fail_closed: withDefault(BooleanLike, false),
  /** "shadow": every call proceeds at once, and what enforcing would have done is only counted. */
  mode: withDefault(oneOf("enforce", "shadow"), "enforce"),
  retry_max_attempts: withDefault(ranged(ranges.limiter.retry_max_attempts), 12),
  retry_base_delay_ms: withDefault(ranged(ranges.limiter.retry_base_delay_ms), 1),
  retry_max_delay_ms: withDefault(ranged(ranges.limiter.retry_max_delay_ms), 100)
})

export type MemoryStoreConfig = typeof MemoryStoreConfig.Type
/** What the PostgreSQL engine is built from: every key decoded, the url read. */
export type PostgresStoreConfig = typeof PostgresStoreConfig.Type
/** What the Redis engine is built from: every key decoded, the url read. */
export type RedisStoreConfig = typeof RedisStoreConfig.Type
/** A store whose every key, url included, is known: what `decodeSettings` and `Toml.load` give. */
export type StoreConfig = MemoryStoreConfig | PostgresStoreConfig | RedisStoreConfig
export type LimiterConfig = typeof LimiterConfig.Type

export const engines: ReadonlyArray<Engine> = ["memory", "postgres", "redis"]

/** Any table, or what was found instead. */
const AnyTable = Schema.declare(isTable, { message: (issue) => `Expected a table, found ${describe(issue.actual)}` })

/** A pool never keeps open more connections than it may open. */
const PostgresStore = PostgresStoreConfig.pipe(Schema.filter((store) =>
  store.pool_min_size <= store.pool_max_size || {
    path: ["pool_min_size"],
    message: `Expected at most pool_max_size (${store.pool_max_size}), found ${store.pool_min_size}`
  }
))

/**
 * A store's table: a union of the three engines' tables, discriminated by `engine`. The engine is
 * checked first, in the documented words: the union would read any value as a string to find its
 * member (`["memory"]` taken for "memory", `{ toString: 1 }` a thrown TypeError).
 */
export const StoreConfig = AnyTable.pipe(
  Schema.filter((table) =>
    engines.some((engine) => engine === table["engine"]) || {
      path: ["engine"],
      message: `Expected "memory", "postgres" or "redis", found ${describe(table["engine"])}`
    }
  ),
  Schema.compose(Schema.Union(MemoryStoreConfig, PostgresStore, RedisStoreConfig), { strict: false })
)

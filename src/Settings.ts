/**
 * The configuration: the one Schema every source goes through (`SettingsDocument`: TOML, Effect
 * `Config`, plain objects), its types, and server urls read when a store connects. Keys are exactly
 * as documented in the README (snake_case). Numbers and booleans are typed by the key they belong to,
 * never by what a string looks like: `"123456"` given for a password stays a string, while `"100"`
 * given for `rate_per_second` (as env vars must) decodes to 100.
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Schema from "effect/Schema"
import type { ConfigurationError } from "./Errors.js"
import {
  LimiterConfig,
  MemoryStoreConfig,
  PostgresStoreConfig,
  RedisStoreConfig,
  type StoreConfig
} from "./internal/settingsEntries.js"
import { configurationError, SettingsDocument } from "./internal/settingsSchema.js"

/** The ranges of the numeric keys, for tools and tests; the engines' view of a validated limiter. */
export { inRange, MAX_STATE_SECONDS, type Range, ranges } from "./internal/configValues.js"
export { fromConfig as toLimiterSpec } from "./LimiterSpec.js"
/** One entry of each table, Schema and type: `StoreConfig` is the union of the three stores' tables on `engine`. */
export {
  engines,
  LimiterConfig,
  MemoryStoreConfig,
  PostgresStoreConfig,
  RedisStoreConfig,
  StoreConfig
} from "./internal/settingsEntries.js"
/** The whole document as one Schema (`decodeSettings` decodes with it), and with each limiter as a `LimiterSpec`. */
export { maxNameLength, SettingsDocument, SettingsWithSpecs } from "./internal/settingsSchema.js"

export type Engine = "memory" | "postgres" | "redis"

/**
 * A server store's url, or how to read it when the store connects. `RateSync.layerToml` defers a url
 * holding `${VAR}` this way, so a store served by `MemoryStore.layer` never reads its variables (a test
 * needs no DATABASE_URL); reading fails as loading would have, naming the variable and the key.
 */
export type StoreUrl = string | Effect.Effect<string, ConfigurationError>

/** The keys that hold where a server store connects: their `${VAR}` may wait until it connects. */
export const urlKeys = ["url", "listen_url"] as const

/** A server store's keys with its urls (`url`, and `listen_url` where there is one) possibly still to read. */
export type WithDeferredUrl<C extends { readonly url: string }> =
  & Omit<C, "url" | "listen_url">
  & { readonly url: StoreUrl }
  & ("listen_url" extends keyof C ? { readonly listen_url?: StoreUrl } : unknown)

/**
 * What a `StoreFactory` is given: every key decoded, and a server store's url possibly still to read.
 * A factory that connects reads it (`resolveUrl`, `resolveStore`); one that does not (`MemoryStore.layer`)
 * never does. A `StoreConfig` is one.
 */
export type DeferredStoreConfig =
  | MemoryStoreConfig
  | WithDeferredUrl<PostgresStoreConfig>
  | WithDeferredUrl<RedisStoreConfig>
export type StoreConfigInput =
  | typeof MemoryStoreConfig.Encoded
  | typeof PostgresStoreConfig.Encoded
  | typeof RedisStoreConfig.Encoded

export type LimiterConfigInput = typeof LimiterConfig.Encoded

export const storeKeys: Record<Engine, ReadonlyArray<string>> = {
  memory: Object.keys(MemoryStoreConfig.fields),
  postgres: Object.keys(PostgresStoreConfig.fields),
  redis: Object.keys(RedisStoreConfig.fields)
}
export const limiterKeys: ReadonlyArray<string> = Object.keys(LimiterConfig.fields)

/**
 * A validated configuration. By default every store is resolved; `Settings<DeferredStoreConfig>` (what
 * `RateSync` builds from) may hold server urls still to read.
 */
export interface Settings<S extends DeferredStoreConfig = StoreConfig> {
  readonly stores: Readonly<Record<string, S>>
  readonly limiters: Readonly<Record<string, LimiterConfig>>
}

/** What a user writes: the TOML tables, or the same shape as a plain object. */
export interface SettingsInput {
  readonly stores?: Readonly<Record<string, StoreConfigInput>>
  readonly limiters?: Readonly<Record<string, LimiterConfigInput>>
}

/** Validates a whole configuration, reporting every problem at once with its key path. */
export const decodeSettings = (input: unknown): Effect.Effect<Settings, ConfigurationError> =>
  Effect.suspend(() => Schema.decodeUnknown(SettingsDocument)(input)).pipe(Effect.mapError((error) => configurationError(error)))

/**
 * The url a server store connects to, read now if it was deferred, and checked as loading checks it
 * (`stores.NAME.url: Expected a non-empty string` for `${VAR:-}` left empty).
 */
export const resolveUrl = (
  store: string,
  url: StoreUrl,
  key: (typeof urlKeys)[number] = "url"
): Effect.Effect<string, ConfigurationError> =>
  typeof url === "string" ? Effect.succeed(url) : Effect.flatMap(url, (read) =>
    Either.match(Schema.decodeUnknownEither(PostgresStoreConfig.fields.url)(read), {
      onLeft: (error) => Effect.fail(configurationError(error, ["stores", store, key])),
      onRight: Effect.succeed
    }))

/** A PostgreSQL store's `listen_url`, read now if it was deferred (as `resolveUrl`); undefined when unset. */
export const resolveListenUrl = (store: string, url: StoreUrl | undefined): Effect.Effect<string | undefined, ConfigurationError> =>
  url === undefined ? Effect.succeed(undefined) : resolveUrl(store, url, "listen_url")

/** A PostgreSQL store with its urls (`url`, `listen_url`) read, each as `resolveUrl` reads it. */
export const resolvePostgres = (
  name: string,
  config: WithDeferredUrl<PostgresStoreConfig>
): Effect.Effect<PostgresStoreConfig, ConfigurationError> =>
  Effect.map(
    Effect.all([resolveUrl(name, config.url), resolveListenUrl(name, config.listen_url)]),
    ([url, listen_url]): PostgresStoreConfig => {
      const { listen_url: _deferred, ...rest } = config
      return listen_url === undefined ? { ...rest, url } : { ...rest, url, listen_url }
    }
  )

/** A store as its engine takes it: its deferred urls read (see `StoreUrl`). */
export const resolveStore = (name: string, config: DeferredStoreConfig): Effect.Effect<StoreConfig, ConfigurationError> => {
  switch (config.engine) {
    case "memory":
      return Effect.succeed(config)
    case "postgres":
      return resolvePostgres(name, config)
    case "redis":
      return Effect.map(resolveUrl(name, config.url), (url): RedisStoreConfig => ({ ...config, url }))
  }
}

/**
 * Layers that build the whole graph, stores and limiters, from one configuration:
 *
 * ```ts
 * const Live = RateSync.layerToml().pipe(Layer.provide(Stores.layer))
 * // the same limiter definitions, every store in memory:
 * const Test = RateSync.layerToml().pipe(Layer.provide(MemoryStore.layer))
 * ```
 */
import type * as FileSystem from "@effect/platform/FileSystem"
import type * as Path from "@effect/platform/Path"
import * as Config from "effect/Config"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import { settingsConfig } from "./EnvConfig.js"
import { type BuildError, ConfigIssue, ConfigurationError } from "./Errors.js"
import * as RateLimiter from "./RateLimiter.js"
import { decodeSettings, type DeferredStoreConfig, type Settings, type SettingsInput, toLimiterSpec } from "./Settings.js"
import { type Store, StoreFactory } from "./Store.js"
import * as Toml from "./Toml.js"


/** Builds every store through the `StoreFactory`, then the limiters bound to them. */
export const make = (
  settings: Settings<DeferredStoreConfig>
): Effect.Effect<RateLimiter.RateLimiter["Type"], BuildError, StoreFactory | Scope.Scope> =>
  Effect.gen(function*() {
    const factory = yield* StoreFactory
    const stores = new Map<string, Store>()
    for (const [name, config] of Object.entries(settings.stores)) {
      stores.set(name, yield* factory.make(name, config))
    }
    return yield* RateLimiter.make({
      stores,
      limiters: Object.entries(settings.limiters).map(([name, config]) => toLimiterSpec(name, config))
    })
  })

const fromSettings = <E, R>(settings: Effect.Effect<Settings<DeferredStoreConfig>, E, R>) =>
  Layer.scoped(RateLimiter.RateLimiter, Effect.flatMap(settings, make))

/** From a plain object with the TOML file's shape. */
export const layer = (input: SettingsInput): Layer.Layer<RateLimiter.RateLimiter, BuildError, StoreFactory> =>
  fromSettings(decodeSettings(input))

/**
 * From `rate-sync.toml`: the given path, else `$RATE_SYNC_CONFIG`, `./rate-sync.toml`, `./config/rate-sync.toml`,
 * read with Node's file system. A server store's `url = "${VAR}"` is read when the store connects, so
 * the same file serves `MemoryStore.layer` in tests with no VAR set, while `Stores.layer` fails without it.
 */
export const layerToml = (path?: string): Layer.Layer<RateLimiter.RateLimiter, BuildError, StoreFactory> =>
  layerTomlPlatform(path).pipe(Layer.provide(Toml.nodeFiles))

/** As `layerToml`, the file read through the `FileSystem` and `Path` the program provides (another runtime's, a test's). */
export const layerTomlPlatform = (
  path?: string
): Layer.Layer<RateLimiter.RateLimiter, BuildError, StoreFactory | FileSystem.FileSystem | Path.Path> =>
  fromSettings(Toml.loadDeferred(path))

/** From Effect `Config` (by default the `RATE_SYNC_*` environment variables). */
export const layerConfig = (
  config: Config.Config<unknown> = settingsConfig()
): Layer.Layer<RateLimiter.RateLimiter, BuildError, StoreFactory> =>
  fromSettings(
    config.pipe(
      Effect.mapError((error) =>
        new ConfigurationError({ issues: [new ConfigIssue({ path: "", message: `cannot read the configuration: ${String(error)}` })] })
      ),
      Effect.flatMap(decodeSettings)
    )
  )

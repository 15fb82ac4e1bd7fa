/**
 * The production `StoreFactory`: each configured store is built by the engine its `engine` key
 * names. Server engines are loaded when first configured, so a memory-only program needs none of
 * their drivers installed, and a server store's urls are read only here (see `Settings.StoreUrl`).
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { ConfigIssue, ConfigurationError } from "./Errors.js"
import * as MemoryStore from "./memory/MemoryStore.js"
import { resolvePostgres, resolveUrl } from "./Settings.js"
import type { DeferredStoreConfig } from "./Settings.js"
import { StoreFactory } from "./Store.js"

const load = <A>(name: string, engine: string, packages: string, module: () => Promise<A>) =>
  Effect.tryPromise({
    try: module,
    catch: (cause) =>
      new ConfigurationError({
        issues: [
          new ConfigIssue({
            path: `stores.${name}.engine`,
            message: `the "${engine}" engine needs ${packages} installed (${String(cause)})`
          })
        ]
      })
  })

/** How a server engine's stores are built, where a program builds them its own way (over its own client). */
export interface Engines {
  readonly postgres?: ((name: string, config: DeferredStoreConfig & { readonly engine: "postgres" }) => ReturnType<StoreFactory["Type"]["make"]>) | undefined
  readonly redis?: ((name: string, config: DeferredStoreConfig & { readonly engine: "redis" }) => ReturnType<StoreFactory["Type"]["make"]>) | undefined
}

/** The production `StoreFactory`; `engines` replaces how an engine's stores are built. */
export const make = (engines: Engines = {}): StoreFactory["Type"] => ({
  make: (name, config) => {
    switch (config.engine) {
      case "memory":
        return MemoryStore.make({ name, timingMarginMs: config.timing_margin_ms })
      // The urls are read here, by the engine that connects: a deferred `${VAR}` that is unset fails
      // the layer now, with the message loading would have given.
      case "postgres":
        if (engines.postgres !== undefined) return engines.postgres(name, config)
        return Effect.all([
          resolvePostgres(name, config),
          load(name, "postgres", "@effect/sql-pg and pg", () => import("./postgres/PostgresStore.js"))
        ]).pipe(Effect.flatMap(([resolved, PostgresStore]) => PostgresStore.make(name, resolved)))
      case "redis":
        if (engines.redis !== undefined) return engines.redis(name, config)
        return Effect.all([
          resolveUrl(name, config.url),
          load(name, "redis", "ioredis", () => import("./redis/RedisStore.js"))
        ]).pipe(Effect.flatMap(([url, RedisStore]) => RedisStore.make(name, { ...config, url })))
    }
  }
})

export const layer: Layer.Layer<StoreFactory> = Layer.succeed(StoreFactory, make())

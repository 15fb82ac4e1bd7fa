/**
 * The production `StoreFactory`: each configured store is built by the engine its `engine` key
 * names. Server engines are loaded when first configured, so a memory-only program needs none of
 * their drivers installed.
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { ConfigIssue, ConfigurationError } from "./Errors.js"
import * as MemoryStore from "./memory/MemoryStore.js"
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

export const layer: Layer.Layer<StoreFactory> = Layer.succeed(StoreFactory, {
  make: (name, config) => {
    switch (config.engine) {
      case "memory":
        return MemoryStore.make({ name, timingMarginMs: config.timing_margin_ms })
      case "postgres":
        return load(name, "postgres", "@effect/sql-pg and pg", () => import("./postgres/PostgresStore.js")).pipe(
          Effect.flatMap((PostgresStore) => PostgresStore.make(name, config))
        )
      case "redis":
        return load(name, "redis", "ioredis", () => import("./redis/RedisStore.js")).pipe(
          Effect.flatMap((RedisStore) => RedisStore.make(name, config))
        )
    }
  }
})

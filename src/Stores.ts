/**
 * The production `StoreFactory`: each configured store is built by the engine its `engine` key names.
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { ConfigIssue, ConfigurationError } from "./Errors.js"
import * as MemoryStore from "./memory/MemoryStore.js"
import * as PostgresStore from "./postgres/PostgresStore.js"
import { StoreFactory } from "./Store.js"

export const layer: Layer.Layer<StoreFactory> = Layer.succeed(StoreFactory, {
  make: (name, config) => {
    switch (config.engine) {
      case "memory":
        return MemoryStore.make({ name, timingMarginMs: config.timing_margin_ms })
      case "postgres":
        return PostgresStore.make(name, config)
      case "redis":
        return Effect.fail(
          new ConfigurationError({
            issues: [
              new ConfigIssue({
                path: `stores.${name}.engine`,
                message: `the "${config.engine}" engine is not in this release of rate-sync yet; use "memory"`
              })
            ]
          })
        )
    }
  }
})

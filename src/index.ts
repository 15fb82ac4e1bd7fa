/**
 * rate-sync: a distributed rate limiter for Effect programs.
 */
export * as EnvConfig from "./EnvConfig.js"
export * from "./Errors.js"
export type * from "./LimiterSpec.js"
export * as MemoryStore from "./memory/MemoryStore.js"
export * as Metrics from "./Metrics.js"
export {
  type AcquireAllEntry,
  type AcquireAllOptions,
  type AcquireOptions,
  type BackoffOptions,
  type LimiterState,
  type Permit,
  RateLimiter,
  type TryAcquireOptions
} from "./RateLimiter.js"
export * as RateSync from "./RateSync.js"
export * as Retry from "./Retry.js"
export * as Settings from "./Settings.js"
export type {
  AcquireOutcome,
  Backoffs,
  CompositeOutcome,
  LeaseRequest,
  RateOutcome,
  RateRequest,
  Reservation,
  StateView,
  Store
} from "./Store.js"
export { StoreFactory } from "./Store.js"
export * as Stores from "./Stores.js"
export * as Toml from "./Toml.js"

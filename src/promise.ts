/**
 * rate-sync for code that does not use Effect.
 *
 * ```ts
 * import { acquire, loadConfig } from "rate-sync/promise"
 * await loadConfig()
 * {
 *   await using permit = await acquire("api")
 *   await callUpstream()
 * } // the concurrency slot is released here
 * ```
 *
 * Failures reject with the same error classes as the Effect API (`AcquireTimeout`,
 * `RateLimitExceeded`, `ConfigurationError`...), each an `Error` with a `_tag`.
 */
import * as Cause from "effect/Cause"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Scope from "effect/Scope"
import type { BuildError } from "./Errors.js"
import { type LimiterState, type Permit, RateLimiter } from "./RateLimiter.js"
import * as RateSync from "./RateSync.js"
import {
  decodeSettings,
  type LimiterConfigInput,
  type Settings,
  type SettingsInput,
  type StoreConfigInput
} from "./Settings.js"
import * as Stores from "./Stores.js"
import * as Toml from "./Toml.js"

export * from "./Errors.js"
export type { LimiterState, Permit } from "./RateLimiter.js"

/** A held permit: release it with `await using`, `release()`, or `withPermit`. */
export interface HeldPermit extends Permit, AsyncDisposable {
  readonly release: () => Promise<void>
}

export interface AcquireOptions {
  readonly key?: string
  readonly cost?: number
  /** A number is milliseconds; `"2 seconds"` and other Effect durations work too. */
  readonly timeout?: Duration.DurationInput
  /** Stops waiting, giving back whatever had been reserved. */
  readonly signal?: AbortSignal
}

interface Generation {
  readonly runtime: ManagedRuntime.ManagedRuntime<RateLimiter, BuildError>
  active: number
  retired: boolean
}

let settings: Settings = { stores: {}, limiters: {} }
let current: Generation | undefined

const run = async <A, E>(effect: Effect.Effect<A, E>): Promise<A> => {
  const exit = await Effect.runPromiseExit(effect)
  if (Exit.isSuccess(exit)) return exit.value
  throw Cause.squash(exit.cause)
}

const runIn = async <A, E>(generation: Generation, effect: Effect.Effect<A, E, RateLimiter>, signal?: AbortSignal) => {
  const exit = await generation.runtime.runPromiseExit(effect, signal === undefined ? undefined : { signal })
  if (Exit.isSuccess(exit)) return exit.value
  throw Cause.squash(exit.cause)
}

/** Validates a change to the configuration at once, so a mistake throws where it was made. */
const update = async (next: SettingsInput) => {
  settings = await run(decodeSettings(next))
  // Permits held from the previous configuration are released through the runtime that granted them.
  if (current !== undefined) retire(current)
  current = undefined
}

const retire = (generation: Generation) => {
  generation.retired = true
  if (generation.active === 0) void generation.runtime.dispose()
}

const generation = (): Generation => {
  current ??= {
    runtime: ManagedRuntime.make(RateSync.layer(settings).pipe(Layer.provide(Stores.layer))),
    active: 0,
    retired: false
  }
  return current
}

/** Replaces the configuration with a TOML file (`path`, `$RATE_SYNC_CONFIG`, `./rate-sync.toml`, `./config/rate-sync.toml`). */
export const loadConfig = async (path?: string): Promise<void> => update(await run(Toml.load(path)))

/** Adds or replaces a store, with the keys of a `[stores.NAME]` table. */
export const configureStore = (name: string, config: StoreConfigInput): Promise<void> =>
  update({ stores: { ...settings.stores, [name]: config }, limiters: settings.limiters })

/** Adds or replaces a limiter, with the keys of a `[limiters.NAME]` table; its store must exist. */
export const configureLimiter = (name: string, config: LimiterConfigInput): Promise<void> =>
  update({ stores: settings.stores, limiters: { ...settings.limiters, [name]: config } })

const hold = async (
  take: Effect.Effect<Permit, unknown, RateLimiter | Scope.Scope>,
  signal?: AbortSignal
): Promise<HeldPermit> => {
  const owner = generation()
  owner.active++
  const scope = Effect.runSync(Scope.make())
  let released = false
  const release = async () => {
    if (released) return
    released = true
    await Effect.runPromise(Scope.close(scope, Exit.void))
    owner.active--
    if (owner.retired) retire(owner)
  }
  try {
    const permit = await runIn(owner, Scope.extend(take, scope), signal)
    return { ...permit, release, [Symbol.asyncDispose]: release }
  } catch (error) {
    await release()
    throw error
  }
}

/** Waits for a permit; its concurrency slot is held until it is released. */
export const acquire = (limiter: string, options: AcquireOptions = {}): Promise<HeldPermit> =>
  hold(RateLimiter.acquire(limiter, options), options.signal)

/**
 * Waits for a rate slot and takes it; nothing is held, so there is nothing to release. For limiters
 * without `max_concurrent` (others reject with `LeaseNeedsScope`).
 */
export const consume = (limiter: string, options: AcquireOptions = {}): Promise<Permit> => {
  const owner = generation()
  owner.active++
  return runIn(owner, RateLimiter.consume(limiter, options), options.signal).finally(() => {
    owner.active--
    if (owner.retired) retire(owner)
  })
}

/** Never waits: rejects with `RateLimitExceeded` (with `retryAfter`) when no permit is free. */
export const tryAcquire = (limiter: string, options: Omit<AcquireOptions, "timeout" | "signal"> = {}): Promise<HeldPermit> =>
  hold(RateLimiter.tryAcquire(limiter, options))

/** Runs `fn` holding a permit, releasing it however `fn` ends. */
export const withPermit = async <A>(limiter: string, fn: () => Promise<A>, options: AcquireOptions = {}): Promise<A> => {
  const permit = await acquire(limiter, options)
  try {
    return await fn()
  } finally {
    await permit.release()
  }
}

export const state = (limiter: string, options: { readonly key?: string } = {}): Promise<LimiterState> =>
  runIn(generation(), RateLimiter.state(limiter, options))

/** Pushes the next free slot out for every process, as after an upstream 429 with `Retry-After`. */
export const backoff = (
  limiter: string,
  options: { readonly key?: string; readonly retryAfter: Duration.DurationInput }
): Promise<void> => runIn(generation(), RateLimiter.backoff(limiter, options))

/** Releases the stores' connections. Configuration is kept; the next call reconnects. */
export const close = async (): Promise<void> => {
  const closing = current
  current = undefined
  if (closing !== undefined) await closing.runtime.dispose()
}

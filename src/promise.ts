/**
 * rate-sync for code that does not use Effect.
 *
 * ```js
 * import { close, configureLimiter, configureStore, withPermit } from "rate-sync/promise"
 *
 * await configureStore("main", { engine: "memory" })   // or loadConfig() for rate-sync.toml
 * await configureLimiter("api", { store: "main", rate_per_second: 10, max_concurrent: 4 })
 * const body = await withPermit("api", () => callUpstream(), { key: userId, timeout: 2_000 })
 * await close()                                        // before exit: closes the stores' connections
 * ```
 *
 * With TypeScript 5.2+ (or Node 24, where `await using` is plain JavaScript) a permit can be held for
 * a block: `await using permit = await acquire("api")` releases it at the end of the block.
 *
 * - Every duration returned is a number of milliseconds: errors' `retryAfter` and `timeout`,
 *   `state()`'s `resetAfter` and `nextSlotAfter`, a permit's `waited`. Durations given may be numbers
 *   of milliseconds or strings such as `"2 seconds"`.
 * - Failures reject with typed `Error` classes, each with a `_tag`: `RateLimitExceeded`,
 *   `AcquireTimeout`, `AbortError`, `InvalidOption`, `InvalidCost`, `LimiterNotFound`,
 *   `ConfigurationError`... Options JavaScript can pass but the types forbid reject with
 *   `InvalidOption` (or `InvalidCost`), never a `TypeError`.
 * - A limiter without `max_concurrent` grants permits that hold nothing: releasing one does nothing,
 *   and not releasing it leaks nothing. Permits of a limiter with `max_concurrent` are leases: release
 *   them (`withPermit` does).
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import { InvalidOption, LeaseNeedsScope } from "./Errors.js"
import * as Options from "./internal/options.js"
import { aborted, fromCause } from "./internal/promiseErrors.js"
import {
  type AcquireAllEntry,
  type AcquireAllOptions,
  type AcquireOptions,
  type BackoffOptions,
  type HeldPermit,
  type LimiterState,
  type Permit,
  toPermit,
  toState,
  type TryOptions
} from "./internal/promiseTypes.js"
import * as Check from "./internal/promiseOptions.js"
import * as Runtime from "./internal/promiseRuntime.js"
import { type Permit as EffectPermit, RateLimiter } from "./RateLimiter.js"
import { decodeSettings, type LimiterConfigInput, type Settings, type SettingsInput, type StoreConfigInput } from "./Settings.js"
import * as Toml from "./Toml.js"

// The Effect API's errors that carry no duration are the same classes here: `instanceof` works across both.
export {
  type BuildError,
  ConfigIssue,
  ConfigurationError,
  ConflictRetriesExhausted,
  CostExceedsCapacity,
  InvalidCost,
  InvalidOption,
  LeaseNeedsScope,
  LimiterNotFound,
  type StoreError,
  StoreMisconfigured,
  StoreTimeout,
  StoreUnavailable
} from "./Errors.js"
export {
  AbortError,
  type AcquireError,
  AcquireTimeout,
  type ConsumeError,
  RateLimitExceeded,
  type TryAcquireError,
  type TryConsumeError
} from "./internal/promiseErrors.js"
export type {
  AcquireAllEntry,
  AcquireAllOptions,
  AcquireOptions,
  BackoffOptions,
  HeldPermit,
  LimiterState,
  Permit,
  TryOptions
} from "./internal/promiseTypes.js"

let settings: Settings = { stores: {}, limiters: {} }

const nothingToRelease = (): Promise<void> => Promise.resolve()

/** A rate slot holds nothing: its permit is not counted anywhere, so not releasing it leaks nothing. */
const unheld = (permit: EffectPermit): HeldPermit => ({
  ...toPermit(permit),
  release: nothingToRelease,
  [Symbol.asyncDispose]: nothingToRelease
})

const runIn = async <A, E>(
  owner: Runtime.Generation,
  effect: Effect.Effect<A, E, RateLimiter>,
  signal?: AbortSignal
): Promise<A> => {
  const exit = await owner.runtime.runPromiseExit(effect, signal === undefined ? undefined : { signal })
  if (Exit.isSuccess(exit)) return exit.value
  throw fromCause(exit.cause, signal)
}

/**
 * One call: its name and options checked first (a typed rejection, never a TypeError from deep
 * inside), an aborted signal refused before anything is taken, and its generation kept alive while
 * it runs, whatever configuration change comes meanwhile.
 */
const call = async <A>(
  checked: Either.Either<Check.Checked, InvalidOption>,
  use: (owner: Runtime.Generation, signal: AbortSignal | undefined) => Promise<A>
): Promise<A> => {
  if (Either.isLeft(checked)) throw checked.left
  const { signal } = checked.right
  if (signal?.aborted === true) throw aborted(signal)
  const owner = Runtime.currentFor(settings)
  Runtime.enter(owner)
  try {
    return await use(owner, signal)
  } finally {
    Runtime.leave(owner)
  }
}

/** A lease, held in a scope of its own until released; its generation is kept alive until then. */
const lease = async (
  owner: Runtime.Generation,
  take: Effect.Effect<EffectPermit, unknown, RateLimiter | Scope.Scope>,
  signal: AbortSignal | undefined
): Promise<HeldPermit> => {
  const scope = Effect.runSync(Scope.make())
  Runtime.enter(owner)
  let released = false
  const release = async () => {
    if (released) return
    released = true
    try {
      await Effect.runPromise(Scope.close(scope, Exit.void))
    } finally {
      Runtime.leave(owner)
    }
  }
  try {
    const permit = toPermit(await runIn(owner, Scope.extend(take, scope), signal))
    return { ...permit, release, [Symbol.asyncDispose]: release }
  } catch (error) {
    // Aborted or refused: whatever the scope holds (a lease, a place in the queue) goes back.
    await release()
    throw error
  }
}

const take = (owner: Runtime.Generation, limiter: string, options: AcquireOptions, signal: AbortSignal | undefined) =>
  Runtime.leases(owner, limiter)
    ? lease(owner, RateLimiter.acquire(limiter, options), signal)
    // The same rate slot as acquire's, taken without a scope since nothing is held.
    : runIn(owner, RateLimiter.consume(limiter, options), signal).then(unheld)

/** Validates a change to the configuration at once, so a mistake throws where it was made. */
const update = async (next: Effect.Effect<SettingsInput, unknown>): Promise<void> => {
  const exit = await Effect.runPromiseExit(Effect.flatMap(next, decodeSettings))
  if (Exit.isFailure(exit)) throw fromCause(exit.cause, undefined)
  settings = exit.value
  // Permits held from the previous configuration are released through the runtime that granted them.
  Runtime.retire()
}

/** Replaces the configuration with a TOML file (`path`, `$RATE_SYNC_CONFIG`, `./rate-sync.toml`, `./config/rate-sync.toml`). */
export const loadConfig = (path?: string): Promise<void> => update(Effect.provide(Effect.flatMap(Check.path(path), Toml.load), Toml.nodeFiles))

/** Adds or replaces a store, with the keys of a `[stores.NAME]` table. */
export const configureStore = (name: string, config: StoreConfigInput): Promise<void> =>
  update(Effect.map(Check.name("stores", name), (name) => ({ stores: { ...settings.stores, [name]: config }, limiters: settings.limiters })))

/** Adds or replaces a limiter, with the keys of a `[limiters.NAME]` table; its store must exist. */
export const configureLimiter = (name: string, config: LimiterConfigInput): Promise<void> =>
  update(Effect.map(Check.name("limiters", name), (name) => ({ stores: settings.stores, limiters: { ...settings.limiters, [name]: config } })))

/**
 * Runs `fn` holding a permit, releasing it however `fn` ends; resolves with what `fn` resolves with.
 * Waits as `acquire` does.
 */
export const withPermit = <A>(
  limiter: string,
  fn: (permit: Permit) => A,
  options: AcquireOptions = {}
): Promise<Awaited<A>> =>
  call(
    Either.flatMap(Check.call(limiter, options, { signal: true }), (checked) => Check.callback(checked, fn)),
    async (owner, signal): Promise<Awaited<A>> => {
      const permit = await take(owner, limiter, options, signal)
      try {
        return await fn(permit)
      } finally {
        await permit.release()
      }
    }
  )

/**
 * Waits for a permit (a rate slot, and a concurrency lease where the limiter has `max_concurrent`).
 * Rejects with `AcquireTimeout` past the timeout, `AbortError` when `signal` aborts.
 */
export const acquire = (limiter: string, options: AcquireOptions = {}): Promise<HeldPermit> =>
  call(Check.call(limiter, options, { signal: true }), (owner, signal) => take(owner, limiter, options, signal))

/**
 * Waits for a rate slot and takes it; nothing is held, so there is nothing to release. For limiters
 * without `max_concurrent` (others reject with `LeaseNeedsScope`).
 */
export const consume = (limiter: string, options: AcquireOptions = {}): Promise<Permit> =>
  call(Check.call(limiter, options, { signal: true }), (owner, signal) =>
    runIn(owner, RateLimiter.consume(limiter, options), signal).then(toPermit))

/** Never waits: rejects with `RateLimitExceeded` (`retryAfter` in ms) when no permit is free now. */
export const tryAcquire = (limiter: string, options: TryOptions = {}): Promise<HeldPermit> =>
  call(Check.call(limiter, options, { signal: false }), (owner) =>
    Runtime.leases(owner, limiter)
      ? lease(owner, RateLimiter.tryAcquire(limiter, options), undefined)
      : runIn(owner, Effect.scoped(RateLimiter.tryAcquire(limiter, options))).then(unheld))

/**
 * Never waits: takes a rate slot now, with nothing to release, or rejects with `RateLimitExceeded`
 * (`retryAfter` in ms). For limiters without `max_concurrent` (others reject with `LeaseNeedsScope`).
 */
export const tryConsume = (limiter: string, options: TryOptions = {}): Promise<Permit> =>
  call(Check.call(limiter, options, { signal: false }), (owner) => {
    if (!Runtime.leases(owner, limiter)) {
      return runIn(owner, RateLimiter.tryConsume(limiter, options)).then(toPermit)
    }
    // As consume refuses: an invalid key is reported first.
    const key = Options.key(options.key)
    return Promise.reject(
      Either.isLeft(key) ? new InvalidOption({ limiter, ...key.left }) : new LeaseNeedsScope({ limiter })
    )
  })

/**
 * Several limits at once: a permit of every entry (in their order), or none consumed. Waits for the
 * latest slot among them, within one timeout; rejects with `AcquireTimeout` naming the limiter and
 * key that refused, or `AbortError` when `signal` aborts, every store's reservation given back.
 * Limiters with `max_concurrent` reject with `InvalidOption`: these permits hold nothing to release.
 */
export const acquireAll = (entries: ReadonlyArray<AcquireAllEntry>, options: AcquireAllOptions = {}): Promise<ReadonlyArray<HeldPermit>> =>
  call(Check.callAll(options, { signal: true }), (owner, signal) =>
    runIn(owner, RateLimiter.consumeAll(entries, options), signal).then((permits) => permits.map(unheld)))

/** `acquireAll` with plain permits, nothing to release. */
export const consumeAll = (entries: ReadonlyArray<AcquireAllEntry>, options: AcquireAllOptions = {}): Promise<ReadonlyArray<Permit>> =>
  call(Check.callAll(options, { signal: true }), (owner, signal) =>
    runIn(owner, RateLimiter.consumeAll(entries, options), signal).then((permits) => permits.map(toPermit)))

/** Never waits: a permit of every entry free now, or `RateLimitExceeded` (`retryAfter` in ms) naming a limiter that refused, none consumed. */
export const tryConsumeAll = (entries: ReadonlyArray<AcquireAllEntry>): Promise<ReadonlyArray<Permit>> =>
  call(Check.callAll(undefined, { signal: false }), (owner) =>
    runIn(owner, RateLimiter.tryConsumeAll(entries)).then((permits) => permits.map(toPermit)))

/** A read-only view of a key's state; its durations are numbers of milliseconds. */
export const state = (limiter: string, options: { readonly key?: string | undefined } = {}): Promise<LimiterState> =>
  call(Check.call(limiter, options, { signal: false }), (owner) => runIn(owner, RateLimiter.state(limiter, options)).then(toState))

/** Pushes the next free slot out for every process, as after an upstream 429 with `Retry-After`. */
export const backoff = (limiter: string, options: BackoffOptions): Promise<void> =>
  call(Check.call(limiter, options, { signal: false }), (owner) => runIn(owner, RateLimiter.backoff(limiter, options)))

/**
 * Closes the stores' connections; call it before exit (an open PostgreSQL pool or Redis connection
 * keeps Node running). Configuration is kept; the next call reconnects.
 */
export const close = (): Promise<void> => Runtime.close()

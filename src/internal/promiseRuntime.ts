/**
 * The runtimes behind `rate-sync/promise`: one per configuration (a generation). A change of
 * configuration retires the current one; a retired generation is disposed (its store connections
 * closed) once no call runs through it and no lease it granted is held, since a lease is given back
 * through the runtime that granted it.
 */
import * as Layer from "effect/Layer"
import * as ManagedRuntime from "effect/ManagedRuntime"
import type { BuildError } from "../Errors.js"
import type { RateLimiter } from "../RateLimiter.js"
import * as RateSync from "../RateSync.js"
import type { Settings } from "../Settings.js"
import * as Stores from "../Stores.js"

export interface Generation {
  readonly runtime: ManagedRuntime.ManagedRuntime<RateLimiter, BuildError>
  /** What it was built from: tells which limiters grant leases. */
  readonly settings: Settings
  /** Calls running through it, and leases it granted still held. Rate-only permits hold nothing and are not counted. */
  active: number
  retired: boolean
}

/** Generations not disposed yet. */
const live = new Set<Generation>()
let current: Generation | undefined

const dispose = (generation: Generation): Promise<void> => {
  if (!live.delete(generation)) return Promise.resolve()
  return generation.runtime.dispose()
}

/** The generation for `settings`, built on first use (so configuring never connects to a store). */
export const currentFor = (settings: Settings): Generation => {
  if (current === undefined) {
    current = {
      runtime: ManagedRuntime.make(RateSync.layer(settings).pipe(Layer.provide(Stores.layer))),
      settings,
      active: 0,
      retired: false
    }
    live.add(current)
  }
  return current
}

/** Whether a limiter of this generation grants leases (has `max_concurrent`); an unknown name does not. */
export const leases = (generation: Generation, limiter: string): boolean =>
  Object.hasOwn(generation.settings.limiters, limiter) &&
  generation.settings.limiters[limiter]?.max_concurrent !== undefined

export const enter = (generation: Generation): void => {
  generation.active++
}

export const leave = (generation: Generation): void => {
  generation.active--
  if (generation.retired && generation.active === 0) void dispose(generation)
}

/** The configuration changed: the next call builds a new generation; this one goes once idle. */
export const retire = (): void => {
  const retiring = current
  current = undefined
  if (retiring === undefined) return
  retiring.retired = true
  if (retiring.active === 0) void dispose(retiring)
}

/** Closes the current generation's stores now; configuration is kept, the next call builds a new one. */
export const close = (): Promise<void> => {
  const closing = current
  current = undefined
  return closing === undefined ? Promise.resolve() : dispose(closing)
}

/** How many generations are not disposed yet: what a permit nobody releases could keep alive. For tests. */
export const liveGenerations = (): number => live.size

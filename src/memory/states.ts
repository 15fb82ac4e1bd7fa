/**
 * The memory store's per-key states, by limiter and then by key: a call finds its key's state without
 * building (and hashing) a `limiter:key` string, which cost about a tenth of a call on many keys.
 */
import type { KeyState } from "./view.js"

export interface States {
  readonly get: (limiter: string, key: string) => KeyState | undefined
  readonly set: (limiter: string, key: string, state: KeyState) => void
  /**
   * Looks at the next `count` states of a walk that goes round and round, deleting those stale at
   * `at` (and telling `deleted`); false when the walk reached its end (it starts again next time).
   */
  readonly sweep: (count: number, at: number, deleted: (limiter: string, key: string) => void) => boolean
  readonly values: () => Generator<KeyState>
  readonly size: () => number
}

export const make = (): States => {
  const byLimiter = new Map<string, Map<string, KeyState>>()
  /** The last limiter's map: most calls of a process are one limiter's. */
  let lastLimiter: string | undefined
  let lastMap: Map<string, KeyState> | undefined

  const mapOf = (limiter: string): Map<string, KeyState> | undefined => {
    if (limiter !== lastLimiter) {
      lastLimiter = limiter
      lastMap = byLimiter.get(limiter)
    }
    return lastMap
  }

  const set = (limiter: string, key: string, state: KeyState) => {
    let map = mapOf(limiter)
    if (map === undefined) {
      map = new Map()
      byLimiter.set(limiter, map)
      lastMap = map
    }
    map.set(key, state)
  }

  // The walk: iterators kept across calls. A fresh one from the front would skip every entry deleted
  // since the map last compacted, so each call would cost in proportion to the keys held.
  let limiters: Iterator<[string, Map<string, KeyState>]> | undefined
  let walking: { readonly limiter: string; readonly map: Map<string, KeyState>; readonly keys: Iterator<[string, KeyState]> } | undefined

  const sweep: States["sweep"] = (count, at, deleted) => {
    for (let i = 0; i < count;) {
      if (walking === undefined) {
        limiters ??= byLimiter.entries()
        const next = limiters.next()
        if (next.done === true) {
          limiters = undefined
          return false
        }
        walking = { limiter: next.value[0], map: next.value[1], keys: next.value[1].entries() }
      }
      const next = walking.keys.next()
      if (next.done === true) {
        walking = undefined
        continue
      }
      i++
      if (next.value[1].staleAt > at) continue
      walking.map.delete(next.value[0])
      deleted(walking.limiter, next.value[0])
    }
    return true
  }

  function* values(): Generator<KeyState> {
    for (const map of byLimiter.values()) yield* map.values()
  }

  return {
    get: (limiter, key) => mapOf(limiter)?.get(key),
    set,
    sweep,
    values,
    size: () => {
      let size = 0
      for (const map of byLimiter.values()) size += map.size
      return size
    }
  }
}

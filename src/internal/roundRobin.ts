/**
 * Visits a Map's entries round and round, one at a time, across calls: for bounded caches that
 * evict or sweep a few entries per operation. One iterator is kept, because a fresh one from the
 * front skips every entry deleted since the map last compacted, which makes each operation cost in
 * proportion to the entries held.
 */
export const make = <K, V>(map: Map<K, V>) => {
  let cursor: Iterator<[K, V]> | undefined
  /** The next entry (entries added meanwhile come in their turn), or undefined when the map is empty. */
  return (): [K, V] | undefined => {
    for (let turn = 0; turn < 2; turn++) {
      cursor ??= map.entries()
      const next = cursor.next()
      if (next.done !== true) return next.value
      cursor = undefined
    }
    return undefined
  }
}

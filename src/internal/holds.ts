/**
 * Upstream backoffs this process has learned of, per key: its own `backoff` calls and, through the
 * store's messages, every other process's. A waiter notes `mark()` before it asks the store; when
 * its slot comes, `until(id, mark)` tells whether a backoff learned of since then still holds the
 * key. If one does, its slot may have been reserved before the backoff, so it asks again and the
 * store places it after the hold. A backoff learned of before the mark needs no check: the store
 * had it when it decided. Entries end with their hold.
 */

interface Hold {
  /** The order in which holds were learned of. */
  readonly seq: number
  /** When the hold ends, in ms of the local clock (`Date.now()`'s, or the Effect `Clock` it was given). */
  readonly untilMs: number
}

export interface Holds {
  readonly mark: () => number
  /** Records that `id` is held until `untilMs`, as learned now. */
  readonly hold: (id: string, untilMs: number, nowMs: number) => void
  /** The end of the holds on `id` learned of after `mark`, when one lasts past `nowMs`. */
  readonly until: (id: string, mark: number, nowMs: number) => number | undefined
  /** Whether any hold lasts past `nowMs` (the common case is none, checked without a lookup). */
  readonly any: (nowMs: number) => boolean
}

/** Above this many keys held, ended holds are swept out. */
const SWEEP_ABOVE = 1_024

export const make = (): Holds => {
  const holds = new Map<string, Hold>()
  let seq = 0
  /** The latest end of any hold: once past, every entry has ended and the map is cleared. */
  let latestEnd = -Infinity
  return {
    mark: () => seq,
    hold: (id, untilMs, nowMs) => {
      const earlier = holds.get(id)
      holds.set(id, { seq: ++seq, untilMs: Math.max(untilMs, earlier?.untilMs ?? -Infinity) })
      latestEnd = Math.max(latestEnd, untilMs)
      if (holds.size > SWEEP_ABOVE) {
        for (const [key, entry] of holds) if (entry.untilMs <= nowMs) holds.delete(key)
      }
    },
    until: (id, mark, nowMs) => {
      if (holds.size === 0) return undefined
      const entry = holds.get(id)
      if (entry === undefined) return undefined
      if (entry.untilMs <= nowMs) {
        holds.delete(id)
        return undefined
      }
      return entry.seq > mark ? entry.untilMs : undefined
    },
    any: (nowMs) => {
      if (holds.size > 0 && nowMs >= latestEnd) holds.clear()
      return holds.size > 0
    }
  }
}

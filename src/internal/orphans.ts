/**
 * Leases (and places in line) that no caller will release: granted to a call whose caller gave up,
 * or possibly granted by a call whose reply was lost. They are released in the background, round
 * after round while the store is down, until the store confirms or the lease would have expired
 * anyway. One fiber serves a limiter's orphans, however many there are.
 */
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"

/** How often releases that failed are tried again. */
const ROUND_MS = 200

/** Releases in flight at once, so a long list does not hold the store's whole pool. */
const CONCURRENCY = 8

export interface Orphans {
  /** Releases `leaseId` of `key` in the background (a no-op for the store when nothing was granted). */
  readonly add: (key: string, leaseId: string) => Effect.Effect<void>
  /** How many are waiting to be released (for tests and state). */
  readonly size: () => number
}

export const make = <E>(options: {
  readonly release: (key: string, leaseId: string) => Effect.Effect<void, E>
  /** After this long the store has expired the lease by itself: trying further is pointless. */
  readonly ttlMs: number
}): Orphans => {
  const pending = new Map<string, { readonly key: string; readonly until: number }>()
  let running = false

  const round = Effect.gen(function*() {
    const now = yield* Clock.currentTimeMillis
    const due = [...pending].filter(([leaseId, { until }]) => until > now || !pending.delete(leaseId))
    yield* Effect.forEach(due, ([leaseId, { key }]) =>
      Effect.either(options.release(key, leaseId)).pipe(
        Effect.map((released) => released._tag === "Right" && pending.delete(leaseId))
      ), { concurrency: CONCURRENCY, discard: true })
  })

  const serve: Effect.Effect<void> = Effect.suspend(() => {
    if (pending.size === 0) {
      running = false
      return Effect.void
    }
    return round.pipe(Effect.zipRight(Effect.suspend(() => pending.size === 0 ? Effect.void : Effect.sleep(Duration.millis(ROUND_MS)))), Effect.zipRight(serve))
  })

  return {
    add: (key, leaseId) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        pending.set(leaseId, { key, until: now + options.ttlMs })
        if (running) return Effect.void
        running = true
        return Effect.asVoid(Effect.forkDaemon(serve))
      }),
    size: () => pending.size
  }
}

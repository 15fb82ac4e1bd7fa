/**
 * Leases (and places in line) that no caller will release: granted to a call whose caller gave up,
 * or possibly granted by a call whose reply was lost. They are released in the background, round
 * after round while the store is down (backing off), until the store confirms or the lease would
 * have expired anyway. One fiber, in the limiter's scope, serves a limiter's orphans.
 */
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"

/** The first pause between rounds of releases that failed, and the longest. */
const FIRST_ROUND_MS = 200
const LAST_ROUND_MS = 5_000

/** Releases in flight at once, so a long list does not hold the store's whole pool. */
const CONCURRENCY = 8

/**
 * The most waiting to be released. An outage with a busy fail-open loop makes one per call; past
 * this the oldest are dropped: their leases expire by themselves after their ttl.
 */
const MAX_PENDING = 10_000

export interface Orphans {
  /** Releases `leaseId` of `key` in the background (a no-op for the store when nothing was granted). */
  readonly add: (key: string, leaseId: string) => Effect.Effect<void>
  /** How many are waiting to be released (for tests). */
  readonly size: () => number
}

export const make = <E>(options: {
  readonly release: (key: string, leaseId: string) => Effect.Effect<void, E>
  /** After this long the store has expired the lease by itself: trying further is pointless. */
  readonly ttlMs: number
  /** Runs the releasing fiber in the limiter's scope, so closing the layer stops it. */
  readonly fork: (effect: Effect.Effect<void>) => Effect.Effect<void>
}): Orphans => {
  const pending = new Map<string, { readonly key: string; readonly until: number }>()
  let running = false

  /** One round over what is pending; true when everything was released or dropped. */
  const round = Effect.gen(function*() {
    const now = yield* Clock.currentTimeMillis
    const due = [...pending].filter(([leaseId, { until }]) => until > now || !pending.delete(leaseId))
    yield* Effect.forEach(due, ([leaseId, { key }]) =>
      // A defect is one more failed release: tried again next round, never the end of the fiber.
      Effect.exit(options.release(key, leaseId)).pipe(
        Effect.map((released) => Exit.isSuccess(released) && pending.delete(leaseId))
      ), { concurrency: CONCURRENCY, discard: true })
  })

  const serve = (pauseMs: number): Effect.Effect<void> =>
    Effect.suspend(() =>
      pending.size === 0 ? Effect.void : round.pipe(
        Effect.zipRight(Effect.suspend(() =>
          pending.size === 0
            ? Effect.void
            : Effect.zipRight(Effect.sleep(Duration.millis(pauseMs)), serve(Math.min(LAST_ROUND_MS, pauseMs * 2)))
        ))
      )
    )

  /** Starts the releasing fiber unless it runs; it starts again if something came in as it ended. */
  const start: Effect.Effect<void> = Effect.suspend(() => {
    if (running || pending.size === 0) return Effect.void
    running = true
    return options.fork(serve(FIRST_ROUND_MS).pipe(
      Effect.onExit((exit) => {
        running = false
        // Interrupted: the limiter's scope closed, and nothing is to be released any more.
        return Exit.isInterrupted(exit) ? Effect.void : start
      })
    ))
  })

  return {
    add: (key, leaseId) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        pending.set(leaseId, { key, until: now + options.ttlMs })
        if (pending.size > MAX_PENDING) pending.delete(pending.keys().next().value!)
        return start
      }),
    size: () => pending.size
  }
}

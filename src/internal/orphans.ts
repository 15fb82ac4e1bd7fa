/**
 * Leases (and places in line) that no caller will release: granted to a call whose caller gave up,
 * or possibly granted by a call whose reply was lost. Each is released at once in the background;
 * those whose release failed are tried again, round after round while the store is down (backing
 * off), until the store confirms. Not only when the lease would have expired: a place in a process's
 * own line (PostgreSQL) does not expire, and only a release frees it. A release that hangs holds up no
 * other: each runs in a fiber of its own, in the limiter's scope.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"

/** The first pause between rounds of releases that failed, and the longest. */
const FIRST_ROUND_MS = 200
const LAST_ROUND_MS = 5_000

/** Releases in flight at once, so a long list does not hold the store's whole pool. */
const MAX_IN_FLIGHT = 32

/**
 * The most waiting to be released. An outage with a busy fail-open loop makes one per call; past
 * this the oldest are dropped. Their leases, and their places in Redis's line, expire by themselves
 * after their ttl; a place in a PostgreSQL process's own line does not (a known limit, only reached
 * when more than this many give-backs fail in a row).
 */
const MAX_PENDING = 10_000

export interface Orphans {
  /** Releases `leaseId` of `key` in the background (a no-op for the store when nothing was granted). */
  readonly add: (key: string, leaseId: string) => Effect.Effect<void>
  /** How many are waiting to be released (for tests). */
  readonly size: () => number
}

interface Entry {
  readonly key: string
  inFlight: boolean
  /** Given back again while a release was in flight: that release may have run before the grant. */
  again: boolean
}

export const make = <E>(options: {
  readonly release: (key: string, leaseId: string) => Effect.Effect<void, E>
  /** Runs a fiber in the limiter's scope, so closing the layer stops it. */
  readonly fork: (effect: Effect.Effect<void>) => Effect.Effect<void>
}): Orphans => {
  const pending = new Map<string, Entry>()
  let inFlight = 0
  let retrying = false

  /** One release, unless one is in flight for it; a defect is one more failed release. */
  const attempt = (leaseId: string, entry: Entry): Effect.Effect<void> =>
    Effect.suspend(() => {
      // Checked when the fiber runs, not when it was forked.
      if (entry.inFlight || inFlight >= MAX_IN_FLIGHT) return Effect.void
      entry.inFlight = true
      inFlight++
      entry.again = false
      return Effect.exit(options.release(entry.key, leaseId)).pipe(
        Effect.ensuring(Effect.sync(() => {
          entry.inFlight = false
          inFlight--
        })),
        Effect.flatMap((released) => {
          if (entry.again) return attempt(leaseId, entry)
          if (Exit.isSuccess(released)) pending.delete(leaseId)
          return Effect.void
        })
      )
    })

  /** Starts a round for what is pending and not in flight, each release in its own fiber, at most the cap at once. */
  const round = Effect.suspend(() => {
    const due = [...pending].filter(([, entry]) => !entry.inFlight).slice(0, Math.max(0, MAX_IN_FLIGHT - inFlight))
    return Effect.forEach(due, ([leaseId, entry]) => options.fork(attempt(leaseId, entry)), { discard: true })
  })

  const retry = (pauseMs: number): Effect.Effect<void> =>
    Effect.suspend(() =>
      pending.size === 0 ? Effect.void : Effect.sleep(Duration.millis(pauseMs)).pipe(
        Effect.zipRight(round),
        Effect.zipRight(retry(Math.min(LAST_ROUND_MS, pauseMs * 2)))
      )
    )

  /** Starts the retrying fiber unless it runs; it starts again if something came in as it ended. */
  const startRetrying: Effect.Effect<void> = Effect.suspend(() => {
    if (retrying || pending.size === 0) return Effect.void
    retrying = true
    return options.fork(retry(FIRST_ROUND_MS).pipe(
      Effect.onExit((exit) => {
        retrying = false
        // Interrupted: the limiter's scope closed, and nothing is to be released any more.
        return Exit.isInterrupted(exit) ? Effect.void : startRetrying
      })
    ))
  })

  return {
    add: (key, leaseId) =>
      Effect.suspend(() => {
        const known = pending.get(leaseId)
        if (known !== undefined) {
          known.again = true
          return known.inFlight ? Effect.void : options.fork(attempt(leaseId, known))
        }
        const entry: Entry = { key, inFlight: false, again: false }
        pending.set(leaseId, entry)
        if (pending.size > MAX_PENDING) pending.delete(pending.keys().next().value!)
        return Effect.zipRight(options.fork(attempt(leaseId, entry)), startRetrying)
      }),
    size: () => pending.size
  }
}

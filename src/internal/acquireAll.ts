/**
 * Several limits at once (`RateLimiter.acquireAll`, `consumeAll`, `tryAcquireAll`, `tryConsumeAll`):
 * every member admits, or none is consumed. The members of one store are decided in one atomic
 * store call; across stores, what was taken is given back when a later store refuses or fails, or
 * the caller is interrupted (acquireAllStores.ts). The caller then waits for the members' common
 * slot, bounded by one timeout, and checks it as a single call checks its own (slot.ts): a backoff
 * learned of meanwhile holds every member; a slot woken up to long after it was due is given up
 * once, and all are placed again.
 *
 * Members are rate limits: a limiter with `max_concurrent` is refused, as its lease and its rate
 * slot are one store decision that a composite could not give back. A member in shadow mode is
 * asked only once the enforced members admitted (the caller proceeds), as a single shadow call.
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as FiberRef from "effect/FiberRef"
import * as Metric from "effect/Metric"
import * as Predicate from "effect/Predicate"
import {
  type CostExceedsCapacity,
  type InvalidCost,
  InvalidOption,
  LimiterNotFound,
  type StoreError
} from "../Errors.js"
import { stateKey } from "../LimiterSpec.js"
import type { Permit } from "../RateLimiter.js"
import { type Bound, type Call, costError, counted, permit, refused, traced } from "./call.js"
import { type Composite, giveBack, groupsOf, type Held, place, type Placement } from "./acquireAllStores.js"
import * as Options from "./options.js"
import { shadowRate } from "./shadow.js"
import { sleepFor, sleepThenTurn } from "./timer.js"

/** One entry's limiter, key and cost, checked. */
export interface Member {
  readonly b: Bound
  readonly key: string
  readonly cost: number
}

export type EntryError = LimiterNotFound | InvalidOption | InvalidCost | CostExceedsCapacity

const describe = (value: unknown): string =>
  value === null ? "null" : typeof value === "object" ? (Array.isArray(value) ? "an array" : "an object") : `${typeof value} ${String(value)}`

const entriesProblem = (found: string) =>
  new InvalidOption({ limiter: "", option: "entries", found, expected: "a non-empty array of { limiter, key?, cost? }" })

/**
 * The entries as JavaScript may pass them: a non-empty array of `{ limiter, key?, cost? }`, each a
 * known limiter without `max_concurrent`, each limiter and key once (their costs add up in one
 * entry), each cost one the limiter can grant. Bad input is a typed error before anything is taken.
 */
export const check = (
  entries: unknown,
  lookup: (limiter: string) => Bound | undefined,
  known: ReadonlyArray<string>
): Either.Either<ReadonlyArray<Member>, EntryError> => {
  if (!Array.isArray(entries)) return Either.left(entriesProblem(describe(entries)))
  if (entries.length === 0) return Either.left(entriesProblem("an empty array"))
  const members: Array<Member> = []
  const seen = new Set<string>()
  const list: ReadonlyArray<unknown> = entries
  for (const [i, entry] of list.entries()) {
    if (!Predicate.isObject(entry) || !Predicate.hasProperty(entry, "limiter") || typeof entry.limiter !== "string") {
      return Either.left(new InvalidOption({ limiter: "", option: `entries[${i}]`, found: describe(entry), expected: "{ limiter, key?, cost? } with limiter a name" }))
    }
    const limiter = entry.limiter
    const b = lookup(limiter)
    if (b === undefined) return Either.left(new LimiterNotFound({ limiter, known }))
    const key = Options.key(Predicate.hasProperty(entry, "key") ? entry.key : undefined)
    if (Either.isLeft(key)) return Either.left(new InvalidOption({ limiter, ...key.left }))
    if (b.spec.concurrency !== undefined) {
      return Either.left(new InvalidOption({ limiter, option: "entries", found: "a limiter with max_concurrent", expected: "limiters without max_concurrent (take a lease with acquire)" }))
    }
    const id = stateKey(limiter, key.right)
    if (seen.has(id)) {
      return Either.left(new InvalidOption({ limiter, option: "entries", found: `key ${JSON.stringify(key.right)} twice`, expected: "each limiter and key once (one entry with the costs added)" }))
    }
    seen.add(id)
    const given = Predicate.hasProperty(entry, "cost") && entry.cost !== undefined ? entry.cost : 1
    const cost = typeof given === "number" ? given : Number.NaN
    const invalid = costError(b, cost)
    if (invalid !== undefined) return Either.left(invalid)
    members.push({ b, key: key.right, cost })
  }
  return Either.right(members)
}

/** The one wait bound: the call's timeout, else the least of the members' limiters' `timeout`. */
export const timeoutOf = (members: ReadonlyArray<Member>, timeout: unknown): Either.Either<number | undefined, InvalidOption> => {
  const configured = members.map((m) => m.b.spec.timeoutMs ?? Infinity)
  return Either.mapLeft(
    Options.timeout(timeout, Math.min(...configured)),
    (problem) => new InvalidOption({ limiter: members.map((m) => m.b.spec.name).join(", "), ...problem })
  )
}

/** The latest backoff learned of since a group's call that holds one of its members, if any. */
const heldBy = <E>(held: ReadonlyArray<Held<E>>, now: number) => {
  let latest: { readonly call: Call<E>; readonly until: number; readonly limit: number } | undefined
  for (const h of held) {
    if (!h.group.store.backoffs.any(now)) continue
    h.group.members.forEach((call, i) => {
      const until = call.b.store.backoffs.until(call.b.spec, call.key, h.mark, now)
      if (until !== undefined && until > (latest?.until ?? -Infinity)) latest = { call, until, limit: h.outcomes[i]!.limit ?? 0 }
    })
  }
  return latest
}

/** Places the members, waits for their common slot and checks it; `replaced`: a stale slot was given up once already. */
const settle = <E>(c: Composite<E>, replaced: boolean): Effect.Effect<Placement<E>, E | StoreError> =>
  Effect.gen(function*() {
    const placement = yield* place(c)
    const { held, target } = placement
    const now = c.clock.unsafeCurrentTimeMillis()
    if (target > now) {
      yield* c.restore(sleepThenTurn(c.clock, target - now)).pipe(Effect.onInterrupt(() => Effect.forEach(held, giveBack, { discard: true })))
    }
    const woke = c.clock.unsafeCurrentTimeMillis()
    const hold = heldBy(held, woke)
    // Slots reserved before a backoff are not used inside it: past it, all are placed again (the old ones stay taken).
    if (hold !== undefined) {
      const { call, limit, until } = hold
      if (c.mode === "try" || until > c.deadline) {
        return yield* refused(call, call.refuse({ _tag: "RateLimited", retryAfterMs: until - woke, limit, remaining: 0 }, Math.max(0, until - c.deadline)))
      }
      yield* c.restore(sleepFor(until - woke))
      return yield* settle(c, replaced)
    }
    const staleAfter = Math.min(...held.map((h) => h.group.staleAfterMs))
    if (!replaced && woke - target > staleAfter && woke < c.deadline) {
      yield* Effect.forEach(held.flatMap((h) => h.group.members), (call) => Metric.increment(call.b.metrics.slotsGivenUp), { discard: true })
      return yield* settle(c, true)
    }
    return placement
  })

/**
 * Runs a composite of `calls` (one per entry, in order, all of one mode and bound): one permit per
 * entry, in the entries' order.
 */
export const run = <E>(
  calls: ReadonlyArray<Call<E>>
): Effect.Effect<ReadonlyArray<Permit>, E | StoreError | CostExceedsCapacity | InvalidCost> => {
  const { mode, timeoutMs } = calls[0]!
  const decided = Effect.uninterruptibleMask((restore) =>
    Effect.gen(function*() {
      const clock = yield* Effect.clock
      const started = clock.unsafeCurrentTimeMillis()
      const enforced = calls.filter((call) => call.b.spec.shadow !== true)
      const deadline = mode === "try" ? started : timeoutMs === undefined ? Infinity : started + timeoutMs
      const c: Composite<E> = { groups: groupsOf(enforced), mode, timeoutMs, started, deadline, restore, clock }
      const placement = enforced.length === 0 ? undefined : yield* settle(c, false)
      const waited = clock.unsafeCurrentTimeMillis() - started
      const labels = yield* FiberRef.get(FiberRef.currentMetricLabels)
      const permits = new Map<Call<E>, Permit>(placement?.degraded)
      for (const h of placement?.held ?? []) h.group.members.forEach((call, i) => permits.set(call, permit(call, h.outcomes[i]!, undefined, waited)))
      for (const [call, granted] of permits) counted(call.b, granted, labels)
      // Shadow members only once the caller proceeds: as single shadow calls, never refused.
      for (const call of calls) if (call.b.spec.shadow === true) permits.set(call, yield* shadowRate(call))
      return calls.map((call) => permits.get(call)!)
    })
  )
  return traced(decided, mode === "wait" ? "rate_sync.acquire_all" : "rate_sync.try_acquire_all", calls.map((c) => c.b.spec.name).join(","), calls.reduce((sum, c) => sum + c.cost, 0))
}

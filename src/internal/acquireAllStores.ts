/**
 * A composite's members placed across stores. Members are grouped by store: one atomic call per
 * store (`Store.acquireAll`), or, on a store without it, one call per member. Groups are asked in
 * one fixed order (stores in memory first, as their answers cost no round trip and a refusal there
 * writes nothing anywhere; then by store name; members of stores without `acquireAll` last), and
 * what earlier groups took is given back when a later one refuses or fails (before the caller hears
 * of it), or the caller is interrupted or out of time (in the background). A token bucket can take
 * back only its newest reservation: one another caller wrote after stays consumed (stricter, never
 * looser), as does a PostgreSQL window's entry.
 *
 * The members are to be used at one instant, the latest slot among them (see acquireAllPlan.ts): a
 * group is asked for slots no sooner than the latest placed so far (`afterMs`; a member of a store
 * without `acquireAll` is asked only once that instant has come). When a group's store puts its
 * slots later than asked, those of groups placed before would be used late by as much, and a slot
 * used late can put more than the limit into a window: those groups give their slots back and are
 * placed again. (The staleness allowance of a single call, slot.ts, is for a timer that fired late,
 * not for this.) The round trips of the calls themselves make every member later too, as a single
 * call's round trip does.
 */
import type * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import type { StoreError } from "../Errors.js"
import type { Permit } from "../RateLimiter.js"
import type { Admitted, CompositeOutcome, RateRequest, Store } from "../Store.js"
import { type Call, failed, refused } from "./call.js"
import { detached } from "./detach.js"
import { staleAfterMs } from "./slot.js"
import { sleepFor } from "./timer.js"

type Restore = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

/** Members asked in one store call. */
export interface Group<E> {
  readonly store: Store
  readonly members: ReadonlyArray<Call<E>>
  /** The store places them at an instant asked for (`acquireAll`); else one member, asked when due. */
  readonly aligns: boolean
  /** The least of the members' staleness allowances: how late after the common slot they may still wake. */
  readonly staleAfterMs: number
}

/** Slots further apart than this (ms) are not at one instant; closer, it is the stores' rounding. */
const ALIGNED_MS = 0.001

/** A group's slots, reserved. */
export interface Held<E> {
  readonly group: Group<E>
  readonly outcomes: ReadonlyArray<Admitted>
  /** What a refund of each is given (`CompositeOutcome`). */
  readonly refundCosts: ReadonlyArray<number>
  /** The store's backoff mark taken before the call: a backoff learned of after it holds these slots. */
  readonly mark: number
  /** The excess (see `place`) summed when it was placed. */
  readonly pushedAt: number
}

/** What every step of one composite shares. */
export interface Composite<E> {
  readonly groups: ReadonlyArray<Group<E>>
  readonly mode: "wait" | "try"
  /** The one wait bound of all members; undefined for none. */
  readonly timeoutMs: number | undefined
  readonly started: number
  /** When the caller stops waiting (`started` for a try, `Infinity` for never). */
  readonly deadline: number
  readonly restore: Restore
  readonly clock: Clock.Clock
}

export interface Placement<E> {
  readonly held: ReadonlyArray<Held<E>>
  /** Permits of members whose store was unavailable and whose limiters all fail open. */
  readonly degraded: ReadonlyArray<readonly [Call<E>, Permit]>
  /** The local instant (ms of the caller's clock) at which every slot held is due. */
  readonly target: number
}

const rank = (store: Store, aligns: boolean) => `${aligns ? 0 : 1}${store.engine === "memory" ? 0 : 1}${store.name}`

/** The members grouped by store, in the order the groups are asked. */
export const groupsOf = <E>(members: ReadonlyArray<Call<E>>): Array<Group<E>> => {
  const byStore = new Map<Store, Array<Call<E>>>()
  for (const member of members) byStore.set(member.b.store, [...(byStore.get(member.b.store) ?? []), member])
  const groups = [...byStore].flatMap(([store, calls]) => store.acquireAll === undefined ? calls.map((call) => [call]) : [calls])
    .map((calls): Group<E> => ({
      store: calls[0]!.b.store,
      members: calls,
      aligns: calls[0]!.b.store.acquireAll !== undefined,
      staleAfterMs: Math.min(...calls.map((call) => staleAfterMs(call.b.spec)))
    }))
  // A stable sort: members of one store without acquireAll keep the entries' order.
  return groups.sort((a, b) => (rank(a.store, a.aligns) < rank(b.store, b.aligns) ? -1 : rank(a.store, a.aligns) > rank(b.store, b.aligns) ? 1 : 0))
}

/** The store call of a group, counted against every member's limiter. */
const ask = <E>(group: Group<E>, afterMs: number, maxWaitMs: number): Effect.Effect<CompositeOutcome, StoreError> => {
  const requests = group.members.map((call): RateRequest => ({ limiter: call.b.spec, key: call.key, cost: call.cost, maxWaitMs }))
  const asked: Effect.Effect<CompositeOutcome, StoreError> = group.store.acquireAll !== undefined
    ? group.store.acquireAll(requests, afterMs)
    : Effect.map(group.store.acquireRate(requests[0]!), (outcome): CompositeOutcome =>
      outcome._tag === "Admitted"
        ? { _tag: "Admitted", outcomes: [outcome], refundCosts: [requests[0]!.cost] }
        : { _tag: "Refused", index: 0, refusal: outcome })
  return group.members.reduce((effect, call) => call.b.observe(effect), asked)
}

/** Gives a group's slots back; a failure only costs slots (stricter). */
const refunds = <E>({ group, outcomes, refundCosts }: Held<E>): Effect.Effect<void> =>
  Effect.forEach(outcomes, (outcome, i) => {
    const { b, key } = group.members[i]!
    return outcome.reservation === undefined
      ? Effect.void
      : Effect.ignore(b.observe(b.store.refund(b.spec, key, refundCosts[i]!, outcome.reservation)))
  }, { discard: true })

/** Gives a group's slots back in the background (the limiter's scope): a caller leaving does not wait for its stores. */
export const giveBack = <E>(held: Held<E>): Effect.Effect<void> => held.group.members[0]!.b.background(refunds(held))

/**
 * A group's store failed: each member's failure policy decides, those of limiters that fail closed
 * first, so an outage gives degraded permits only when every member fails open; a store too slow
 * for the deadline is the caller's timeout; nothing else admits.
 */
const storeFailed = <E>(c: Composite<E>, group: Group<E>, error: StoreError) =>
  Effect.suspend(() => {
    const waited = c.clock.unsafeCurrentTimeMillis() - c.started
    const closedFirst = [...group.members].sort((a, b) => Number(b.b.spec.failClosed) - Number(a.b.spec.failClosed))
    return Effect.forEach(closedFirst, (call) => Effect.map(failed(call, error, waited), (permit) => [call, permit] as const))
  })

/**
 * Places every group, aligned on the latest slot. Fails as the member that refused (or whose store
 * failed) would, having given back what the others took; an interruption gives it back too.
 */
export const place = <E>(c: Composite<E>): Effect.Effect<Placement<E>, E | StoreError> =>
  Effect.suspend(() => {
    const { clock, deadline, groups, mode, restore } = c
    const held = new Map<Group<E>, Held<E>>()
    const degraded: Array<readonly [Call<E>, Permit]> = []
    const done = new Set<Group<E>>()
    let target = clock.unsafeCurrentTimeMillis()
    // How much later than asked the stores placed their groups, summed: the lateness they added.
    let pushed = 0
    /** Gives back what is held: in the background for a caller interrupted or out of time, else before it hears of the refusal. */
    const giveBackAll = (background: boolean) =>
      Effect.suspend(() => {
        const all = [...held.values()]
        held.clear()
        return Effect.forEach(all, background ? giveBack : refunds, { discard: true })
      })
    // A refusal or failure consumes nothing once the caller hears of it.
    const refuse = <A, E2>(effect: Effect.Effect<A, E2>) => Effect.zipRight(giveBackAll(false), effect)
    const late = <A, E2>(effect: Effect.Effect<A, E2>) => Effect.zipRight(giveBackAll(true), effect)
    // Without a wait to bound (a try, a timeout of 0, none), the round trip is bounded by the store's own timeout.
    const bounded = mode === "wait" && c.timeoutMs !== undefined && c.timeoutMs > 0
    const step = (group: Group<E>): Effect.Effect<void, E | StoreError> =>
      Effect.gen(function*() {
        let afterMs = Math.max(0, target - clock.unsafeCurrentTimeMillis())
        if (!group.aligns && afterMs > 0) {
          yield* restore(sleepFor(afterMs)).pipe(Effect.onInterrupt(() => giveBackAll(true)))
          afterMs = 0
        }
        const left = deadline - clock.unsafeCurrentTimeMillis()
        const mark = group.store.backoffs.mark()
        const abandoned = Exit.match({
          onFailure: () => Effect.void,
          onSuccess: (outcome: CompositeOutcome) =>
            outcome._tag === "Admitted" ? giveBack({ group, ...outcome, mark, pushedAt: 0 }) : Effect.void
        })
        const answer = yield* restore(detached(ask(group, afterMs, mode === "try" ? 0 : Math.max(0, left)), bounded ? left : Infinity, abandoned)).pipe(
          Effect.onInterrupt(() => giveBackAll(true)),
          Effect.either
        )
        if (Either.isLeft(answer)) {
          const permits = yield* storeFailed(c, group, answer.left).pipe(Effect.tapError(() => giveBackAll(answer.left._tag === "StoreTimeout")))
          degraded.push(...permits)
          done.add(group)
          return
        }
        if (Option.isNone(answer.right)) return yield* late(refused(group.members[0]!, group.members[0]!.late()))
        const outcome = answer.right.value
        if (outcome._tag === "Refused") {
          const call = group.members[outcome.index]!
          const overDeadline = c.timeoutMs === undefined ? 0 : Math.max(0, outcome.refusal.retryAfterMs - Math.max(0, left))
          return yield* refuse(refused(call, call.refuse(outcome.refusal, overDeadline)))
        }
        return yield* admitted(group, outcome, afterMs, mark)
      })
    /** A group's slots: held, and the groups placed before them moved to them when they lie later. */
    const admitted = (group: Group<E>, outcome: Extract<CompositeOutcome, { _tag: "Admitted" }>, afterMs: number, mark: number) =>
      Effect.gen(function*() {
        const waits = outcome.outcomes.flatMap((o) => (o.reservation === undefined ? [] : [o.waitMs]))
        const waitMs = Math.max(0, ...waits)
        pushed += Math.max(0, waitMs - afterMs)
        // Counted from the answer's receipt: the store decided before, so the slots are never early.
        target = Math.max(target, clock.unsafeCurrentTimeMillis() + waitMs)
        for (const other of [...held.values()]) {
          if (pushed - other.pushedAt > ALIGNED_MS) {
            held.delete(other.group)
            done.delete(other.group)
            // Given back before it is asked again, so that the store can take the slots back.
            yield* refunds(other)
          }
        }
        const placed: Held<E> = { group, outcomes: outcome.outcomes, refundCosts: outcome.refundCosts, mark, pushedAt: pushed }
        // A store that had to ask its members one by one (a Redis Cluster, keys on several nodes) may
        // have placed them apart: asked again, for the latest of them.
        if (waitMs - Math.min(waitMs, ...waits) > ALIGNED_MS) return yield* refunds(placed)
        held.set(group, placed)
        done.add(group)
      })
    const next = (): Effect.Effect<Placement<E>, E | StoreError> => {
      const group = groups.find((g) => !done.has(g))
      if (group !== undefined) return Effect.zipRight(step(group), Effect.suspend(next))
      // The answers came late enough that the slots lie past the deadline: they go back.
      const past = [...held.values()].find((h) => bounded && target > deadline && h.outcomes.some((o) => o.waitMs > 0))
      return past === undefined
        ? Effect.succeed({ held: [...held.values()], degraded, target })
        : late(refused(past.group.members[0]!, past.group.members[0]!.late()))
    }
    return next()
  })

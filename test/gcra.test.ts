/**
 * The token bucket's arithmetic (src/internal/gcra.ts) against its documented laws, property-based:
 * decisions one after the other are those of a plain token bucket (credit refilled at the rate, at
 * most the burst, each request placed at the earliest time it fits, in order); no interval of
 * length L holds more than burst + L * rate units, whatever refunds and backoffs came between;
 * refunds never loosen; waits are monotone; the state read agrees with what `reserve` would do.
 *
 * Times and intervals are whole milliseconds, so both computations are exact and must agree exactly.
 */
import { describe, expect, it } from "@effect/vitest"
import * as FastCheck from "effect/FastCheck"
import * as Gcra from "../src/internal/gcra.js"
import type { TokenBucket } from "../src/LimiterSpec.js"
import { type Admission, rateExcess } from "./compliance/bounds.js"
import { tokenBucket } from "./support/fixtures.js"

const policies = FastCheck.record({ burst: FastCheck.integer({ min: 1, max: 10 }), intervalMs: FastCheck.integer({ min: 1, max: 1_000 }) })
  .map((fields) => tokenBucket(fields))

const maxWaits = FastCheck.oneof(FastCheck.constant(0), FastCheck.integer({ min: 0, max: 20_000 }), FastCheck.constant(Infinity))

/** A request `dt` ms after the one before. */
interface Request {
  readonly _tag: "request"
  readonly dt: number
  readonly cost: number
  readonly maxWaitMs: number
}
/** The newest reservation still held is given back. */
interface Refund {
  readonly _tag: "refund"
}
/** `dt` ms after the one before, an upstream asks every caller to wait `retryAfterMs`. */
interface Backoff {
  readonly _tag: "backoff"
  readonly dt: number
  readonly retryAfterMs: number
}

const requests = (policy: TokenBucket) =>
  FastCheck.record({
    _tag: FastCheck.constant("request" as const),
    dt: FastCheck.oneof(FastCheck.constant(0), FastCheck.integer({ min: 0, max: 3 * policy.burst * policy.intervalMs })),
    cost: FastCheck.integer({ min: 1, max: policy.burst }),
    maxWaitMs: maxWaits
  })

/** A policy, where time starts, and what happens then. */
const histories = <Op>(ops: (policy: TokenBucket) => FastCheck.Arbitrary<Op>) =>
  policies.chain((policy) =>
    FastCheck.record({
      policy: FastCheck.constant(policy),
      start: FastCheck.integer({ min: 0, max: 1_000_000 }),
      ops: FastCheck.array(ops(policy), { minLength: 1, maxLength: 60 })
    })
  )

/** A state read at some instant: `tat` anywhere from long idle to a debt of many intervals. */
const states = policies.chain((policy) =>
  FastCheck.record({
    policy: FastCheck.constant(policy),
    now: FastCheck.integer({ min: 0, max: 1_000_000 }),
    lag: FastCheck.oneof(FastCheck.constant(-Infinity), FastCheck.integer({ min: -20_000, max: 20_000 })),
    cost: FastCheck.integer({ min: 1, max: policy.burst }),
    maxWaitMs: maxWaits
  }).map((s) => ({ ...s, tat: s.now + s.lag }))
)

/**
 * The model: a plain token bucket holding `credit` ms of the rate (the burst is `burst * intervalMs`
 * of it, a unit `intervalMs`), refilled 1 ms a ms. A request takes its units at the earliest time,
 * no earlier than the last one placed, at which the bucket holds them.
 */
const model = (policy: TokenBucket) => {
  const full = policy.burst * policy.intervalMs
  let credit = full
  let last = -Infinity
  return (now: number, cost: number, maxWaitMs: number): Gcra.Decision => {
    const from = Math.max(now, last)
    const available = Math.min(full, credit + (from - last))
    const needed = cost * policy.intervalMs
    const slot = available >= needed ? from : from + (needed - available)
    const wait = slot - now
    if (wait > maxWaitMs) return { admitted: false, retryAfterMs: wait }
    credit = Math.min(full, credit + (slot - last)) - needed
    last = slot
    return { admitted: true, tatMs: Number.NaN, slotMs: slot, waitMs: wait }
  }
}

/** The decision for a request without a bound on its wait, which is always admitted. */
const unbounded = (tat: number, now: number, policy: TokenBucket, cost: number) => {
  const decision = Gcra.reserve(tat, now, policy, cost, Infinity)
  if (!decision.admitted) throw new Error("refused without a bound on the wait")
  return decision
}

const withoutTat = (decision: Gcra.Decision) => (decision.admitted ? { ...decision, tatMs: Number.NaN } : decision)

describe("GCRA", () => {
  it("decided one after the other, requests get the plain token bucket's decisions", () => {
    FastCheck.assert(
      FastCheck.property(histories(requests), ({ ops, policy, start }) => {
        const bucket = model(policy)
        let tat = -Infinity
        let now = start
        for (const op of ops) {
          now += op.dt
          const decision = Gcra.reserve(tat, now, policy, op.cost, op.maxWaitMs)
          expect(withoutTat(decision)).toEqual(bucket(now, op.cost, op.maxWaitMs))
          if (decision.admitted) tat = decision.tatMs
        }
      }),
      { numRuns: 2_000 }
    )
  })

  it("no interval of length L holds more than burst + L * rate units, whatever refunds and backoffs came between; none is inside a backoff", () => {
    const ops = (policy: TokenBucket) =>
      FastCheck.oneof(
        { weight: 6, arbitrary: requests(policy) },
        { weight: 2, arbitrary: FastCheck.constant<Refund>({ _tag: "refund" }) },
        {
          weight: 1,
          arbitrary: FastCheck.record({
            _tag: FastCheck.constant("backoff" as const),
            dt: FastCheck.integer({ min: 0, max: 2_000 }),
            retryAfterMs: FastCheck.integer({ min: 0, max: 5_000 })
          })
        }
      )
    FastCheck.assert(
      FastCheck.property(histories<Request | Refund | Backoff>(ops), ({ ops, policy, start }) => {
        // Refunds go back newest first, as the engines give back an interrupted waiter's slot.
        const held: Array<Admission & { readonly tatMs: number }> = []
        let tat = -Infinity
        let now = start
        let blockedUntil = -Infinity
        for (const op of ops) {
          if (op._tag === "request") {
            now += op.dt
            const decision = Gcra.reserve(tat, now, policy, op.cost, op.maxWaitMs)
            if (!decision.admitted) continue
            expect(decision.slotMs).toBeGreaterThanOrEqual(blockedUntil)
            tat = decision.tatMs
            held.push({ slot: decision.slotMs, cost: op.cost, tatMs: decision.tatMs })
          } else if (op._tag === "backoff") {
            now += op.dt
            tat = Gcra.backoff(tat, now, policy, op.retryAfterMs)
            blockedUntil = Math.max(blockedUntil, now + op.retryAfterMs)
          } else {
            const newest = held.at(-1)
            if (newest === undefined) continue
            const refunded = Gcra.refund(tat, newest.tatMs, policy, newest.cost, Gcra.floorFor(blockedUntil, policy))
            // Only the newest reservation can go back: later ones were spaced from it.
            expect(refunded === undefined).toBe(tat !== newest.tatMs)
            if (refunded === undefined) continue
            tat = refunded
            held.pop()
          }
        }
        expect(rateExcess(held, policy.ratePerSecond, policy.burst)).toBeLessThanOrEqual(1e-9)
      }),
      { numRuns: 2_000 }
    )
  })

  it("a refund never loosens: the state after it admits nothing earlier than before the reservation, nor inside a backoff", () => {
    const cases = states.chain((s) =>
      FastCheck.record({
        later: FastCheck.integer({ min: 0, max: 20_000 }),
        cost: FastCheck.integer({ min: 1, max: s.policy.burst }),
        floor: FastCheck.oneof(FastCheck.constant(-Infinity), FastCheck.integer({ min: -20_000, max: 20_000 }).map((d) => s.now + d))
      }).map((next) => ({ ...s, next }))
    )
    FastCheck.assert(
      FastCheck.property(cases, ({ cost, next, now, policy, tat }) => {
        const { floor } = next
        const reserved = unbounded(tat, now, policy, cost)
        const back = Gcra.refund(reserved.tatMs, reserved.tatMs, policy, cost, floor)!
        expect(back).toBeGreaterThanOrEqual(tat)
        expect(back).toBeGreaterThanOrEqual(floor)
        // Any later request gets the slot it would have had without the reservation (under the
        // backoff's floor): never earlier, so the refund loosens nothing; never later, so nothing is lost.
        const at = now + next.later
        expect(unbounded(back, at, policy, next.cost).slotMs).toBe(unbounded(Math.max(tat, floor), at, policy, next.cost).slotMs)
        // A reservation older than the newest cannot go back at all.
        expect(Gcra.refund(reserved.tatMs + policy.intervalMs, reserved.tatMs, policy, cost, floor)).toBeUndefined()
      }),
      { numRuns: 2_000 }
    )
  })

  it("waits are monotone: more units or more debt never wait less; asking later never gets an earlier slot", () => {
    const cases = states.chain((s) =>
      FastCheck.record({ later: FastCheck.integer({ min: 0, max: 20_000 }), debt: FastCheck.integer({ min: 0, max: 20_000 }) })
        .map((more) => ({ ...s, ...more }))
    )
    FastCheck.assert(
      FastCheck.property(cases, ({ cost, debt, later, now, policy, tat }) => {
        const base = unbounded(tat, now, policy, cost)
        if (cost < policy.burst) expect(unbounded(tat, now, policy, cost + 1).waitMs).toBeGreaterThanOrEqual(base.waitMs)
        expect(unbounded(Math.max(tat, now) + debt, now, policy, cost).waitMs).toBeGreaterThanOrEqual(base.waitMs)
        const asked = unbounded(tat, now + later, policy, cost)
        expect(asked.slotMs).toBeGreaterThanOrEqual(base.slotMs)
        expect(asked.waitMs).toBeLessThanOrEqual(base.waitMs)
        // The wait is the bound that admits: one below refuses, saying how long until the request would fit.
        expect(Gcra.reserve(tat, now, policy, cost, base.waitMs)).toEqual(base)
        if (base.waitMs > 0) expect(Gcra.reserve(tat, now, policy, cost, base.waitMs - 1)).toEqual({ admitted: false, retryAfterMs: base.waitMs })
      }),
      { numRuns: 2_000 }
    )
  })

  it("the state read agrees with reserve: remaining, the next slot, the reset, and backoff's next slot", () => {
    const cases = states.chain((s) =>
      FastCheck.record({ retryAfterMs: FastCheck.integer({ min: 0, max: 20_000 }) }).map((more) => ({ ...s, ...more }))
    )
    FastCheck.assert(
      FastCheck.property(cases, ({ now, policy, retryAfterMs, tat }) => {
        const fits = (t: number, at: number, cost: number) => Gcra.reserve(t, at, policy, cost, 0).admitted
        const remaining = Gcra.remaining(tat, now, policy)
        expect(remaining).toBeGreaterThanOrEqual(0)
        expect(remaining).toBeLessThanOrEqual(policy.burst)
        if (remaining > 0) expect(fits(tat, now, remaining)).toBe(true)
        if (remaining < policy.burst) expect(fits(tat, now, remaining + 1)).toBe(false)
        expect(unbounded(tat, now, policy, 1).waitMs).toBe(Gcra.nextSlotAfter(tat, now, policy))
        // Once reset, the whole burst fits; a millisecond before, it does not.
        const reset = Gcra.resetAfter(tat, now)
        expect(Gcra.remaining(tat, now + reset, policy)).toBe(policy.burst)
        if (reset > 0) expect(Gcra.remaining(tat, now + reset - 1, policy)).toBeLessThan(policy.burst)
        // After a backoff the next slot is no earlier than its end, and the backoff never loosens.
        const backedOff = Gcra.backoff(tat, now, policy, retryAfterMs)
        expect(backedOff).toBeGreaterThanOrEqual(tat)
        expect(Gcra.nextSlotAfter(backedOff, now, policy)).toBeGreaterThanOrEqual(retryAfterMs)
        expect(Gcra.nextSlotAfter(Gcra.floorFor(now + retryAfterMs, policy), now, policy)).toBe(retryAfterMs)
      }),
      { numRuns: 2_000 }
    )
  })
})

/**
 * The sliding-window log (src/internal/window.ts) against its documented laws, property-based: a
 * request gets the earliest slot a plain list of the admissions allows (no earlier than the last
 * one, nor a backoff's end); no window ever holds more than the limit, whatever was pruned or given
 * back between; a window lengthened by the margin is that much stricter; slots are monotone.
 *
 * Times are whole milliseconds, so both computations are exact and must agree exactly.
 */
import { describe, expect, it } from "@effect/vitest"
import * as FastCheck from "effect/FastCheck"
import * as Window from "../src/internal/window.js"
import type { SlidingWindow } from "../src/LimiterSpec.js"
import { type Admission, windowPeak } from "./compliance/bounds.js"
import { slidingWindow } from "./support/fixtures.js"

const policies = FastCheck.record({ limit: FastCheck.integer({ min: 1, max: 10 }), windowMs: FastCheck.integer({ min: 1, max: 1_000 }) })
  .map((fields) => slidingWindow(fields))

const maxWaits = FastCheck.oneof(FastCheck.constant(0), FastCheck.integer({ min: 0, max: 5_000 }), FastCheck.constant(Infinity))

type Op =
  | { readonly _tag: "request"; readonly dt: number; readonly cost: number; readonly maxWaitMs: number }
  /** Entries a window old are dropped, as engines do before deciding. */
  | { readonly _tag: "prune" }
  /** The `pick`-th admission still held is given back (an interrupted waiter's). */
  | { readonly _tag: "remove"; readonly pick: number }
  /** An upstream asks every caller to wait `retryAfterMs` from now. */
  | { readonly _tag: "backoff"; readonly retryAfterMs: number }

const ops = (policy: SlidingWindow): FastCheck.Arbitrary<Op> =>
  FastCheck.oneof(
    {
      weight: 8,
      arbitrary: FastCheck.record({
        _tag: FastCheck.constant("request" as const),
        dt: FastCheck.oneof(FastCheck.constant(0), FastCheck.integer({ min: 0, max: 2 * policy.windowMs })),
        cost: FastCheck.integer({ min: 1, max: policy.limit }),
        maxWaitMs: maxWaits
      })
    },
    { weight: 2, arbitrary: FastCheck.constant({ _tag: "prune" as const }) },
    { weight: 2, arbitrary: FastCheck.record({ _tag: FastCheck.constant("remove" as const), pick: FastCheck.nat() }) },
    {
      weight: 1,
      arbitrary: FastCheck.record({ _tag: FastCheck.constant("backoff" as const), retryAfterMs: FastCheck.integer({ min: 0, max: 3_000 }) })
    }
  )

const histories = policies.chain((policy) =>
  FastCheck.record({
    policy: FastCheck.constant(policy),
    marginMs: FastCheck.oneof(FastCheck.constant(0), FastCheck.integer({ min: 0, max: 50 })),
    start: FastCheck.integer({ min: 0, max: 1_000_000 }),
    ops: FastCheck.array(ops(policy), { minLength: 1, maxLength: 60 })
  })
)

/**
 * The model: the admissions as a plain list. A request's slot is the earliest instant, no earlier
 * than now, `notBefore` and the last admission, at which the units admitted in the window ending
 * there, (slot - windowMs, slot], leave room for its cost.
 */
const modelSlot = (held: ReadonlyArray<Admission>, now: number, notBefore: number, policy: SlidingWindow, cost: number) => {
  const from = Math.max(now, notBefore, ...held.map((a) => a.slot))
  const inWindow = (at: number) => held.filter((a) => a.slot > at - policy.windowMs).reduce((sum, a) => sum + a.cost, 0)
  const candidates = [from, ...held.map((a) => a.slot + policy.windowMs).filter((at) => at > from)].sort((a, b) => a - b)
  return candidates.find((at) => inWindow(at) + cost <= policy.limit)!
}

const modelDecision = (held: ReadonlyArray<Admission>, now: number, notBefore: number, policy: SlidingWindow, cost: number, maxWaitMs: number): Window.Decision => {
  const wait = modelSlot(held, now, notBefore, policy, cost) - now
  return wait > maxWaitMs ? { admitted: false, retryAfterMs: wait } : { admitted: true, slotMs: now + wait, waitMs: wait }
}

describe("sliding-window log", () => {
  it("requests get the plain list's earliest slot; no window holds more than the limit, whatever was pruned, given back or backed off between", () => {
    FastCheck.assert(
      FastCheck.property(histories, ({ marginMs, ops, policy, start }) => {
        // Engines decide on the window lengthened by their margin: the model and the bound use that length.
        const spanned = Window.span(policy, marginMs)
        expect(spanned).toEqual(slidingWindow({ limit: policy.limit, windowMs: policy.windowMs + marginMs }))
        const log: Array<Window.Entry> = []
        const held: Array<Admission> = []
        let now = start
        let blockedUntil = -Infinity
        for (const op of ops) {
          switch (op._tag) {
            case "request": {
              now += op.dt
              const decision = Window.reserve(log, now, blockedUntil, spanned, op.cost, op.maxWaitMs)
              expect(decision).toEqual(modelDecision(held, now, blockedUntil, spanned, op.cost, op.maxWaitMs))
              if (!decision.admitted) break
              Window.append(log, decision.slotMs, op.cost)
              held.push({ slot: decision.slotMs, cost: op.cost })
              break
            }
            case "prune": {
              Window.prune(log, now, spanned)
              // What is left is exactly what can still constrain a slot from now on.
              const live = held.filter((a) => a.slot + spanned.windowMs > now)
              expect(Window.used(log)).toBe(live.reduce((sum, a) => sum + a.cost, 0))
              break
            }
            case "remove": {
              if (held.length === 0) break
              const [gone] = held.splice(op.pick % held.length, 1)
              Window.remove(log, gone!.slot, gone!.cost)
              break
            }
            case "backoff":
              blockedUntil = Math.max(blockedUntil, now + op.retryAfterMs)
          }
        }
        expect(windowPeak(held, spanned.windowMs)).toBeLessThanOrEqual(policy.limit)
        expect(windowPeak(held, policy.windowMs)).toBeLessThanOrEqual(policy.limit)
      }),
      { numRuns: 2_000 }
    )
  })

  it("slots are monotone: asking later, for more, or after a later backoff never gets an earlier slot", () => {
    const cases = histories.chain((h) =>
      FastCheck.record({
        later: FastCheck.integer({ min: 0, max: 5_000 }),
        notBefore: FastCheck.integer({ min: -5_000, max: 5_000 }),
        cost: FastCheck.integer({ min: 1, max: h.policy.limit })
      }).map((ask) => ({ ...h, ask }))
    )
    FastCheck.assert(
      FastCheck.property(cases, ({ ask, ops, policy, start }) => {
        // A log built by admitting every request of the history without a bound on its wait.
        const log: Array<Window.Entry> = []
        let now = start
        for (const op of ops) {
          if (op._tag !== "request") continue
          now += op.dt
          Window.append(log, Window.earliestSlot(log, now, policy, op.cost), op.cost)
        }
        const notBefore = now + ask.notBefore
        const slot = (at: number, from: number, cost: number) => Window.earliestSlot(log, Math.max(at, from), policy, cost)
        const base = slot(now, notBefore, ask.cost)
        expect(slot(now + ask.later, notBefore, ask.cost)).toBeGreaterThanOrEqual(base)
        expect(slot(now, notBefore + ask.later, ask.cost)).toBeGreaterThanOrEqual(base)
        if (ask.cost < policy.limit) expect(slot(now, notBefore, ask.cost + 1)).toBeGreaterThanOrEqual(base)
        // A stricter (longer) window never admits earlier either.
        expect(Window.earliestSlot(log, Math.max(now, notBefore), Window.span(policy, ask.later), ask.cost)).toBeGreaterThanOrEqual(base)
      }),
      { numRuns: 2_000 }
    )
  })
})

/** Concurrency leases: the bound, release, expiry and renewal, the line, and leases on timeout and interruption. */
import { describe, expect } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Scope from "effect/Scope"
import type { Store } from "../../src/Store.js"
import { bothTable, leasedTable, type LimiterTable, limiterSpec } from "../support/fixtures.js"
import { type Compliance, RateLimiter, unique } from "./harness.js"

/** A lease taken straight from the store by a holder that then died: nobody renews or releases it. */
const deadHolder = (store: Store, name: string, table: LimiterTable) =>
  store.acquireLease({ limiter: limiterSpec(name, table), key: "", cost: 1, leaseId: "dead-holder", maxWaitMs: 0, queue: false })

export const leases = ({ doneWithin, elapse, eventually, limiters, live, settle, test, withRawStore }: Compliance) => {
  describe("concurrency leases", () => {
    test("at most max_concurrent permits are held at once", () => {
      const name = unique("cc")
      return Effect.gen(function*() {
        let held = 0
        let peak = 0
        let done = 0
        const worker = Effect.scoped(Effect.gen(function*() {
          yield* RateLimiter.acquire(name)
          held++
          peak = Math.max(peak, held)
          yield* Effect.sleep(Duration.millis(40))
          held--
          done++
        })).pipe(Effect.forever)
        const fibers = yield* Effect.forEach(Array.from({ length: 10 }), () => Effect.fork(worker))
        // 3 slots, 40 ms each: on TestClock, every slot is used back to back. Live, the run goes on
        // until all 3 were held at once and 15 permits passed (about 200 ms with wake-ups on release,
        // far longer with slow polling), however loaded the machine; only the bound is exact.
        const target = live ? 15 : 3 * (2_000 / 40) - 3
        let ran = 0
        do {
          yield* elapse(live ? 100 : 2_000)
          ran += live ? 100 : 2_000
          expect(peak).toBeLessThanOrEqual(3)
        } while (live && (peak < 3 || done < target) && ran < 15_000)
        const state = yield* RateLimiter.state(name)
        expect(state.leasesHeld).toBeLessThanOrEqual(3)
        yield* Fiber.interruptAll(fibers)
        expect(peak).toBe(3)
        expect(done).toBeGreaterThanOrEqual(target)
      }).pipe(Effect.provide(limiters({ [name]: leasedTable({ max_concurrent: 3 }) })))
    }, 30_000)

    test("releasing twice, or releasing after expiry, never raises capacity", () => {
      const name = unique("dbl")
      const table = leasedTable({ max_concurrent: 2, lease_ttl_seconds: 1 })
      const spec = limiterSpec(name, table)
      return withRawStore((store) => Effect.gen(function*() {
        const scope = yield* Scope.make()
        const first = yield* Scope.extend(RateLimiter.acquire(name), scope)
        yield* Scope.close(scope, Exit.void)
        // The public release ran; release the same lease again, twice, through the store.
        yield* store.release(spec, "", first.leaseId!)
        yield* store.release(spec, "", first.leaseId!)
        yield* Effect.scoped(Effect.gen(function*() {
          yield* RateLimiter.acquire(name)
          yield* RateLimiter.acquire(name)
          const third = yield* RateLimiter.tryAcquire(name).pipe(Effect.flip)
          expect(third._tag).toBe("RateLimitExceeded")
          // A lease that expired and whose slot went to someone else: releasing it frees nothing.
          yield* store.release(spec, "", first.leaseId!)
          expect((yield* RateLimiter.state(name)).leasesHeld).toBe(2)
          expect((yield* RateLimiter.tryAcquire(name).pipe(Effect.flip))._tag).toBe("RateLimitExceeded")
        }))
      })).pipe(Effect.provide(limiters({ [name]: table })))
    }, 30_000)

    test("a lease whose holder stops renewing expires after lease_ttl_seconds", () => {
      const name = unique("exp")
      const table = leasedTable({ lease_ttl_seconds: 0.6 })
      return withRawStore((store) => Effect.gen(function*() {
        const granted = yield* deadHolder(store, name, table)
        expect(granted._tag).toBe("Admitted")
        expect((yield* Effect.scoped(RateLimiter.tryAcquire(name)).pipe(Effect.flip))._tag).toBe("RateLimitExceeded")
        yield* elapse(700)
        const permit = yield* Effect.scoped(RateLimiter.tryAcquire(name))
        expect(permit.leaseId).toBeDefined()
      })).pipe(Effect.provide(limiters({ [name]: table })))
    }, 30_000)

    test("a holder whose scope stays open keeps its lease past the ttl (renewal)", () => {
      const name = unique("renew")
      return Effect.gen(function*() {
        const holder = yield* Effect.fork(Effect.scoped(Effect.zipRight(RateLimiter.acquire(name), Effect.never)))
        yield* settle
        yield* elapse(live ? 1_600 : 3_000)
        const denied = yield* Effect.scoped(RateLimiter.tryAcquire(name)).pipe(Effect.flip)
        expect(denied._tag).toBe("RateLimitExceeded")
        yield* Fiber.interrupt(holder)
        yield* Effect.scoped(RateLimiter.tryAcquire(name))
      }).pipe(Effect.provide(limiters({ [name]: leasedTable({ lease_ttl_seconds: 0.6 }) })))
    }, 30_000)

    test("waiters for a lease are served in the order they asked", () => {
      const name = unique("fifo")
      return Effect.gen(function*() {
        const order: Array<number> = []
        const scope = yield* Scope.make()
        yield* Scope.extend(RateLimiter.acquire(name), scope)
        const waiters: Array<Fiber.RuntimeFiber<void, unknown>> = []
        for (let i = 0; i < 4; i++) {
          waiters.push(yield* Effect.fork(Effect.scoped(Effect.gen(function*() {
            yield* RateLimiter.acquire(name)
            order.push(i)
            yield* Effect.sleep(Duration.millis(10))
          }))))
          yield* settle
        }
        yield* Scope.close(scope, Exit.void)
        yield* elapse(live ? 1_000 : 200)
        yield* Fiber.joinAll(waiters)
        expect(order).toEqual([0, 1, 2, 3])
      }).pipe(Effect.provide(limiters({ [name]: leasedTable() })))
    }, 30_000)
  })

  describe("timeouts", () => {
    test("a lease that does not free up in time fails with AcquireTimeout and leaves no place in line", () => {
      const name = unique("tol")
      return Effect.gen(function*() {
        const scope = yield* Scope.make()
        yield* Scope.extend(RateLimiter.acquire(name), scope)
        const waiting = yield* Effect.fork(Effect.scoped(RateLimiter.acquire(name, { timeout: "300 millis" })))
        yield* elapse(live ? 600 : 400)
        const error = yield* Fiber.join(waiting).pipe(Effect.flip)
        expect(error._tag).toBe("AcquireTimeout")
        yield* Scope.close(scope, Exit.void)
        yield* Effect.scoped(RateLimiter.tryAcquire(name))
      }).pipe(Effect.provide(limiters({ [name]: leasedTable() })))
    }, 30_000)
  })

  describe("interruption while waiting gives back what was reserved", () => {
    test("a caller granted its lease and interrupted while it waits for its rate slot gives the lease back at once", () => {
      const name = unique("intlr")
      return Effect.gen(function*() {
        // The rate slot is taken, the lease free: the next caller gets the lease, then sleeps ~1 s for its slot.
        yield* Effect.scoped(RateLimiter.acquire(name))
        const outer = yield* Scope.make()
        const waiter = yield* Effect.fork(Scope.extend(RateLimiter.acquire(name), outer))
        yield* settle
        expect((yield* RateLimiter.state(name)).leasesHeld).toBe(1)
        yield* Fiber.interrupt(waiter)
        // The caller's own scope is still open: the lease must not wait for it (live, given a loaded machine a moment).
        if (live) yield* eventually(Effect.map(RateLimiter.state(name), (state) => state.leasesHeld === 0))
        else yield* elapse(1)
        expect((yield* RateLimiter.state(name)).leasesHeld).toBe(0)
        yield* Scope.close(outer, Exit.void)
      }).pipe(Effect.provide(limiters({ [name]: bothTable() })))
    }, 30_000)

    test("an interrupted lease waiter leaves the line", () => {
      const name = unique("intl")
      return Effect.gen(function*() {
        const scope = yield* Scope.make()
        yield* Scope.extend(RateLimiter.acquire(name), scope)
        const first = yield* Effect.fork(Effect.scoped(RateLimiter.acquire(name)))
        yield* settle
        const second = yield* Effect.fork(Effect.scoped(RateLimiter.acquire(name)))
        yield* settle
        yield* Fiber.interrupt(first)
        yield* Scope.close(scope, Exit.void)
        // Prompt: on the release, well before the abandoned place could expire (5 s).
        expect(yield* doneWithin(second, live ? 2_500 : 50)).toBe(true)
        expect((yield* Fiber.join(second)).leaseId).toBeDefined()
      }).pipe(Effect.provide(limiters({ [name]: leasedTable() })))
    }, 30_000)
  })
}

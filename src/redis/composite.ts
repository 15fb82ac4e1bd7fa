/**
 * Several keys' rate slots on Redis (`Store.acquireAll`): one script call (scripts.ts, `acquireAll`)
 * when the members' keys can share it: the same connection, and on a Redis Cluster one hash slot
 * (keys of one script must live on one node; each limiter and key has a hash tag of its own, so that
 * takes a `key_prefix` with a hash tag of its own). Otherwise each member is asked alone (the same
 * script, one member), in order, each at its own slot no sooner than asked, and a refusal gives back
 * what the members before it took; the caller then places them again at the latest of those slots
 * (internal/acquireAllStores.ts).
 */
import * as Effect from "effect/Effect"
import type { StoreError } from "../Errors.js"
import type { LimiterSpec } from "../LimiterSpec.js"
import { type Admitted, admittedFree, type CompositeOutcome, type RateRequest, type Store } from "../Store.js"
import type * as Connections from "./connections.js"
import * as Replies from "./replies.js"

/** A member's keys as the script takes them (its state and its log), and the connection its commands go on. */
export interface Keys {
  readonly keys: readonly [string | Buffer, string | Buffer]
  readonly target: Connections.Client
}

export interface Dependencies {
  /** The store's offset for values on the wire (µs). */
  readonly base: number
  readonly marginMs: number
  readonly cluster: boolean
  readonly keysOf: (limiter: LimiterSpec, key: string) => Keys
  /** Runs the composite script on `target`. */
  readonly evaluate: (target: Connections.Client, keys: ReadonlyArray<string | Buffer>, args: ReadonlyArray<string>) => Effect.Effect<unknown, StoreError>
  readonly refund: Store["refund"]
  /** The error for a reply that is not the script's. */
  readonly unexpected: (reply: unknown) => StoreError
}

/** The hash slot of a key as Redis Cluster computes it: CRC16 (XMODEM) of its hash tag, or of the whole key. */
export const slotOf = (key: string | Buffer): number => {
  const bytes = typeof key === "string" ? Buffer.from(key) : key
  const open = bytes.indexOf(0x7b)
  const close = open < 0 ? -1 : bytes.indexOf(0x7d, open + 1)
  const hashed = close > open + 1 ? bytes.subarray(open + 1, close) : bytes
  let crc = 0
  for (const byte of hashed) {
    crc ^= byte << 8
    for (let i = 0; i < 8; i++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff
  }
  return crc % 16384
}

const micros = (ms: number) => String(Number.isFinite(ms) ? ms * 1_000 : -1)

/** The script's seven arguments of a member (one with a rate). */
const memberArgs = (request: RateRequest, marginMs: number): Array<string> => {
  const rate = request.limiter.rate!
  return rate._tag === "TokenBucket"
    ? ["tb", String(rate.intervalMs * 1_000), String(rate.burst), "0", "0", String(request.cost), micros(request.maxWaitMs)]
    : ["sw", "0", "0", String(rate.limit), String((rate.windowMs + marginMs) * 1_000), String(request.cost), micros(request.maxWaitMs)]
}

/** The script's reply: a refusal, or 8 strings a member (an outcome's 7 and its refund's cost). */
const parse = (flat: ReadonlyArray<string>, count: number): CompositeOutcome | undefined => {
  if (flat[0] === "R") {
    const index = Number(flat[4]) - 1
    const refusal = { _tag: "RateLimited", retryAfterMs: Number(flat[1]), limit: Number(flat[2]), remaining: Number(flat[3]) } as const
    return index >= 0 && index < count ? { _tag: "Refused", index, refusal } : undefined
  }
  if (flat.length !== count * 8) return undefined
  const outcomes: Array<Admitted> = []
  for (let i = 0; i < count; i++) {
    const [outcome] = Replies.outcomes(flat.slice(i * 8, i * 8 + 7))
    if (outcome?._tag !== "Admitted") return undefined
    outcomes.push(outcome)
  }
  return { _tag: "Admitted", outcomes, refundCosts: outcomes.map((_, i) => Number(flat[i * 8 + 7])) }
}

const isStrings = (u: unknown): u is ReadonlyArray<string> => Array.isArray(u) && u.every((x) => typeof x === "string")

export const make = (deps: Dependencies): NonNullable<Store["acquireAll"]> => {
  /** One script call over `requests` (each with a rate), whose keys `members` share a connection. */
  const call = (requests: ReadonlyArray<RateRequest>, members: ReadonlyArray<Keys>, afterMs: number) =>
    Effect.flatMap(
      deps.evaluate(members[0]!.target, members.flatMap((m) => m.keys), [
        String(deps.base), "", "0", "0", "0", "0", "0", "0", "", "",
        String(Math.max(0, afterMs) * 1_000),
        String(requests.length),
        ...requests.flatMap((request) => memberArgs(request, deps.marginMs))
      ]),
      (reply) => {
        const outcome = isStrings(reply) ? parse(reply, requests.length) : undefined
        return outcome === undefined ? Effect.fail(deps.unexpected(reply)) : Effect.succeed(outcome)
      }
    )

  /** Each member alone, in order; a refusal gives back what those before it took. */
  const oneByOne = (requests: ReadonlyArray<RateRequest>, members: ReadonlyArray<Keys>, afterMs: number) =>
    Effect.gen(function*() {
      const outcomes: Array<Admitted> = []
      const refundCosts: Array<number> = []
      for (const [i, request] of requests.entries()) {
        const decided = yield* call([request], [members[i]!], afterMs)
        if (decided._tag === "Refused") {
          yield* Effect.forEach(outcomes, (outcome, j) => {
            const taken = requests[j]!
            return outcome.reservation === undefined ? Effect.void : Effect.ignore(deps.refund(taken.limiter, taken.key, refundCosts[j]!, outcome.reservation))
          }, { discard: true })
          return { ...decided, index: i } satisfies CompositeOutcome
        }
        outcomes.push(decided.outcomes[0]!)
        refundCosts.push(decided.refundCosts[0]!)
      }
      return { _tag: "Admitted", outcomes, refundCosts } satisfies CompositeOutcome
    })

  return (requests, afterMs) =>
    Effect.suspend(() => {
      // Members without a rate take nothing: only those with one are sent.
      const rated = requests.flatMap((request, i) => (request.limiter.rate === undefined ? [] : [i]))
      const sent = rated.map((i) => requests[i]!)
      const members = sent.map((request) => deps.keysOf(request.limiter, request.key))
      const first = members[0]
      if (first === undefined) return Effect.succeed<CompositeOutcome>({ _tag: "Admitted", outcomes: requests.map(() => admittedFree), refundCosts: requests.map((r) => r.cost) })
      const shared = members.every((m) => m.target === first.target && (!deps.cluster || slotOf(m.keys[0]) === slotOf(first.keys[0])))
      return Effect.map(shared ? call(sent, members, afterMs) : oneByOne(sent, members, afterMs), (decided): CompositeOutcome => {
        if (decided._tag === "Refused") return { ...decided, index: rated[decided.index]! }
        const outcomes = requests.map((): Admitted => admittedFree)
        const refundCosts = requests.map((r) => r.cost)
        rated.forEach((i, j) => {
          outcomes[i] = decided.outcomes[j]!
          refundCosts[i] = decided.refundCosts[j]!
        })
        return { _tag: "Admitted", outcomes, refundCosts }
      })
    })
}

/**
 * Token-bucket rate slots on Redis, several keys in one script call (`acquireBuckets`): the waiters
 * of a process on one key are already one request (the per-key coalescer); here the requests of
 * different keys that arrive while calls are under way on the same connection go together in the
 * next call. A lone caller never waits for a batch: its call is sent at once.
 *
 * Plain callbacks on the driver's promises, and one `Effect.async` per request: this is the path
 * of every call on a key without slots reserved ahead, and a forked fiber or a chain of Effect
 * steps per call costs more than the round trip's own work in this process.
 *
 * On a Redis Cluster a script may only touch keys of one slot, and two keys almost never share one,
 * so there each key's call goes alone (still the lean script), as many at once as there are.
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import type { StoreError } from "../Errors.js"
import type { TokenBucket } from "../LimiterSpec.js"
import type { RateOutcome, RateRequest } from "../Store.js"
import type * as Connections from "./connections.js"
import * as Replies from "./replies.js"

/** One key's batch: its requests, then how many unit slots to reserve ahead and their max wait. */
export interface Item {
  readonly key: string | Buffer
  readonly rate: TokenBucket
  readonly requests: ReadonlyArray<RateRequest>
  readonly ahead: number
  readonly aheadMaxWaitMs: number
}

type Decided = Either.Either<ReadonlyArray<RateOutcome>, StoreError>

export interface Options {
  readonly base: number
  readonly cluster: boolean
  /** Runs the script on `target` (EVALSHA, or EVAL after NOSCRIPT), bounded as every command is. */
  readonly evaluate: (target: Connections.Client, keys: ReadonlyArray<string | Buffer>, args: ReadonlyArray<string>) => Promise<unknown>
  /** A failure as the library's error; `target` when the command failed (its connection's refusal tells why). */
  readonly toError: (cause: unknown, target?: Connections.Client) => StoreError
  /** What the requests still queued learn when the store closes. */
  readonly closed: StoreError
}

/** The most keys one call carries. */
const MAX_KEYS = 64

/**
 * Calls under way per connection: with two, Redis decides one batch while this process reads the
 * other's answers (measured on 10,000 keys x 8 fibers: about a tenth more decisions a second than with
 * one). What arrives meanwhile waits for the next.
 */
const MAX_IN_FLIGHT = 2

const micros = (ms: number) => String(Number.isFinite(ms) ? ms * 1_000 : -1)

/** The script's keys and arguments for `items`. */
export const encode = (base: number, items: ReadonlyArray<Item>) => {
  const args = [String(base)]
  for (const item of items) {
    args.push(String(item.rate.intervalMs * 1_000), String(item.rate.burst), String(item.requests.length), String(item.ahead), micros(item.aheadMaxWaitMs))
    for (const request of item.requests) args.push(String(request.cost), micros(request.maxWaitMs))
  }
  return { keys: items.map((item) => item.key), args }
}

/** Each item's outcomes from the flat reply, or its own error; undefined for a reply of another shape. */
export const decode = (reply: unknown, items: ReadonlyArray<Item>, toError: (cause: unknown) => StoreError): Array<Decided> | undefined => {
  if (!Array.isArray(reply) || !reply.every((x) => typeof x === "string")) return undefined
  const flat: ReadonlyArray<string> = reply
  const decided: Array<Decided> = []
  let at = 0
  for (const item of items) {
    const count = Number(flat[at])
    if (!Number.isInteger(count) || count < 2 || at + 1 + count > flat.length) return undefined
    const group = flat.slice(at + 1, at + 1 + count)
    at += 1 + count
    if (group[0] === "E") {
      decided.push(Either.left(toError(new Error(group[1]))))
      continue
    }
    const outcomes = Replies.rateOutcomes(group, item.requests.length)
    if (outcomes === undefined) return undefined
    decided.push(Either.right(outcomes))
  }
  return at === flat.length ? decided : undefined
}

interface Waiting {
  readonly item: Item
  readonly resume: (result: Effect.Effect<ReadonlyArray<RateOutcome>, StoreError>) => void
}

interface Lane {
  readonly queue: Array<Waiting>
  inFlight: number
}

/**
 * `submit(target, item)`: the item's outcomes, decided with whatever else is ready for `target`.
 * `close()` fails what is still queued.
 */
export const make = (options: Options) => {
  const lanes = new Map<Connections.Client, Lane>()
  const maxKeys = options.cluster ? 1 : MAX_KEYS
  const maxInFlight = options.cluster ? Infinity : MAX_IN_FLIGHT

  const answer = (batch: ReadonlyArray<Waiting>, reply: unknown) => {
    const decided = decode(reply, batch.map((w) => w.item), options.toError)
    if (decided === undefined) {
      const error = options.toError(new Error(`unexpected script reply ${JSON.stringify(reply)}`))
      for (const w of batch) w.resume(Effect.fail(error))
      return
    }
    for (let i = 0; i < batch.length; i++) batch[i]!.resume(decided[i]!)
  }

  const flush = (target: Connections.Client, lane: Lane) => {
    while (lane.inFlight < maxInFlight && lane.queue.length > 0) {
      const batch = lane.queue.splice(0, maxKeys)
      const { keys, args } = encode(options.base, batch.map((w) => w.item))
      lane.inFlight++
      options.evaluate(target, keys, args).then(
        (reply) => answer(batch, reply),
        (cause: unknown) => {
          const error = options.toError(cause, target)
          for (const w of batch) w.resume(Effect.fail(error))
        }
      ).finally(() => {
        lane.inFlight--
        flush(target, lane)
      })
    }
  }

  const submit = (target: Connections.Client, item: Item): Effect.Effect<ReadonlyArray<RateOutcome>, StoreError> =>
    Effect.async((resume) => {
      let lane = lanes.get(target)
      if (lane === undefined) {
        lane = { queue: [], inFlight: 0 }
        lanes.set(target, lane)
      }
      const waiting: Waiting = { item, resume }
      lane.queue.push(waiting)
      flush(target, lane)
      const queue = lane.queue
      // A caller that gives up while its request is still queued takes it out: nothing is sent for it.
      return Effect.sync(() => {
        const at = queue.indexOf(waiting)
        if (at >= 0) queue.splice(at, 1)
      })
    })

  const close = () => {
    for (const lane of lanes.values()) for (const w of lane.queue.splice(0)) w.resume(Effect.fail(options.closed))
  }

  return { submit, close }
}

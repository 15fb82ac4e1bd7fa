/**
 * The Redis engine on `ioredis`: every operation is one Lua script (`scripts.ts`), run with
 * EVALSHA and sent as EVAL when the server answers NOSCRIPT (after a restart or SCRIPT FLUSH),
 * which loads it again. Time is Redis `TIME`; keys carry TTLs that end with their state.
 *
 * Commands are never queued while the connection is down: they fail at once with
 * `StoreUnavailable` (so limiters follow `fail_closed`), while the client reconnects by itself.
 * What no reconnect mends (a wrong password, a cluster node redirecting the key, a script error) is
 * `StoreMisconfigured`, and a command not answered within `command_timeout_ms` is `StoreTimeout`:
 * neither ever admits a call.
 */
import { randomUUID } from "node:crypto"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type { Cluster, Redis } from "ioredis"
import { StoreUnavailable } from "../Errors.js"
import * as Coalesce from "../internal/coalesce.js"
import * as Holds from "../internal/holds.js"
import { digest, isWellFormed, wtf8 } from "../internal/keys.js"
import * as Wakeups from "../internal/wakeups.js"
import { type LimiterSpec, stateKey } from "../LimiterSpec.js"
import type { RedisStoreConfig } from "../Settings.js"
import { admittedFree, type RateRequest, type StateView, type Store, StoreFactory } from "../Store.js"
import * as Stores from "../Stores.js"
import * as Buckets from "./buckets.js"
import * as Composite from "./composite.js"
import * as Connections from "./connections.js"
import * as Errors from "./errors.js"
import * as Replies from "./replies.js"
import { type Script, SCRIPTS } from "./scriptShas.js"


export interface RedisStore extends Store {
  /** The store's command connections (each a `Cluster` on a Redis Cluster), for tests and tools. */
  readonly clients: ReadonlyArray<Connections.Client>
  /** The subscriber's connection now, if any (on a cluster, to one node), for tests and tools. */
  readonly subscriber: () => Redis | undefined
  /** How many keys have waiters subscribed to their releases (for tests and tools). */
  readonly waiters: () => { readonly subscribed: number }
}

const isStrings = (u: unknown): u is ReadonlyArray<string> => Array.isArray(u) && u.every((x) => typeof x === "string")

/** The most requests one script call carries. */
const MAX_BATCH = 256

/** FNV-1a over UTF-16 code units: cheap, and the same key always picks the same connection. */
const hashOf = (text: string): number => {
  let hash = 0x811c9dc5
  for (let i = 0; i < text.length; i++) hash = Math.imul(hash ^ text.charCodeAt(i), 0x01000193)
  return hash >>> 0
}


/**
 * Builds the store. With `shared`, an ioredis client (or `Cluster`) the program already has, the store
 * sends its commands on it (and leaves it open when the store closes) and subscribes on a connection
 * of its own (a duplicate of the client, or to one of the cluster's nodes); `url`, `cluster` and
 * `pool_max_size` are then unused. Its commands are not queued while the client is down whatever its
 * own options say: they fail at once with `StoreUnavailable`, as on the store's own connections, and
 * a reply is awaited at most `command_timeout_ms`.
 */
export const make = (name: string, config: RedisStoreConfig, shared?: Connections.Client) =>
  Effect.gen(function*() {
    const { clients, subscriber, toError, send } = yield* Connections.connect(name, config, shared)

    const channel = `${config.key_prefix}released`
    const backoffChannel = `${config.key_prefix}backoff`
    /** The release message of a key: the state key itself, or a digest of its WTF-8 bytes when it has lone surrogates. */
    const signalId = (state: string) => isWellFormed(state) ? state : `#${digest(wtf8(state))}`
    const wakeups = Wakeups.make()
    const holds = Holds.make()
    const clock = yield* Effect.clock
    /** A backoff of any process: the key is held for its retry-after from now (we hear of it no earlier than it was made). */
    const held = (sid: string, retryAfterMs: number) => {
      const now = clock.unsafeCurrentTimeMillis()
      holds.hold(sid, now + retryAfterMs, now)
    }
    /** Tells this store's own backoff messages from others': it recorded those when it made them. */
    const origin = randomUUID().slice(0, 8)
    subscriber.listen({
      channels: [channel, backoffChannel],
      onMessage: (from, message) => {
        if (from === channel) return wakeups.signal(message)
        // "retry after ms:origin:state id"
        const first = message.indexOf(":")
        const second = message.indexOf(":", first + 1)
        if (from !== backoffChannel || first < 0 || second < 0 || message.slice(first + 1, second) === origin) return
        held(message.slice(second + 1), Number(message.slice(0, first)))
      },
      // Releases published while the subscriber was away were missed: every waiter checks again.
      onSubscribed: () => wakeups.signalAll()
    })

    // Values cross the wire relative to this offset (whole µs), so they stay small and exact.
    // It is not a time anyone relies on: only differences of the server's own instants are.
    const base = Math.floor(Date.now()) * 1_000
    /**
     * Every command of one key goes on the same connection, which Redis runs in order: a release sent
     * after an acquire whose reply timed out then still runs after that acquire, never before it.
     */
    const client = (state: string) => clients.length === 1 ? clients[0]! : clients[hashOf(state) % clients.length]!

    /** A key's keys, with these suffixes. A key with lone surrogates is sent as WTF-8 bytes: as a string it would be sent as UTF-8, one key for many. */
    const keysOf = (state: string, suffixes: ReadonlyArray<string>) => {
      const root = isWellFormed(state) ? `${config.key_prefix}{${state}}` : Buffer.concat([Buffer.from(`${config.key_prefix}{`), wtf8(state), Buffer.from("}")])
      return suffixes.map((suffix) => typeof root === "string" ? `${root}${suffix}` : Buffer.concat([root, Buffer.from(suffix)]))
    }

    /** EVALSHA, sent as EVAL when the server answers NOSCRIPT. */
    const evaluatePromise = (which: Script, target: Connections.Client, keys: ReadonlyArray<string | Buffer>, args: ReadonlyArray<string>) => {
      const command = () =>
        target.evalsha(which.sha, keys.length, ...keys, ...args).catch((error: unknown) =>
          Errors.messageOf(error).startsWith("NOSCRIPT") ? target.eval(which.lua, keys.length, ...keys, ...args) : Promise.reject(error)
        )
      return send(target, command)
    }
    const evaluate = (which: Script, target: Connections.Client, keys: ReadonlyArray<string | Buffer>, args: ReadonlyArray<string>) =>
      Effect.tryPromise({ try: () => evaluatePromise(which, target, keys, args), catch: (cause) => toError(cause, target) })

    const run = (which: Script, limiter: LimiterSpec, key: string, extra: ReadonlyArray<string>) =>
      Effect.suspend(() => {
        const state = stateKey(limiter.name, key)
        const sid = signalId(state)
        const rate = limiter.rate
        const args = [
          String(base),
          rate === undefined ? "" : rate._tag === "TokenBucket" ? "tb" : "sw",
          String(rate?._tag === "TokenBucket" ? rate.intervalMs * 1_000 : 0),
          String(rate?._tag === "TokenBucket" ? rate.burst : 0),
          String(rate?._tag === "SlidingWindow" ? rate.limit : 0),
          String(rate?._tag === "SlidingWindow" ? (rate.windowMs + config.timing_margin_ms) * 1_000 : 0),
          String((limiter.concurrency?.leaseTtlMs ?? 0) * 1_000),
          String(limiter.concurrency?.max ?? 0),
          sid,
          channel,
          ...extra
        ]
        return evaluate(which, client(state), keysOf(state, [":s", ":log", ":h", ":q", ":qe"]), args)
      })

    const unexpected = (reply: unknown) => Effect.fail(toError(new Error(`unexpected script reply ${JSON.stringify(reply)}`)))
    const strings = (reply: unknown) => isStrings(reply) ? Effect.succeed(reply) : unexpected(reply)

    /** A script's outcomes, 7 strings each. */
    const outcomes = (reply: unknown) => Effect.map(strings(reply), Replies.outcomes)

    /** The batch's outcomes, then one per slot reserved ahead. */
    const rateOutcomes = (requests: number) => (reply: unknown) =>
      Effect.flatMap(strings(reply), (flat) => {
        const decided = Replies.rateOutcomes(flat, requests)
        return decided === undefined ? unexpected(reply) : Effect.succeed(decided)
      })

    const maxWaitArg = (request: RateRequest) => String(Number.isFinite(request.maxWaitMs) ? request.maxWaitMs * 1_000 : -1)

    const scope = yield* Effect.scope
    const closed = new StoreUnavailable({ store: name, engine: "redis", reason: "closed", message: "the store was closed" })
    // Token buckets of different keys that are ready together share a script call.
    const buckets = Buckets.make({
      base,
      cluster: Connections.isCluster(clients[0]!),
      evaluate: (target, keys, args) => evaluatePromise(SCRIPTS.acquireBuckets, target, keys, args),
      toError,
      closed
    })
    yield* Effect.addFinalizer(() => Effect.sync(buckets.close))

    // The waiters of this process on one key share a script call.
    const coalescer = Coalesce.make({
      scope,
      maxBatch: MAX_BATCH,
      marginMs: config.timing_margin_ms,
      held: { mark: holds.mark, since: (id, mark, nowMs) => holds.until(signalId(id), mark, nowMs) !== undefined },
      decide: (id, batch, ahead) => {
        const { limiter, key } = ahead.request
        const rate = limiter.rate
        if (rate?._tag === "TokenBucket") {
          return buckets.submit(client(id), { key: keysOf(id, [":s"])[0]!, rate, requests: batch, ahead: ahead.count, aheadMaxWaitMs: ahead.request.maxWaitMs })
        }
        return run(SCRIPTS.acquireRates, limiter, key, batch.flatMap((r) => [String(r.cost), maxWaitArg(r)])).pipe(
          Effect.flatMap(rateOutcomes(batch.length))
        )
      },
      closed
    })

    const store: RedisStore = {
      name,
      engine: "redis",
      timingMarginMs: config.timing_margin_ms,
      clients,
      subscriber: subscriber.connection,
      waiters: () => ({ subscribed: wakeups.size() }),

      acquireRate: (request) =>
        request.limiter.rate === undefined
          ? Effect.succeed(admittedFree)
          : coalescer.submit(stateKey(request.limiter.name, request.key), request),

      acquireRateNow: (request, clock) =>
        request.limiter.rate === undefined ? admittedFree : coalescer.takeNow(stateKey(request.limiter.name, request.key), request, clock),

      acquireAll: Composite.make({
        base,
        marginMs: config.timing_margin_ms,
        cluster: Connections.isCluster(clients[0]!),
        keysOf: (limiter, key) => {
          const state = stateKey(limiter.name, key)
          const [s, log] = keysOf(state, [":s", ":log"])
          return { keys: [s!, log!], target: client(state) }
        },
        evaluate: (target, keys, args) => evaluate(SCRIPTS.acquireAll, target, keys, args),
        refund: (limiter, key, cost, reservation) => store.refund(limiter, key, cost, reservation),
        unexpected: (reply) => toError(new Error(`unexpected script reply ${JSON.stringify(reply)}`))
      }),

      acquireLease: (request) =>
        run(SCRIPTS.acquireLease, request.limiter, request.key, [
          String(request.cost),
          request.leaseId,
          maxWaitArg(request),
          request.queue ? "1" : "0"
        ]).pipe(Effect.flatMap(outcomes), Effect.map((all) => all[0]!)),

      release: (limiter, key, leaseId) =>
        run(SCRIPTS.release, limiter, key, [leaseId]).pipe(
          // Waiters in this process need not wait for the message to come back.
          Effect.tap(() => Effect.sync(() => wakeups.signal(signalId(stateKey(limiter.name, key))))),
          Effect.asVoid
        ),

      renew: (limiter, key, leaseId) => run(SCRIPTS.renew, limiter, key, [leaseId]).pipe(Effect.map((reply) => reply === 1)),

      refund: (limiter, key, cost, reservation) => {
        const rate = limiter.rate
        if (rate === undefined || (rate._tag === "TokenBucket" && reservation.version === undefined)) return Effect.void
        return run(SCRIPTS.refund, limiter, key, [
          String(cost),
          String(reservation.version ?? ""),
          String(base + Math.round(reservation.slotMs * 1_000))
        ]).pipe(Effect.asVoid)
      },

      backoff: (limiter, key, retryAfterMs) =>
        limiter.rate === undefined
          ? Effect.void
          : run(SCRIPTS.backoff, limiter, key, [String(Math.max(0, retryAfterMs) * 1_000), backoffChannel, origin]).pipe(
            // This process's waiters need not wait for the message to come back.
            Effect.tap(() => Effect.sync(() => held(signalId(stateKey(limiter.name, key)), retryAfterMs))),
            Effect.asVoid
          ),

      backoffs: {
        mark: holds.mark,
        until: (limiter, key, mark, nowMs) => holds.until(signalId(stateKey(limiter.name, key)), mark, nowMs),
        any: holds.any
      },

      state: (limiter, key) =>
        run(SCRIPTS.state, limiter, key, []).pipe(
          Effect.flatMap(strings),
          Effect.map(([limit, remaining, reset, next, held, waiting]): StateView => ({
            limit: Replies.optionalNumber(limit),
            remaining: Replies.optionalNumber(remaining),
            resetAfterMs: Number(reset),
            nextSlotAfterMs: Number(next),
            leasesHeld: Number(held),
            maxConcurrent: limiter.concurrency?.max,
            waiting: Number(waiting)
          }))
        ),

      releases: (limiter, key) => wakeups.subscribe(signalId(stateKey(limiter.name, key)))
    }
    return store
  })


/**
 * The production `StoreFactory` (`Stores.layer`), its Redis stores over `client`, an ioredis client
 * or `Cluster` the program already has: one connection (per node) for the program and its limiters.
 * Each store sends its commands on it (its `url`, `cluster` and `pool_max_size` unused, a `${VAR}` in
 * the url not read) and subscribes on a connection it owns; closing the limiters leaves `client` open.
 */
export const layerWith = (client: Redis | Cluster): Layer.Layer<StoreFactory> =>
  Layer.succeed(
    StoreFactory,
    Stores.make({ redis: (name, config) => make(name, { ...config, url: typeof config.url === "string" ? config.url : "" }, client) })
  )

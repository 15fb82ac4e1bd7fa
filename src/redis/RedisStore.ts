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
import { createHash, randomUUID } from "node:crypto"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { Redis, type RedisOptions } from "ioredis"
import { StoreUnavailable } from "../Errors.js"
import * as Coalesce from "../internal/coalesce.js"
import * as Holds from "../internal/holds.js"
import { digest, isWellFormed, wtf8 } from "../internal/keys.js"
import * as Wakeups from "../internal/wakeups.js"
import { type LimiterSpec, stateKey } from "../LimiterSpec.js"
import type { RedisStoreConfig } from "../Settings.js"
import { type AcquireOutcome, type AcquireRequest, type StateView, type Store, StoreFactory } from "../Store.js"
import * as Stores from "../Stores.js"
import * as Errors from "./errors.js"
import * as Scripts from "./scripts.js"

interface Script {
  readonly lua: string
  readonly sha: string
}

const script = (lua: string): Script => ({ lua, sha: createHash("sha1").update(lua).digest("hex") })

const SCRIPTS = {
  acquireLease: script(Scripts.acquireLease),
  acquireRates: script(Scripts.acquireRates),
  release: script(Scripts.release),
  renew: script(Scripts.renew),
  refund: script(Scripts.refund),
  backoff: script(Scripts.backoff),
  state: script(Scripts.state)
}

export interface RedisStore extends Store {
  /** The store's command connections and its subscriber, for tests and tools. */
  readonly clients: ReadonlyArray<Redis>
  readonly subscriber: Redis
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

const optionalNumber = (s: string | undefined): number | undefined => (s === undefined || s === "" ? undefined : Number(s))

/**
 * Builds the store. With `shared`, an ioredis client the program already has, the store sends its
 * commands on it (and leaves it open when the store closes) and subscribes on a duplicate of it that
 * it owns; `url` and `pool_max_size` are then unused. Its commands are not queued while the client
 * is down whatever its own options say: they fail at once with `StoreUnavailable`, as on the store's
 * own connections, and a reply is awaited at most `command_timeout_ms`.
 */
export const make = (name: string, config: RedisStoreConfig, shared?: Redis) =>
  Effect.gen(function*() {
    const where = shared === undefined ? Errors.describeUrl(config.url) : `${shared.options.host ?? "localhost"}:${shared.options.port ?? 6379} (the program's client)`
    /** Why each client last failed to connect, while it is not ready: a wrong password shows only there. */
    const refusals = new WeakMap<Redis, string>()
    const toError = (cause: unknown, client?: Redis) =>
      Errors.classify({ store: name, where, commandTimeoutMs: config.command_timeout_ms }, cause, client === undefined ? undefined : refusals.get(client))

    const options: RedisOptions = {
      connectTimeout: config.connect_timeout_ms,
      commandTimeout: config.command_timeout_ms,
      // A command must not wait for a reconnect, nor run twice after one: it fails and the limiter decides.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      retryStrategy: (attempt) => Math.min(50 * attempt, 2_000),
      // Shown by CLIENT LIST: which store of which process holds the connection.
      connectionName: `rate-sync:${name}:${process.pid}`
    }
    /** Errors reach the caller through the commands; a refused connection is remembered for them. */
    const watch = (client: Redis) => {
      client.on("error", (error: unknown) => {
        if (client.status !== "ready") refusals.set(client, Errors.messageOf(error))
      })
      client.on("ready", () => refusals.delete(client))
      return client
    }
    const open = (extra: RedisOptions) => watch(new Redis(config.url, { ...options, ...extra }))
    // QUIT lets replies in flight arrive; a connection that is down has none and would wait for ever.
    const close = (client: Redis) =>
      Effect.promise(() => client.quit().catch(() => "")).pipe(
        Effect.timeout(config.command_timeout_ms),
        Effect.ignore,
        Effect.zipRight(Effect.sync(() => client.disconnect()))
      )
    const clients = shared !== undefined
      ? [watch(shared)]
      : yield* Effect.acquireRelease(
        Effect.sync(() => Array.from({ length: config.pool_max_size }, () => open({}))),
        (all) => Effect.forEach(all, (client) => client.status === "ready" ? close(client) : Effect.sync(() => client.disconnect()))
      )
    // The subscriber subscribes on each `ready` (below), never before: a SUBSCRIBE sent while it connects
    // makes its ready check (INFO) fail in subscriber mode, and the subscription is lost for good.
    const subscriberOptions: RedisOptions = { maxRetriesPerRequest: null, commandTimeout: undefined, autoResubscribe: false }
    const subscriber = yield* Effect.acquireRelease(
      Effect.sync(() =>
        shared !== undefined
          ? watch(shared.duplicate({ ...subscriberOptions, connectionName: `rate-sync:${name}:${process.pid}:sub` }))
          : open(subscriberOptions)
      ),
      (client) => Effect.sync(() => client.disconnect())
    )

    const ready = (client: Redis) =>
      client.status === "ready"
        ? Promise.resolve()
        : new Promise<void>((resolve, reject) => {
          client.once("ready", resolve)
          client.once("error", reject)
        })
    yield* Effect.tryPromise({ try: () => Promise.all(clients.map(ready)), catch: (cause) => toError(cause) }).pipe(
      Effect.timeoutFail({
        duration: config.connect_timeout_ms,
        onTimeout: () => toError(new Error(`no answer within connect_timeout_ms = ${config.connect_timeout_ms}`), clients[0])
      }),
      // An outage at start is not a mistake: the limiters start and follow fail_closed until it ends.
      Effect.catchIf(
        (error) => error._tag !== "StoreMisconfigured",
        (error) =>
          Effect.logWarning(
            `rate-sync: store "${name}" starts without Redis at ${where} (${Errors.messageOf(error.cause)}); limiters follow fail_closed until it answers`
          )
      )
    )

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
    subscriber.on("message", (from: string, message: string) => {
      if (from === channel) return wakeups.signal(message)
      // "retry after ms:origin:state id"
      const first = message.indexOf(":")
      const second = message.indexOf(":", first + 1)
      if (from !== backoffChannel || first < 0 || second < 0 || message.slice(first + 1, second) === origin) return
      held(message.slice(second + 1), Number(message.slice(0, first)))
    })
    const subscribe = () => {
      subscriber.subscribe(channel, backoffChannel).then(
        // Releases published while the subscriber was away were missed: every waiter checks again.
        () => wakeups.signalAll(),
        () => {}
      )
    }
    subscriber.on("ready", subscribe)
    if (subscriber.status === "ready") subscribe()

    // Values cross the wire relative to this offset (whole µs), so they stay small and exact.
    // It is not a time anyone relies on: only differences of the server's own instants are.
    const base = Math.floor(Date.now()) * 1_000
    /**
     * Every command of one key goes on the same connection, which Redis runs in order: a release sent
     * after an acquire whose reply timed out then still runs after that acquire, never before it.
     */
    const client = (state: string) => clients.length === 1 ? clients[0]! : clients[hashOf(state) % clients.length]!

    /**
     * A command on the program's client, held to the rules of the store's own connections whatever
     * that client's options: not queued while it is down, its reply awaited at most command_timeout_ms.
     */
    const asOwn = (target: Redis, send: () => Promise<unknown>): Promise<unknown> => {
      if (target.status !== "ready") return Promise.reject(new Error(`Stream isn't writeable: the program's client is ${target.status}`))
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("Command timed out")), config.command_timeout_ms)
        send().then(resolve, reject).finally(() => clearTimeout(timer))
      })
    }

    const run = (which: Script, limiter: LimiterSpec, key: string, extra: ReadonlyArray<string>) =>
      Effect.suspend(() => {
        const state = stateKey(limiter.name, key)
        const sid = signalId(state)
        // A key with lone surrogates is sent as WTF-8 bytes: as a string it would be sent as UTF-8, one key for many.
        const root = isWellFormed(state) ? `${config.key_prefix}{${state}}` : Buffer.concat([Buffer.from(`${config.key_prefix}{`), wtf8(state), Buffer.from("}")])
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
        const keys = [":s", ":log", ":h", ":q", ":qe"].map((suffix) =>
          typeof root === "string" ? `${root}${suffix}` : Buffer.concat([root, Buffer.from(suffix)])
        )
        const target = client(state)
        const send = () =>
          target.evalsha(which.sha, keys.length, ...keys, ...args).catch((error: unknown) =>
            Errors.messageOf(error).startsWith("NOSCRIPT") ? target.eval(which.lua, keys.length, ...keys, ...args) : Promise.reject(error)
          )
        return Effect.tryPromise({ try: shared === undefined ? send : () => asOwn(target, send), catch: (cause) => toError(cause, target) })
      })

    const strings = (reply: unknown) =>
      isStrings(reply) ? Effect.succeed(reply) : Effect.fail(toError(new Error(`unexpected script reply ${JSON.stringify(reply)}`)))

    const outcome = (flat: ReadonlyArray<string>, i: number): AcquireOutcome => {
      const [tag, a, b, c, d, e, f] = flat.slice(i * 7, i * 7 + 7)
      if (tag === "R") return { _tag: "RateLimited", retryAfterMs: Number(a), limit: Number(b), remaining: Number(c) }
      if (tag === "C") return { _tag: "ConcurrencyFull", expiresInMs: optionalNumber(a), held: Number(b), limit: Number(c) }
      const slotMs = optionalNumber(b)
      return {
        _tag: "Admitted",
        waitMs: Number(a),
        reservation: slotMs === undefined ? undefined : { slotMs, tatMs: Number(c), version: optionalNumber(d) },
        limit: optionalNumber(e),
        remaining: optionalNumber(f)
      }
    }

    /** A script's outcomes, 7 strings each. */
    const outcomes = (reply: unknown) =>
      Effect.map(strings(reply), (flat) => Array.from({ length: Math.floor(flat.length / 7) }, (_, i) => outcome(flat, i)))

    /**
     * The batch's outcomes, then one per slot reserved ahead. Only the last of those carries the
     * version written: a refund gives back only the newest reservation, as for separate requests.
     */
    const rateOutcomes = (requests: number) => (reply: unknown) =>
      Effect.map(strings(reply), (flat) => {
        const decided = Array.from({ length: requests }, (_, i) => outcome(flat, i))
        const [tag, count, first, interval, now, tat, version, limit, remaining] = flat.slice(requests * 7)
        if (tag !== "B") return decided
        const n = Number(count)
        for (let j = 0; j < n; j++) {
          const waitMs = Math.max(0, Number(first) + j * Number(interval))
          decided.push({
            _tag: "Admitted",
            waitMs,
            reservation: {
              slotMs: Number(now) + waitMs,
              tatMs: Number(tat) - (n - 1 - j) * Number(interval),
              version: j === n - 1 ? Number(version) : undefined
            },
            limit: Number(limit),
            remaining: Number(remaining)
          })
        }
        return decided
      })

    const maxWaitArg = (request: AcquireRequest) => String(Number.isFinite(request.maxWaitMs) ? request.maxWaitMs * 1_000 : -1)

    // The waiters of this process on one key share a script call.
    const coalescer = Coalesce.make({
      scope: yield* Effect.scope,
      maxBatch: MAX_BATCH,
      marginMs: config.timing_margin_ms,
      held: { mark: holds.mark, since: (id, mark, nowMs) => holds.until(signalId(id), mark, nowMs) !== undefined },
      decide: (_id, batch, ahead) =>
        run(SCRIPTS.acquireRates, ahead.request.limiter, ahead.request.key, [
          String(ahead.count),
          maxWaitArg(ahead.request),
          ...batch.flatMap((r) => [String(r.cost), maxWaitArg(r)])
        ]).pipe(Effect.flatMap(rateOutcomes(batch.length))),
      closed: new StoreUnavailable({ store: name, engine: "redis", message: "the store was closed" })
    })

    const store: RedisStore = {
      name,
      engine: "redis",
      timingMarginMs: config.timing_margin_ms,
      clients,
      subscriber,
      waiters: () => ({ subscribed: wakeups.size() }),

      acquire: (request) => {
        if (request.limiter.concurrency !== undefined && request.leaseId !== undefined) {
          return run(SCRIPTS.acquireLease, request.limiter, request.key, [
            String(request.cost),
            request.leaseId,
            maxWaitArg(request),
            request.queue ? "1" : "0"
          ]).pipe(Effect.flatMap(outcomes), Effect.map((all) => all[0]!))
        }
        return request.limiter.rate === undefined
          ? Effect.succeed({ _tag: "Admitted", waitMs: 0, reservation: undefined, limit: undefined, remaining: undefined })
          : coalescer.submit(stateKey(request.limiter.name, request.key), request)
      },

      acquireNow: (request, clock) =>
        request.leaseId === undefined && request.limiter.rate !== undefined
          ? coalescer.takeNow(stateKey(request.limiter.name, request.key), request, clock)
          : undefined,

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
            limit: optionalNumber(limit),
            remaining: optionalNumber(remaining),
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
 * the program already has: one connection for the program and its limiters. Each store sends its
 * commands on it (its `url` and `pool_max_size` unused, a `${VAR}` in the url not read) and
 * subscribes on a duplicate it owns; closing the limiters leaves `client` open.
 */
export const layerWith = (client: Redis): Layer.Layer<StoreFactory> =>
  Layer.succeed(
    StoreFactory,
    Stores.make({ redis: (name, config) => make(name, { ...config, url: typeof config.url === "string" ? config.url : "" }, client) })
  )

/**
 * The Redis engine's connections: a pool of command connections (or the program's own client) and
 * a subscriber, opened so that a command never waits for a reconnect nor runs twice after one (it
 * fails, and the limiter decides), closed with the store's scope.
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import { Redis, type RedisOptions } from "ioredis"
import type { StoreMisconfigured, StoreTimeout, StoreUnavailable } from "../Errors.js"
import type { RedisStoreConfig } from "../Settings.js"
import * as Errors from "./errors.js"

export interface Connections {
  readonly clients: ReadonlyArray<Redis>
  readonly subscriber: Redis
  /** A failure of a command or connection as the library's error. */
  readonly toError: (cause: unknown, client?: Redis) => StoreUnavailable | StoreTimeout | StoreMisconfigured
  /**
   * A command on the program's client, held to the rules of the store's own connections whatever
   * that client's options: not queued while it is down, its reply awaited at most command_timeout_ms.
   */
  readonly asOwn: (target: Redis, send: () => Promise<unknown>) => Promise<unknown>
}

/**
 * Opens the connections, waiting at most connect_timeout_ms for them: an outage at start is
 * logged, not failed (the limiters follow fail_closed until it ends); a misconfiguration fails.
 */
export const connect = (
  name: string,
  config: RedisStoreConfig,
  shared: Redis | undefined
): Effect.Effect<Connections, StoreMisconfigured, Scope.Scope> =>
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
    // A program's client made with lazyConnect connects at its first command: the store needs it now.
    if (shared?.status === "wait") shared.connect().catch(() => {})
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
          ? watch(shared.duplicate({ ...subscriberOptions, lazyConnect: false, connectionName: `rate-sync:${name}:${process.pid}:sub` }))
          : open(subscriberOptions)
      ),
      (client) => Effect.sync(() => client.disconnect())
    )

    const asOwn = (target: Redis, send: () => Promise<unknown>): Promise<unknown> => {
      if (target.status !== "ready") return Promise.reject(new Error(`Stream isn't writeable: the program's client is ${target.status}`))
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("Command timed out")), config.command_timeout_ms)
        send().then(resolve, reject).finally(() => clearTimeout(timer))
      })
    }

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

    return { clients, subscriber, toError, asOwn }
  })

/**
 * The Redis engine's connections: a pool of command connections (or the program's own client) and
 * a subscriber, opened so that a command never waits for a reconnect nor runs twice after one (it
 * fails, and the limiter decides), closed with the store's scope.
 *
 * With `cluster = true` (or the program's own `Cluster`), each command connection is an ioredis
 * `Cluster` over the seed nodes in `url`: it learns the slots from them, sends each script to the
 * master of its keys' slot (one hash tag per limiter key, so one slot), and follows `MOVED` and `ASK`
 * while slots move or a replica takes over. Not configured as one, a cluster node's redirection is a
 * misconfiguration (`errors.ts`).
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import { Cluster, type ClusterOptions, Redis, type RedisOptions } from "ioredis"
import { StoreMisconfigured, type StoreTimeout, type StoreUnavailable } from "../Errors.js"
import type { RedisStoreConfig } from "../Settings.js"
import * as Errors from "./errors.js"
import * as Subscriber from "./subscriber.js"

/** A connection the store sends its scripts on: to one server, or to a Redis Cluster. */
export type Client = Redis | Cluster

export interface Connections {
  readonly clients: ReadonlyArray<Client>
  readonly subscriber: Subscriber.Subscriber
  /** A failure of a command or connection as the library's error. */
  readonly toError: (cause: unknown, client?: Client) => StoreUnavailable | StoreTimeout | StoreMisconfigured
  /**
   * Sends a command. On the program's client or a cluster it is held to the rules of the store's own
   * connections whatever the client's options: not sent while the client is not ready, its reply
   * awaited at most command_timeout_ms (a cluster's retries while slots move included).
   */
  readonly send: (target: Client, command: () => Promise<unknown>) => Promise<unknown>
}

/** Tells a cluster client from a single server's (by its own flag: the program's ioredis may be another copy). */
export const isCluster = (client: Client): client is Cluster => client.isCluster

/** A cluster's credentials and TLS, from its first seed url that has them: every node discovered needs them too. */
export const clusterAuth = (seeds: ReadonlyArray<string>): RedisOptions => {
  for (const seed of seeds) {
    try {
      const parsed = new URL(seed)
      const tls = parsed.protocol === "rediss:" ? { tls: {} } : {}
      if (parsed.username !== "" || parsed.password !== "") {
        return { username: decodeURIComponent(parsed.username), password: decodeURIComponent(parsed.password), ...tls }
      }
      if (parsed.protocol === "rediss:") return tls
    } catch {
      // ioredis reads a url it can parse; the others fail to connect.
    }
  }
  return {}
}

/** Every subscriber connection: no resubscription of its own (the store subscribes on each ready), no timeout while listening. */
const subscriberOptions: RedisOptions = { maxRetriesPerRequest: null, commandTimeout: undefined, autoResubscribe: false }

/**
 * Opens the connections, waiting at most connect_timeout_ms for them: an outage at start is
 * logged, not failed (the limiters follow fail_closed until it ends); a misconfiguration fails.
 */
export const connect = (
  name: string,
  config: RedisStoreConfig,
  shared: Client | undefined
): Effect.Effect<Connections, StoreMisconfigured, Scope.Scope> =>
  Effect.gen(function*() {
    const cluster = shared === undefined ? config.cluster : isCluster(shared)
    const seeds = Errors.splitUrls(config.url)
    // ioredis drops a cluster url's database number: a url asking for another database than 0 is a mistake.
    const numbered = cluster && shared === undefined ? seeds.find((seed) => !/^(\/0?)?$/.test(Errors.pathOf(seed))) : undefined
    if (numbered !== undefined) {
      return yield* new StoreMisconfigured({
        store: name,
        engine: "redis",
        reason: "database",
        message: `Redis Cluster at ${Errors.describeUrl(numbered)}: a cluster has database 0 only; remove the database number from url`
      })
    }
    const where = shared === undefined
      ? `${Errors.describeUrl(config.url)}${cluster ? " (cluster)" : ""}`
      : isCluster(shared)
      ? "the program's cluster client"
      : `${shared.options.host ?? "localhost"}:${shared.options.port ?? 6379} (the program's client)`
    /** Why each client last failed to connect, while it is not ready: a wrong password shows only there. */
    const refusals = new WeakMap<Client, string>()
    const toError = (cause: unknown, client?: Client) =>
      Errors.classify(
        { store: name, where, commandTimeoutMs: config.command_timeout_ms, cluster },
        cause,
        client === undefined ? undefined : refusals.get(client)
      )

    const connectionName = `rate-sync:${name}:${process.pid}`
    const options: RedisOptions = {
      connectTimeout: config.connect_timeout_ms,
      commandTimeout: config.command_timeout_ms,
      // A command must not wait for a reconnect, nor run twice after one: it fails and the limiter decides.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      retryStrategy: (attempt) => Math.min(50 * attempt, 2_000),
      // Shown by CLIENT LIST: which store of which process holds the connection.
      connectionName
    }
    const clusterOptions: ClusterOptions = {
      enableOfflineQueue: false,
      clusterRetryStrategy: (attempt) => Math.min(50 * attempt, 2_000),
      slotsRefreshTimeout: config.connect_timeout_ms,
      redisOptions: {
        connectTimeout: config.connect_timeout_ms,
        commandTimeout: config.command_timeout_ms,
        maxRetriesPerRequest: 0,
        connectionName,
        ...clusterAuth(seeds)
      }
    }
    /** Errors reach the caller through the commands; a refused connection is remembered for them. */
    const watch = <C extends Client>(client: C): C => {
      client.on("error", (error: unknown) => {
        // A cluster's own error (no node answered) says less than a node's reply before it (a wrong password).
        if (client.status !== "ready" && !(isCluster(client) && refusals.has(client))) refusals.set(client, Errors.refusalOf(error))
      })
      client.on("node error", (error: unknown) => {
        if (client.status !== "ready" && Errors.isReply(error)) refusals.set(client, Errors.messageOf(error))
      })
      client.on("ready", () => refusals.delete(client))
      return client
    }
    const open = (): Client => watch(cluster ? new Cluster(seeds, clusterOptions) : new Redis(config.url, options))
    // QUIT lets replies in flight arrive; a connection that is down has none and would wait for ever.
    const close = (client: Client) =>
      Effect.promise(() => client.quit().catch(() => "")).pipe(
        Effect.timeout(config.command_timeout_ms),
        Effect.ignore,
        Effect.zipRight(Effect.sync(() => client.disconnect()))
      )
    // A program's client made with lazyConnect connects at its first command: the store needs it now.
    if (shared?.status === "wait") shared.connect().catch(() => {})
    const clients: ReadonlyArray<Client> = shared !== undefined
      ? [watch(shared)]
      : yield* Effect.acquireRelease(
        Effect.sync(() => Array.from({ length: config.pool_max_size }, open)),
        (all) => Effect.forEach(all, (client) => client.status === "ready" ? close(client) : Effect.sync(() => client.disconnect()))
      )
    const subscriber = yield* Subscriber.make(subscriberConnection(name, config, clients[0]!, seeds, shared !== undefined))

    const bounded = (target: Client, command: () => Promise<unknown>): Promise<unknown> => {
      if (target.status !== "ready") return Promise.reject(new Error(`Stream isn't writeable: the client is ${target.status}`))
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("Command timed out")), config.command_timeout_ms)
        command().then(resolve, reject).finally(() => clearTimeout(timer))
      })
    }
    const send = shared === undefined && !cluster ? (_: Client, command: () => Promise<unknown>) => command() : bounded

    const ready = (client: Client) =>
      client.status === "ready"
        ? Promise.resolve()
        : new Promise<void>((resolve, reject) => {
          client.once("ready", resolve)
          client.once("error", reject)
        })
    yield* Effect.tryPromise({ try: () => Promise.all(clients.map(ready)), catch: (cause) => toError(cause, clients[0]) }).pipe(
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

    return { clients, subscriber, toError, send }
  })

/**
 * Where the subscriber connects. On one server: a connection of its own to the url (or a duplicate of
 * the program's client), reconnecting for ever. On a cluster: the next node the command connections
 * know of (the seed urls before they know any), given up after a few failed reconnects so that the
 * subscriber moves on.
 */
const subscriberConnection = (
  name: string,
  config: RedisStoreConfig,
  commands: Client,
  seeds: ReadonlyArray<string>,
  shared: boolean
) => {
  const connectionName = `rate-sync:${name}:${process.pid}`
  if (!isCluster(commands)) {
    return () =>
      watchless(
        !shared
          ? new Redis(config.url, {
            ...subscriberOptions,
            connectTimeout: config.connect_timeout_ms,
            enableOfflineQueue: false,
            retryStrategy: (attempt) => Math.min(50 * attempt, 2_000),
            connectionName
          })
          // The program's client's own options (address, credentials, TLS), told apart from its commands in CLIENT LIST.
          : commands.duplicate({ ...subscriberOptions, lazyConnect: false, connectionName: `${connectionName}:sub` })
      )
  }
  let turn = 0
  const nodeOptions: RedisOptions = {
    ...subscriberOptions,
    connectTimeout: config.connect_timeout_ms,
    enableOfflineQueue: false,
    retryStrategy: (attempt) => attempt > 2 ? null : 50 * attempt,
    connectionName
  }
  return (): Redis | undefined => {
    const known = commands.nodes("all")
    turn++
    if (known.length > 0) {
      const { host, port, username, password, tls } = known[turn % known.length]!.options
      return watchless(new Redis({ ...nodeOptions, host, port, username, password, tls }))
    }
    return !shared && seeds.length > 0 ? watchless(new Redis(seeds[turn % seeds.length]!, nodeOptions)) : undefined
  }
}

/** The subscriber's errors show as missed wake-ups, not as failed calls: nothing to report them to. */
const watchless = (client: Redis) => {
  client.on("error", () => {})
  return client
}

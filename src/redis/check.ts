/**
 * What the command line verifies on a Redis store: that it answers and accepts the url's
 * credentials, the server's version, that the url's user may run scripts, and that the server is what
 * the store's `cluster` key says: a standalone server, or a Redis Cluster whose every master is checked.
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import { Cluster, Redis, type RedisOptions } from "ioredis"
import type { StoreMisconfigured, StoreTimeout, StoreUnavailable } from "../Errors.js"
import type { RedisStoreConfig } from "../Settings.js"
import { clusterAuth } from "./connections.js"
import * as Errors from "./errors.js"

/** Scripts write after reading TIME, which needs effects replication (Redis 5 and later). */
export const minimumMajor = 5
export const testedMajor = 7

export interface Problem {
  readonly message: string
  readonly fix: ReadonlyArray<string>
}

export interface Report {
  readonly where: string
  readonly version: string
  readonly mode: string
  readonly user: string | undefined
  readonly problems: ReadonlyArray<Problem>
  readonly notes: ReadonlyArray<string>
}

type RedisError = StoreUnavailable | StoreTimeout | StoreMisconfigured

/** `INFO` as a map of its `field:value` lines. */
export const parseInfo = (text: string): ReadonlyMap<string, string> =>
  new Map(
    text.split(/\r?\n/).flatMap((line) => {
      const at = line.indexOf(":")
      return line.startsWith("#") || at < 0 ? [] : [[line.slice(0, at), line.slice(at + 1).trim()] as const]
    })
  )

/** One server, with a connection that never retries: the check reports, it does not wait. */
const connectOne = (config: RedisStoreConfig, toError: (cause: unknown) => RedisError) =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: async () => {
        const client = new Redis(config.url, { ...noRetry(config), enableOfflineQueue: false, retryStrategy: () => null })
        client.on("error", () => {})
        try {
          await client.connect()
          return client
        } catch (cause) {
          client.disconnect()
          throw cause
        }
      },
      catch: toError
    }),
    (client) => Effect.sync(() => client.disconnect())
  )

const noRetry = (config: RedisStoreConfig): RedisOptions => ({
  lazyConnect: true,
  connectTimeout: config.connect_timeout_ms,
  commandTimeout: config.command_timeout_ms,
  maxRetriesPerRequest: 0,
  connectionName: `rate-sync-cli:${process.pid}`
})

/** A cluster, its slots learned from the seed urls, never reconnecting. */
const connectCluster = (config: RedisStoreConfig, toError: (cause: unknown, refusal?: string) => RedisError) =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: async () => {
        const cluster = new Cluster(Errors.splitUrls(config.url), {
          lazyConnect: true,
          enableOfflineQueue: false,
          clusterRetryStrategy: () => null,
          slotsRefreshTimeout: config.connect_timeout_ms,
          redisOptions: { ...noRetry(config), ...clusterAuth(Errors.splitUrls(config.url)) }
        })
        let refusal: string | undefined
        cluster.on("error", (error: unknown) => (refusal = Errors.refusalOf(error)))
        try {
          await cluster.connect()
          return cluster
        } catch (cause) {
          cluster.disconnect()
          throw Object.assign(new Error(Errors.messageOf(cause)), { refusal })
        }
      },
      catch: (cause) => toError(cause, typeof cause === "object" && cause !== null ? Object.getOwnPropertyDescriptor(cause, "refusal")?.value : undefined)
    }),
    (cluster) => Effect.sync(() => cluster.disconnect())
  )

const command = (client: Redis, toError: (cause: unknown) => RedisError, name: string, ...args: Array<string | number>) =>
  Effect.tryPromise({ try: () => client.call(name, ...args), catch: toError })

const modeProblems = (info: ReadonlyMap<string, string>): Array<Problem> =>
  info.get("cluster_enabled") === "1" || info.get("redis_mode") === "cluster"
    ? [{
      message: "this is a Redis Cluster node: a store not configured as a cluster fails for every key whose slot is on another node",
      fix: ["set cluster = true, with the cluster's nodes in url (comma-separated)"]
    }]
    : []

const versionProblems = (version: string): Array<Problem> =>
  Number(version.split(".")[0]) < minimumMajor
    ? [{ message: `Redis ${version}: rate-sync needs Redis ${minimumMajor} or later`, fix: ["upgrade the server"] }]
    : []

/** What one server says: its version and mode, the url's user there, and whether that user may run scripts. */
const inspect = (client: Redis, toError: (cause: unknown) => RedisError) =>
  Effect.gen(function*() {
    const info = parseInfo(String(yield* command(client, toError, "INFO", "server")) + "\n" + String(yield* command(client, toError, "INFO", "cluster")))
    const version = info.get("redis_version") ?? "unknown"
    const user = yield* command(client, toError, "ACL", "WHOAMI").pipe(
      Effect.map((answer) => typeof answer === "string" ? answer : undefined),
      Effect.orElseSucceed(() => undefined)
    )
    const scripts = yield* command(client, toError, "EVAL", "return redis.call('TIME')", 0).pipe(
      Effect.as<ReadonlyArray<Problem>>([]),
      Effect.catchAll((error) =>
        Effect.succeed<ReadonlyArray<Problem>>([{ message: `${user ?? "the url's user"} cannot run scripts: ${error.message}`, fix: [] }])
      )
    )
    return { info, version, user, problems: [...versionProblems(version), ...scripts] }
  })

const notesFor = (versions: ReadonlyArray<string>) =>
  versions.every((version) => Number(version.split(".")[0]) === testedMajor) ? [] : [`tested on Redis ${testedMajor}`]

/** Checks every master of the cluster (each serves some limiters' keys), and that the cluster serves every slot. */
const checkCluster = (config: RedisStoreConfig, where: string, toError: (cause: unknown, refusal?: string) => RedisError) =>
  Effect.gen(function*() {
    const cluster = yield* connectCluster(config, toError)
    const masters = cluster.nodes("master")
    if (masters.length === 0) return yield* toError(new Error("CLUSTERDOWN the cluster has no master"))
    const seen = yield* Effect.forEach(masters, (node) =>
      inspect(node, toError).pipe(
        Effect.map((found) => ({ ...found, problems: found.problems.map((p) => ({ ...p, message: `${node.options.host}:${node.options.port}: ${p.message}` })) }))
      ))
    const state = parseInfo(String(yield* command(masters[0]!, toError, "CLUSTER", "INFO"))).get("cluster_state")
    const versions = [...new Set(seen.map((node) => node.version))]
    return {
      where,
      version: versions.join(", "),
      mode: `cluster of ${masters.length} masters (${masters.map((node) => `${node.options.host}:${node.options.port}`).join(", ")})`,
      user: seen[0]?.user,
      problems: [
        ...(state === "ok" ? [] : [{ message: `the cluster's state is ${state ?? "unknown"}: some slots are not served`, fix: ["redis-cli --cluster check on one of its nodes"] }]),
        ...seen.flatMap((node) => node.problems)
      ],
      notes: notesFor(versions)
    }
  })

/** Checks the store's server (every master, on a cluster) as its url's user sees it. */
export const check = (name: string, config: RedisStoreConfig): Effect.Effect<Report, RedisError, Scope.Scope> =>
  Effect.gen(function*() {
    const cluster = config.cluster
    const where = Errors.describeUrl(config.url)
    const toError = (cause: unknown, refusal?: string) =>
      Errors.classify({ store: name, where, commandTimeoutMs: config.command_timeout_ms, cluster }, cause, refusal)
    if (cluster) return yield* checkCluster(config, where, toError)
    const client = yield* connectOne(config, toError)
    const { info, version, user, problems } = yield* inspect(client, toError)
    return {
      where,
      version,
      mode: info.get("redis_mode") ?? (info.get("cluster_enabled") === "1" ? "cluster" : "standalone"),
      user,
      problems: [...problems, ...modeProblems(info)],
      notes: notesFor([version])
    }
  })

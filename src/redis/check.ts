/**
 * What the command line verifies on a Redis store: that it answers and accepts the url's
 * credentials, the server's version, that it is a standalone server (the engine does not follow
 * cluster redirects), and that the url's user may run scripts.
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import { Redis } from "ioredis"
import type { StoreMisconfigured, StoreTimeout, StoreUnavailable } from "../Errors.js"
import type { RedisStoreConfig } from "../Settings.js"
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

const connect = (config: RedisStoreConfig, toError: (cause: unknown) => RedisError) =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: async () => {
        const client = new Redis(config.url, {
          lazyConnect: true,
          connectTimeout: config.connect_timeout_ms,
          commandTimeout: config.command_timeout_ms,
          enableOfflineQueue: false,
          maxRetriesPerRequest: 0,
          retryStrategy: () => null,
          connectionName: `rate-sync-cli:${process.pid}`
        })
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

const command = (client: Redis, toError: (cause: unknown) => RedisError, name: string, ...args: Array<string | number>) =>
  Effect.tryPromise({ try: () => client.call(name, ...args), catch: toError })

const modeProblems = (info: ReadonlyMap<string, string>): Array<Problem> =>
  info.get("cluster_enabled") === "1" || info.get("redis_mode") === "cluster"
    ? [{
      message: "this is a Redis Cluster node: the redis engine does not follow cluster redirects",
      fix: ["point url at a standalone server (or a primary of its own)"]
    }]
    : []

const versionProblems = (version: string): Array<Problem> =>
  Number(version.split(".")[0]) < minimumMajor
    ? [{ message: `Redis ${version}: rate-sync needs Redis ${minimumMajor} or later`, fix: ["upgrade the server"] }]
    : []

/** Checks the store's server as its url's user sees it. */
export const check = (name: string, config: RedisStoreConfig): Effect.Effect<Report, RedisError, Scope.Scope> =>
  Effect.gen(function*() {
    const where = Errors.describeUrl(config.url)
    const toError = (cause: unknown) => Errors.classify({ store: name, where, commandTimeoutMs: config.command_timeout_ms }, cause, undefined)
    const client = yield* connect(config, toError)
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
    const notes = Number(version.split(".")[0]) === testedMajor ? [] : [`tested on Redis ${testedMajor}`]
    return {
      where,
      version,
      mode: info.get("redis_mode") ?? (info.get("cluster_enabled") === "1" ? "cluster" : "standalone"),
      user,
      problems: [...versionProblems(version), ...modeProblems(info), ...scripts],
      notes
    }
  })

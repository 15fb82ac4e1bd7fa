/**
 * `rate-sync check [--config F]`: validates the configuration, connects to every store and checks
 * what the library needs of it; one line per store and per limiter, the fix under each problem.
 */
import * as Command from "@effect/cli/Command"
import * as Console from "effect/Console"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Option from "effect/Option"
import type { ConfigurationError } from "../Errors.js"
import { describeUrl } from "../redis/errors.js"
import type { LimiterConfig, PostgresStoreConfig, RedisStoreConfig, StoreConfig } from "../Settings.js"
import { configOption, loadSettings, postgresTools, printLines, ProblemsFound, redisTools } from "./shared.js"

interface Problem {
  readonly message: string
  readonly fix: ReadonlyArray<string>
}

interface StoreResult {
  readonly name: string
  readonly summary: string
  readonly problems: ReadonlyArray<Problem>
  readonly notes: ReadonlyArray<string>
}

const failure = (name: string, summary: string, error: { readonly message: string }): StoreResult => ({
  name,
  summary,
  problems: [{ message: error.message, fix: [] }],
  notes: []
})

const checkPostgres = (name: string, config: PostgresStoreConfig) =>
  Effect.gen(function*() {
    const tools = yield* postgresTools(name)
    const table = tools.tableOf(config)
    const summary = `postgres at ${describeUrl(config.url)}, table ${table}`
    return yield* tools.check(name, config).pipe(
      Effect.scoped,
      Effect.timeoutFail({
        duration: Duration.millis(config.pool_timeout_ms + 2 * config.operation_timeout_ms),
        onTimeout: () => ({ message: `PostgreSQL did not answer within ${config.pool_timeout_ms + 2 * config.operation_timeout_ms} ms` })
      }),
      Effect.map((report): StoreResult => ({
        name,
        summary: `${summary}: PostgreSQL ${report.version} as ${report.user}`,
        problems: report.problems,
        notes: report.notes
      })),
      Effect.catchAll((error) => Effect.succeed(failure(name, summary, error)))
    )
  })

const checkRedis = (name: string, config: RedisStoreConfig) =>
  Effect.gen(function*() {
    const tools = yield* redisTools(name)
    const summary = `redis at ${describeUrl(config.url)}, key_prefix "${config.key_prefix}"`
    return yield* tools.check(name, config).pipe(
      Effect.scoped,
      Effect.timeoutFail({
        duration: Duration.millis(config.connect_timeout_ms + 3 * config.command_timeout_ms),
        onTimeout: () => ({ message: `Redis did not answer within ${config.connect_timeout_ms + 3 * config.command_timeout_ms} ms` })
      }),
      Effect.map((report): StoreResult => ({
        name,
        summary: `${summary}: Redis ${report.version} ${report.mode}${report.user === undefined ? "" : ` as ${report.user}`}`,
        problems: report.problems,
        notes: report.notes
      })),
      Effect.catchAll((error) => Effect.succeed(failure(name, summary, error)))
    )
  })

const checkStore = (name: string, config: StoreConfig): Effect.Effect<StoreResult, ConfigurationError> =>
  config.engine === "postgres"
    ? checkPostgres(name, config)
    : config.engine === "redis"
    ? checkRedis(name, config)
    : Effect.succeed({ name, summary: "memory (in this process: nothing to connect to)", problems: [], notes: [] })

const storeLines = (result: StoreResult): Array<string> => [
  `${result.problems.length === 0 ? "ok  " : "FAIL"}  store ${result.name}: ${result.summary}`,
  ...result.problems.flatMap((problem) => [
    `        problem: ${problem.message}`,
    ...(problem.fix.length === 0 ? [] : ["        fix:", ...problem.fix.flatMap((line) => line.split("\n").map((l) => `          ${l}`))])
  ]),
  ...result.notes.map((note) => `        note: ${note}`)
]

export const describeLimiter = (limiter: LimiterConfig): string =>
  [
    limiter.algorithm === "sliding_window"
      ? `sliding window ${limiter.limit} per ${limiter.window_seconds} s`
      : limiter.rate_per_second === undefined
      ? undefined
      : `token bucket ${limiter.rate_per_second}/s, burst ${limiter.burst ?? 1}`,
    limiter.max_concurrent === undefined ? undefined : `max_concurrent ${limiter.max_concurrent}`,
    limiter.timeout === undefined ? undefined : `timeout ${limiter.timeout} s`,
    limiter.fail_closed ? "fail_closed" : undefined
  ].filter((part) => part !== undefined).join(", ")

const limiterLine = (name: string, limiter: LimiterConfig, failed: ReadonlySet<string>) =>
  `${failed.has(limiter.store) ? "FAIL" : "ok  "}  limiter ${name}: ${describeLimiter(limiter)} on store ${limiter.store}${failed.has(limiter.store) ? " (its store failed the check)" : ""}`

export const run = (config: Option.Option<string>) =>
  Effect.gen(function*() {
    const { path, settings } = yield* loadSettings(config)
    const stores = Object.entries(settings.stores)
    const limiters = Object.entries(settings.limiters)
    yield* Console.log(`ok    configuration ${path}: ${stores.length} store(s), ${limiters.length} limiter(s)`)
    const results = yield* Effect.forEach(stores, ([name, store]) => checkStore(name, store), { concurrency: "unbounded" })
    const failed = new Set(results.filter((result) => result.problems.length > 0).map((result) => result.name))
    yield* printLines(results.flatMap(storeLines))
    yield* printLines(limiters.map(([name, limiter]) => limiterLine(name, limiter, failed)))
    const count = results.reduce((sum, result) => sum + result.problems.length, 0)
    if (count > 0) return yield* Effect.fail(new ProblemsFound({ count }))
  })

export const command = Command.make("check", { config: configOption }, ({ config }) => run(config)).pipe(
  Command.withDescription(
    "Validates the configuration, connects to every store and checks it: on PostgreSQL the table, its index on updated_at, SELECT, INSERT and UPDATE granted and the server's version; on Redis the version, the credentials and that it is a standalone server. Prints the fix for each problem; exits 1 when there is one, 3 when the configuration is invalid."
  )
)

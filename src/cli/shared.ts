/**
 * What the commands share: the `--config` option, loading the configuration, loading an engine's
 * tools only when a store of that engine is configured, and the errors that set the exit code.
 */
import * as Options from "@effect/cli/Options"
import type * as FileSystem from "@effect/platform/FileSystem"
import type * as Path from "@effect/platform/Path"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import { ConfigIssue, ConfigurationError } from "../Errors.js"
import type { PostgresStoreConfig, Settings } from "../Settings.js"
import * as Toml from "../Toml.js"

/** 0 done, 1 a store failed a check or an operation, 2 a bad command line, 3 an invalid configuration. */
export const ExitCode = { ok: 0, failed: 1, usage: 2, configuration: 3 } as const

/** A bad argument: one line, exit code 2. */
export class UsageError extends Schema.TaggedError<UsageError>()("UsageError", { message: Schema.String }) {}

/** `check` found problems, already printed: exit code 1. */
export class ProblemsFound extends Schema.TaggedError<ProblemsFound>()("ProblemsFound", { count: Schema.Number }) {
  override get message(): string {
    return `${this.count} problem${this.count === 1 ? "" : "s"} found`
  }
}

export const configOption = Options.text("config").pipe(
  Options.withAlias("c"),
  Options.withDescription("the configuration file (default: $RATE_SYNC_CONFIG, ./rate-sync.toml, ./config/rate-sync.toml)"),
  Options.optional
)

export const storeOption = (what: string) =>
  Options.text("store").pipe(Options.withDescription(`only the store of this name (default: ${what})`), Options.optional)

/** Finds, reads and validates the configuration; returns it with the file's path. */
export const loadSettings = (
  path: Option.Option<string>
): Effect.Effect<{ readonly path: string; readonly settings: Settings }, ConfigurationError, FileSystem.FileSystem | Path.Path> =>
  Effect.flatMap(Toml.discover(Option.getOrUndefined(path)), (file) =>
    Effect.map(Toml.parseText(file.text, file.path), (settings) => ({ path: file.path, settings })))

/** An engine's module, loaded when a store of it is configured: a program may have only one engine's driver installed. */
export const loadEngine = <A>(store: string, engine: string, packages: string, module: () => Promise<A>) =>
  Effect.tryPromise({
    try: module,
    catch: (cause) =>
      new ConfigurationError({
        issues: [new ConfigIssue({ path: `stores.${store}.engine`, message: `the "${engine}" engine needs ${packages} installed (${String(cause)})` })]
      })
  })

export const postgresTools = (store: string) =>
  loadEngine(store, "postgres", "@effect/sql-pg and pg", () => import("../postgres/check.js"))

export const redisTools = (store: string) => loadEngine(store, "redis", "ioredis", () => import("../redis/check.js"))

/** The PostgreSQL stores, or the one `--store` names (which must be one). */
export const postgresStores = (
  settings: Settings,
  only: Option.Option<string>,
  why: string
): Effect.Effect<ReadonlyArray<readonly [string, PostgresStoreConfig]>, UsageError> => {
  const all = Object.entries(settings.stores).flatMap(([name, store]) => store.engine === "postgres" ? [[name, store] as const] : [])
  if (Option.isNone(only)) return Effect.succeed(all)
  const named = all.filter(([name]) => name === only.value)
  if (named.length > 0) return Effect.succeed(named)
  const store = settings.stores[only.value]
  return Effect.fail(
    new UsageError({
      message: store === undefined
        ? `--store: no store named "${only.value}" (configured: ${Object.keys(settings.stores).join(", ") || "none"})`
        : `--store: store "${only.value}" is ${store.engine}: ${why}`
    })
  )
}

/** Milliseconds as printed: whole above 10 ms, one decimal below. */
export const ms = (value: number): string => `${value >= 10 ? Math.round(value) : Math.round(value * 10) / 10} ms`

export const printLines = (lines: ReadonlyArray<string>) => Effect.forEach(lines, (line) => Console.log(line), { discard: true })

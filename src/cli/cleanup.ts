/**
 * `rate-sync cleanup --older-than "7 days" [--config F] [--store NAME] [--batch-size N]`: deletes
 * the PostgreSQL rows no limiter has touched for that long and whose state lies that far in the past
 * (the condition of `PostgresStore.cleanup`), a batch per statement so a large table is never locked
 * at once, with a progress line per batch once there is more than one. Needs DELETE granted.
 */
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as Console from "effect/Console"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type { PostgresStoreConfig } from "../Settings.js"
import { configOption, loadSettings, postgresStores, postgresTools, storeOption, UsageError } from "./shared.js"

/** As `PostgresStore.cleanup`: a row can be in a writer's read-modify-write only while it is recent. */
const MINIMUM_MS = 60_000

export const parseAge = (text: string): Effect.Effect<Duration.Duration, UsageError> => {
  const age = Duration.decodeUnknown(text)
  return Option.isSome(age) && Duration.toMillis(age.value) >= MINIMUM_MS && Duration.isFinite(age.value)
    ? Effect.succeed(age.value)
    : Effect.fail(new UsageError({ message: `--older-than: expected a duration of at least 1 minute such as "7 days" or "12 hours", found ${JSON.stringify(text)}` }))
}

const cleanStore = (name: string, config: PostgresStoreConfig, ageMs: number, batchSize: number, label: string) =>
  Effect.gen(function*() {
    const tools = yield* postgresTools(name)
    const sql = yield* tools.connect(name, config)
    let total = 0
    for (;;) {
      const deleted = yield* tools.deleteIdle(sql, name, config, ageMs, batchSize)
      total += deleted
      if (deleted < batchSize) break
      yield* Console.log(`store ${name}: deleted ${total} rows so far`)
    }
    yield* Console.log(`store ${name}: deleted ${total} rows idle for ${label} from ${tools.tableOf(config)}`)
  }).pipe(Effect.scoped)

export const run = (options: {
  readonly config: Option.Option<string>
  readonly store: Option.Option<string>
  readonly olderThan: string
  readonly batchSize: number
}) =>
  Effect.gen(function*() {
    const age = yield* parseAge(options.olderThan)
    if (!(options.batchSize >= 1 && options.batchSize <= 1_000_000)) {
      return yield* Effect.fail(new UsageError({ message: `--batch-size: expected 1 to 1000000, found ${options.batchSize}` }))
    }
    const { path, settings } = yield* loadSettings(options.config)
    const stores = yield* postgresStores(settings, options.store, "Redis keys expire by themselves and the memory store drops idle keys")
    if (stores.length === 0) {
      return yield* Console.log(`no postgres store in ${path}: nothing to clean up (Redis keys expire by themselves)`)
    }
    for (const [name, config] of stores) {
      yield* cleanStore(name, config, Duration.toMillis(age), options.batchSize, options.olderThan)
    }
  })

export const command = Command.make(
  "cleanup",
  {
    config: configOption,
    store: storeOption("every postgres store"),
    olderThan: Options.text("older-than").pipe(
      Options.withDescription("delete rows idle for at least this long, 1 minute or more: \"7 days\", \"12 hours\"")
    ),
    batchSize: Options.integer("batch-size").pipe(Options.withDescription("rows deleted per statement"), Options.withDefault(10_000))
  },
  run
).pipe(
  Command.withDescription(
    "Deletes the PostgreSQL rows no limiter has touched for --older-than, in batches. The only operation that needs GRANT DELETE on the table; Redis keys expire by themselves."
  )
)

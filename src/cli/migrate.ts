/**
 * `rate-sync migrate [--config F] [--store NAME] [--apply] [--grant-to ROLE]`: the DDL of each
 * PostgreSQL store's table, exactly as the library runs it with `auto_create` (`createTableSql`),
 * and the GRANT for a role; printed as SQL (`rate-sync migrate | psql`), or run with `--apply`.
 * PostgreSQL's modules are loaded only here (`postgresTools`), so a Redis-only install runs the rest.
 */
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type { PostgresStoreConfig } from "../Settings.js"
import { configOption, loadSettings, postgresStores, postgresTools, printLines, storeOption, UsageError } from "./shared.js"

type Tools = Effect.Effect.Success<ReturnType<typeof postgresTools>>

/** The library's own DDL (PostgresStore's `createTableSql`), then the grants asked for. */
const statementsOf = (tools: Tools, config: PostgresStoreConfig, grantTo: Option.Option<string>) => [
  ...tools.createTableSql(config),
  ...Option.match(grantTo, { onNone: () => [], onSome: (role) => tools.grantSql(config, role) })
]

const apply = (name: string, config: PostgresStoreConfig, statements: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const tools = yield* postgresTools(name)
    const sql = yield* tools.connect(name, config)
    yield* sql.withTransaction(Effect.forEach(statements, (statement) => sql.unsafe(statement), { discard: true })).pipe(
      Effect.mapError(tools.classify(name, config))
    )
    yield* Console.log(`-- applied to store ${name}: ${statements.length} statements`)
  }).pipe(Effect.scoped)

export const run = (options: {
  readonly config: Option.Option<string>
  readonly store: Option.Option<string>
  readonly apply: boolean
  readonly grantTo: Option.Option<string>
}) =>
  Effect.gen(function*() {
    const { path, settings } = yield* loadSettings(options.config)
    const stores = yield* postgresStores(settings, options.store, "migrate is for PostgreSQL stores")
    if (stores.length === 0) return yield* Effect.fail(new UsageError({ message: `no postgres store in ${path}: nothing to migrate` }))
    if (Option.exists(options.grantTo, (role) => role.trim() === "")) {
      return yield* Effect.fail(new UsageError({ message: "--grant-to: expected the name of a role" }))
    }
    for (const [name, config] of stores) {
      const tools = yield* postgresTools(name)
      const statements = statementsOf(tools, config, options.grantTo)
      yield* printLines([`-- store ${name}: ${tools.tableOf(config)}`, ...statements.map((statement) => `${statement};`)])
      if (options.apply) yield* apply(name, config, statements)
    }
  })

export const command = Command.make(
  "migrate",
  {
    config: configOption,
    store: storeOption("every postgres store"),
    apply: Options.boolean("apply").pipe(Options.withDescription("run the statements on the store's database (its url needs CREATE on the schema)")),
    grantTo: Options.text("grant-to").pipe(
      Options.withDescription("also GRANT SELECT, INSERT, UPDATE on the table (and USAGE on a schema other than public) to this role"),
      Options.optional
    )
  },
  run
).pipe(
  Command.withDescription(
    "Prints the SQL that creates each PostgreSQL store's table and index, exactly as the library runs it with auto_create, and with --grant-to the GRANT for the application's role; --apply runs it."
  )
)

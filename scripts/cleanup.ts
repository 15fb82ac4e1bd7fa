/**
 * `npm run cleanup -- [--config rate-sync.toml] [--store NAME] [--older-than "7 days"]`: deletes the
 * PostgreSQL rows no limiter has touched for that long, on every postgres
 * store of the configuration or the one named. Needs `DELETE` granted on the table, which nothing
 * else in rate-sync needs. Redis keys expire by themselves and the memory store drops idle keys.
 */
import { parseArgs } from "node:util"
import { Console, Duration, Effect, Option } from "effect"
import * as PostgresStore from "../src/postgres/PostgresStore.js"
import * as Toml from "../src/Toml.js"

const { values } = parseArgs({
  options: {
    config: { type: "string" },
    store: { type: "string" },
    "older-than": { type: "string", default: "7 days" }
  }
})

const program = Effect.gen(function*() {
  const settings = yield* Toml.load(values.config)
  const olderThan = values["older-than"] ?? "7 days"
  const age = Option.getOrUndefined(Duration.decodeUnknown(olderThan))
  if (age === undefined) return yield* Effect.fail(new Error(`--older-than: expected a duration such as "7 days", found "${olderThan}"`))
  const targets = Object.entries(settings.stores).filter(([name, store]) =>
    store.engine === "postgres" && (values.store === undefined || values.store === name)
  )
  if (targets.length === 0) return yield* Effect.fail(new Error(`no postgres store${values.store === undefined ? "" : ` named "${values.store}"`} in the configuration`))
  for (const [name, store] of targets) {
    if (store.engine !== "postgres") continue
    const deleted = yield* Effect.scoped(Effect.flatMap(PostgresStore.make(name, store), (s) => s.cleanup(age)))
    yield* Console.log(`${name}: deleted ${deleted} rows idle for ${olderThan}`)
  }
})

Effect.runPromise(program).then(() => process.exit(0), (error) => {
  console.error(String(error))
  process.exit(1)
})

/**
 * The configuration as Effect `Config`, for environment variables and any other flat
 * `ConfigProvider` whose path delimiter is `_`:
 *
 *   RATE_SYNC_STORES_DB_ENGINE=postgres
 *   RATE_SYNC_STORES_DB_URL=postgres://...
 *   RATE_SYNC_LIMITERS_API_STORE=db
 *   RATE_SYNC_LIMITERS_API_RATE_PER_SECOND=100
 *
 * Names are lower-cased (`DB` is store "db"). Because names and keys are both joined by `_`,
 * every variable is split at the longest known key it ends with; a variable that ends with no
 * known key is reported as unknown, so a typo never drops a limit silently.
 */
import * as Config from "effect/Config"
import * as HashMap from "effect/HashMap"
import * as Option from "effect/Option"
import { engines, limiterKeys, storeKeys } from "./Settings.js"

interface Tree {
  readonly value: Option.Option<string>
  readonly children: HashMap.HashMap<string, Tree>
}

const tree: Config.Config<Tree> = Config.all({
  value: Config.option(Config.string()),
  children: Config.hashMap(Config.suspend(() => tree)).pipe(Config.withDefault(HashMap.empty<string, Tree>()))
})

/** The variables under a node, by their path below it joined with `_` (empty segments kept: `__PROTO__` stays). */
const flatten = (node: Tree, path: ReadonlyArray<string>, out: Map<string, string>): Map<string, string> => {
  if (Option.isSome(node.value) && path.length > 0) out.set(path.join("_"), node.value.value)
  for (const [name, child] of node.children) flatten(child, [...path, name], out)
  return out
}

const allStoreKeys = [...new Set(engines.flatMap((engine) => storeKeys[engine]))]

/** Splits `PROD_DB_URL` into name "prod_db" and key "url"; the unknown marker when no key fits. */
const split = (variable: string, keys: ReadonlyArray<string>): readonly [name: string, key: string] | undefined => {
  let best: string | undefined
  for (const key of keys) {
    const upper = key.toUpperCase()
    if (variable.endsWith(`_${upper}`) && variable.length > upper.length + 1 && (best === undefined || key.length > best.length)) {
      best = key
    }
  }
  return best === undefined ? undefined : [variable.slice(0, -(best.length + 1)).toLowerCase(), best]
}

const section = (
  entries: Map<string, string>,
  keys: ReadonlyArray<string>
): Record<string, Record<string, string>> => {
  const tables = new Map<string, Map<string, string>>()
  for (const [variable, value] of entries) {
    // A variable no known key explains still reaches the validator, as an unknown key of the
    // name its first segment gives, so the error points at it.
    const [first, ...rest] = variable.toLowerCase().split("_")
    const [name, key] = split(variable, keys) ?? [first!, rest.join("_")]
    let table = tables.get(name)
    if (table === undefined) tables.set(name, table = new Map())
    table.set(key, value)
  }
  // Built with Object.fromEntries: every name is an own property, `__proto__` included (an assignment
  // would reach Object.prototype instead, or drop the key).
  return Object.fromEntries([...tables].map(([name, table]) => [name, Object.fromEntries(table)]))
}

/**
 * Reads `<PREFIX>_STORES_*` and `<PREFIX>_LIMITERS_*` into the same shape a TOML file has;
 * `RateSync.layerConfig` validates it with the one Schema.
 */
export const settingsConfig = (prefix = "RATE_SYNC"): Config.Config<Record<string, unknown>> => {
  const nested = <A>(config: Config.Config<A>, path: string) =>
    [...prefix.split("_"), path].reverse().reduce((acc, segment) => Config.nested(acc, segment), config)
  const subtree = (path: string) =>
    Config.map(nested(tree, path), (node) => flatten({ value: Option.none(), children: node.children }, [], new Map()))
  return Config.map(
    Config.all({ stores: subtree("STORES"), limiters: subtree("LIMITERS") }),
    ({ limiters, stores }) => ({
      stores: section(stores, allStoreKeys),
      limiters: section(limiters, limiterKeys)
    })
  )
}

/**
 * `rate-sync.toml`: discovery, parsing, and `${VAR}` / `${VAR:-default}` substitution. The file is
 * read through `@effect/platform`'s `FileSystem` and `Path` (so the loader runs, and is tested,
 * wherever Effect's platform does); variables through Effect `Config`, so tests can supply them
 * with a `ConfigProvider`.
 */
import * as FileSystem from "@effect/platform/FileSystem"
import * as Path from "@effect/platform/Path"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import * as NodePath from "@effect/platform-node/NodePath"
import * as Config from "effect/Config"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { parse, TomlError } from "smol-toml"
import { ConfigIssue, ConfigurationError } from "./Errors.js"
import { decodeSettings, type DeferredStoreConfig, type Settings, urlKeys } from "./Settings.js"

/** Where the file is looked for when no path is given, after `$RATE_SYNC_CONFIG`. */
export const searchPaths: ReadonlyArray<string> = ["rate-sync.toml", "config/rate-sync.toml"]

/** Node's `FileSystem` and `Path`: what `RateSync.layerToml` and `rate-sync/promise` read the file with. */
export const nodeFiles: Layer.Layer<FileSystem.FileSystem | Path.Path> = Layer.merge(NodeFileSystem.layer, NodePath.layer)

const fail = (path: string, message: string) =>
  new ConfigurationError({ issues: [new ConfigIssue({ path, message })] })

/**
 * Finds and reads the configuration file: `path`, else `$RATE_SYNC_CONFIG`, else the search paths,
 * relative to `directory` (the working directory by default). Returns its path and text.
 */
export const discover = (
  path?: string,
  directory?: string
): Effect.Effect<{ path: string; text: string }, ConfigurationError, FileSystem.FileSystem | Path.Path> =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const paths = yield* Path.Path
    const fromEnv = yield* Config.option(Config.string("RATE_SYNC_CONFIG")).pipe(Effect.orElseSucceed(Option.none))
    const explicit = path ?? Option.getOrUndefined(fromEnv)
    const candidates = (explicit !== undefined && explicit !== "" ? [explicit] : searchPaths).map((p) =>
      directory === undefined ? paths.resolve(p) : paths.resolve(directory, p)
    )
    for (const candidate of candidates) {
      const text = yield* fs.readFileString(candidate, "utf8").pipe(
        Effect.map(Option.some),
        Effect.catchAll((error) =>
          error._tag === "SystemError" && error.reason === "NotFound" && candidates.length > 1
            ? Effect.succeed(Option.none<string>())
            : Effect.fail(fail(candidate, `cannot read the configuration file: ${error.message}`))
        )
      )
      if (Option.isSome(text)) return { path: candidate, text: text.value }
    }
    return yield* Effect.fail(
      fail("", `no configuration file: set RATE_SYNC_CONFIG or create ${searchPaths.join(" or ")}`)
    )
  })

const VARIABLE = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g

const substituteString = (text: string, keyPath: string): Effect.Effect<string, ConfigurationError> =>
  Effect.gen(function*() {
    let out = ""
    let last = 0
    for (const match of text.matchAll(VARIABLE)) {
      const [whole, name, fallback] = match
      const value = yield* Config.option(Config.string(name!)).pipe(Effect.orElseSucceed(Option.none))
      const set = Option.filter(value, (v) => v !== "")
      let replacement: string
      if (Option.isSome(set)) replacement = set.value
      else if (fallback !== undefined) replacement = fallback
      else if (Option.isSome(value)) replacement = ""
      else return yield* Effect.fail(fail(keyPath, `environment variable ${name} is not set (write \${${name}:-default} to give a default)`))
      out += text.slice(last, match.index) + replacement
      last = match.index + whole.length
    }
    return out + text.slice(last)
  })

/** Whether a string holds a `${VAR}` to replace. */
const hasVariable = (text: string) => text.match(VARIABLE) !== null

/** The value at `stores.NAME.url`: the one key whose variables may wait until a store connects. */
const isStoreUrl = (path: ReadonlyArray<string>) =>
  path.length === 3 && path[0] === "stores" && (urlKeys as ReadonlyArray<string>).includes(path[2]!)

/** Replaces `${VAR}` in every string value but those `keep` selects. Only strings change, and they stay strings. */
const substituteExcept = (
  value: unknown,
  path: ReadonlyArray<string>,
  keyPath: string,
  keep: (path: ReadonlyArray<string>) => boolean
): Effect.Effect<unknown, ConfigurationError> => {
  if (typeof value === "string") return keep(path) ? Effect.succeed(value) : substituteString(value, keyPath)
  if (Array.isArray(value)) {
    return Effect.forEach(value, (item, i) => substituteExcept(item, [...path, String(i)], `${keyPath}[${i}]`, keep))
  }
  if (typeof value === "object" && value !== null && !(value instanceof Date)) {
    return Effect.map(
      Effect.forEach(Object.entries(value), ([key, item]) =>
        Effect.map(
          substituteExcept(item, [...path, key], keyPath === "" ? key : `${keyPath}.${key}`, keep),
          (v) => [key, v] as const
        )),
      // Own data properties, whatever the name (`__proto__` included).
      (entries) => Object.fromEntries(entries)
    )
  }
  return Effect.succeed(value)
}

/** Replaces `${VAR}` in every string value. Only strings change, and they stay strings. */
export const substitute = (value: unknown, keyPath = ""): Effect.Effect<unknown, ConfigurationError> =>
  substituteExcept(value, [], keyPath, () => false)

const parseToml = (text: string, source: string): Effect.Effect<unknown, ConfigurationError> =>
  Effect.try({
    try: () => parse(text),
    catch: (error) =>
      error instanceof TomlError
        ? fail(source, `invalid TOML at line ${error.line}, column ${error.column}: ${error.message.split("\n")[0]}`)
        : fail(source, `invalid TOML: ${String(error)}`)
  })

/** Parses TOML text into a validated configuration, every `${VAR}` read now. */
export const parseText = (text: string, source = "rate-sync.toml"): Effect.Effect<Settings, ConfigurationError> =>
  parseToml(text, source).pipe(
    Effect.flatMap((table) => substitute(table)),
    Effect.flatMap(decodeSettings)
  )

/**
 * As `parseText`, but a server store's `url` (and `listen_url`) holding `${VAR}` is read only when a `StoreFactory` that
 * connects builds the store (`Stores.layer`), with the same message when the variable is unset: the
 * memory double of a production file (`MemoryStore.layer`) needs none of its urls' variables. Every
 * other key is read and checked now.
 */
export const parseTextDeferred = (
  text: string,
  source = "rate-sync.toml"
): Effect.Effect<Settings<DeferredStoreConfig>, ConfigurationError> =>
  Effect.gen(function*() {
    const table = yield* parseToml(text, source)
    // The url templates stay as written through decoding (a template is a non-empty string, so the
    // schema checks everything else) and are read later.
    const settings = yield* decodeSettings(yield* substituteExcept(table, [], "", isStoreUrl))
    const later = (name: string, key: string, text: string) =>
      hasVariable(text) ? Effect.suspend(() => substituteString(text, `stores.${name}.${key}`)) : text
    const stores = Object.entries(settings.stores).map(([name, store]): readonly [string, DeferredStoreConfig] =>
      store.engine === "memory"
        ? [name, store]
        : store.engine === "postgres" && store.listen_url !== undefined
        ? [name, { ...store, url: later(name, "url", store.url), listen_url: later(name, "listen_url", store.listen_url) }]
        : [name, { ...store, url: later(name, "url", store.url) }]
    )
    return { stores: Object.fromEntries(stores), limiters: settings.limiters }
  })

/** Finds, reads and validates `rate-sync.toml`, every `${VAR}` read now (for tools that connect themselves). */
export const load = (path?: string, directory?: string): Effect.Effect<Settings, ConfigurationError, FileSystem.FileSystem | Path.Path> =>
  Effect.flatMap(discover(path, directory), (file) => parseText(file.text, file.path))

/** Finds, reads and validates `rate-sync.toml`, server urls read when their store connects (`parseTextDeferred`). */
export const loadDeferred = (
  path?: string,
  directory?: string
): Effect.Effect<Settings<DeferredStoreConfig>, ConfigurationError, FileSystem.FileSystem | Path.Path> =>
  Effect.flatMap(discover(path, directory), (file) => parseTextDeferred(file.text, file.path))

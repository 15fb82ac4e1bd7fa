/**
 * The whole configuration document as one Schema: the `stores` and `limiters` tables of named
 * entries, the rules that span a limiter's keys and the tables, and the mapping to `LimiterSpec`;
 * and its failures as the `ConfigIssue`s users read.
 */
import * as Arr from "effect/Array"
import * as Either from "effect/Either"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import type { Declaration, ParseOptions } from "effect/SchemaAST"
import { ConfigIssue, ConfigurationError } from "../Errors.js"
import { fromConfig, type LimiterSpec } from "../LimiterSpec.js"
import { describe, isTable } from "./configValues.js"
import { limiterIssues } from "./limiterRules.js"
import { LimiterConfig, StoreConfig } from "./settingsEntries.js"

/** Store and limiter names: letters, digits, '_', '-' and '.', at most this long (`:` separates a limiter's name from a key). */
export const maxNameLength = 128

const NAME = /^[A-Za-z0-9_.-]+$/

const isName = (name: string) => name.length >= 1 && name.length <= maxNameLength && NAME.test(name)

const Name = Schema.String.pipe(
  Schema.filter((name) => isName(name) || `Expected a name of letters, digits, '_', '-' or '.' (at most ${maxNameLength})`)
)

type Table<A> = Readonly<Record<string, A>>

/** Parses a table's entries one by one, in its key order, a bad name in its place. */
const entries = <B>(parse: (value: unknown, options: ParseOptions) => Either.Either<B, ParseResult.ParseIssue>) =>
(input: unknown, options: ParseOptions, ast: Declaration): Either.Either<Table<B>, ParseResult.ParseIssue> => {
  // An absent table is an empty one.
  if (input === undefined) return Either.right({})
  if (!isTable(input)) return Either.left(new ParseResult.Type(ast, input, `Expected a table, found ${describe(input)}`))
  const parsed: Array<readonly [string, B]> = []
  const issues: Array<ParseResult.ParseIssue> = []
  for (const [name, value] of Object.entries(input)) {
    const entry = Either.flatMap(ParseResult.decodeUnknownEither(Name)(name), () => parse(value, options))
    if (Either.isRight(entry)) {
      parsed.push([name, entry.right])
      continue
    }
    issues.push(new ParseResult.Pointer(name, input, entry.left))
    if (options.errors !== "all") break
  }
  // Own data properties, whatever the name: an assignment to `out["__proto__"]` would set the prototype instead.
  return Arr.isNonEmptyArray(issues)
    ? Either.left(new ParseResult.Composite(ast, input, issues))
    : Either.right(Object.fromEntries(parsed))
}

/**
 * A table of named entries (`[stores.NAME]`, `[limiters.NAME]`): a record whose keys are checked
 * names. Not `Schema.Record`, which reports bad keys before every entry and assigns its output's
 * properties (an entry named `__proto__` would be lost).
 */
const TableOf = <A, I>(entry: Schema.Schema<A, I>) =>
  Schema.declare<Table<A>, Table<I> | undefined, readonly [Schema.Schema<A, I>]>(
    [entry],
    {
      decode: (entry) => entries(ParseResult.decodeUnknownEither(entry)),
      encode: (entry) => entries(ParseResult.encodeUnknownEither(entry))
    },
    { identifier: "TableOf" }
  )

/** The document itself must be a table. */
const ConfigurationTable = Schema.declare(isTable, {
  message: (issue) => `Expected a configuration table, found ${describe(issue.actual)}`
})

/**
 * Effect runs a stable filter even when what it refines failed (with errors "all"), then on the
 * input as written: the rules below are reported with every value problem, in one list. This is the
 * annotation Effect's own `minItems` carries; its typings leave the symbol out.
 */
const stable = { [Symbol.for("effect/annotation/StableFilter")]: true }

/**
 * The rules that span a limiter's keys, and its reference to a declared store (decoded or not).
 * Given the input as written when some entry failed, it reads it as unknown and checks the limiters
 * that decode (decoding a decoded limiter gives it back).
 */
const crossKeyIssues = (input: unknown, options: ParseOptions): Array<Schema.FilterIssue> => {
  if (!isTable(input)) return []
  const stores = isTable(input["stores"]) ? Object.keys(input["stores"]) : []
  const limiters = isTable(input["limiters"]) ? Object.entries(input["limiters"]) : []
  return limiters.flatMap(([name, table]) =>
    isName(name)
      ? Either.match(ParseResult.decodeUnknownEither(LimiterConfig)(table, options), {
        onLeft: () => [],
        onRight: (limiter) => limiterIssues(limiter, stores).map(({ message, path }) => ({ path: ["limiters", name, ...path], message }))
      })
      : []
  )
}

const Stores = TableOf(StoreConfig)

/**
 * The configuration document (a TOML file's tables, or the same shape as a plain object), decoded
 * with every problem reported at once and unknown keys refused, whatever options it is called with.
 */
export const SettingsDocument = ConfigurationTable.pipe(
  Schema.compose(
    Schema.Struct({ stores: Stores, limiters: TableOf(LimiterConfig) }).pipe(Schema.filter(crossKeyIssues, stable)),
    { strict: false }
  ),
  Schema.annotations({ parseOptions: { errors: "all", onExcessProperty: "error" } })
)

/** Checks only that a spec came from `fromConfig`: it is this Schema's own output. */
const Spec = Schema.declare(
  (u): u is LimiterSpec => isTable(u) && typeof u["name"] === "string" && typeof u["store"] === "string",
  { identifier: "LimiterSpec" }
)

/** The document with each limiter as the engines take it (`LimiterSpec.fromConfig`); decoding only. */
export const SettingsWithSpecs = Schema.transformOrFail(
  SettingsDocument,
  Schema.Struct({ stores: Schema.typeSchema(Stores), limiters: TableOf(Spec) }),
  {
    strict: true,
    decode: ({ limiters, stores }) =>
      ParseResult.succeed({
        stores,
        limiters: Object.fromEntries(Object.entries(limiters).map(([name, limiter]) => [name, fromConfig(name, limiter)]))
      }),
    encode: (settings, _, ast) =>
      ParseResult.fail(new ParseResult.Forbidden(ast, settings, "a LimiterSpec is not encoded back into a limiter's table"))
  }
)

/** Decoding problems as users read them: key paths joined with ".", Effect's wording mapped to the documented one. */
export const configurationError = (error: ParseResult.ParseError, prefix: ReadonlyArray<string> = []): ConfigurationError =>
  new ConfigurationError({
    issues: ParseResult.ArrayFormatter.formatErrorSync(error).map((entry) => {
      const path = [...prefix, ...entry.path.map(String)].join(".")
      switch (entry._tag) {
        case "Unexpected":
          return new ConfigIssue({ path, message: `unknown key (${entry.message.replace(/^is unexpected, expected: /, "known keys: ")})` })
        case "Missing":
          return new ConfigIssue({ path, message: "is required" })
        default:
          return new ConfigIssue({ path, message: entry.message })
      }
    })
  })

/** The package's version, read from its package.json (two levels up, from src/cli and from dist/cli). */
import { readFileSync } from "node:fs"
import * as Either from "effect/Either"
import * as Schema from "effect/Schema"

const Manifest = Schema.parseJson(Schema.Struct({ version: Schema.String }))

export const version: string = Either.match(
  Schema.decodeUnknownEither(Manifest)(readFileSync(new URL("../../package.json", import.meta.url), "utf8")),
  { onLeft: () => "unknown", onRight: (manifest) => manifest.version }
)

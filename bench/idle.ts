/**
 * The idle-key part of `npm run bench`: the heap each memory store holds per idle key, and the time
 * making the keys took, `memory.ts` in a process per library and count.
 */
import { execFileSync } from "node:child_process"
import { Schema } from "effect"

/** The numbers of idle keys measured: the cost per key at each shows how memory grows with keys. */
const IDLE_KEY_COUNTS = [100_000, 1_000_000] as const
const LIBRARIES = ["rate-sync", "rate-limiter-flexible", "effect-experimental"] as const

/** What making idle keys left: how many were made before the deadline, the heap they hold, the time it took. */
const Made = Schema.Struct({ keys: Schema.Number, bytes: Schema.Number, ms: Schema.Number })
export type Made = typeof Made.Type

export interface IdleRow {
  readonly library: string
  /** One per `IDLE_KEY_COUNTS` entry. */
  readonly made: ReadonlyArray<Made>
}

const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`
const microsPerKey = (made: Made) => `${(1000 * made.ms / made.keys).toFixed(1)} µs`

/** Every library at every count, each measurement given at most `seconds` to make its keys. */
export const runIdle = (seconds: number): ReadonlyArray<IdleRow> =>
  LIBRARIES.map((library) => ({
    library,
    made: IDLE_KEY_COUNTS.map((keys) => {
      process.stdout.write(`memory of ${keys.toLocaleString("en-US")} idle keys: ${library}... `)
      const output = execFileSync(
        process.execPath,
        ["--expose-gc", "--import", "tsx", new URL("./memory.ts", import.meta.url).pathname, library, String(keys), String(seconds)],
        { encoding: "utf8" }
      )
      const made = Schema.decodeUnknownSync(Made)(JSON.parse(output))
      console.log(`${made.keys.toLocaleString("en-US")} keys, ${mib(made.bytes)}, ${microsPerKey(made)} a key`)
      return made
    })
  }))

const cells = (made: Made, wanted: number) =>
  `${made.keys < wanted ? `${made.keys.toLocaleString("en-US")} made in ${(made.ms / 1000).toFixed(0)} s: ` : ""}${mib(made.bytes)} | ${
    Math.round(made.bytes / made.keys)
  } B | ${microsPerKey(made)}`

/** The section of bench/RESULTS.md. */
export const idleSection = (rows: ReadonlyArray<IdleRow>, seconds: number): Array<string> => [
  "## Idle keys (memory stores): heap held and time to make them",
  "",
  "Each library in a process of its own makes the keys one call each, in one loop (a key's one call takes its only",
  "slot of the hour, so every key keeps its state): the heap after a full GC less the heap before, and the time the",
  `calls took. A library still making keys after ${seconds} s stops there, and its figures are for the keys it made.`,
  "",
  `| library | ${IDLE_KEY_COUNTS.map((keys) => `${keys.toLocaleString("en-US")} keys | per key | making a key`).join(" | ")} |`,
  `|---|${IDLE_KEY_COUNTS.map(() => "---:|---:|---:").join("|")}|`,
  ...rows.map((row) => `| ${row.library} | ${row.made.map((made, i) => cells(made, IDLE_KEY_COUNTS[i]!)).join(" | ")} |`),
  ""
]

/**
 * The cost curve of `npm run bench`: every contender on a grid of key counts and callers, so that a
 * reader sees how the cost of a decision grows with the work. Each cell's keys are new (see
 * `measure`): a key's first call creates its state, later ones update it.
 */
import { writeFileSync } from "node:fs"
import type { Contender, StoreName, Workload } from "./contenders.js"
import { medianPerSecond, perSecondText, type Samples } from "./sampling.js"
import { type Line, lineChart } from "./svg.js"

const KEYS = [1, 100, 10_000, 1_000_000] as const
const CALLERS = [1, 8, 64] as const
/** The callers the charts are drawn at. */
const CHARTED_CALLERS = [8, 64] as const

const count = (n: number, one: string) => `${n.toLocaleString("en-US")} ${n === 1 ? one : `${one}s`}`
const short = (n: number) => n >= 1_000_000 ? `${n / 1_000_000}M` : n >= 1_000 ? `${n / 1_000}k` : String(n)

/** Every cell, key counts in the outer order. */
export const CELLS: ReadonlyArray<Workload> = KEYS.flatMap((keys) =>
  CALLERS.map((callers) => ({ label: `${count(keys, "key")}, ${count(callers, "caller")}`, keys, callers, keyPrefix: `curve-${keys}x${callers}-` }))
)

/** The share of `calls`, each on one of `keys` drawn at random, expected to be a key's first. */
const firstUses = (calls: number, keys: number) => calls === 0 ? 1 : (keys * (1 - (1 - 1 / keys) ** calls)) / calls

const percent = (share: number) => `${Math.round(100 * share)}%`

/**
 * How many of the calls were a key's first, in the cells of 10,000 and 1,000,000 keys: the range over
 * contenders, from each one's number of calls (keys drawn at random).
 */
const firstUseText = (cells: ReadonlyArray<Workload>, contenders: ReadonlyArray<Contender>, samples: Samples, seconds: number) => {
  const range = (keys: number) => {
    const shares = cells.filter((c) => c.keys === keys).flatMap((cell) =>
      contenders.map((c) => firstUses(medianPerSecond(samples, cell, c) * seconds, keys))
    )
    return shares.length === 0 ? [] : [`${percent(Math.min(...shares))} to ${percent(Math.max(...shares))} at ${keys.toLocaleString("en-US")}`]
  }
  const ranges = [...range(10_000), ...range(1_000_000)]
  return ranges.length === 0 ? "" : `(a key's first call: ${ranges.join(", ")} keys, from the number of calls made)`
}

/** The section of bench/RESULTS.md: a table per store (a column per cell), with its charts. */
export const curveSection = (
  cells: ReadonlyArray<Workload>,
  contenders: ReadonlyArray<Contender>,
  samples: Samples,
  timing: { readonly seconds: number; readonly runs: number; readonly headlineSeconds: number; readonly headlineRuns: number },
  charts: ReadonlyMap<StoreName, ReadonlyArray<Chart>>
): Array<string> => {
  const stores = [...new Set(contenders.map((c) => c.store))]
  const firstUse = firstUseText(cells, contenders, samples, timing.seconds)
  const lines = [
    "## Cost curve: admissions per second as keys and callers grow",
    "",
    `Every contender on every cell of ${KEYS.map((k) => k.toLocaleString("en-US")).join(", ")} keys x ${CALLERS.join(", ")} callers,`,
    `${count(timing.runs, "round")} of ${timing.seconds} s per cell (the workloads above: ${count(timing.headlineRuns, "round")} of ${timing.headlineSeconds} s), contenders alternating`,
    "within a round; a column is keys x callers, a figure admissions per second. Each call takes a key at random",
    "among the cell's, and every cell starts with none of its keys stored (new key names; the memory stores started",
    "anew): a key's first call creates its state (a row, a Redis key, an entry in a map), later calls update it. So",
    `at 1 and 100 keys a cell measures decisions on state already there, at 10,000 and 1,000,000 keys decisions of which many create state${firstUse === "" ? "." : ""}`,
    ...(firstUse === "" ? [] : [`${firstUse}.`]),
    "The PostgreSQL floors are the upsert, a key's first use included; the Redis floor writes nothing, so its line",
    "is the round trip alone. The bench's PostgreSQL tables are dropped and its Redis keys deleted when it ends.",
    ""
  ]
  for (const store of stores) {
    const here = contenders.filter((c) => c.store === store)
    lines.push(
      `### ${store}`,
      "",
      `| library | ${cells.map((c) => `${short(c.keys)} x ${c.callers}`).join(" | ")} |`,
      `|---|${cells.map(() => "---:").join("|")}|`,
      ...here.map((c) =>
        `| ${c.kind === "rate-sync" ? `**${c.name}**` : c.name} | ${cells.map((cell) => perSecondText(medianPerSecond(samples, cell, c))).join(" | ")} |`
      ),
      "",
      ...(charts.get(store) ?? []).flatMap((chart) => [`![${chart.title}](${chart.file})`, ""])
    )
  }
  return lines
}

const PALETTE: Record<Contender["kind"], ReadonlyArray<string>> = {
  "rate-sync": ["#1f5f99", "#3b8fd0", "#0f9d8a", "#7fb8e6"],
  peer: ["#d0542c", "#8e44ad"],
  floor: ["#444444", "#999999"]
}

export interface Chart {
  readonly file: string
  readonly title: string
}

/** Writes a chart per store and charted callers into `directory`: admissions per second against keys, a line per contender. */
export const writeCurveCharts = (
  cells: ReadonlyArray<Workload>,
  contenders: ReadonlyArray<Contender>,
  samples: Samples,
  directory: URL
): ReadonlyMap<StoreName, ReadonlyArray<Chart>> => {
  const written = new Map<StoreName, Array<Chart>>()
  for (const store of [...new Set(contenders.map((c) => c.store))]) {
    const here = contenders.filter((c) => c.store === store)
    for (const callers of CHARTED_CALLERS) {
      const row = cells.filter((cell) => cell.callers === callers)
      if (row.length < 2) continue
      const lines: Array<Line> = here.map((c) => {
        const kin = here.filter((o) => o.kind === c.kind)
        const colors = PALETTE[c.kind]
        return {
          label: c.name,
          points: row.map((cell) => [cell.keys, medianPerSecond(samples, cell, c)] as const),
          color: colors[kin.indexOf(c) % colors.length]!,
          dashed: c.kind === "floor",
          bold: c.kind === "rate-sync"
        }
      })
      const file = `cost-${store}-${callers}.svg`
      const title = `Admissions per second against keys: ${store}, ${callers} callers`
      writeFileSync(new URL(file, directory), lineChart(title, "keys", "admissions per second", row.map((c) => c.keys), lines))
      written.set(store, [...(written.get(store) ?? []), { file, title }])
    }
  }
  return written
}

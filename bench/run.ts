/**
 * `npm run bench`: this library against its peers and the physical floors, on the same servers in
 * one run. Every workload runs every contender once per round, contenders alternating, for several
 * rounds; a figure is the median over rounds and a ratio is the median of the ratios taken within
 * each round. Then the cost curve (bench/curve.ts): every contender on a grid of key counts and
 * callers, shorter runs per cell. Writes bench/RESULTS.md and the SVG charts it shows.
 *
 * BENCH_SECONDS (default 2) and BENCH_RUNS (default 3) set the length and number of rounds of the
 * workloads; BENCH_CURVE_SECONDS (default half of BENCH_SECONDS) and BENCH_CURVE_RUNS (default 1)
 * those of each cell of the cost curve; BENCH_IDLE_SECONDS (default 120) bounds the making of each
 * count of idle keys (bench/idle.ts). BENCH_STORES (say "redis" or "memory,postgres") and
 * BENCH_WORKLOADS (a part of a workload's label, say "8 callers"; "curve" for the cost curve alone,
 * "curve:TEXT" for its cells whose label contains TEXT, say "curve:1,000,000 keys"; "http" for the
 * HTTP middleware alone, "handoff" for the lease hand-off alone, "memory" for the idle keys' heap
 * alone) run a part of it, for a quick look: RESULTS.md and the charts are then not written (the cost
 * curve's charts go to a directory under the system's temporary one, printed). The HTTP section
 * (bench/http.ts) runs every framework's middleware with and without rate-sync. The bench's
 * PostgreSQL tables and Redis keys are removed when it ends.
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { cpus, tmpdir, totalmem } from "node:os"
import { join } from "node:path"
import { pathToFileURL } from "node:url"
import { Redis } from "ioredis"
import pg from "pg"
import { postgresUrl } from "../scripts/stores.js"
import { cleanUp } from "./cleanup.js"
import { all, type Contender, type StoreName, type Workload } from "./contenders.js"
import { CELLS, curveSection, writeCurveCharts } from "./curve.js"
import { handoffSection, runHandoff } from "./handoff.js"
import { httpSection, runHttp } from "./http.js"
import { idleSection, runIdle } from "./idle.js"
import { measure, median, medianPerSecond, perSecondText, sampleId, type Samples } from "./sampling.js"
import { barChart } from "./svg.js"

const SECONDS = Number(process.env["BENCH_SECONDS"] ?? 2)
const RUNS = Number(process.env["BENCH_RUNS"] ?? 3)
const CURVE_SECONDS = Number(process.env["BENCH_CURVE_SECONDS"] ?? SECONDS / 2)
const CURVE_RUNS = Number(process.env["BENCH_CURVE_RUNS"] ?? 1)
const IDLE_SECONDS = Number(process.env["BENCH_IDLE_SECONDS"] ?? 120)
const REDIS_URL = process.env["REDIS_URL"] ?? "redis://127.0.0.1:6379"

const ALL_WORKLOADS: ReadonlyArray<Workload> = [
  { label: "one hot key, 1 caller", callers: 1, keys: 1 },
  { label: "one hot key, 8 callers", callers: 8, keys: 1 },
  { label: "one hot key, 64 callers", callers: 64, keys: 1 },
  { label: "10,000 keys, 8 callers", callers: 8, keys: 10_000 }
]
const STORES: ReadonlyArray<StoreName> = ["memory", "postgres", "redis"]
const ONLY_STORES = process.env["BENCH_STORES"]?.split(",")
const ONLY_WORKLOADS = process.env["BENCH_WORKLOADS"]
const PARTIAL = ONLY_STORES !== undefined || ONLY_WORKLOADS !== undefined
const WORKLOADS = ALL_WORKLOADS.filter((w) => ONLY_WORKLOADS === undefined || w.label.includes(ONLY_WORKLOADS))
const CURVE = ONLY_WORKLOADS === undefined
  ? CELLS
  : ONLY_WORKLOADS.startsWith("curve")
  ? CELLS.filter((cell) => cell.label.includes(ONLY_WORKLOADS.slice("curve".length).replace(/^:/, "")))
  : []

const version = (name: string) => {
  const pkg: unknown = JSON.parse(readFileSync(new URL(`../node_modules/${name}/package.json`, import.meta.url), "utf8"))
  return typeof pkg === "object" && pkg !== null && "version" in pkg ? String(pkg.version) : "?"
}

const serverVersions = async (databaseUrl: string) => {
  const client = new pg.Client({ connectionString: databaseUrl })
  const postgres = await client.connect().then(() => client.query("SHOW server_version")).then(
    (r) => String(r.rows[0]?.server_version ?? "?"),
    () => "?"
  )
  await client.end().catch(() => {})
  const redis = new Redis(REDIS_URL)
  const info = await redis.info("server").catch(() => "")
  await redis.quit().catch(() => {})
  return { postgres, redis: /redis_version:(\S+)/.exec(info)?.[1] ?? "?" }
}

/** A workload's table: every contender, with its ratios to the peers and the floor. */
const workloadSection = (workload: Workload, contenders: ReadonlyArray<Contender>, samples: Samples): Array<string> => {
  const lines = [
    `## ${workload.label}`,
    "",
    "| store | library | admissions/s | p50 | p99 | x rate-limiter-flexible | x faster peer | x floor |",
    "|---|---|---:|---:|---:|---:|---:|---:|"
  ]
  for (const store of STORES) {
    const here = contenders.filter((c) => c.store === store)
    const flexible = here.find((c) => c.name.startsWith("rate-limiter-flexible"))
    const floor = here.find((c) => c.kind === "floor")
    const peers = here.filter((c) => c.kind === "peer")
    /** This contender's throughput over another's (or the faster of several), taken within each round, median over rounds. */
    const ratio = (contender: Contender, other: Contender | ReadonlyArray<Contender> | undefined) => {
      const others = other === undefined ? [] : Array.isArray(other) ? other : [other]
      if (others.length === 0 || others.includes(contender) || contender.kind === "floor") return ""
      const mine = samples.get(sampleId(workload, contender)) ?? []
      const theirs = (i: number) => Math.max(...others.map((o) => samples.get(sampleId(workload, o))?.[i]?.perSecond ?? Infinity))
      return `${median(mine.map((s, i) => s.perSecond / theirs(i))).toFixed(2)}x`
    }
    for (const contender of here) {
      const list = samples.get(sampleId(workload, contender)) ?? []
      lines.push(
        `| ${store} | ${contender.kind === "rate-sync" ? `**${contender.name}**` : contender.name} | ${perSecondText(medianPerSecond(samples, workload, contender))} | ${median(list.map((s) => s.p50)).toFixed(3)} ms | ${median(list.map((s) => s.p99)).toFixed(3)} ms | ${ratio(contender, flexible)} | ${ratio(contender, peers)} | ${ratio(contender, floor)} |`
      )
    }
  }
  return [...lines, ""]
}

/** A workload's bar chart, every contender grouped by store, written to bench/`file`. */
const writeBarChart = (workload: Workload, contenders: ReadonlyArray<Contender>, samples: Samples, file: string) => {
  const bars = STORES.flatMap((store) =>
    contenders.filter((c) => c.store === store).map((c) => ({
      group: store,
      label: c.name,
      value: medianPerSecond(samples, workload, c),
      highlight: c.kind === "rate-sync"
    }))
  )
  writeFileSync(new URL(file, import.meta.url), barChart(`Admissions per second: ${workload.label}`, "admissions per second", bars))
}

/** Every contender on the workloads and the cost curve's cells; the bench's tables and keys removed after. */
const measureAll = async (contenders: ReadonlyArray<Contender>, databaseUrl: string, redisPrefix: string) => {
  try {
    for (const contender of contenders) {
      process.stdout.write(`starting ${contender.store}: ${contender.name}... `)
      await contender.start()
      console.log("ready")
    }
    return { headline: await measure(WORKLOADS, contenders, SECONDS, RUNS), curve: await measure(CURVE, contenders, CURVE_SECONDS, CURVE_RUNS) }
  } finally {
    for (const contender of contenders) await contender.stop()
    await cleanUp(databaseUrl, REDIS_URL, redisPrefix)
  }
}

const main = async () => {
  const database = await postgresUrl()
  const redisPrefix = `rate-sync-bench:${Date.now().toString(36)}:`
  // Made only when measured: their clients connect as they are made.
  const contenders = WORKLOADS.length + CURVE.length === 0
    ? []
    : all(database.url, REDIS_URL, redisPrefix).filter((c) => ONLY_STORES === undefined || ONLY_STORES.includes(c.store))
  const samples = await measureAll(contenders, database.url, redisPrefix)
  // The HTTP servers find the same PostgreSQL through DATABASE_URL.
  process.env["DATABASE_URL"] = database.url
  const http = !PARTIAL || ONLY_WORKLOADS === "http" ? await runHttp(SECONDS, RUNS) : []
  const handoffStores = STORES.filter((s) => ONLY_STORES === undefined || ONLY_STORES.includes(s))
  const handoff = !PARTIAL || ONLY_WORKLOADS === "handoff" ? await runHandoff(handoffStores, database.url, REDIS_URL) : []
  const servers = await serverVersions(database.url)
  await database.stop()
  const idle = !PARTIAL || ONLY_WORKLOADS === "memory" ? runIdle(IDLE_SECONDS) : []

  const chartDirectory = PARTIAL ? pathToFileURL(join(tmpdir(), "rate-sync-bench") + "/") : new URL("./", import.meta.url)
  // A partial run's charts replace the last partial run's, never the committed ones.
  if (PARTIAL) rmSync(chartDirectory, { recursive: true, force: true })
  mkdirSync(chartDirectory, { recursive: true })
  const curveCharts = writeCurveCharts(CURVE, contenders, samples.curve, chartDirectory)
  const timing = { seconds: CURVE_SECONDS, runs: CURVE_RUNS, headlineSeconds: SECONDS, headlineRuns: RUNS }
  const sections = [
    ...WORKLOADS.flatMap((w) => workloadSection(w, contenders, samples.headline)),
    ...(PARTIAL ? [] : ["![Throughput, one hot key, 8 callers](throughput-hot-8.svg)", "", "![Throughput, 10,000 keys, 8 callers](throughput-keys.svg)", ""]),
    ...(CURVE.length > 0 ? curveSection(CURVE, contenders, samples.curve, timing, curveCharts) : []),
    ...(idle.length > 0 ? idleSection(idle, IDLE_SECONDS) : []),
    ...(handoff.length > 0 ? handoffSection(handoff) : []),
    ...(http.length > 0 ? httpSection(http, SECONDS, RUNS) : [])
  ]
  if (PARTIAL) {
    console.log("\n" + sections.join("\n"))
    if (CURVE.length > 0) console.log(`(cost curve charts in ${chartDirectory.pathname})`)
    return
  }
  const lines: Array<string> = [
    "# Benchmark results",
    "",
    `Measured ${new Date().toISOString().slice(0, 10)} by \`npm run bench\` on ${cpus().length} cores (${cpus()[0]?.model ?? "unknown CPU"}), ${Math.round(totalmem() / 2 ** 30)} GiB,`,
    `Node ${process.version}, PostgreSQL ${servers.postgres}, Redis ${servers.redis}, all on the same machine. Peers: rate-limiter-flexible ${version("rate-limiter-flexible")},`,
    `@effect/experimental ${version("@effect/experimental")}; drivers pg ${version("pg")}, ioredis ${version("ioredis")}.`,
    "",
    `Each limiter admits without ever waiting (its rate is far above what is reached), so the figures are the cost of a`,
    `decision. Effect libraries run their callers as fibers in one runtime; the others as async loops. A figure is the`,
    `median of ${RUNS} rounds of ${SECONDS} s, contenders alternating within each round (the cost curve below: ${CURVE_RUNS} round${CURVE_RUNS === 1 ? "" : "s"} of`,
    `${CURVE_SECONDS} s per cell); a ratio is the median of the ratios taken within each round. Floors are one round trip of`,
    `the same driver doing the least a limiter could (on PostgreSQL an upsert of the key's row; the first floor,`,
    `synchronous_commit on, is the one compared): a limiter that waits for its store on every call cannot beat it;`,
    `rate-sync can, because the waiters of a process share a call and reserve slots ahead.`,
    "",
    ...sections
  ]
  writeFileSync(new URL("./RESULTS.md", import.meta.url), lines.join("\n"))
  writeBarChart(WORKLOADS[1]!, contenders, samples.headline, "./throughput-hot-8.svg")
  writeBarChart(WORKLOADS[3]!, contenders, samples.headline, "./throughput-keys.svg")
  console.log("\n" + lines.join("\n"))
}

main().then(() => process.exit(0), (error) => {
  console.error(error)
  process.exit(1)
})

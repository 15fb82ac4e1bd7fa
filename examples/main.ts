/**
 * `npm start`: three worker processes share one limiter (50/s, burst 5) through PostgreSQL, the
 * embedded server unless DATABASE_URL is set. Each second shows each worker's admissions and
 * their combined rate, holding the configured rate across processes.
 */
import { spawn } from "node:child_process"
import { createInterface } from "node:readline"
import { Effect, Layer } from "effect"
import { RateLimiter, RateSync, Stores } from "../src/index.js"
import { postgresUrl } from "../scripts/stores.js"

const RATE = 50
const BURST = 5
const WORKERS = 3
const SECONDS = Number(process.env["DEMO_SECONDS"] ?? 6)

const worker = (url: string, limiter: string, until: number) =>
  Effect.gen(function*() {
    const pushWork = Effect.scoped(RateLimiter.acquire(limiter)).pipe(
      Effect.tap(() => Effect.sync(() => console.log(Date.now()))),
      Effect.repeat({ while: () => Date.now() < until }),
      Effect.timeout(until - Date.now()),
      Effect.ignore
    )
    yield* Effect.all(Array.from({ length: 8 }, () => pushWork), { concurrency: "unbounded" })
  }).pipe(
    Effect.provide(
      RateSync.layer({
        stores: { shared: { engine: "postgres", url, auto_create: true } },
        limiters: { [limiter]: { store: "shared", rate_per_second: RATE, burst: BURST } }
      }).pipe(Layer.provide(Stores.layer))
    )
  )

const [, , role, url, limiter, until] = process.argv
if (role === "--worker" && url !== undefined && limiter !== undefined && until !== undefined) {
  Effect.runPromise(worker(url, limiter, Number(until))).then(() => process.exit(0), (error) => {
    console.error(error)
    process.exit(1)
  })
} else {
  const database = await postgresUrl()
  const limiter = `demo_${Date.now().toString(36)}`
  // Long enough for three processes to start and connect before the first counted second.
  const start = Date.now() + 4_000
  const until = start + SECONDS * 1000
  console.log(`${WORKERS} worker processes x 8 fibers share limiter "${limiter}": ${RATE}/s, burst ${BURST}, through PostgreSQL`)
  const counts = Array.from({ length: SECONDS }, () => new Array<number>(WORKERS).fill(0))
  const exits = Array.from({ length: WORKERS }, (_, w) =>
    new Promise<void>((resolve) => {
      const child = spawn(process.execPath, ["--import", "tsx", new URL(import.meta.url).pathname, "--worker", database.url, limiter, String(until)], {
        stdio: ["ignore", "pipe", "inherit"]
      })
      createInterface({ input: child.stdout }).on("line", (line) => {
        const second = Math.floor((Number(line) - start) / 1000)
        if (second >= 0 && second < SECONDS) counts[second]![w]!++
      })
      child.on("exit", () => resolve())
    }))
  // Report each second once it is over.
  for (let second = 0; second < SECONDS; second++) {
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, start + (second + 1) * 1000 + 200 - Date.now())))
    const row = counts[second]!
    const total = row.reduce((a, b) => a + b, 0)
    console.log(
      `second ${second + 1}: ${row.map((n, w) => `worker ${w + 1}: ${String(n).padStart(2)}`).join(", ")}  combined ${total}/s ` +
        `(configured ${RATE}/s; any 1 s holds at most burst + rate = ${RATE + BURST})`
    )
  }
  await Promise.all(exits)
  const total = counts.flat().reduce((a, b) => a + b, 0)
  console.log(`total ${total} in ${SECONDS} s = ${(total / SECONDS).toFixed(1)}/s across ${WORKERS} processes`)
  await database.stop()
  process.exit(0)
}

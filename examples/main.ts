/**
 * `npm start`: three worker processes share one limiter (50/s, burst 5) through PostgreSQL: DATABASE_URL
 * when set, else the machine's server at 127.0.0.1:5432, else an embedded one started for the run.
 *
 * Each worker builds its layer (connects, checks the table), asks the store once and says `ready`; the measured period starts
 * only once every worker is ready (a worker takes seconds to compile and connect on a busy machine, and a
 * period that started before would count its start-up as 0/s). Workers stamp each admission; the parent
 * counts them by stamp, per second and in any 1 s window, against the limiter's bound.
 */
import { spawn } from "node:child_process"
import { createInterface } from "node:readline"
import { Effect, Layer } from "effect"
import { RateLimiter, RateSync, Stores } from "../src/index.js"
import { postgresServer } from "../scripts/stores.js"
import { perSecond, stamp, verdict } from "./measure.js"

const RATE = 50
const BURST = 5
const WORKERS = 3
const FIBERS = 8
const SECONDS = Number(process.env["DEMO_SECONDS"] ?? 6)
/** How long workers may take to become ready: compiling and connecting, on a machine as busy as can be. */
const READY_TIMEOUT_MS = 120_000

// ---- a worker process -------------------------------------------------------------------------

/** The first line on stdin: `go START END`, the measured period in ms on the machine's clock. */
const goSignal = () =>
  new Promise<{ start: number; end: number }>((resolve, reject) => {
    const lines = createInterface({ input: process.stdin })
    lines.once("line", (line) => {
      lines.close()
      const [word, start, end] = line.split(" ")
      if (word === "go") resolve({ start: Number(start), end: Number(end) })
      else reject(new Error(`expected "go START END", got ${JSON.stringify(line)}`))
    })
  })

const worker = (url: string, limiter: string) =>
  Effect.gen(function*() {
    const limits = yield* Layer.build(
      RateSync.layer({
        stores: { shared: { engine: "postgres", url, auto_create: true } },
        limiters: { [limiter]: { store: "shared", rate_per_second: RATE, burst: BURST } }
      }).pipe(Layer.provide(Stores.layer))
    )
    // One round trip before saying ready, so the first admission pays no first-call costs (code
    // compiled on first use, the pool's connections) inside the measured period.
    yield* RateLimiter.state(limiter).pipe(Effect.provide(limits))
    console.log("ready")
    const { end, start } = yield* Effect.promise(goSignal)
    yield* Effect.sleep(Math.max(0, start - stamp()))
    const pushWork = Effect.scoped(RateLimiter.acquire(limiter)).pipe(
      Effect.tap(() => Effect.sync(() => console.log(stamp()))),
      Effect.repeat({ while: () => stamp() < end })
    )
    // Fibers still waiting for a slot at the end are interrupted: their slots lie past the period.
    yield* Effect.all(Array.from({ length: FIBERS }, () => pushWork), { concurrency: "unbounded", discard: true }).pipe(
      Effect.timeout(Math.max(0, end - stamp())),
      Effect.ignore,
      Effect.provide(limits)
    )
  }).pipe(Effect.scoped)

// ---- the parent -------------------------------------------------------------------------------

interface Worker {
  readonly ready: Promise<number>
  readonly stamps: Array<number>
  readonly exited: Promise<number | null>
  readonly go: (start: number, end: number) => void
  readonly kill: () => void
}

const startWorker = (url: string, limiter: string, started: number): Worker => {
  const child = spawn(process.execPath, ["--import", "tsx", new URL(import.meta.url).pathname, "--worker", url, limiter], {
    stdio: ["pipe", "pipe", "inherit"]
  })
  const stamps: Array<number> = []
  let onReady: (ms: number) => void = () => {}
  const ready = new Promise<number>((resolve) => onReady = resolve)
  createInterface({ input: child.stdout }).on("line", (line) => {
    if (line === "ready") onReady(Date.now() - started)
    else if (Number.isFinite(Number(line))) stamps.push(Number(line))
    else console.log(`  worker: ${line}`)
  })
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)))
  return {
    ready,
    stamps,
    exited,
    go: (start, end) => child.stdin.end(`go ${start} ${end}\n`),
    kill: () => child.kill()
  }
}

const sleepUntil = (at: number) => new Promise((resolve) => setTimeout(resolve, Math.max(0, at - stamp())))

const parent = async () => {
  console.log("finding PostgreSQL: DATABASE_URL, else 127.0.0.1:5432, else an embedded server")
  const database = await postgresServer()
  console.log(`using ${database.source}`)
  const limiter = `demo_${Date.now().toString(36)}`
  console.log(
    `starting ${WORKERS} worker processes x ${FIBERS} fibers on limiter "${limiter}": ${RATE}/s, burst ${BURST}, ` +
      `one table in PostgreSQL (each compiles its TypeScript and connects: seconds on a busy machine)`
  )
  const started = Date.now()
  const workers = Array.from({ length: WORKERS }, () => startWorker(database.url, limiter, started))
  const failed = (why: string) => {
    console.error(why)
    for (const w of workers) w.kill()
    return database.stop().then(() => process.exit(1))
  }
  // Ready, or a worker that exited first, or a timeout: whichever comes first.
  const allReady = Promise.all(workers.map((w, i) =>
    w.ready.then((ms) => console.log(`worker ${i + 1} ready after ${(ms / 1000).toFixed(1)} s`))
  ))
  const outcome = await Promise.race([
    allReady.then(() => "ready" as const),
    ...workers.map((w, i) => w.exited.then((code) => `worker ${i + 1} exited (code ${code}) before it was ready`)),
    new Promise<string>((resolve) => setTimeout(() => resolve(`workers not ready after ${READY_TIMEOUT_MS / 1000} s`), READY_TIMEOUT_MS))
  ])
  if (outcome !== "ready") return failed(outcome)

  // A little ahead, so every worker has the signal before the period starts.
  const start = stamp() + 250
  const end = start + SECONDS * 1000
  for (const w of workers) w.go(start, end)
  console.log(`all ${WORKERS} ready: measuring ${SECONDS} s, admissions counted by their stamps`)
  const line = (second: number) => {
    const row = workers.map((w) => perSecond(w.stamps, start, SECONDS)[second]!)
    const total = row.reduce((a, b) => a + b, 0)
    return `second ${second + 1}: ${row.map((n, w) => `worker ${w + 1}: ${String(n).padStart(2)}`).join(", ")}  ` +
      `combined ${String(total).padStart(2)} (at most burst + rate = ${BURST + RATE})`
  }
  const printed: Array<string> = []
  for (let second = 0; second < SECONDS; second++) {
    // Stamps travel through a pipe: a second is shown once it is over, plus a margin for them.
    await sleepUntil(start + (second + 1) * 1000 + 300)
    printed.push(line(second))
    console.log(printed[second])
  }
  const codes = await Promise.all(workers.map((w) => w.exited))
  await database.stop()
  // Stamps that came in after their second was shown change it: show the final rows then.
  const late = printed.flatMap((shown, second) => shown === line(second) ? [] : [line(second)])
  if (late.length > 0) console.log("with the stamps that arrived after their second was shown:", ...late.map((l) => `\n${l}`))
  const stamps = workers.flatMap((w) => w.stamps)
  const shortfall = "slots went unused: a waiter that a busy machine wakes more than 10 ms after its slot gives it up " +
    "rather than bunch with the next ones (\"Where callers proceed\" in the README)"
  for (const l of verdict(stamps, start, end, { rate: RATE, burst: BURST }, shortfall)) console.log(l)
  if (codes.some((code) => code !== 0)) {
    console.error(`a worker failed (exit codes ${codes.join(", ")})`)
    process.exit(1)
  }
  process.exit(0)
}

const [, , role, url, limiter] = process.argv
if (role === "--worker" && url !== undefined && limiter !== undefined) {
  Effect.runPromise(worker(url, limiter)).then(() => process.exit(0), (error) => {
    console.error(error)
    process.exit(1)
  })
} else {
  await parent()
}

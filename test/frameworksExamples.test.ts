/**
 * The framework examples (examples/express.ts, hono.ts, fastify.ts, nest.ts) as processes of their own:
 * each runs as a newcomer runs it, and two processes of each share one PostgreSQL limit.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { promisify } from "node:util"
import { describe, expect, inject, it } from "vitest"

const databaseUrl = inject("databaseUrl")
const table = `frameworks_examples_${process.pid}`

/** Starts an example as its own process, serving, and resolves with its url once it listens. */
const startExample = (example: string, config: string): Promise<{ url: string; child: ChildProcess }> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", `examples/${example}.ts`], {
      env: { ...process.env, SERVE: "1", PORT: "0", RATE_SYNC_CONFIG: config },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let out = ""
    let err = ""
    child.stderr!.on("data", (chunk) => (err += String(chunk)))
    child.stdout!.on("data", (chunk) => {
      out += String(chunk)
      const match = /listening on (http:\/\/\S+)/.exec(out)
      if (match !== null) resolve({ url: match[1]!, child })
    })
    child.once("exit", (code) => reject(new Error(`examples/${example}.ts exited (${code}) before listening: ${err}`)))
  })

const stop = (child: ChildProcess) =>
  new Promise<void>((resolve) => {
    if (child.exitCode !== null) return resolve()
    child.once("exit", () => resolve())
    child.kill("SIGTERM")
  })

describe("two processes of each example share one PostgreSQL limit", () => {
  it.each(["express", "hono", "fastify", "nest"])("examples/%s.ts", async (example) => {
    const dir = mkdtempSync(join(tmpdir(), "rate-sync-fw-"))
    const config = join(dir, "rate-sync.toml")
    // The examples' limiter "api": 5 at once, then 1 a second (their framework limit is 5).
    writeFileSync(
      config,
      `[stores.db]\nengine = "postgres"\nurl = "${databaseUrl}"\ntable_name = "${table}_${example}"\nauto_create = true\n\n` +
        `[limiters.api]\nstore = "db"\nrate_per_second = 1\nburst = 5\n`
    )
    const servers = await Promise.all([startExample(example, config), startExample(example, config)])
    try {
      const started = performance.now()
      const admitted = [0, 0]
      let refused = 0
      for (let i = 0; i < 12; i++) {
        const response = await fetch(servers[i % 2]!.url)
        const body = await response.text()
        if (response.status === 200) {
          admitted[i % 2]!++
          expect(body).toBe(`hello from process ${servers[i % 2]!.child.pid}\n`)
        } else {
          expect(response.status).toBe(429)
          refused++
        }
      }
      const seconds = (performance.now() - started) / 1000
      // Both processes admitted, and together no more than the burst plus one a second since the first.
      expect(admitted[0]).toBeGreaterThan(0)
      expect(admitted[1]).toBeGreaterThan(0)
      expect(admitted[0]! + admitted[1]!).toBeGreaterThanOrEqual(5)
      expect(admitted[0]! + admitted[1]!).toBeLessThanOrEqual(5 + Math.floor(seconds))
      expect(refused).toBe(12 - admitted[0]! - admitted[1]!)
    } finally {
      await Promise.all(servers.map(({ child }) => stop(child)))
    }
  }, 60_000)
})

it("each example, run as a newcomer runs it, admits 5, refuses the next 2 with Retry-After, and exits by itself", async () => {
  const outputs = await Promise.all(["express", "hono", "fastify", "nest"].map((example) =>
    promisify(execFile)(process.execPath, ["--import", "tsx", `examples/${example}.ts`], { timeout: 60_000 })
  ))
  for (const { stdout } of outputs) {
    const statuses = [...stdout.matchAll(/^request \d: (\d+) (.*)$/gm)]
    expect(statuses.map((match) => Number(match[1]))).toEqual([200, 200, 200, 200, 200, 429, 429])
    for (const refused of statuses.slice(5)) expect(refused[2]).toMatch(/retry-after: 1\b/)
  }
}, 90_000)

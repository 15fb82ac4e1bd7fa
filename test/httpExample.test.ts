/**
 * `examples/http.ts` as a reader runs it (`npx tsx examples/http.ts`): it serves, answers its own
 * requests with the headers the README shows, and exits; and two of its processes serving one
 * PostgreSQL limit from a TOML file (`SERVE=1`).
 */
import { execFile, spawn } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { promisify } from "node:util"
import { describe, expect, inject, it } from "vitest"
import { admin } from "./support/admin.js"

const run = promisify(execFile)

describe("examples/http.ts", () => {
  it("limits per client, skips /health, refuses a second report while one holds the lease, and exits", async () => {
    const env = { ...process.env }
    delete env["RATE_SYNC_CONFIG"]
    delete env["SERVE"]
    const { stdout } = await run(process.execPath, ["--import", "tsx", "examples/http.ts"], { env, timeout: 60_000 })
    const lines = stdout.trim().split("\n")
    expect(lines.map((line) => line.split(/\s+/).slice(0, 3).join(" "))).toEqual([
      "GET /search 200",
      "GET /search 200",
      "GET /search 200",
      "GET /search 429",
      "GET /health 200",
      // The second report is refused at once, so it prints first.
      "GET /report 429",
      "GET /report 200"
    ])
    expect(lines[0]).toContain(`ratelimit-policy: "per-ip";q=3;w=3  ratelimit: "per-ip";r=2;t=1`)
    expect(lines[3]).toContain(`retry-after: 1  violated: ["per-ip"]`)
    expect(lines[5]).toContain(`violated: ["reports"]`)
  }, 70_000)

  it("two server processes share one PostgreSQL limit (the example, from a TOML file)", async () => {
    const url = inject("databaseUrl")
    const table = `http_example_${process.pid}_${Date.now().toString(36)}`
    const dir = mkdtempSync(join(tmpdir(), "rate-sync-http-"))
    const config = join(dir, "rate-sync.toml")
    writeFileSync(config, [
      "[stores.db]", `engine = "postgres"`, `url = "${url}"`, `table_name = "${table}"`, "auto_create = true", "pool_min_size = 0",
      "[limiters.per-ip]", `store = "db"`, "rate_per_second = 0.1", "burst = 3",
      "[limiters.reports]", `store = "db"`, "max_concurrent = 1"
    ].join("\n"))
    const servers = [0, 1].map(() =>
      spawn(process.execPath, ["--import", "tsx", "examples/http.ts"], {
        env: { ...process.env, RATE_SYNC_CONFIG: config, SERVE: "1", PORT: "0" },
        stdio: ["ignore", "pipe", "inherit"]
      })
    )
    try {
      const bases = await Promise.all(servers.map((server) =>
        new Promise<string>((resolve, reject) => {
          let out = ""
          server.stdout!.on("data", (chunk) => {
            out += String(chunk)
            const match = /serving on (\S+):/.exec(out)
            if (match !== null) resolve(match[1]!)
          })
          server.on("exit", (code) => reject(new Error(`the server exited (${code}) before serving: ${out}`)))
        })
      ))
      const statuses: Array<number> = []
      for (let i = 0; i < 6; i++) {
        const response = await fetch(`${bases[i % 2]}/search`, { headers: { connection: "close" } })
        statuses.push(response.status)
        await response.text()
      }
      // Three in all, whichever process answered: one burst of 3, kept in the table both share.
      expect(statuses).toEqual([200, 200, 200, 429, 429, 429])
    } finally {
      for (const server of servers) server.kill()
      await admin(url, [`DROP TABLE IF EXISTS "${table}"`])
      rmSync(dir, { recursive: true, force: true })
    }
  }, 70_000)
})

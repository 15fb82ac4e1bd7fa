/**
 * `examples/http.ts` as a reader runs it (`npx tsx examples/http.ts`): it serves, answers its own
 * requests with the headers the README shows, and exits.
 */
import { execFile } from "node:child_process"
import { promisify } from "node:util"
import { describe, expect, it } from "vitest"

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
})

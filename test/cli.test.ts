/**
 * The `rate-sync` command line, run as a child process (tsx on src) against the test PostgreSQL and
 * Redis. Each test has a schema (and a role) of its own, dropped after, so the tests run at once.
 */
import { execFile, spawn } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { Effect, Layer } from "effect"
import { afterAll, describe, expect, inject, it } from "vitest"
import { RateLimiter, RateSync, Settings, Stores } from "../src/index.js"
import { createTableSql } from "../src/postgres/PostgresStore.js"
import { admin, asUser } from "./support/admin.js"

const url = inject("databaseUrl")
const redisUrl = inject("redisUrl")
const root = resolve(import.meta.dirname, "..")
const main = join(root, "src", "cli", "main.ts")
const dir = mkdtempSync(join(tmpdir(), "rate-sync-cli-"))
const tag = `rs_cli_${process.pid}`
const schemas: Array<string> = []
const roles: Array<string> = []

afterAll(async () => {
  await admin(url, [
    ...schemas.map((schema) => `DROP SCHEMA IF EXISTS "${schema}" CASCADE`),
    ...roles.map((role) => `DROP ROLE IF EXISTS "${role}"`)
  ])
  rmSync(dir, { recursive: true, force: true })
})

interface Run {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/** `node --import tsx src/cli/main.ts` (tsx's own wrapper would cost a second process per run). */
const command = (args: ReadonlyArray<string>) => ["--import", "tsx", main, ...args]

const cli = (args: ReadonlyArray<string>): Promise<Run> =>
  new Promise((done) => {
    execFile(process.execPath, command(args), { cwd: root }, (error, stdout, stderr) =>
      done({ code: error === null ? 0 : typeof error.code === "number" ? error.code : null, stdout, stderr }))
  })

/** Runs a command until `pattern` matched `times` lines of its output, then sends it SIGINT. */
const watch = (args: ReadonlyArray<string>, pattern: RegExp, times: number) =>
  new Promise<{ readonly code: number | null; readonly stdout: string }>((done) => {
    const child = spawn(process.execPath, command(args), { cwd: root })
    // Output that never matches fails the test (before its 60 s timeout), and leaves no process behind.
    const limit = setTimeout(() => child.kill("SIGKILL"), 50_000)
    let stdout = ""
    child.stdout.on("data", (chunk: Buffer) => {
      stdout += chunk.toString()
      if ([...stdout.matchAll(pattern)].length >= times) child.kill("SIGINT")
    })
    child.on("exit", (code) => {
      clearTimeout(limit)
      done({ code, stdout })
    })
  })

/** A fresh schema, dropped after the file. */
const freshSchema = async (name: string) => {
  const schema = `${tag}_${name}`
  schemas.push(schema)
  await admin(url, [`DROP SCHEMA IF EXISTS "${schema}" CASCADE`, `CREATE SCHEMA "${schema}"`])
  return schema
}

const storeConfig = (schema: string, table = "rate_limiter_state", storeUrl = url) =>
  Settings.PostgresStoreConfig.make({
    engine: "postgres",
    url: storeUrl,
    schema_name: schema,
    table_name: table,
    auto_create: false,
    pool_min_size: 0,
    pool_max_size: 2,
    timing_margin_ms: 10,
    unlogged: false,
    synchronous_commit: true,
    pool_timeout_ms: 5_000,
    operation_timeout_ms: 2_000
  })

const withTable = async (schema: string) => {
  await admin(url, [...createTableSql(storeConfig(schema))])
}

/** A configuration file: a postgres store, Redis when the tests have one, memory, and limiters on each. */
const configFile = (name: string, schema: string, options: { table?: string; storeUrl?: string } = {}) => {
  const path = join(dir, `${name}.toml`)
  writeFileSync(
    path,
    `[stores.db]
engine = "postgres"
url = "${options.storeUrl ?? url}"
schema_name = "${schema}"
table_name = "${options.table ?? "rate_limiter_state"}"
pool_min_size = 0
${redisUrl === "" ? "" : `
[stores.cache]
engine = "redis"
url = "${redisUrl}"
key_prefix = "${tag}:${name}:"

[limiters.onRedis]
store = "cache"
rate_per_second = 100
`}
[stores.mem]
engine = "memory"

[limiters.api]
store = "db"
rate_per_second = 0.001
burst = 5
max_concurrent = 3

[limiters.local]
store = "mem"
rate_per_second = 10
`
  )
  return path
}

/** A role that may log in, dropped after the file. */
const freshRole = async (name: string) => {
  const role = `${tag}_${name}`
  roles.push(role)
  await admin(url, [`DROP ROLE IF EXISTS "${role}"`, `CREATE ROLE "${role}" LOGIN PASSWORD 'secret'`])
  return role
}

/** Builds a store as `storeUrl`'s user (its setup checks the table and grants) and takes a permit. */
const permitAs = (storeUrl: string, schema: string) =>
  Effect.runPromise(
    Effect.scoped(RateLimiter.acquire("api")).pipe(
      Effect.provide(
        RateSync.layer({
          stores: { db: { engine: "postgres", url: storeUrl, schema_name: schema, pool_min_size: 0 } },
          limiters: { api: { store: "db", rate_per_second: 1, burst: 2, max_concurrent: 1 } }
        }).pipe(Layer.provide(Stores.layer))
      )
    )
  )

describe.concurrent("rate-sync command line", () => {
  it("check passes on a ready database: one line per store and per limiter", async () => {
    const schema = await freshSchema("ready")
    await withTable(schema)
    const run = await cli(["check", "--config", configFile("ready", schema)])
    expect(run.stderr).toBe("")
    expect(run.code).toBe(0)
    expect(run.stdout).toMatch(new RegExp(`^ok +store db: postgres at .*"${schema}"\\."rate_limiter_state": PostgreSQL \\d+`, "m"))
    expect(run.stdout).toMatch(/^ok +store mem: memory/m)
    expect(run.stdout).toMatch(/^ok +limiter api: token bucket 0.001\/s, burst 5, max_concurrent 3 on store db$/m)
    expect(run.stdout).toMatch(/^ok +limiter local: /m)
    if (redisUrl !== "") {
      expect(run.stdout).toMatch(/^ok +store cache: redis at redis:\/\/.*: Redis \d+\.\d+\.\d+ standalone/m)
      expect(run.stdout).toMatch(/^ok +limiter onRedis: /m)
    }
    expect(run.stdout).not.toMatch(/FAIL/)
  })

  it("check fails on a missing table and on a role missing a grant, with the statements that fix them", async () => {
    const schema = await freshSchema("broken")
    await withTable(schema)
    const role = await freshRole("app")
    const table = `"${schema}"."rate_limiter_state"`
    await admin(url, [`GRANT USAGE ON SCHEMA "${schema}" TO "${role}"`, `GRANT SELECT, INSERT ON ${table} TO "${role}"`])
    const roleUrl = asUser(url, role, "secret")
    const config = join(dir, "broken.toml")
    writeFileSync(
      config,
      `[stores.gone]\nengine = "postgres"\nurl = "${url}"\nschema_name = "${schema}"\ntable_name = "gone"\npool_min_size = 0\n\n` +
        `[stores.norole]\nengine = "postgres"\nurl = "${roleUrl}"\nschema_name = "${schema}"\npool_min_size = 0\n\n` +
        `[stores.mem]\nengine = "memory"\n\n` +
        `[limiters.a]\nstore = "gone"\nrate_per_second = 1\n\n[limiters.b]\nstore = "mem"\nrate_per_second = 1\n`
    )
    const run = await cli(["check", "--config", config])
    expect(run.code).toBe(1)
    expect(run.stderr).toBe("rate-sync: 2 problems found\n")
    expect(run.stdout).toMatch(new RegExp(`^FAIL +store gone: .*\\n +problem: table "${schema}"\\."gone" does not exist$`, "m"))
    for (const statement of createTableSql(storeConfig(schema, "gone"))) {
      expect(run.stdout).toContain(statement.split("\n").map((line) => `          ${line}`).join("\n") + ";")
    }
    expect(run.stdout).toMatch(new RegExp(`^FAIL +store norole: .* as ${role}\\n +problem: ${role} lacks UPDATE on ${table.replaceAll(".", "\\.")}$`, "m"))
    const grant = `GRANT UPDATE ON ${table} TO "${role}";`
    expect(run.stdout).toContain(`          ${grant}`)
    expect(run.stdout).toMatch(/^ok +store mem: /m)
    expect(run.stdout).toMatch(/^FAIL +limiter a: .*\(its store failed the check\)$/m)
    expect(run.stdout).toMatch(/^ok +limiter b: /m)
    // The fix given is the fix: the library's own check at start now passes for that role.
    await expect(permitAs(roleUrl, schema)).rejects.toThrow(/UPDATE not granted/)
    await admin(url, [grant])
    expect((await permitAs(roleUrl, schema)).degraded).toBe(false)
  })

  it("migrate --apply prints the SQL the store runs and the GRANT, and creates a working table in a fresh schema", async () => {
    const schema = await freshSchema("applied")
    const role = await freshRole("migrated")
    const run = await cli(["migrate", "--apply", "--grant-to", role, "--config", configFile("applied", schema)])
    expect(run.stderr).toBe("")
    expect(run.code).toBe(0)
    const table = `"${schema}"."rate_limiter_state"`
    expect(run.stdout).toBe(
      [
        `-- store db: ${table}`,
        ...createTableSql(storeConfig(schema)).map((statement) => `${statement};`),
        `GRANT USAGE ON SCHEMA "${schema}" TO "${role}";`,
        `GRANT SELECT, INSERT, UPDATE ON ${table} TO "${role}";`,
        "-- applied to store db: 4 statements",
        ""
      ].join("\n")
    )
    const permit = await permitAs(asUser(url, role, "secret"), schema)
    expect(permit.degraded).toBe(false)
    expect(permit.remaining).toBe(1)
  })

  it("status --watch prints the limiter's numbers every second while a lease is held, until Ctrl-C (exit 0)", async () => {
    const schema = await freshSchema("status")
    await withTable(schema)
    const config = configFile("status", schema)
    const layer = RateSync.layerToml(config).pipe(Layer.provide(Stores.layer))
    const shown = /^\d\d:\d\d:\d\d  limit 5, remaining 3, next slot in 0 ms, reset in (\d+) ms, leases held 1 of 3, waiting 0$/gm
    const { code, stdout } = await Effect.runPromise(
      Effect.scoped(Effect.gen(function*() {
        yield* RateLimiter.acquire("api", { key: "k", cost: 2 })
        return yield* Effect.promise(() => watch(["status", "api", "--key", "k", "--watch", "--config", config], shown, 2))
      })).pipe(Effect.provide(layer))
    )
    expect(code).toBe(0)
    const resets = [...stdout.matchAll(shown)].map((match) => Number(match[1]))
    expect(resets.length).toBeGreaterThanOrEqual(2)
    // 2 units at 0.001/s: 2,000 s until the bucket is full again (less the time the processes took to start).
    for (const reset of resets) expect(reset).toBeGreaterThan(1_900_000)
    expect(resets[1]).toBeLessThan(resets[0]!)
  })

  it("cleanup deletes only idle rows, in batches with a progress line", async () => {
    const schema = await freshSchema("cleanup")
    await withTable(schema)
    const table = `"${schema}"."rate_limiter_state"`
    await admin(url, [
      `INSERT INTO ${table} (group_id, last_acquisition_at, updated_at)
        SELECT 'idle' || i, now() - interval '10 days', now() - interval '10 days' FROM generate_series(1, 5) i`,
      `INSERT INTO ${table} (group_id, last_acquisition_at, updated_at) VALUES
        ('touched', now() - interval '10 days', now() - interval '1 day'),
        ('ahead', now() + interval '1 hour', now() - interval '10 days')`
    ])
    const run = await cli(["cleanup", "--older-than", "7 days", "--batch-size", "2", "--config", configFile("cleanup", schema)])
    expect(run.stderr).toBe("")
    expect(run.code).toBe(0)
    expect(run.stdout).toBe(
      [
        "store db: deleted 2 rows so far",
        "store db: deleted 4 rows so far",
        `store db: deleted 5 rows idle for 7 days from ${table}`,
        ""
      ].join("\n")
    )
    const [left] = await admin(url, [`SELECT group_id FROM ${table} ORDER BY group_id`])
    expect(left!.rows.map((row: { group_id: string }) => row.group_id)).toEqual(["ahead", "touched"])
  })

  it("a bad --older-than is one line and exit code 2", async () => {
    const run = await cli(["cleanup", "--older-than", "30 seconds", "--config", configFile("bad", `${tag}_bad`)])
    expect(run.code).toBe(2)
    expect(run.stderr).toBe("rate-sync: --older-than: expected a duration of at least 1 minute such as \"7 days\" or \"12 hours\", found \"30 seconds\"\n")
    expect(run.stdout).toBe("")
  })

  it("an invalid configuration prints its issues, no stack trace, exit code 3", async () => {
    const invalid = join(dir, "invalid.toml")
    writeFileSync(invalid, "[stores.mem]\nengine = \"memory\"\n\n[limiters.api]\nstore = \"mem\"\nrate_per_second = 0\n\n[limiters.other]\nstore = \"nowhere\"\nrate_per_second = 1\n")
    const run = await cli(["check", "--config", invalid])
    expect(run.code).toBe(3)
    expect(run.stderr).toBe(
      "rate-sync: invalid configuration:\n" +
        "  limiters.api.rate_per_second: Expected a rate from 0.000001 to 1000000 per second, found 0\n" +
        "  limiters.other.store: Expected the name of a configured store (configured: \"mem\"), found \"nowhere\"\n"
    )
    expect(run.stdout).toBe("")
  })
})

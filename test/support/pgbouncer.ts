/**
 * A PgBouncer of the test's own in front of the test database: a config file and an auth file in a
 * temporary directory, a free loopback port, started as a child process and stopped by its pid.
 * Debian's `pgbouncer` package (CI installs it); `find` tells when it is missing.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { accessSync, chmodSync, constants, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { delimiter, join } from "node:path"
import pg from "pg"
import { freePort } from "./embeddedPostgres.js"

export interface PgBouncer {
  /** The database url through PgBouncer (same user and database as the direct one). */
  readonly url: string
  readonly port: number
  readonly pid: number
  /** What PgBouncer wrote to stderr (its log), for failures. */
  readonly log: () => string
  readonly stop: () => Promise<void>
}

/** The pgbouncer binary: on PATH, or where Debian puts it (/usr/sbin, not on every user's PATH). */
export const findBinary = (): string | undefined => {
  const dirs = [...(process.env["PATH"] ?? "").split(delimiter), "/usr/sbin", "/usr/local/sbin"]
  for (const dir of dirs) {
    if (dir === "") continue
    const candidate = join(dir, "pgbouncer")
    try {
      accessSync(candidate, constants.X_OK)
      return candidate
    } catch {
      // not here
    }
  }
  return undefined
}


const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

export interface Options {
  /** The direct url of the database to pool (its host, port, user and database are used). */
  readonly databaseUrl: string
  readonly poolMode?: "transaction" | "session" | "statement"
  /** Server connections per user and database. */
  readonly poolSize?: number
}

/** Starts PgBouncer and waits until a query passes through it. */
export const start = async (options: Options): Promise<PgBouncer> => {
  const binary = findBinary()
  if (binary === undefined) throw new Error("pgbouncer is not installed (apt-get install -y pgbouncer)")
  const direct = new URL(options.databaseUrl)
  const user = decodeURIComponent(direct.username || "postgres")
  const database = decodeURIComponent(direct.pathname.slice(1) || user)
  const dir = mkdtempSync(join(tmpdir(), "rate-sync-pgbouncer-"))
  // PgBouncer refuses to run as root: as root it is started as `postgres`, who must read the files.
  chmodSync(dir, 0o755)
  const port = await freePort()
  const password = decodeURIComponent(direct.password)
  writeFileSync(join(dir, "userlist.txt"), `"${user}" "${password}"\n`, { mode: 0o644 })
  writeFileSync(
    join(dir, "pgbouncer.ini"),
    [
      "[databases]",
      `${database} = host=${direct.hostname} port=${direct.port || "5432"} dbname=${database}`,
      "[pgbouncer]",
      "listen_addr = 127.0.0.1",
      `listen_port = ${port}`,
      // No Unix socket: nothing outside the temporary directory and the port.
      "unix_socket_dir =",
      "auth_type = trust",
      `auth_file = ${join(dir, "userlist.txt")}`,
      `pool_mode = ${options.poolMode ?? "transaction"}`,
      `default_pool_size = ${options.poolSize ?? 20}`,
      "max_client_conn = 500",
      "server_login_retry = 1",
      ""
    ].join("\n"),
    { mode: 0o644 }
  )
  const asRoot = process.getuid?.() === 0
  const child: ChildProcess = spawn(binary, [...(asRoot ? ["-u", "postgres"] : []), join(dir, "pgbouncer.ini")], {
    stdio: ["ignore", "pipe", "pipe"]
  })
  let log = ""
  child.stdout?.on("data", (chunk: Buffer) => (log += chunk.toString()))
  child.stderr?.on("data", (chunk: Buffer) => (log += chunk.toString()))
  let exited = false
  const gone = new Promise<void>((resolve) => child.once("exit", () => ((exited = true), resolve())))
  const url = new URL(options.databaseUrl)
  url.hostname = "127.0.0.1"
  url.port = String(port)
  const stop = async () => {
    if (!exited && child.pid !== undefined) {
      // SIGTERM: immediate shutdown, whatever clients are still connected.
      process.kill(child.pid, "SIGTERM")
      await Promise.race([gone, sleep(5_000)])
      if (!exited) process.kill(child.pid, "SIGKILL")
      await Promise.race([gone, sleep(2_000)])
    }
    rmSync(dir, { recursive: true, force: true })
  }
  const deadline = Date.now() + 15_000
  for (;;) {
    if (exited) {
      await stop()
      throw new Error(`pgbouncer exited at start:\n${log}`)
    }
    const client = new pg.Client({ connectionString: url.toString(), connectionTimeoutMillis: 1_000 })
    client.on("error", () => {})
    try {
      await client.connect()
      await client.query("SELECT 1")
      await client.end()
      break
    } catch (error) {
      await client.end().catch(() => {})
      if (Date.now() > deadline) {
        await stop()
        throw new Error(`pgbouncer did not answer on port ${port}: ${String(error)}\n${log}`)
      }
      await sleep(100)
    }
  }
  return { url: url.toString(), port, pid: child.pid!, log: () => log, stop }
}

/** PgBouncer's version line (`PgBouncer 1.18.0`), for messages. */
export const version = (): string | undefined => {
  const binary = findBinary()
  if (binary === undefined) return undefined
  try {
    return execFileSync(binary, ["--version"], { encoding: "utf8" }).split("\n")[0]
  } catch {
    return undefined
  }
}

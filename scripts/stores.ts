/**
 * The stores scripts run against: PostgreSQL from DATABASE_URL, else the machine's server at
 * 127.0.0.1:5432, else an embedded one; Redis from REDIS_URL or 127.0.0.1:6379; or memory.
 */
import type { StoreConfigInput } from "../src/Settings.js"
import { findPostgres, LOCAL_POSTGRES, type Started } from "../test/support/embeddedPostgres.js"

export interface StoreTarget {
  readonly label: string
  readonly store: StoreConfigInput
  /** Whether several processes share its state. */
  readonly shared: boolean
  readonly stop: () => Promise<void>
}

/** DATABASE_URL, else the machine's PostgreSQL, else an embedded one started now. */
export const postgresUrl = (): Promise<Started> => findPostgres(process.env["DATABASE_URL"])

/** A url with its password hidden, for printing. */
export const redactUrl = (url: string): string => {
  try {
    const parsed = new URL(url)
    if (parsed.password !== "") parsed.password = "***"
    return parsed.toString()
  } catch {
    return "(a url that does not parse)"
  }
}

/** As `postgresUrl`, with which of the three it is, in words, so a demo can say what it uses. */
export const postgresServer = async (): Promise<Started & { readonly source: string }> => {
  const given = process.env["DATABASE_URL"]
  const started = await postgresUrl()
  const source = given !== undefined && given !== ""
    ? `DATABASE_URL (${redactUrl(started.url)})`
    : started.url === LOCAL_POSTGRES
    ? `the machine's PostgreSQL (${LOCAL_POSTGRES})`
    : `an embedded PostgreSQL started for this run (${redactUrl(started.url)})`
  return { ...started, source }
}

export const resolveStore = async (name: string): Promise<StoreTarget> => {
  switch (name) {
    case "memory":
      return { label: "memory", store: { engine: "memory" }, shared: false, stop: async () => {} }
    case "postgres": {
      const { stop, url } = await postgresUrl()
      return { label: "postgres", store: { engine: "postgres", url, auto_create: true }, shared: true, stop }
    }
    case "redis": {
      const url = process.env["REDIS_URL"] ?? "redis://127.0.0.1:6379"
      // A prefix of this run's own, so runs never share state.
      const key_prefix = `rate-sync-script:${Date.now().toString(36)}:`
      return { label: "redis", store: { engine: "redis", url, key_prefix }, shared: true, stop: async () => {} }
    }
    default:
      throw new Error(`unknown store "${name}" (memory, postgres, redis)`)
  }
}

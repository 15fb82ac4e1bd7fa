/**
 * Finds the PostgreSQL the tests use: `TEST_DATABASE_URL`, else the machine's server at
 * postgres://postgres@127.0.0.1:5432/test, else an embedded server started for this run.
 */
import type { TestProject } from "vitest/node"
import { findPostgres } from "./embeddedPostgres.js"

declare module "vitest" {
  export interface ProvidedContext {
    databaseUrl: string
  }
}

export default async function setup(project: TestProject) {
  const server = await findPostgres(process.env["TEST_DATABASE_URL"])
  project.provide("databaseUrl", server.url)
  return server.stop
}

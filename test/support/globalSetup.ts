/**
 * Finds the servers the tests use. PostgreSQL: `TEST_DATABASE_URL`, else the machine's server at
 * postgres://postgres@127.0.0.1:5432/test, else an embedded server started for this run. Redis:
 * `TEST_REDIS_URL`, else 127.0.0.1:6379, else a `redis-server` started for this run; with none, the
 * Redis tests are skipped with a warning, unless `REQUIRE_REDIS=1` (as in CI) makes that an error.
 */
import type { TestProject } from "vitest/node"
import { findPostgres } from "./embeddedPostgres.js"
import { findRedis } from "./redisServer.js"

declare module "vitest" {
  export interface ProvidedContext {
    databaseUrl: string
    /** Empty when no Redis could be found or started. */
    redisUrl: string
  }
}

export default async function setup(project: TestProject) {
  const postgres = await findPostgres(process.env["TEST_DATABASE_URL"])
  const redis = await findRedis(process.env["TEST_REDIS_URL"])
  if (redis === undefined) {
    if (process.env["REQUIRE_REDIS"] === "1") throw new Error("REQUIRE_REDIS=1 but no Redis answers and redis-server is not installed")
    console.warn("WARNING: no Redis answers and redis-server is not installed: the Redis tests are skipped")
  }
  project.provide("databaseUrl", postgres.url)
  project.provide("redisUrl", redis?.url ?? "")
  return async () => {
    await redis?.stop()
    await postgres.stop()
  }
}

import { defineConfig } from "vitest/config"

/** Multi-process suites in real time (restarts, clock skew, killed connections, backoff across processes, the demos, the command line, PgBouncer, the compliance suite under minimal grants): `npm run test:slow`. */
export const slowSuites = [
  "test/restarts.test.ts",
  "test/clockSkew.test.ts",
  "test/connectionKill.test.ts",
  "test/compliance/backoffProcesses.test.ts",
  "test/demo.test.ts",
  // Each command runs as a process of its own (seconds of start-up each); CI also runs the installed bin.
  "test/cli.test.ts",
  // Starts a PgBouncer of its own; waits on lease re-checks and a 3 s probe.
  "test/pgbouncer.test.ts",
  // The whole PostgreSQL compliance suite again, as a role with only SELECT, INSERT, UPDATE (about 50 s
  // of npm test's 3 minutes; the same suite runs in npm test as the table's owner).
  "test/compliance/postgres-minimal-grants.test.ts",
  // @effect/experimental's scenarios in real time, with windows of seconds (about 10 s an engine).
  "test/experimental.test.ts",
  // Starts each framework example as a process of its own, twice (20-30 s on a busy machine).
  "test/frameworksExamples.test.ts",
  // Starts examples/http.ts as processes of its own (11-14 s).
  "test/httpExample.test.ts",
  // The whole compliance suite again, on a Redis Cluster of three masters it starts (about 50 s).
  "test/compliance/redis-cluster.test.ts",
  // Starts a 3-master, 3-replica Redis Cluster, moves a slot and kills a master (about 12 s).
  "test/redisCluster.test.ts",
  // Statements held behind row locks for over a second each, in real time (about 12 s).
  "test/postgresLockWait.test.ts",
  // The model-based fault search (about 37 s); CI also runs it three times as long on its own.
  "test/model.test.ts",
  // Every accepted configuration value served on every engine: a store built per value (about 40 s).
  "test/inputDomain.test.ts",
  // acquireAll live on every engine and a cluster, concurrent composites and single calls (about 30 s).
  "test/acquireAll.test.ts"
]

/** What both runs share. */
export const shared = {
  globalSetup: ["test/support/globalSetup.ts"],
  // Most files wait on servers and timers rather than the CPU: two at a time on the 2-core CI machine.
  maxWorkers: 2,
  minWorkers: 1,
  testTimeout: 60_000,
  hookTimeout: 120_000,
  reporters: ["default", "json"]
}

export default defineConfig({
  test: {
    ...shared,
    include: ["test/**/*.test.ts"],
    exclude: ["**/node_modules/**", ...slowSuites],
    outputFile: { json: ".tmp/vitest-results.json" }
  }
})

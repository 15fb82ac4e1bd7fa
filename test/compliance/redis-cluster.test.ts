/**
 * The compliance suite on a Redis Cluster this file starts on loopback (three masters, no replicas:
 * support/redisCluster.ts). Each test's limiters have names of their own, so their keys' slots are
 * spread over the three masters (checked at the end).
 */
import { afterAll, expect, it } from "@effect/vitest"
import * as Stores from "../../src/Stores.js"
import { installed, onNode, startRedisCluster } from "../support/redisCluster.js"
import { complianceSuite } from "./suite.js"

const available = await installed()
if (!available && process.env["REQUIRE_REDIS"] === "1") throw new Error("REQUIRE_REDIS=1 but redis-server or redis-cli is not installed")
const cluster = available ? await startRedisCluster(3, 0) : undefined
afterAll(async () => {
  await cluster?.stop()
})

let prefixes = 0

complianceSuite({
  name: "redis-cluster",
  factory: Stores.layer,
  store: () => ({
    engine: "redis",
    cluster: true,
    url: cluster?.seeds ?? "redis://127.0.0.1:1",
    key_prefix: `rate-sync-test:${process.pid}:${prefixes++}:`,
    timing_margin_ms: 0
  }),
  clock: "live",
  unavailable: cluster === undefined
})

it.skipIf(cluster === undefined)("the suite's scripts ran on every master", async () => {
  const calls = await Promise.all(
    cluster!.nodes.map((node) => onNode(node.url, async (redis) => Number(/cmdstat_evalsha:calls=(\d+)/.exec(String(await redis.info("commandstats")))?.[1] ?? 0)))
  )
  for (const count of calls) expect(count).toBeGreaterThan(100)
})

/**
 * @fastify/rate-limit with a rate-sync store: `npx tsx examples/fastify.ts`.
 *
 * Starts on a free loopback port, sends itself 7 requests, prints each answer's status and
 * rate-limit headers, and exits. `SERVE=1` keeps it serving (on `PORT`, default 3000).
 *
 * The limiter "api" comes from the TOML file `RATE_SYNC_CONFIG` names, when set (on PostgreSQL or
 * Redis, every process serving it shares one limit); otherwise it lives in memory: 5 at once, then 1
 * a second. The plugin's `max` is the limiter's burst.
 */
import rateLimit from "@fastify/rate-limit"
import Fastify from "fastify"
import { rateSyncStore } from "../src/frameworks/fastify.js"
import * as RateSync from "../src/promise.js"

if (process.env["RATE_SYNC_CONFIG"] !== undefined) {
  await RateSync.loadConfig()
} else {
  await RateSync.configureStore("local", { engine: "memory" })
  await RateSync.configureLimiter("api", { store: "local", rate_per_second: 1, burst: 5 })
}

const app = Fastify()
await app.register(rateLimit, { max: 5, timeWindow: 5_000, store: rateSyncStore({ limiter: "api" }) })
app.get("/", () => `hello from process ${process.pid}\n`)

const serve = process.env["SERVE"] === "1"
const url = await app.listen({ host: "127.0.0.1", port: serve ? Number(process.env["PORT"] ?? 3000) : 0 })
console.log(`listening on ${url}`)

if (!serve) {
  for (let i = 1; i <= 7; i++) {
    const response = await fetch(url)
    const shown = ["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "retry-after"].flatMap((name) => {
      const value = response.headers.get(name)
      return value === null ? [] : [`${name}: ${value}`]
    })
    console.log(`request ${i}: ${response.status}  ${shown.join("  ")}`)
  }
  await app.close()
  await RateSync.close()
}

/**
 * express-rate-limit with a rate-sync store: `npx tsx examples/express.ts`.
 *
 * Starts on a free loopback port, sends itself 7 requests, prints each answer's status and
 * rate-limit headers, and exits. `SERVE=1` keeps it serving (on `PORT`, default 3000).
 *
 * The limiter "api" comes from the TOML file `RATE_SYNC_CONFIG` names, when set (on PostgreSQL or
 * Redis, every process serving it shares one limit); otherwise it lives in memory: 5 at once, then 1
 * a second. The middleware's `limit` is the limiter's burst, and its `windowMs` the time the limiter
 * takes to refill (5 / 1 per second).
 */
import express from "express"
import { rateLimit } from "express-rate-limit"
import type { AddressInfo } from "node:net"
import { RateSyncStore } from "../src/frameworks/express.js"
import * as RateSync from "../src/promise.js"

if (process.env["RATE_SYNC_CONFIG"] !== undefined) {
  await RateSync.loadConfig()
} else {
  await RateSync.configureStore("local", { engine: "memory" })
  await RateSync.configureLimiter("api", { store: "local", rate_per_second: 1, burst: 5 })
}

const app = express()
app.use(rateLimit({
  limit: 5,
  windowMs: 5_000,
  standardHeaders: "draft-8",
  legacyHeaders: false,
  store: new RateSyncStore({ limiter: "api" })
}))
app.get("/", (_req, res) => {
  res.send(`hello from process ${process.pid}\n`)
})

const serve = process.env["SERVE"] === "1"
const server = app.listen(serve ? Number(process.env["PORT"] ?? 3000) : 0, "127.0.0.1")
await new Promise<void>((resolve) => server.once("listening", resolve))
const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
console.log(`listening on ${url}`)

if (!serve) {
  for (let i = 1; i <= 7; i++) {
    const response = await fetch(url)
    const shown = ["ratelimit-policy", "ratelimit", "retry-after"].flatMap((name) => {
      const value = response.headers.get(name)
      return value === null ? [] : [`${name}: ${value}`]
    })
    console.log(`request ${i}: ${response.status}  ${shown.join("  ")}`)
  }
  server.closeAllConnections()
  server.close()
  await RateSync.close()
}

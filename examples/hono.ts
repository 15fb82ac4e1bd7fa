/**
 * hono-rate-limiter with a rate-sync store: `npx tsx examples/hono.ts`.
 *
 * Starts on a free loopback port, sends itself 7 requests, prints each answer's status and
 * rate-limit headers, and exits. `SERVE=1` keeps it serving (on `PORT`, default 3000).
 *
 * The limiter "api" comes from the TOML file `RATE_SYNC_CONFIG` names, when set (on PostgreSQL or
 * Redis, every process serving it shares one limit); otherwise it lives in memory: 5 at once, then 1
 * a second. Clients are told apart by their address (hono-rate-limiter asks for a `keyGenerator`).
 */
import { serve as listen } from "@hono/node-server"
import { getConnInfo } from "@hono/node-server/conninfo"
import { Hono } from "hono"
import { rateLimiter } from "hono-rate-limiter"
import type { Server } from "node:http"
import type { AddressInfo } from "node:net"
import { RateSyncStore } from "../src/frameworks/hono.js"
import * as RateSync from "../src/promise.js"

if (process.env["RATE_SYNC_CONFIG"] !== undefined) {
  await RateSync.loadConfig()
} else {
  await RateSync.configureStore("local", { engine: "memory" })
  await RateSync.configureLimiter("api", { store: "local", rate_per_second: 1, burst: 5 })
}

const app = new Hono()
app.use(rateLimiter({
  limit: 5,
  windowMs: 5_000,
  standardHeaders: "draft-7",
  keyGenerator: (c) => getConnInfo(c).remote.address ?? "unknown",
  store: new RateSyncStore({ limiter: "api" })
}))
app.get("/", (c) => c.text(`hello from process ${process.pid}\n`))

const serve = process.env["SERVE"] === "1"
const server = listen({ fetch: app.fetch, hostname: "127.0.0.1", port: serve ? Number(process.env["PORT"] ?? 3000) : 0 }) as Server
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

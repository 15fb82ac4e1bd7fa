/**
 * `rate-sync/http` on an `@effect/platform` router: `npx tsx examples/http.ts`.
 *
 * Starts on a free loopback port, sends itself requests, prints each answer's status and rate-limit
 * headers, and exits. `SERVE=1` keeps it serving (on `PORT`, default 3000).
 *
 * The limiters come from the TOML file `RATE_SYNC_CONFIG` names, when set (on PostgreSQL or Redis,
 * every process serving them shares the limits); otherwise they live in memory:
 * - `per-ip`: 1 a second per client, in bursts of 3;
 * - `reports`: at most 1 report at once, across all clients (held until its response is sent).
 */
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServer from "@effect/platform/HttpServer"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Duration, Effect, Layer } from "effect"
import { createServer } from "node:http"
import { HttpRateLimit } from "../src/http/index.js"
import { MemoryStore, RateSync, Stores } from "../src/index.js"

const serving = process.env["SERVE"] === "1"

const Limits = process.env["RATE_SYNC_CONFIG"] !== undefined
  ? RateSync.layerToml().pipe(Layer.provide(Stores.layer))
  : RateSync.layer({
    stores: { local: { engine: "memory" } },
    limiters: {
      "per-ip": { store: "local", rate_per_second: 1, burst: 3 },
      reports: { store: "local", max_concurrent: 1 }
    }
  }).pipe(Layer.provide(MemoryStore.layer))

const Server = NodeHttpServer.layer(() => createServer(), { port: serving ? Number(process.env["PORT"] ?? 3000) : 0, host: "127.0.0.1" })

const app = Effect.gen(function*() {
  // Per client address; behind a proxy, name it: clientAddress: { trustedProxies: ["10.0.0.0/8"] }.
  const perIp = yield* HttpRateLimit.make({ limiters: "per-ip", skip: (request) => request.url === "/health" })
  // A report takes from the client's rate too, and holds the `reports` lease while it is made.
  const reports = yield* HttpRateLimit.make({ limiters: ["per-ip", "reports"] })
  return HttpRouter.empty.pipe(
    HttpRouter.get("/search", HttpServerResponse.text("results").pipe(perIp)),
    HttpRouter.get("/report", Effect.as(Effect.sleep(Duration.millis(1_000)), HttpServerResponse.text("report")).pipe(reports)),
    HttpRouter.get("/health", HttpServerResponse.text("ok").pipe(perIp))
  )
})

const show = async (base: string, path: string) => {
  const response = await fetch(`${base}${path}`, { headers: { connection: "close" } })
  const headers = ["ratelimit-policy", "ratelimit", "retry-after"]
    .flatMap((name) => response.headers.has(name) ? [`${name}: ${response.headers.get(name)}`] : [])
  const body = await response.text()
  const violated = response.status === 429 ? `  violated: ${JSON.stringify(JSON.parse(body)["violated-policies"])}` : ""
  console.log(`GET ${path.padEnd(8)} ${response.status}  ${headers.join("  ")}${violated}`)
}

const program = Effect.gen(function*() {
  yield* HttpServer.serveEffect(yield* app)
  const address = (yield* HttpServer.HttpServer).address
  if (address._tag !== "TcpAddress") return
  const base = `http://127.0.0.1:${address.port}`
  if (serving) {
    console.log(`serving on ${base}: /search, /report, /health`)
    return yield* Effect.never
  }
  yield* Effect.promise(async () => {
    for (let i = 0; i < 4; i++) await show(base, "/search")
    await show(base, "/health")
    // Once the burst is back, two reports at once: the second finds the one `reports` lease held.
    await new Promise((resolve) => setTimeout(resolve, 3_100))
    await Promise.all([show(base, "/report"), new Promise((resolve) => setTimeout(resolve, 100)).then(() => show(base, "/report"))])
  })
})

NodeRuntime.runMain(Effect.scoped(program).pipe(Effect.provide(Layer.merge(Limits, Server))))

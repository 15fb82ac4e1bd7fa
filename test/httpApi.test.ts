/**
 * `HttpApiRateLimit` on a real `HttpApi` served over loopback: the ready-made tag on a group, a tag
 * of one's own on one endpoint (several limiters, a concurrency bound), and a group without limits.
 */
import * as HttpApi from "@effect/platform/HttpApi"
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import * as HttpApiEndpoint from "@effect/platform/HttpApiEndpoint"
import * as HttpApiGroup from "@effect/platform/HttpApiGroup"
import * as HttpApiMiddleware from "@effect/platform/HttpApiMiddleware"
import * as HttpServer from "@effect/platform/HttpServer"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { describe, expect, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import { createServer } from "node:http"
import { HttpApiRateLimit } from "../src/http/index.js"
import { RateLimiter } from "../src/RateLimiter.js"
import * as RateSync from "../src/RateSync.js"
import * as Stores from "../src/Stores.js"

class Reports extends HttpApiMiddleware.Tag<Reports>()("test/Reports", { failure: HttpApiRateLimit.QuotaExceeded }) {}

class Api extends HttpApi.make("api")
  .add(HttpApiGroup.make("search").add(HttpApiEndpoint.get("find", "/search").addSuccess(Schema.String)).middleware(HttpApiRateLimit.RateLimited))
  .add(
    HttpApiGroup.make("reports")
      .add(HttpApiEndpoint.get("report", "/report").addSuccess(Schema.String).middleware(Reports))
      .add(HttpApiEndpoint.get("free", "/free").addSuccess(Schema.String))
  )
{}

const get = (url: string) =>
  Effect.promise(async () => {
    const response = await fetch(url, { headers: { connection: "close" } })
    return { status: response.status, headers: response.headers, body: await response.text() }
  })

describe("HttpApiRateLimit", () => {
  it.live("limits a group and an endpoint, with the problem body and headers; leaves the rest alone", () =>
    Effect.scoped(Effect.gen(function*() {
      const gate = yield* Deferred.make<void>()
      const entered = yield* Deferred.make<void>()
      const SearchLive = HttpApiBuilder.group(Api, "search", (handlers) => handlers.handle("find", () => Effect.succeed("results")))
      const ReportsLive = HttpApiBuilder.group(Api, "reports", (handlers) =>
        handlers
          .handle("report", () => Effect.zipRight(Deferred.succeed(entered, undefined), Effect.as(Deferred.await(gate), "report")))
          .handle("free", () => Effect.succeed("free")))
      const limits = RateSync.layer({
        stores: { m: { engine: "memory" } },
        limiters: {
          "per-ip": { store: "m", rate_per_second: 0.1, burst: 3 },
          reports: { store: "m", max_concurrent: 1 }
        }
      }).pipe(Layer.provide(Stores.layer))
      const middlewares = Layer.mergeAll(
        HttpApiRateLimit.layer({ limiters: "per-ip" }),
        Layer.effect(Reports, HttpApiRateLimit.make({ limiters: ["per-ip", "reports"] }))
      )
      const context = yield* Layer.build(HttpApiBuilder.serve().pipe(
        Layer.provide(HttpApiBuilder.api(Api).pipe(Layer.provide([SearchLive, ReportsLive]))),
        Layer.provide(middlewares),
        Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" })),
        Layer.provideMerge(limits)
      ))
      const address = Context.get(context, HttpServer.HttpServer).address
      const base = address._tag === "TcpAddress" ? `http://127.0.0.1:${address.port}` : ""
      const limiter = Context.get(context, RateLimiter)

      const first = yield* get(`${base}/search`)
      expect(first.status).toBe(200)
      expect(first.headers.get("ratelimit-policy")).toBe(`"per-ip";q=3;w=30`)
      expect(first.headers.get("ratelimit")).toBe(`"per-ip";r=2;t=10`)

      // A report holds the `reports` lease while it runs: a second one is refused by it.
      const report = yield* Effect.fork(get(`${base}/report`))
      yield* Deferred.await(entered)
      const second = yield* get(`${base}/report`)
      expect(second.status).toBe(429)
      expect(second.headers.get("content-type")).toBe("application/problem+json")
      expect(second.headers.get("retry-after")).toBe("1")
      const problem = JSON.parse(second.body)
      expect(problem).toMatchObject({
        type: "https://iana.org/assignments/http-problem-types#quota-exceeded",
        status: 429,
        "violated-policies": ["reports"]
      })
      yield* Deferred.succeed(gate, undefined)
      expect((yield* report).status).toBe(200)
      // Both reports took from per-ip: it is spent, and the API's own 429 says so.
      const refused = yield* get(`${base}/search`)
      expect(refused.status).toBe(429)
      expect(JSON.parse(refused.body)["violated-policies"]).toEqual(["per-ip"])
      const state = yield* limiter.state("per-ip", { key: "ip:127.0.0.1" })
      expect(Number(refused.headers.get("retry-after"))).toBe(Math.ceil(Duration.toMillis(state.nextSlotAfter) / 1000))
      // The lease went back when the first report's response was sent.
      let held = yield* limiter.state("reports", { key: "ip:127.0.0.1" })
      for (let i = 0; i < 100 && held.leasesHeld !== 0; i++) {
        yield* Effect.sleep(Duration.millis(20))
        held = yield* limiter.state("reports", { key: "ip:127.0.0.1" })
      }
      expect(held.leasesHeld).toBe(0)

      const free = yield* get(`${base}/free`)
      expect(free.status).toBe(200)
      expect(free.headers.get("ratelimit")).toBeNull()
    })))
})

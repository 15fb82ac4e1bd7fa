/**
 * `rate-sync/http` over real HTTP: an `@effect/platform-node` server on a loopback port, hit with
 * `fetch`, on the memory store and PostgreSQL (and Redis when one answers). Header values are checked
 * against the limiter's own `state`.
 */
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServer from "@effect/platform/HttpServer"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { describe, expect, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { createServer } from "node:http"
import { inject } from "vitest"
import { RateLimiter } from "../src/RateLimiter.js"
import * as RateSync from "../src/RateSync.js"
import type { LimiterConfigInput, StoreConfigInput } from "../src/Settings.js"
import * as Stores from "../src/Stores.js"
import { HttpRateLimit } from "../src/http/index.js"

type App =
  | HttpRouter.HttpRouter<unknown, RateLimiter>
  | Effect.Effect<HttpServerResponse.HttpServerResponse, unknown, HttpServerRequest.HttpServerRequest | Scope.Scope | RateLimiter>

let counter = 0
/** Limiter names of their own per test and run: PostgreSQL's table and Redis outlive a run. */
const unique = (name: string) => `${name}_${process.pid}_${Date.now().toString(36)}_${counter++}`

/**
 * Starts the limiters on `store` and the app `build` makes on a loopback port; both stop when the
 * test's scope closes.
 */
const start = (
  store: StoreConfigInput,
  limiters: Record<string, Omit<LimiterConfigInput, "store">>,
  build: Effect.Effect<App, unknown, RateLimiter>,
  host = "127.0.0.1"
) =>
  Effect.gen(function*() {
    const context = yield* Layer.build(Layer.merge(
      RateSync.layer({
        stores: { s: store },
        limiters: Object.fromEntries(Object.entries(limiters).map(([name, config]) => [name, { ...config, store: "s" }]))
      }).pipe(Layer.provide(Stores.layer)),
      NodeHttpServer.layer(() => createServer(), { port: 0, host })
    ))
    const app = yield* Effect.provide(build, context)
    yield* HttpServer.serveEffect(app).pipe(Effect.provide(context))
    const address = Context.get(context, HttpServer.HttpServer).address
    if (address._tag !== "TcpAddress") throw new Error("not a TCP server")
    const base = host.includes(":") ? `http://[${host}]:${address.port}` : `http://${host}:${address.port}`
    return { base, limiter: Context.get(context, RateLimiter) }
  })

interface Reply {
  readonly status: number
  readonly headers: Headers
  readonly body: string
}

const get = (url: string, headers: Record<string, string> = {}, signal?: AbortSignal) =>
  Effect.promise(async (): Promise<Reply> => {
    // No keep-alive: an idle pooled connection would hold the server's close for seconds.
    const response = await fetch(url, { headers: { connection: "close", ...headers }, signal: signal ?? null })
    return { status: response.status, headers: response.headers, body: await response.text() }
  })

/** `"name";r=2;t=10, ...` as { name: { r, t } }. */
const items = (value: string | null): Record<string, Record<string, number>> =>
  Object.fromEntries((value ?? "").split(",").filter((item) => item.trim() !== "").map((item) => {
    const [name, ...params] = item.trim().split(";")
    return [JSON.parse(name!), Object.fromEntries(params.map((p) => [p.split("=")[0]!, Number(p.split("=")[1])]))]
  }))

const ok = HttpServerResponse.text("ok")

/** Until `check` holds, polled for up to 3 s (a lease is released when the request's scope closes, just after the response). */
const eventually = <E, R>(check: Effect.Effect<boolean, E, R>) =>
  Effect.gen(function*() {
    for (let i = 0; i < 60; i++) {
      if (yield* check) return true
      yield* Effect.sleep(Duration.millis(50))
    }
    return false
  })

const engines: Array<{ name: string; store: () => StoreConfigInput; skip?: boolean }> = [
  { name: "memory", store: () => ({ engine: "memory" }) },
  {
    name: "postgres",
    store: () => ({ engine: "postgres", url: inject("databaseUrl"), auto_create: true, pool_min_size: 0, pool_max_size: 4 })
  },
  {
    name: "redis",
    store: () => ({ engine: "redis", url: inject("redisUrl"), key_prefix: `rate-sync-http-test:${process.pid}:` }),
    skip: inject("redisUrl") === ""
  }
]

describe.each(engines)("HttpRateLimit on $name", ({ skip, store }) => {
  const test = skip === true ? it.live.skip : it.live

  // 0.1/s with bursts of 3: one unit per 10 s, so nothing refills while a test runs.
  const slow = { rate_per_second: 0.1, burst: 3 }

  test("per IP: headers agree with state, then 429 problem+json with Retry-After", () =>
    Effect.scoped(Effect.gen(function*() {
      const name = unique("ip")
      const { base, limiter } = yield* start(store(), { [name]: slow }, Effect.gen(function*() {
        const limit = yield* HttpRateLimit.make({ limiters: name })
        return HttpRouter.empty.pipe(HttpRouter.get("/", ok), HttpRouter.use(limit))
      }))
      for (const expected of [2, 1, 0]) {
        const reply = yield* get(`${base}/`)
        expect(reply.status).toBe(200)
        expect(reply.headers.get("ratelimit-policy")).toBe(`"${name}";q=3;w=30`)
        const state = yield* limiter.state(name, { key: "ip:127.0.0.1" })
        const item = items(reply.headers.get("ratelimit"))[name]!
        expect(item["r"]).toBe(expected)
        expect(state.remaining).toBe(expected)
        // Time until the next unit comes back, from the state: the debt beyond the units still owed.
        const nextMs = Duration.toMillis(state.resetAfter) - (3 - expected - 1) * 10_000
        expect(item["t"]).toBe(Math.ceil(nextMs / 1000))
      }
      const refused = yield* get(`${base}/`)
      expect(refused.status).toBe(429)
      expect(refused.headers.get("content-type")).toBe("application/problem+json")
      const body = JSON.parse(refused.body)
      expect(body.type).toBe("https://iana.org/assignments/http-problem-types#quota-exceeded")
      expect(body["violated-policies"]).toEqual([name])
      const state = yield* limiter.state(name, { key: "ip:127.0.0.1" })
      const retryAfter = Number(refused.headers.get("retry-after"))
      expect(retryAfter).toBe(Math.ceil(Duration.toMillis(state.nextSlotAfter) / 1000))
      expect(items(refused.headers.get("ratelimit"))[name]).toEqual({ r: 0, t: retryAfter })
    })))

  test("a spoofed X-Forwarded-For from an untrusted peer is ignored", () =>
    Effect.scoped(Effect.gen(function*() {
      const name = unique("spoof")
      const { base, limiter } = yield* start(store(), { [name]: slow }, Effect.gen(function*() {
        // Only 10.0.0.0/8 is a proxy: the loopback peer is not, so its header is not believed.
        const limit = yield* HttpRateLimit.make({ limiters: name, clientAddress: { trustedProxies: ["10.0.0.0/8"] } })
        return HttpRouter.empty.pipe(HttpRouter.get("/", ok), HttpRouter.use(limit))
      }))
      const statuses: Array<number> = []
      for (let i = 0; i < 5; i++) statuses.push((yield* get(`${base}/`, { "x-forwarded-for": `198.51.100.${i}` })).status)
      expect(statuses).toEqual([200, 200, 200, 429, 429])
      expect((yield* limiter.state(name, { key: "ip:127.0.0.1" })).remaining).toBe(0)
      expect((yield* limiter.state(name, { key: "ip:198.51.100.0" })).remaining).toBe(3)
    })))

  test("behind a trusted proxy: per forwarded client, IPv6 grouped by /56", () =>
    Effect.scoped(Effect.gen(function*() {
      const name = unique("proxy")
      const { base, limiter } = yield* start(store(), { [name]: slow }, Effect.gen(function*() {
        const limit = yield* HttpRateLimit.make({ limiters: name, clientAddress: { trustedProxies: ["loopback"] } })
        return HttpRouter.empty.pipe(HttpRouter.get("/", ok), HttpRouter.use(limit))
      }))
      // The client's own header is kept by the proxy on the left; the proxy's entry (rightmost) counts.
      const via = (client: string) => get(`${base}/`, { "x-forwarded-for": `6.6.6.6, ${client}` })
      expect((yield* via("203.0.113.7")).status).toBe(200)
      expect((yield* via("203.0.113.8")).status).toBe(200)
      // Three addresses of one /56, then a fourth of it is refused; the next /56 is not.
      const sameSubnet = ["2001:db8:aa:bb01::1", "2001:db8:aa:bbff:1:2:3:4", "2001:db8:aa:bb00::9", "2001:db8:aa:bb77::"]
      const statuses: Array<number> = []
      for (const client of sameSubnet) statuses.push((yield* via(client)).status)
      expect(statuses).toEqual([200, 200, 200, 429])
      expect((yield* via("2001:db8:aa:bc00::1")).status).toBe(200)
      expect((yield* limiter.state(name, { key: "ip:2001:db8:aa:bb00::/56" })).remaining).toBe(0)
      expect((yield* limiter.state(name, { key: "ip:203.0.113.7" })).remaining).toBe(2)
      expect((yield* limiter.state(name, { key: "ip:127.0.0.1" })).remaining).toBe(3)
    })))

  test("per key, with a cost, several limiters at once, skip", () =>
    Effect.scoped(Effect.gen(function*() {
      const perKey = unique("key")
      const global = unique("global")
      const { base, limiter } = yield* start(store(), { [perKey]: { rate_per_second: 0.1, burst: 4 }, [global]: { algorithm: "sliding_window", limit: 10, window_seconds: 60 } }, Effect.gen(function*() {
        const limit = yield* HttpRateLimit.make({
          limiters: [perKey, global],
          key: (request) => Effect.succeed(request.headers["x-api-key"] ?? "anonymous"),
          cost: (request) => Effect.succeed(request.url.startsWith("/expensive") ? 2 : 1),
          skip: (request) => request.url === "/health"
        })
        return HttpRouter.empty.pipe(
          HttpRouter.get("/", ok),
          HttpRouter.get("/expensive", ok),
          HttpRouter.get("/health", ok),
          HttpRouter.use(limit)
        )
      }))
      const a = yield* get(`${base}/expensive`, { "x-api-key": "a" })
      expect(items(a.headers.get("ratelimit"))).toEqual({ [perKey]: { r: 2, t: 10 }, [global]: { r: 8, t: 60 } })
      expect(a.headers.get("ratelimit-policy")).toBe(`"${perKey}";q=4;w=40, "${global}";q=10;w=60`)
      expect((yield* get(`${base}/expensive`, { "x-api-key": "a" })).status).toBe(200)
      const refused = yield* get(`${base}/`, { "x-api-key": "a" })
      expect(refused.status).toBe(429)
      expect(JSON.parse(refused.body)["violated-policies"]).toEqual([perKey])
      // Another key has its own per-key limit.
      expect(items((yield* get(`${base}/`, { "x-api-key": "b" })).headers.get("ratelimit"))[perKey]!["r"]).toBe(3)
      expect((yield* limiter.state(perKey, { key: "a" })).remaining).toBe(0)
      expect((yield* limiter.state(global, { key: "a" })).remaining).toBe(6)
      for (let i = 0; i < 5; i++) {
        const health = yield* get(`${base}/health`, { "x-api-key": "a" })
        expect(health.status).toBe(200)
        expect(health.headers.get("ratelimit")).toBeNull()
      }
    })))

  test("a concurrency lease is held for the handler and released when it fails or the client aborts", () =>
    Effect.scoped(Effect.gen(function*() {
      const name = unique("conc")
      const entered = yield* Deferred.make<void>()
      const gate = yield* Deferred.make<void>()
      const streamGate = yield* Deferred.make<void>()
      const { base, limiter } = yield* start(store(), { [name]: { max_concurrent: 1, lease_ttl_seconds: 60 } }, Effect.gen(function*() {
        const limit = yield* HttpRateLimit.make({ limiters: name })
        return HttpRouter.empty.pipe(
          HttpRouter.get("/wait", Effect.zipRight(Deferred.succeed(entered, undefined), Effect.as(Deferred.await(gate), HttpServerResponse.text("done")))),
          HttpRouter.get("/fail", Effect.fail("boom")),
          HttpRouter.get("/die", Effect.die("boom")),
          HttpRouter.get("/hang", Effect.zipRight(Deferred.succeed(entered, undefined), Effect.never)),
          // The handler returns at once; its body streams until the gate opens.
          HttpRouter.get("/stream", Effect.succeed(HttpServerResponse.stream(Stream.concat(Stream.make(new TextEncoder().encode("first ")), Stream.fromEffect(Effect.as(Deferred.await(streamGate), new TextEncoder().encode("last"))))))),
          HttpRouter.get("/", ok),
          HttpRouter.use(limit)
        )
      }))
      const held = (n: number) => Effect.map(limiter.state(name, { key: "ip:127.0.0.1" }), (state) => state.leasesHeld === n)
      // Whatever happens, the gates open before the server closes (it waits for the requests in flight).
      yield* Effect.addFinalizer(() => Effect.all([Deferred.succeed(gate, undefined), Deferred.succeed(streamGate, undefined)]))

      // Held while the handler runs: a second request is refused as concurrent.
      const first = yield* Effect.fork(get(`${base}/wait`))
      yield* Deferred.await(entered)
      const second = yield* get(`${base}/`)
      expect(second.status).toBe(429)
      expect(second.headers.get("ratelimit-policy")).toBe(`"${name}";q=1;qu="concurrent-requests"`)
      // A lease comes back when a request in flight ends: no `t`, and the shortest Retry-After.
      expect(second.headers.get("ratelimit")).toBe(`"${name}";r=0`)
      expect(second.headers.get("retry-after")).toBe("1")
      yield* Deferred.succeed(gate, undefined)
      expect((yield* first).status).toBe(200)
      expect(yield* eventually(held(0))).toBe(true)

      // A streamed body holds the lease until its last byte, long after the handler returned.
      const streaming = yield* Effect.fork(get(`${base}/stream`))
      expect(yield* eventually(held(1))).toBe(true)
      expect((yield* get(`${base}/`)).status).toBe(429)
      yield* Deferred.succeed(streamGate, undefined)
      expect((yield* streaming).body).toBe("first last")
      expect(yield* eventually(held(0))).toBe(true)

      // A failing and a dying handler give their lease back.
      expect((yield* get(`${base}/fail`)).status).toBe(500)
      expect(yield* eventually(held(0))).toBe(true)
      expect((yield* get(`${base}/die`)).status).toBe(500)
      expect(yield* eventually(held(0))).toBe(true)
      expect((yield* get(`${base}/`)).status).toBe(200)

      // A client that goes away mid-request: the handler is interrupted and the lease released.
      const abort = new AbortController()
      const hanging = yield* Effect.fork(Effect.either(Effect.tryPromise(() => fetch(`${base}/hang`, { headers: { connection: "close" }, signal: abort.signal }))))
      expect(yield* eventually(held(1))).toBe(true)
      abort.abort()
      expect(Either.isLeft(yield* hanging)).toBe(true)
      expect(yield* eventually(held(0))).toBe(true)
      expect((yield* get(`${base}/`)).status).toBe(200)
    })))
})

describe("HttpRateLimit headers and setup", () => {
  it.live("draft-7 and legacy headers, and the user's own refusal response", () =>
    Effect.scoped(Effect.gen(function*() {
      const name = unique("legacy")
      const { base } = yield* start({ engine: "memory" }, { [name]: { rate_per_second: 0.1, burst: 2 } }, Effect.gen(function*() {
        const limit = yield* HttpRateLimit.make({
          limiters: name,
          headers: "draft-7",
          legacyHeaders: true,
          onRefused: (refusal) => Effect.succeed(HttpServerResponse.text(`slow down, ${refusal.key}`, { status: 429 }))
        })
        return HttpRouter.empty.pipe(HttpRouter.get("/", ok), HttpRouter.use(limit))
      }))
      const first = yield* get(`${base}/`)
      expect(first.headers.get("ratelimit")).toBe("limit=2, remaining=1, reset=10")
      expect(first.headers.get("ratelimit-policy")).toBe("2;w=20")
      expect(first.headers.get("x-ratelimit-limit")).toBe("2")
      expect(first.headers.get("x-ratelimit-remaining")).toBe("1")
      const reset = Number(first.headers.get("x-ratelimit-reset")) - Date.now() / 1000
      expect(reset).toBeGreaterThan(8)
      expect(reset).toBeLessThan(12)
      yield* get(`${base}/`)
      const refused = yield* get(`${base}/`)
      expect(refused.status).toBe(429)
      expect(refused.body).toBe("slow down, ip:127.0.0.1")
      expect(refused.headers.get("retry-after")).toBe("10")
      expect(refused.headers.get("x-ratelimit-remaining")).toBe("0")
    })))

  it.live("a store that is down: admitted with the degraded header (fail_closed = false), or failed (true)", () =>
    Effect.scoped(Effect.gen(function*() {
      // Nothing listens on port 1: every store call is refused, an outage.
      const down: StoreConfigInput = { engine: "redis", url: "redis://127.0.0.1:1", connect_timeout_ms: 1000 }
      const open = unique("open")
      const closed = unique("closed")
      const { base } = yield* start(down, { [open]: { rate_per_second: 1, fail_closed: false }, [closed]: { rate_per_second: 1, fail_closed: true } }, Effect.gen(function*() {
        const openLimit = yield* HttpRateLimit.make({ limiters: open })
        const closedLimit = yield* HttpRateLimit.make({ limiters: closed })
        return HttpRouter.empty.pipe(HttpRouter.get("/open", ok.pipe(openLimit)), HttpRouter.get("/closed", ok.pipe(closedLimit)))
      }))
      const admitted = yield* get(`${base}/open`)
      expect(admitted.status).toBe(200)
      expect(admitted.headers.get("ratelimit-degraded")).toBe(`"${open}"`)
      expect(admitted.headers.get("ratelimit")).toBeNull()
      expect((yield* get(`${base}/closed`)).status).toBe(500)
    }).pipe(Logger.withMinimumLogLevel(LogLevel.None))))

  it.live("middleware(): no setup step; a mistake in its options fails each request with the typed error", () =>
    Effect.scoped(Effect.gen(function*() {
      const name = unique("sync")
      const { base } = yield* start({ engine: "memory" }, { [name]: { rate_per_second: 0.1, burst: 1 } }, Effect.succeed(
        HttpRouter.empty.pipe(
          HttpRouter.get("/", ok),
          HttpRouter.use(HttpRateLimit.middleware({ limiters: name })),
          HttpRouter.mountApp(
            "/wrong",
            HttpRouter.empty.pipe(
              HttpRouter.get("/", ok),
              HttpRouter.use(HttpRateLimit.middleware({ limiters: name, clientAddress: { trustedProxies: ["0.0.0.0/0"] } })),
              HttpRouter.catchTag("HttpRateLimitConfigError", (error) => HttpServerResponse.text(error.reason, { status: 500 }))
            )
          )
        )
      ))
      expect((yield* get(`${base}/`)).status).toBe(200)
      expect((yield* get(`${base}/`)).status).toBe(429)
      const wrong = yield* get(`${base}/wrong/`)
      expect([wrong.status, wrong.body]).toEqual([500, "PermissiveTrustedProxy"])
    })))

  it.live("over IPv6 loopback the key is the peer's /56", () =>
    Effect.scoped(Effect.gen(function*() {
      const name = unique("v6")
      const { base, limiter } = yield* start({ engine: "memory" }, { [name]: { rate_per_second: 0.1, burst: 2 } }, Effect.gen(function*() {
        const limit = yield* HttpRateLimit.make({ limiters: name })
        return HttpRouter.empty.pipe(HttpRouter.get("/", ok), HttpRouter.use(limit))
      }), "::1")
      expect((yield* get(`${base}/`)).status).toBe(200)
      expect((yield* limiter.state(name, { key: "ip:::/56" })).remaining).toBe(1)
    })))

  it.effect("an inconsistent setup is a typed error when the middleware is made", () =>
    Effect.gen(function*() {
      const reasons = yield* Effect.forEach([
        { trustedProxies: ["0.0.0.0/0"] },
        { trustedProxies: ["::/0"] },
        { trustedProxies: ["proxy.internal"] },
        { forwardedHeader: "forwarded" as const },
        { ipv6Prefix: 0 },
        { ipv6Prefix: 129 }
      ], (clientAddress) =>
        Effect.flip(HttpRateLimit.make({ limiters: "api", clientAddress })).pipe(Effect.map((error) => error._tag === "HttpRateLimitConfigError" ? error.reason : error._tag)))
      expect(reasons).toEqual([
        "PermissiveTrustedProxy",
        "PermissiveTrustedProxy",
        "InvalidTrustedProxy",
        "HeaderWithoutTrustedProxy",
        "InvalidIpv6Prefix",
        "InvalidIpv6Prefix"
      ])
      const unknown = yield* Effect.flip(HttpRateLimit.make({ limiters: ["api", "nope"] }))
      expect(unknown._tag).toBe("LimiterNotFound")
    }).pipe(Effect.provide(RateSync.layer({ stores: { m: { engine: "memory" } }, limiters: { api: { store: "m", rate_per_second: 1 } } }).pipe(Layer.provide(Stores.layer)))))
})

/**
 * The framework stores under their real frameworks: express-rate-limit (express 5), hono-rate-limiter
 * (hono on @hono/node-server), @fastify/rate-limit (fastify 5) and @nestjs/throttler (NestJS 11 on
 * express), each started on a loopback port and hit with `fetch`, on every engine: the limit per client
 * address and per key, 429 with `Retry-After`, the headers each framework sends against the limiter's
 * `state`, and setups the limiter cannot answer honestly refused by name. The examples, as processes of
 * their own, are frameworksExamples.test.ts.
 */
import "reflect-metadata"
import rateLimitFastify from "@fastify/rate-limit"
import { serve as serveHono } from "@hono/node-server"
import { getConnInfo } from "@hono/node-server/conninfo"
import { Controller, Get, Module } from "@nestjs/common"
import { APP_GUARD, NestFactory } from "@nestjs/core"
import { ThrottlerGuard, ThrottlerModule } from "@nestjs/throttler"
import express from "express"
import { ipKeyGenerator, rateLimit } from "express-rate-limit"
import Fastify from "fastify"
import { Hono } from "hono"
import { rateLimiter } from "hono-rate-limiter"
import { createHash } from "node:crypto"
import { readdirSync, readFileSync } from "node:fs"
import type { Server } from "node:http"
import type { AddressInfo } from "node:net"
import { join } from "node:path"
import * as FastCheck from "effect/FastCheck"
import { Agent } from "undici"
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest"
import { RateSyncStore as ExpressStore, Unsupported } from "../src/frameworks/express.js"
import { rateSyncStore as fastifyStore } from "../src/frameworks/fastify.js"
import { RateSyncStore as HonoStore } from "../src/frameworks/hono.js"
import { RateSyncThrottlerStorage } from "../src/frameworks/nest.js"
import * as RateSync from "../src/promise.js"
import type { LimiterConfigInput } from "../src/Settings.js"

const databaseUrl = inject("databaseUrl")
const redisUrl = inject("redisUrl")
type Engine = "memory" | "postgres" | "redis"
const engines: ReadonlyArray<Engine> = ["memory", "postgres", ...(redisUrl === "" ? [] : ["redis" as const])]

/** 3 at once, then one every 2 s: a client's remaining count cannot move while a test reads it. */
const BURST = 3
const RATE = 0.5
const WINDOW_MS = (BURST / RATE) * 1000

const table = `frameworks_${process.pid}`
const storeOf: Record<Engine, string> = { memory: "mem", postgres: "pg", redis: "redis" }

let limiters = 0
/** A limiter of its own for each test, on the engine's store. */
const limiterOn = async (
  engine: Engine,
  config: Omit<LimiterConfigInput, "store"> = { rate_per_second: RATE, burst: BURST }
): Promise<string> => {
  const name = `fw_${engine}_${limiters++}`
  await RateSync.configureLimiter(name, { store: storeOf[engine], ...config })
  return name
}

beforeAll(async () => {
  await RateSync.configureStore("mem", { engine: "memory" })
  await RateSync.configureStore("pg", { engine: "postgres", url: databaseUrl, table_name: table, auto_create: true })
  if (redisUrl !== "") await RateSync.configureStore("redis", { engine: "redis", url: redisUrl, key_prefix: `rate-sync-fw:${process.pid}:` })
})

afterAll(() => RateSync.close())

/** Requests from another loopback address: another client for every framework's default key. */
const otherClient = new Agent({ localAddress: "127.0.0.2" })
afterAll(() => otherClient.close())
/** `fetch` from 127.0.0.2 (undici's own Agent: Node's fetch takes it, its types name another copy of undici). */
const fromOther = (url: string, init: RequestInit = {}) => fetch(url, { ...init, dispatcher: otherClient } as unknown as RequestInit)

interface Running {
  readonly url: string
  readonly close: () => Promise<void>
}

/** What a response's rate-limit headers say, in each framework's own format. */
interface Headers {
  readonly limit: number | undefined
  readonly remaining: number | undefined
  /** Seconds until the client's quota is full again. */
  readonly reset: number | undefined
  readonly retryAfter: number | undefined
}

const num = (value: string | null | undefined): number | undefined => value == null ? undefined : Number(value)

interface Framework {
  readonly name: string
  /** Serves GET /hello, limited by `limiter` (the framework's limit is `limit`), keyed by client address or `x-api-key`. */
  readonly start: (limiter: string, limit?: number) => Promise<Running>
  readonly headers: (response: Response) => Headers
  /** The limiter key the framework's middleware counts a client address under. */
  readonly key: (address: string) => string
}

const closeServer = (server: Server) =>
  new Promise<void>((resolve) => {
    server.closeAllConnections()
    server.close(() => resolve())
  })

const listening = async (server: Server): Promise<Running> => {
  if (!server.listening) await new Promise<void>((resolve) => server.once("listening", resolve))
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, close: () => closeServer(server) }
}

const byAddressOrApiKey = (address: string | undefined, apiKey: string | undefined) =>
  apiKey === undefined ? address ?? "unknown" : `key:${apiKey}`

const expressFramework: Framework = {
  name: "express-rate-limit",
  start: (limiter, limit = BURST) => {
    const app = express()
    app.use(rateLimit({
      limit,
      windowMs: WINDOW_MS,
      standardHeaders: "draft-8",
      legacyHeaders: true,
      identifier: "api",
      keyGenerator: (req) => byAddressOrApiKey(req.ip === undefined ? undefined : ipKeyGenerator(req.ip), req.get("x-api-key")),
      // The spoofing test sends X-Forwarded-For on purpose (trust proxy is off: it is ignored).
      validate: { xForwardedForHeader: false },
      store: new ExpressStore({ limiter })
    }))
    app.get("/hello", (_req, res) => {
      res.send("hello")
    })
    return listening(app.listen(0, "127.0.0.1"))
  },
  headers: (response) => {
    // draft-8: RateLimit: "api"; r=2; t=4, and the legacy X-RateLimit-* beside it.
    const draft8 = /"api"; r=(\d+); t=(\d+)/.exec(response.headers.get("ratelimit") ?? "")
    const policy = /"api"; q=(\d+); w=(\d+)/.exec(response.headers.get("ratelimit-policy") ?? "")
    expect(num(response.headers.get("x-ratelimit-remaining"))).toBe(num(draft8?.[1]))
    expect(num(policy?.[2])).toBe(WINDOW_MS / 1000)
    return {
      limit: num(policy?.[1]),
      remaining: num(draft8?.[1]),
      reset: num(draft8?.[2]),
      retryAfter: num(response.headers.get("retry-after"))
    }
  },
  key: (address) => address
}

const honoFramework: Framework = {
  name: "hono-rate-limiter",
  start: (limiter, limit = BURST) => {
    const app = new Hono()
    app.use(rateLimiter({
      limit,
      windowMs: WINDOW_MS,
      standardHeaders: "draft-7",
      keyGenerator: (c) => byAddressOrApiKey(getConnInfo(c).remote.address, c.req.header("x-api-key")),
      store: new HonoStore({ limiter })
    }))
    app.get("/hello", (c) => c.text("hello"))
    app.onError((error, c) => c.text(error.message, 500))
    return listening(serveHono({ fetch: app.fetch, hostname: "127.0.0.1", port: 0 }) as Server)
  },
  headers: (response) => {
    // draft-7: RateLimit: limit=3, remaining=2, reset=4
    const draft7 = /limit=(\d+), remaining=(\d+), reset=(\d+)/.exec(response.headers.get("ratelimit") ?? "")
    return {
      limit: num(draft7?.[1]),
      remaining: num(draft7?.[2]),
      reset: num(draft7?.[3]),
      retryAfter: num(response.headers.get("retry-after"))
    }
  },
  key: (address) => address
}

const fastifyFramework: Framework = {
  name: "@fastify/rate-limit",
  start: async (limiter, limit = BURST) => {
    const app = Fastify()
    await app.register(rateLimitFastify, {
      max: limit,
      timeWindow: WINDOW_MS,
      keyGenerator: (req) => byAddressOrApiKey(req.ip, req.headers["x-api-key"] as string | undefined),
      store: fastifyStore({ limiter })
    })
    app.get("/hello", () => "hello")
    await app.listen({ host: "127.0.0.1", port: 0 })
    return { url: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`, close: () => app.close() }
  },
  headers: (response) => ({
    limit: num(response.headers.get("x-ratelimit-limit")),
    remaining: num(response.headers.get("x-ratelimit-remaining")),
    reset: num(response.headers.get("x-ratelimit-reset")),
    retryAfter: num(response.headers.get("retry-after"))
  }),
  key: (address) => address
}

/** A Nest app with one route, decorated by plain calls (the project compiles without experimentalDecorators). */
const nestApp = (limiter: string, limit: number) => {
  class HelloController {
    hello(): string {
      return "hello"
    }
  }
  Get("hello")(HelloController.prototype, "hello", Object.getOwnPropertyDescriptor(HelloController.prototype, "hello")!)
  Controller()(HelloController)
  class AppModule {}
  Module({
    imports: [ThrottlerModule.forRoot({
      throttlers: [{ ttl: WINDOW_MS, limit }],
      getTracker: (req) => byAddressOrApiKey(req["ip"], req["headers"]["x-api-key"]),
      storage: new RateSyncThrottlerStorage({ limiter })
    })],
    controllers: [HelloController],
    providers: [{ provide: APP_GUARD, useClass: ThrottlerGuard }]
  })(AppModule)
  return AppModule
}

const nestFramework: Framework = {
  name: "@nestjs/throttler",
  start: async (limiter, limit = BURST) => {
    const app = await NestFactory.create(nestApp(limiter, limit), { logger: false })
    await app.listen(0, "127.0.0.1")
    return { url: `http://127.0.0.1:${((app.getHttpServer() as Server).address() as AddressInfo).port}`, close: () => app.close() }
  },
  headers: (response) => ({
    limit: num(response.headers.get("x-ratelimit-limit")),
    remaining: num(response.headers.get("x-ratelimit-remaining")),
    reset: num(response.headers.get("x-ratelimit-reset")),
    retryAfter: num(response.headers.get("retry-after"))
  }),
  // The guard's own key: a digest of the controller, the handler, the throttler's name and the tracker.
  key: (address) => createHash("sha256").update(`HelloController-hello-default-${address}`).digest("hex")
}

/**
 * A header's whole seconds against a duration the limiter's state gave a moment later: the same
 * ceiling, or one more when the duration crossed a whole second in between (a sliding window's reset
 * includes the store's timing margin, so it rarely falls on one; a slow machine can cross one anywhere).
 */
const expectSeconds = (header: number | undefined, laterMs: number) => {
  expect(header).toBeGreaterThanOrEqual(Math.ceil(laterMs / 1000))
  expect(header).toBeLessThanOrEqual(Math.ceil(laterMs / 1000) + 1)
}

const frameworks = [expressFramework, honoFramework, fastifyFramework, nestFramework]

const using = async <A>(running: Promise<Running>, use: (url: string) => Promise<A>): Promise<A> => {
  const server = await running
  try {
    return await use(server.url)
  } finally {
    await server.close()
  }
}

describe.each(frameworks)("$name", (framework) => {
  describe.each(engines)("on %s", (engine) => {
    it("admits the burst per client address, then 429 with Retry-After; every header agrees with the limiter's state", async () => {
      const limiter = await limiterOn(engine)
      await using(framework.start(limiter), async (url) => {
        const key = framework.key("127.0.0.1")
        for (let i = 1; i <= BURST; i++) {
          const response = await fetch(`${url}/hello`)
          expect(response.status).toBe(200)
          expect(await response.text()).toBe("hello")
          const headers = framework.headers(response)
          const state = await RateSync.state(limiter, { key })
          expect(headers.limit).toBe(BURST)
          expect(headers.remaining).toBe(BURST - i)
          expect(state.remaining).toBe(headers.remaining)
          // The quota is full again once the units in use have come back: i of them, one per 2 s.
          expectSeconds(headers.reset, state.resetAfter)
          expect(headers.reset).toBeLessThanOrEqual(i / RATE)
          expect(headers.reset).toBeGreaterThanOrEqual(i / RATE - 1)
        }
        const refused = await fetch(`${url}/hello`)
        expect(refused.status).toBe(429)
        const headers = framework.headers(refused)
        const state = await RateSync.state(limiter, { key })
        expect(state.remaining).toBe(0)
        // Retry-After is the limiter's own wait for its next unit: under 2 s at 0.5 per second.
        expectSeconds(headers.retryAfter, state.nextSlotAfter)
        expect(headers.retryAfter).toBeGreaterThanOrEqual(1)
        expect(headers.retryAfter).toBeLessThanOrEqual(1 / RATE)
        // A refusal takes nothing: the state is as the last admission left it.
        expect(state.resetAfter).toBeGreaterThan((BURST - 1) / RATE * 1000)

        // Another client address has its own limit.
        const other = await fromOther(`${url}/hello`)
        expect(other.status).toBe(200)
        expect(framework.headers(other).remaining).toBe(BURST - 1)
        expect((await RateSync.state(limiter, { key: framework.key("127.0.0.2") })).remaining).toBe(BURST - 1)
      })
    })

    it("on a sliding window: the window's limit, reset when the newest unit leaves the window, Retry-After when the oldest does", async () => {
      const limiter = await limiterOn(engine, { algorithm: "sliding_window", limit: BURST, window_seconds: WINDOW_MS / 1000 })
      await using(framework.start(limiter), async (url) => {
        const key = framework.key("127.0.0.1")
        for (let i = 1; i <= BURST; i++) {
          const response = await fetch(`${url}/hello`)
          expect(response.status).toBe(200)
          const headers = framework.headers(response)
          const state = await RateSync.state(limiter, { key })
          expect(headers.limit).toBe(BURST)
          expect(headers.remaining).toBe(BURST - i)
          expect(state.remaining).toBe(headers.remaining)
          expectSeconds(headers.reset, state.resetAfter)
        }
        const refused = await fetch(`${url}/hello`)
        expect(refused.status).toBe(429)
        const state = await RateSync.state(limiter, { key })
        const retryAfter = framework.headers(refused).retryAfter!
        expectSeconds(retryAfter, state.nextSlotAfter)
        // The first unit leaves the window about 6 s after it came in (plus the store's timing margin).
        expect(retryAfter).toBeGreaterThanOrEqual(WINDOW_MS / 1000 - 1)
        expect(retryAfter).toBeLessThanOrEqual(WINDOW_MS / 1000 + 1)
      })
    })

    it("limits per key (x-api-key), whatever address sends it, and keys apart from each other", async () => {
      const limiter = await limiterOn(engine)
      await using(framework.start(limiter), async (url) => {
        const statuses: Array<number> = []
        for (let i = 0; i < BURST + 1; i++) {
          const init = { headers: { "x-api-key": "alice" } }
          const response = await (i % 2 === 0 ? fetch(`${url}/hello`, init) : fromOther(`${url}/hello`, init))
          statuses.push(response.status)
        }
        expect(statuses).toEqual([...Array(BURST).fill(200), 429])
        expect((await fetch(`${url}/hello`, { headers: { "x-api-key": "bob" } })).status).toBe(200)
        expect((await fetch(`${url}/hello`)).status).toBe(200)
      })
    })

    it("a spoofed X-Forwarded-For from the (untrusted) peer changes nothing: the limit is the peer's", async () => {
      const limiter = await limiterOn(engine)
      await using(framework.start(limiter), async (url) => {
        const statuses: Array<number> = []
        for (let i = 0; i < BURST + 1; i++) {
          statuses.push((await fetch(`${url}/hello`, { headers: { "x-forwarded-for": `203.0.113.${i}` } })).status)
        }
        expect(statuses).toEqual([...Array(BURST).fill(200), 429])
      })
    })

    it("two servers, each with its own store instance, share one limit", async () => {
      const limiter = await limiterOn(engine)
      await using(framework.start(limiter), (first) =>
        using(framework.start(limiter), async (second) => {
          const statuses: Array<number> = []
          for (let i = 0; i < 2 * BURST; i++) statuses.push((await fetch(`${i % 2 === 0 ? first : second}/hello`)).status)
          expect(statuses).toEqual([...Array(BURST).fill(200), ...Array(BURST).fill(429)])
        }))
    })

    it("a framework limit other than the limiter's burst fails the request with LimitMismatch, naming both", async () => {
      const limiter = await limiterOn(engine)
      await using(framework.start(limiter, BURST + 2), async (url) => {
        const response = await fetch(`${url}/hello`)
        expect(response.status).toBe(500)
      })
      // The same check, read where it is made.
      const store = new ExpressStore({ limiter })
      store.init({ limit: BURST + 2 })
      const mismatch = await store.increment("direct").then(() => undefined, (e: unknown) => e)
      expect(mismatch).toMatchObject({ _tag: "LimitMismatch", limiter, expected: BURST + 2, limit: BURST })
      expect(String(mismatch)).toContain(`set it to ${BURST}`)
    })
  })
})

describe("the count answered agrees with the limiter's decision, whatever its burst", () => {
  it("express/hono store and Nest storage: the k-th admission counts k; a refusal counts limit + 1, retry when the limiter says", async () => {
    await FastCheck.assert(
      FastCheck.asyncProperty(
        FastCheck.integer({ min: 1, max: 30 }),
        FastCheck.integer({ min: 0, max: 10 }),
        FastCheck.double({ min: 0.05, max: 1, noNaN: true }),
        async (burst, extra, rate) => {
          // Hits come within milliseconds: at 1 per second or slower, no unit comes back meanwhile.
          const limiter = await limiterOn("memory", { rate_per_second: rate, burst })
          const store = new ExpressStore({ limiter })
          store.init({ limit: burst })
          const storage = new RateSyncThrottlerStorage({ limiter })
          for (let k = 1; k <= burst + extra; k++) {
            let totalHits: number
            let refused: boolean
            let retrySeconds: number | undefined
            if (k % 2 === 1) {
              const answer = await store.increment("client")
              totalHits = answer.totalHits
              refused = answer.totalHits > burst
              retrySeconds = answer.resetTime === undefined ? undefined : Math.ceil((answer.resetTime.getTime() - Date.now()) / 1000)
            } else {
              const answer = await storage.increment("client", 0, burst, 0, "default")
              totalHits = answer.totalHits
              refused = answer.isBlocked
              retrySeconds = answer.timeToBlockExpire
            }
            expect(refused).toBe(k > burst)
            expect(totalHits).toBe(Math.min(k, burst + 1))
            if (refused) {
              const state = await RateSync.state(limiter, { key: "client" })
              expect(state.remaining).toBe(0)
              expectSeconds(retrySeconds, state.nextSlotAfter)
            }
          }
        }
      ),
      { numRuns: 25 }
    )
  })
})

describe("setups a limiter cannot answer honestly are refused by name", () => {
  it("express-rate-limit: skipSuccessfulRequests / skipFailedRequests (a limiter gives no unit back); resetKey and decrement reject", async () => {
    const limiter = await limiterOn("memory")
    const store = new ExpressStore({ limiter })
    expect(() => store.init({ limit: BURST, skipSuccessfulRequests: true })).toThrow(Unsupported)
    await expect(store.increment("a")).rejects.toMatchObject({ _tag: "Unsupported", feature: "skipSuccessfulRequests" })
    const plain = new ExpressStore({ limiter })
    plain.init({ limit: BURST })
    await expect(plain.resetKey("a")).rejects.toMatchObject({ _tag: "Unsupported", feature: "resetKey" })
    await expect(plain.decrement("a")).rejects.toMatchObject({ _tag: "Unsupported", feature: "decrement" })
    // get: nothing in use, then the units in use and when the key is full again.
    expect(await plain.get("a")).toBeUndefined()
    await plain.increment("a")
    const info = await plain.get("a")
    expect(info?.totalHits).toBe(1)
    expect(info!.resetTime!.getTime() - Date.now()).toBeGreaterThan(1_000)
    expect(info!.resetTime!.getTime() - Date.now()).toBeLessThanOrEqual(2_000)
  })

  it("hono-rate-limiter: rateLimiter() throws at once with skipFailedRequests", async () => {
    const limiter = await limiterOn("memory")
    expect(() =>
      rateLimiter({ limit: BURST, skipFailedRequests: true, keyGenerator: () => "k", store: new HonoStore({ limiter }) })
    ).toThrow(/skipFailedRequests is not supported/)
  })

  it("@fastify/rate-limit: continueExceeding, exponentialBackoff and ban fail the plugin's registration", async () => {
    const limiter = await limiterOn("memory")
    for (const option of [{ continueExceeding: true }, { exponentialBackoff: true }, { ban: 2 }]) {
      const app = Fastify()
      await expect(app.register(rateLimitFastify, { max: BURST, store: fastifyStore({ limiter }), ...option })).rejects.toMatchObject({
        _tag: "Unsupported",
        feature: Object.keys(option)[0]
      })
      await app.close()
    }
  })

  it("a limiter with max_concurrent is refused (a fixed-window count cannot hold a lease for the request)", async () => {
    const limiter = await limiterOn("memory", { rate_per_second: RATE, burst: BURST, max_concurrent: 2 })
    const store = new ExpressStore({ limiter })
    await expect(store.increment("a")).rejects.toMatchObject({ _tag: "LeaseNeedsScope" })
  })

  it("@nestjs/throttler: a throttler without a named limiter fails the request", async () => {
    const storage = new RateSyncThrottlerStorage({ limiter: { default: "api" } })
    await expect(storage.increment("k", WINDOW_MS, BURST, WINDOW_MS, "burst")).rejects.toMatchObject({ _tag: "Unsupported" })
  })
})

describe("a store outage follows the limiter's fail_closed, then the framework's own policy", () => {
  const down = async (failClosed: boolean) => {
    await RateSync.configureStore("down", { engine: "postgres", url: "postgres://postgres@127.0.0.1:9/none" })
    const limiter = `fw_down_${limiters++}`
    await RateSync.configureLimiter(limiter, { store: "down", rate_per_second: RATE, burst: BURST, fail_closed: failClosed })
    return limiter
  }
  const statuses = async (limiter: string, passOnStoreError: boolean) => {
    const app = express()
    app.use(rateLimit({ limit: BURST, windowMs: WINDOW_MS, passOnStoreError, store: new ExpressStore({ limiter }), logger: { error: () => {}, warn: () => {} } }))
    app.get("/hello", (_req, res) => {
      res.send("hello")
    })
    return using(listening(app.listen(0, "127.0.0.1")), async (url) => {
      const seen: Array<number> = []
      for (let i = 0; i < BURST + 2; i++) seen.push((await fetch(`${url}/hello`)).status)
      return seen
    })
  }

  it("fail_closed = false: admitted without the store (the limiter's warning says so)", async () => {
    expect(await statuses(await down(false), false)).toEqual(Array(BURST + 2).fill(200))
  })

  it("fail_closed = true: the store's error reaches the framework: 500, or admitted with passOnStoreError", async () => {
    const limiter = await down(true)
    expect(await statuses(limiter, false)).toEqual(Array(BURST + 2).fill(500))
    expect(await statuses(limiter, true)).toEqual(Array(BURST + 2).fill(200))
  })
})

it("src/frameworks loads none of the frameworks: only its own modules and effect", () => {
  const dir = "src/frameworks"
  for (const file of readdirSync(dir)) {
    const source = readFileSync(join(dir, file), "utf8")
    const specifiers = [...source.matchAll(/^(?:import|export)\s[^"]*?from\s+"([^"]+)"/gm)].map((match) => match[1]!)
    expect(specifiers.length).toBeGreaterThan(0)
    for (const specifier of specifiers) expect(specifier, `${file} imports ${specifier}`).toMatch(/^(\.\.?\/|effect\/)/)
  }
})

describe("@fastify/rate-limit: a route with its own config counts its keys apart", () => {
  it("on memory", async () => {
    const limiter = await limiterOn("memory")
    const app = Fastify()
    await app.register(rateLimitFastify, { max: BURST, timeWindow: WINDOW_MS, store: fastifyStore({ limiter }) })
    app.get("/a", () => "a")
    app.get("/b", { config: { rateLimit: { max: BURST, timeWindow: WINDOW_MS } } }, () => "b")
    await app.listen({ host: "127.0.0.1", port: 0 })
    try {
      const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
      for (let i = 0; i < BURST; i++) expect((await fetch(`${url}/a`)).status).toBe(200)
      expect((await fetch(`${url}/a`)).status).toBe(429)
      expect((await fetch(`${url}/b`)).status).toBe(200)
      expect((await RateSync.state(limiter, { key: "GET/b-127.0.0.1" })).remaining).toBe(BURST - 1)
    } finally {
      await app.close()
    }
  })
})

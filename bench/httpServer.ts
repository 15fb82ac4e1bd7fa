/**
 * One HTTP server of the HTTP benchmark (`bench/http.ts` starts it as a process of its own, so that
 * the load generator does not share its CPU): `tsx bench/httpServer.ts FRAMEWORK LIMITER`, where
 * FRAMEWORK is express, fastify or effect and LIMITER is none, the framework's usual limiter
 * (`usual-memory`, `usual-redis`) or rate-sync on a store (`memory`, `postgres`, `redis`). It
 * prints its port once it serves. Every request is one client's (loopback): one hot key, with a
 * limit high enough that nothing is refused, so the figure is the limiter's cost per request.
 */
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import rateLimitPlugin from "@fastify/rate-limit"
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServer from "@effect/platform/HttpServer"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { Effect, Layer } from "effect"
import express from "express"
import { rateLimit } from "express-rate-limit"
import fastify from "fastify"
import { Redis } from "ioredis"
import { RedisStore as RateLimitRedisStore } from "rate-limit-redis"
import type * as ExpressSource from "../src/frameworks/express.js"
import type * as FastifySource from "../src/frameworks/fastify.js"
import type * as HttpSource from "../src/http/index.js"
import type * as Source from "../src/index.js"
import type * as PromiseSource from "../src/promise.js"
import { postgresUrl } from "../scripts/stores.js"

// rate-sync as the package ships it (the build in dist, as bench/library.ts explains), typed by its source.
const built = <A>(path: string): Promise<A> => import(new URL(`../dist/${path}`, import.meta.url).href)
const { RateSyncStore } = await built<typeof ExpressSource>("frameworks/express.js")
const { rateSyncStore } = await built<typeof FastifySource>("frameworks/fastify.js")
const { HttpRateLimit } = await built<typeof HttpSource>("http/index.js")
const { RateSync, Stores } = await built<typeof Source>("index.js")
const { configureLimiter, configureStore } = await built<typeof PromiseSource>("promise.js")

const [framework, limiter] = process.argv.slice(2)
const REDIS_URL = process.env["REDIS_URL"] ?? "redis://127.0.0.1:6379"
/** Never reached by the load: the figure is the cost of deciding, not of refusing. */
const CAPACITY = 1_000_000_000
const prefix = `bench-http:${process.pid}:`

const storeConfig = async () =>
  limiter === "memory" || limiter === "none"
    ? { engine: "memory" as const }
    : limiter === "redis"
    ? { engine: "redis" as const, url: REDIS_URL, key_prefix: prefix }
    : { engine: "postgres" as const, url: (await postgresUrl()).url, auto_create: true, table_name: "bench_http_state", synchronous_commit: false }

const limiterConfig = { store: "s", rate_per_second: 1_000_000, burst: CAPACITY }

const ready = (port: number) => console.log(`port ${port}`)

const expressServer = async () => {
  const app = express()
  if (limiter === "usual-memory") app.use(rateLimit({ limit: CAPACITY, windowMs: 60_000, standardHeaders: "draft-8", legacyHeaders: false }))
  if (limiter === "usual-redis") {
    const client = new Redis(REDIS_URL)
    app.use(rateLimit({
      limit: CAPACITY,
      windowMs: 60_000,
      standardHeaders: "draft-8",
      legacyHeaders: false,
      store: new RateLimitRedisStore({ prefix, sendCommand: (command: string, ...args: Array<string>) => client.call(command, ...args) as never })
    }))
  }
  if (limiter === "memory" || limiter === "postgres" || limiter === "redis") {
    await configureStore("s", await storeConfig())
    await configureLimiter("api", limiterConfig)
    app.use(rateLimit({ limit: CAPACITY, windowMs: 1_000, standardHeaders: "draft-8", legacyHeaders: false, store: new RateSyncStore({ limiter: "api" }) }))
  }
  app.get("/", (_request, response) => {
    response.send("ok")
  })
  const server = app.listen(0, "127.0.0.1", () => ready((server.address() as AddressInfo).port))
}

const fastifyServer = async () => {
  const app = fastify()
  if (limiter === "usual-memory") await app.register(rateLimitPlugin, { max: CAPACITY, timeWindow: 60_000 })
  if (limiter === "memory" || limiter === "postgres" || limiter === "redis") {
    await configureStore("s", await storeConfig())
    await configureLimiter("api", limiterConfig)
    await app.register(rateLimitPlugin, { max: CAPACITY, timeWindow: 1_000, store: rateSyncStore({ limiter: "api" }) })
  }
  app.get("/", async () => "ok")
  await app.listen({ port: 0, host: "127.0.0.1" })
  ready((app.server.address() as AddressInfo).port)
}

const effectServer = async () => {
  // Without a limiter the router does not use it; it is built all the same, so every server has the same shape.
  const limits = Layer.unwrapEffect(Effect.map(Effect.promise(storeConfig), (store) =>
    RateSync.layer({ stores: { s: limiter === "none" ? { engine: "memory" } : store }, limiters: { api: limiterConfig } }).pipe(
      Layer.provide(Stores.layer)
    )))
  const app = limiter === "none"
    ? Effect.succeed(HttpRouter.empty.pipe(HttpRouter.get("/", HttpServerResponse.text("ok"))))
    : Effect.map(HttpRateLimit.make({ limiters: "api" }), (perIp) => HttpRouter.empty.pipe(HttpRouter.get("/", HttpServerResponse.text("ok").pipe(perIp))))
  const program = Effect.gen(function*() {
    yield* HttpServer.serveEffect(yield* app)
    const address = (yield* HttpServer.HttpServer).address
    if (address._tag === "TcpAddress") ready(address.port)
    return yield* Effect.never
  })
  const server = NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" })
  await Effect.runPromise(Effect.scoped(program).pipe(Effect.provide(Layer.merge(limits, server))))
}

const servers: Record<string, () => Promise<void>> = { express: expressServer, fastify: fastifyServer, effect: effectServer }
const start = servers[framework ?? ""]
if (start === undefined) throw new Error(`unknown framework ${framework}`)
void start()

// For a CPU profile of one server (`node --cpu-prof`): exits, writing the profile, after this many ms.
const exitAfter = Number(process.env["BENCH_EXIT_AFTER_MS"] ?? 0)
if (exitAfter > 0) setTimeout(() => process.exit(0), exitAfter)

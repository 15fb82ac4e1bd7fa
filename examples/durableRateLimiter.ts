/**
 * `@effect/workflow`'s `DurableRateLimiter` backed by rate-sync: `npx tsx examples/durableRateLimiter.ts`.
 *
 * A workflow sends 5 emails through a limit of 2 per 2 seconds. The limit is `@effect/experimental`'s
 * `RateLimiter` on rate-sync's PostgreSQL engine when `DATABASE_URL` is set (every process running the
 * workflow then shares it, on the database's clock), else on Redis when `REDIS_URL` is set, else on
 * that package's own memory store. The workflow engine here is the in-memory one; a durable engine
 * (`@effect/cluster`'s) takes its place unchanged.
 */
import { RateLimiter } from "@effect/experimental"
import { PgClient } from "@effect/sql-pg"
import { DurableRateLimiter, Workflow, WorkflowEngine } from "@effect/workflow"
import { Effect, Layer, Redacted, Schema } from "effect"
import { Redis } from "ioredis"
import * as Experimental from "../src/experimental/index.js"
import { RateSync, Stores } from "../src/index.js"

const databaseUrl = process.env["DATABASE_URL"]
const redisUrl = process.env["REDIS_URL"]

const SendEmails = Workflow.make({
  name: "SendEmails",
  payload: { batch: Schema.String, count: Schema.Number },
  success: Schema.Array(Schema.Number),
  error: RateLimiter.RateLimitStoreError,
  idempotencyKey: ({ batch }) => batch
})

const started = Date.now()

const SendEmailsLive = SendEmails.toLayer(({ batch, count }) =>
  Effect.gen(function*() {
    const sentAt: Array<number> = []
    for (let i = 0; i < count; i++) {
      // Waits (durably) for the limit before each email.
      yield* DurableRateLimiter.rateLimit({ name: `email-${i}`, algorithm: "token-bucket", window: "2 seconds", limit: 2, key: `emails:${batch}` })
      sentAt.push(Date.now() - started)
      yield* Effect.log(`email ${i + 1} of ${count} sent at ${Date.now() - started} ms`)
    }
    return sentAt
  })
)

/** The table the PostgreSQL store keeps its rows in, made by a rate-sync store (`auto_create`), as `rate-sync migrate` would. */
const postgresTable = (url: string) =>
  Layer.scopedDiscard(Effect.scoped(Layer.build(
    RateSync.layer({
      stores: { db: { engine: "postgres", url, auto_create: true } },
      limiters: { unused: { store: "db", rate_per_second: 1 } }
    }).pipe(Layer.provide(Stores.layer))
  )))

const Limits: Layer.Layer<RateLimiter.RateLimiter> = databaseUrl !== undefined
  ? RateLimiter.layer.pipe(
    Layer.provide(Experimental.layerPostgres()),
    Layer.provide(PgClient.layer({ url: Redacted.make(databaseUrl) })),
    Layer.provide(postgresTable(databaseUrl)),
    Layer.orDie
  )
  : redisUrl !== undefined
  ? RateLimiter.layer.pipe(
    Layer.provide(Layer.unwrapScoped(Effect.map(
      Effect.acquireRelease(Effect.sync(() => new Redis(redisUrl)), (client) => Effect.promise(() => client.quit())),
      (client) => Experimental.layerRedis(client, { key_prefix: `example-durable:${process.pid}:` })
    )))
  )
  : RateLimiter.layer.pipe(Layer.provide(RateLimiter.layerStoreMemory))

const program = Effect.gen(function*() {
  const sentAt = yield* SendEmails.execute({ batch: `batch-${Date.now()}`, count: 5 })
  console.log(`sent at ${sentAt.join(", ")} ms (2 at once, then one a second)`)
})

const App = SendEmailsLive.pipe(Layer.provideMerge(WorkflowEngine.layerMemory), Layer.provide(Limits))

Effect.runPromise(program.pipe(Effect.provide(App))).then(() => process.exit(0), (error) => {
  console.error(error)
  process.exit(1)
})

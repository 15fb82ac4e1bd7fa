/**
 * The token bucket's writes of several keys in one statement (postgres/bucketWrites.ts), against a
 * model of the rule a lone write follows, and the store writing many keys from two processes' pools.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as FastCheck from "effect/FastCheck"
import * as Fiber from "effect/Fiber"
import pg from "pg"
import { inject } from "vitest"
import * as BucketWrites from "../src/postgres/bucketWrites.js"
import * as PgContext from "../src/postgres/context.js"
import * as Errors from "../src/postgres/errors.js"
import * as PostgresStore from "../src/postgres/PostgresStore.js"
import * as RateLimiterModule from "../src/RateLimiter.js"
import { decodeSettings, type PostgresStoreConfig, toLimiterSpec } from "../src/Settings.js"

const url = inject("databaseUrl")
let counter = 0
const fresh = (prefix: string) => `${prefix}_${process.pid}_${Date.now().toString(36)}_${counter++}`

const storeConfig = (table: string) =>
  Effect.gen(function*() {
    const settings = yield* decodeSettings({ stores: { db: { engine: "postgres", url, table_name: table, auto_create: true } } })
    const config = settings.stores["db"]
    if (config?.engine !== "postgres") return yield* Effect.die("not a postgres store")
    return config
  })

/** The statements of a store's token bucket, over that store's pool. */
const statementsOf = (config: PostgresStoreConfig, table: string) =>
  Effect.gen(function*() {
    const store = yield* PostgresStore.make("db", config)
    const sql = store.sql
    const errors = { store: "db", table, poolMaxSize: 10, poolTimeoutMs: 5_000, operationTimeoutMs: 5_000 }
    const ctx = PgContext.make({
      name: "db",
      config,
      sql,
      table: PgContext.tableName(sql, config),
      channel: "unused",
      base: yield* PgContext.readBase(sql),
      toError: Errors.fromSql(errors)
    })
    return { ctx, sql, ...BucketWrites.statements(ctx) }
  })

/** A key's row before the write: none, or its arrival time a minute in the past or the future, at a version. */
interface Initial {
  readonly offsetS: -60 | 60
  readonly version: number
}

interface Case {
  readonly initial: Initial | undefined
  readonly micros: number
  readonly expectedDelta: 0 | 1
  readonly blind: boolean
  readonly slack: "none" | "zero" | "two minutes"
}

const caseArb: FastCheck.Arbitrary<Case> = FastCheck.record({
  initial: FastCheck.option(FastCheck.record({ offsetS: FastCheck.constantFrom(-60 as const, 60 as const), version: FastCheck.integer({ min: 1, max: 5 }) }), { nil: undefined }),
  micros: FastCheck.integer({ min: 1, max: 5_000_000 }),
  expectedDelta: FastCheck.constantFrom(0 as const, 1 as const),
  blind: FastCheck.boolean(),
  slack: FastCheck.constantFrom("none" as const, "zero" as const, "two minutes" as const)
})

const slackMs = (slack: Case["slack"]) => (slack === "none" ? Infinity : slack === "zero" ? 0 : 120_000)

/** The rule of a lone write: no row, the version read (unless blind), or the debt within the slack. */
const writes = (c: Case) =>
  c.initial === undefined ||
  (!c.blind && c.expectedDelta === 0) ||
  c.slack === "none" ||
  (c.initial.offsetS * 1000 <= slackMs(c.slack))

describe("PostgreSQL token bucket: several keys in one statement", () => {
  it.live("each row of a batch is written exactly when a lone write of it would be, with the same arrival time and version", () =>
    Effect.gen(function*() {
      const table = fresh("batch")
      const config: PostgresStoreConfig = yield* storeConfig(table)
      const { ctx, many, one, sql } = yield* statementsOf(config, table)
      const T = ctx.T
      const AT = ctx.atOf("last_acquisition_at")
      const samples = FastCheck.sample(FastCheck.array(caseArb, { minLength: 2, maxLength: 8 }), 25)
      let round = 0
      for (const cases of samples) {
        for (const how of ["many", "one"] as const) {
          const ids = cases.map((_, i) => `r:${round}:${how}:${String.fromCharCode(122 - i)}`)
          round++
          const before = new Map<string, { tat: number; version: number }>()
          for (const [i, c] of cases.entries()) {
            if (c.initial === undefined) continue
            const rows = yield* sql<{ tat: number; version: number }>`
              INSERT INTO ${T} AS s (group_id, last_acquisition_at, version, updated_at)
              VALUES (${ids[i]!}, clock_timestamp() + ${c.initial.offsetS} * interval '1 second', ${c.initial.version}, clock_timestamp())
              RETURNING ${AT} AS tat, version`
            before.set(ids[i]!, rows[0]!)
          }
          const planned = cases.map((c, i): BucketWrites.Write => ({
            id: ids[i]!,
            micros: c.micros,
            expected: (c.initial?.version ?? 1) + c.expectedDelta,
            blind: c.blind,
            slack: slackMs(c.slack)
          }))
          const written = how === "many"
            ? yield* many(planned)
            : yield* Effect.forEach(planned, (w) => Effect.map(one(w), (rows) => rows[0]))
          for (const [i, c] of cases.entries()) {
            const row = written[i]
            expect(row !== undefined, `${how} ${JSON.stringify(c)}`).toBe(writes(c))
            if (row === undefined) continue
            const old = before.get(ids[i]!)
            // Inserted as the version after the one expected; updated as the one after the row's.
            expect(row.version).toBe(old === undefined ? planned[i]!.expected + 1 : old.version + 1)
            const from = old !== undefined && old.tat > row.now ? old.tat : row.now
            expect(row.tat - from).toBeCloseTo(c.micros / 1000, 3)
          }
        }
      }
    }).pipe(Effect.scoped), 60_000)

  it.live("two batches wanting the same rows in opposite orders lock them in one order: neither waits for the other in a cycle", () =>
    Effect.gen(function*() {
      const table = fresh("batchorder")
      const config = yield* storeConfig(table)
      const first = yield* statementsOf(config, table)
      const second = yield* statementsOf(config, table)
      const ids = ["r:a", "r:m", "r:z"]
      const write = (id: string): BucketWrites.Write => ({ id, micros: 1_000, expected: 1, blind: true, slack: Infinity })
      yield* first.many(ids.map(write))
      // A third session holds the middle row: each batch takes what it can before it, then waits.
      const holder = new pg.Client({ connectionString: url })
      yield* Effect.promise(() => holder.connect())
      yield* Effect.addFinalizer(() => Effect.promise(() => holder.end()))
      yield* Effect.promise(() => holder.query("BEGIN"))
      yield* Effect.promise(() => holder.query(`SELECT 1 FROM ${first.ctx.table} WHERE group_id = 'r:m' FOR UPDATE`))
      const forward = yield* Effect.fork(first.many(ids.map(write)))
      const backward = yield* Effect.fork(second.many([...ids].reverse().map(write)))
      yield* Effect.sleep("300 millis")
      yield* Effect.promise(() => holder.query("COMMIT"))
      // Out of order, one would hold "a" and the other "z", each waiting for the other's: the server
      // would end one with a deadlock error after deadlock_timeout.
      const written = yield* Effect.all([Fiber.join(forward), Fiber.join(backward)])
      expect(written.flat().every((row) => row !== undefined)).toBe(true)
    }).pipe(Effect.scoped), 30_000)

  it.live("two stores taking many keys at once from the same table keep every key's bound and fail nothing", () =>
    Effect.gen(function*() {
      const table = fresh("batchbound")
      const config = yield* storeConfig(table)
      const settings = yield* decodeSettings({
        stores: { db: { engine: "postgres", url, table_name: table } },
        limiters: { keys: { store: "db", rate_per_second: 5, burst: 2 } }
      })
      const spec = toLimiterSpec("keys", settings.limiters["keys"]!)
      const stores = yield* Effect.forEach([0, 1], () => PostgresStore.make("db", config))
      const limiters = yield* Effect.forEach(stores, (store) => RateLimiterModule.make({ stores: new Map([["db", store]]), limiters: [spec] }))
      const keys = Array.from({ length: 40 }, (_, i) => `k${i}`)
      const admitted = new Map<string, number>()
      const started = Date.now()
      const durationMs = 1_500
      // Every fiber walks the keys in its own order (half of them backwards), so batches of the two
      // stores take the same rows in opposite orders unless the statement orders them.
      const walker = (limiter: (typeof limiters)[number], w: number) =>
        Effect.gen(function*() {
          for (let n = 0; Date.now() - started < durationMs; n++) {
            const i = (w * 7 + n) % keys.length
            const key = keys[w % 2 === 0 ? i : keys.length - 1 - i]!
            const taken = yield* Effect.either(limiter.tryConsume("keys", { key }))
            if (taken._tag === "Right") admitted.set(key, (admitted.get(key) ?? 0) + 1)
            else expect(taken.left._tag).toBe("RateLimitExceeded")
          }
        })
      yield* Effect.all(
        limiters.flatMap((limiter) => Array.from({ length: 8 }, (_, w) => walker(limiter, w))),
        { concurrency: "unbounded", discard: true }
      )
      const elapsedS = (Date.now() - started) / 1000
      // burst + rate x T for each key, over the whole run (the slots all lie within it).
      for (const key of keys) expect(admitted.get(key) ?? 0).toBeLessThanOrEqual(2 + Math.ceil(5 * elapsedS))
      // Most keys got their burst: the stores were deciding, not failing.
      expect([...admitted.values()].filter((n) => n >= 2).length).toBeGreaterThanOrEqual(keys.length / 2)
      // And several keys went in one statement: fewer writes than keys written.
      for (const store of stores) {
        const { items, writes } = store.bucketWrites()
        expect(items).toBeGreaterThan(writes)
      }
    }).pipe(Effect.scoped), 60_000)
})

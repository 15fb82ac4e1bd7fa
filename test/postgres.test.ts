import { describe, expect, it } from "@effect/vitest"
import { PgClient } from "@effect/sql-pg"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import pg from "pg"
import { inject } from "vitest"
import * as Metrics from "../src/Metrics.js"
import * as PostgresStore from "../src/postgres/PostgresStore.js"
import { RateLimiter } from "../src/RateLimiter.js"
import * as RateSync from "../src/RateSync.js"
import * as RateLimiterModule from "../src/RateLimiter.js"
import { decodeSettings, toLimiterSpec } from "../src/Settings.js"
import * as Stores from "../src/Stores.js"
import { admin, asUser } from "./support/admin.js"

const url = inject("databaseUrl")
let n = 0
const fresh = (prefix: string) => `${prefix}_${process.pid}_${n++}`

const storeConfig = (store: Record<string, unknown>) =>
  Effect.flatMap(decodeSettings({ stores: { db: { engine: "postgres", url, ...store } } }), (s) => {
    const config = s.stores["db"]
    return config?.engine === "postgres" ? Effect.succeed(config) : Effect.die("not a postgres store")
  })

const limiters = (store: Record<string, unknown>, limiter: Record<string, unknown>) =>
  RateSync.layer({
    stores: { db: { engine: "postgres", url, timing_margin_ms: 0, ...store } },
    limiters: { api: { store: "db", ...limiter } }
  }).pipe(Layer.provide(Stores.layer))

describe("PostgreSQL engine", () => {
  it.live("auto_create creates exactly the documented table and index", () =>
    Effect.gen(function*() {
      const table = fresh("seed")
      yield* Effect.scoped(PostgresStore.make("db", yield* storeConfig({ table_name: table, auto_create: true })))
      const [columns, indexes] = yield* Effect.promise(() =>
        admin(url, [
          `SELECT column_name, data_type, is_nullable, column_default, character_maximum_length
           FROM information_schema.columns WHERE table_name = '${table}' ORDER BY ordinal_position`,
          `SELECT indexdef FROM pg_indexes WHERE tablename = '${table}' ORDER BY indexname`
        ])
      )
      expect(columns!.rows).toEqual([
        { column_name: "group_id", data_type: "character varying", is_nullable: "NO", column_default: null, character_maximum_length: 255 },
        { column_name: "last_acquisition_at", data_type: "timestamp with time zone", is_nullable: "NO", column_default: null, character_maximum_length: null },
        { column_name: "version", data_type: "integer", is_nullable: "NO", column_default: "1", character_maximum_length: null },
        { column_name: "current_concurrent", data_type: "integer", is_nullable: "NO", column_default: "0", character_maximum_length: null },
        { column_name: "created_at", data_type: "timestamp with time zone", is_nullable: "NO", column_default: "now()", character_maximum_length: null },
        { column_name: "updated_at", data_type: "timestamp with time zone", is_nullable: "NO", column_default: "now()", character_maximum_length: null }
      ])
      expect(indexes!.rows.map((r: { indexdef: string }) => r.indexdef)).toEqual([
        `CREATE INDEX idx_${table}_updated ON public.${table} USING btree (updated_at)`,
        `CREATE UNIQUE INDEX ${table}_pkey ON public.${table} USING btree (group_id)`
      ])
    }))

  it.live("a missing table fails the layer with the fix", () =>
    Effect.gen(function*() {
      const error = yield* Layer.build(limiters({ table_name: fresh("absent"), auto_create: false }, { rate_per_second: 1 }))
        .pipe(Effect.scoped, Effect.flip)
      expect(error._tag).toBe("StoreMisconfigured")
      expect(error.message).toMatch(/^table "public"\."absent_\d+_\d+" does not exist: create it with the "Manual Table Setup" SQL or set auto_create = true$/)
    }))

  it.live("a missing database or role fails the layer with the server's reason, not as an outage", () =>
    Effect.gen(function*() {
      const missingDatabase = new URL(url)
      missingDatabase.pathname = `/${fresh("nodb")}`
      const database = yield* Layer.build(limiters({ url: missingDatabase.toString() }, { rate_per_second: 1 }))
        .pipe(Effect.scoped, Effect.flip)
      expect(database._tag).toBe("StoreMisconfigured")
      expect(database._tag === "StoreMisconfigured" && database.reason).toBe("database")
      expect(database.message).toMatch(/3D000/)
      const role = yield* Layer.build(limiters({ url: asUser(url, fresh("nobody"), "x") }, { rate_per_second: 1 }))
        .pipe(Effect.scoped, Effect.flip)
      expect(role._tag === "StoreMisconfigured" && role.reason).toBe("authentication")
    }))

  it.live("a table dropped under running limiters fails every call with the cause, never admits (fail_closed = false)", () =>
    Effect.gen(function*() {
      const table = fresh("dropped")
      yield* Effect.scoped(Effect.gen(function*() {
        yield* RateLimiter.consume("api")
        yield* Effect.scoped(RateLimiter.acquire("leased"))
        yield* Effect.promise(() => admin(url, [`DROP TABLE ${table}`]))
        for (const call of [RateLimiter.consume("api", { key: "other" }), Effect.scoped(RateLimiter.acquire("leased", { key: "other" }))]) {
          const error = yield* Effect.flip(call)
          expect(error._tag).toBe("StoreMisconfigured")
          expect(error.message).toMatch(/42P01|does not exist/)
        }
      })).pipe(
        Effect.provide(RateSync.layer({
          stores: { db: { engine: "postgres", url, table_name: table, auto_create: true, timing_margin_ms: 0 } },
          limiters: { api: { store: "db", rate_per_second: 100 }, leased: { store: "db", max_concurrent: 2 } }
        }).pipe(Layer.provide(Stores.layer)))
      )
    }))

  it.live("a queued lease waiter whose store call fails leaves no place in line: the key keeps working", () =>
    Effect.gen(function*() {
      const table = fresh("queued")
      yield* Effect.gen(function*() {
        const holder = yield* Scope.make()
        yield* Scope.extend(RateLimiter.acquire("leased"), holder)
        const waiter = yield* Effect.fork(Effect.scoped(RateLimiter.acquire("leased", { timeout: "5 seconds" })))
        yield* Effect.sleep("100 millis")
        expect((yield* RateLimiter.state("leased")).waiting).toBe(1)
        // The waiter's next re-check (within a second) fails: the table is gone for a moment.
        yield* Effect.promise(() => admin(url, [`ALTER TABLE ${table} RENAME TO ${table}_away`]))
        const failed = yield* Fiber.join(waiter).pipe(Effect.flip)
        expect(failed._tag).toBe("StoreMisconfigured")
        yield* Effect.promise(() => admin(url, [`ALTER TABLE ${table}_away RENAME TO ${table}`]))
        yield* Scope.close(holder, Exit.void)
        expect((yield* RateLimiter.state("leased")).waiting).toBe(0)
        yield* Effect.scoped(Effect.gen(function*() {
          const permit = yield* RateLimiter.acquire("leased", { timeout: "2 seconds" })
          expect(permit.degraded).toBe(false)
          expect((yield* RateLimiter.state("leased")).leasesHeld).toBe(1)
        }))
      }).pipe(
        Effect.provide(RateSync.layer({
          stores: { db: { engine: "postgres", url, table_name: table, auto_create: true } },
          limiters: { leased: { store: "db", max_concurrent: 1, lease_ttl_seconds: 30, fail_closed: true } }
        }).pipe(Layer.provide(Stores.layer)))
      )
    }))

  it.live("a slow store (a row locked elsewhere) cannot hold an acquire past its timeout, nor admit it degraded", () =>
    Effect.gen(function*() {
      const table = fresh("slow")
      yield* Effect.gen(function*() {
        yield* RateLimiter.consume("api")
        yield* Effect.scoped(RateLimiter.acquire("leased"))
        // Another session locks every row for 3 s.
        const locker = new pg.Client({ connectionString: url })
        yield* Effect.promise(() => locker.connect())
        yield* Effect.promise(() => locker.query(`BEGIN; SELECT * FROM ${table} FOR UPDATE`))
        const unlocked = Effect.promise(() => locker.query("COMMIT").then(() => locker.end()))
        yield* Effect.gen(function*() {
          for (const call of [RateLimiter.consume("api", { timeout: "300 millis" }), Effect.scoped(RateLimiter.acquire("leased", { timeout: "300 millis" }))]) {
            const started = Date.now()
            const error = yield* Effect.flip(call)
            expect(error._tag).toBe("AcquireTimeout")
            // Ends by its deadline: well before the lock goes, with room for a loaded machine.
            expect(Date.now() - started).toBeLessThan(1_500)
          }
          // Without a deadline of the caller's, operation_timeout_ms bounds it, and the store is still not "down".
          const started = Date.now()
          const error = yield* Effect.flip(Effect.scoped(RateLimiter.tryAcquire("api")))
          expect(error._tag).toBe("StoreTimeout")
          expect(Date.now() - started).toBeLessThan(2_500)
        }).pipe(Effect.ensuring(unlocked))
        // Once the lock is gone, both work again, and nothing was left held.
        yield* Effect.scoped(RateLimiter.acquire("leased", { timeout: "2 seconds" }))
        expect((yield* RateLimiter.state("leased")).leasesHeld).toBe(0)
        yield* RateLimiter.consume("api", { timeout: "2 seconds" })
      }).pipe(
        Effect.provide(RateSync.layer({
          stores: { db: { engine: "postgres", url, table_name: table, auto_create: true, operation_timeout_ms: 800 } },
          limiters: { api: { store: "db", rate_per_second: 100 }, leased: { store: "db", max_concurrent: 1, lease_ttl_seconds: 30 } }
        }).pipe(Layer.provide(Stores.layer)))
      )
    }))

  it.live("refused and timed-out lease calls on many keys leave no wake-up entry or place in line behind", () =>
    Effect.gen(function*() {
      const settings = yield* decodeSettings({
        stores: { db: { engine: "postgres", url, auto_create: true } },
        limiters: { leased: { store: "db", max_concurrent: 1, lease_ttl_seconds: 30 } }
      })
      const config = settings.stores["db"]
      if (config?.engine !== "postgres") return yield* Effect.die("not a postgres store")
      const store = yield* PostgresStore.make("db", config)
      const limiter = yield* RateLimiterModule.make({
        stores: new Map([["db", store]]),
        limiters: [toLimiterSpec("leased", settings.limiters["leased"]!)]
      })
      const keys = Array.from({ length: 100 }, (_, i) => `${fresh("many")}-${i}`)
      yield* Effect.scoped(Effect.gen(function*() {
        yield* Effect.forEach(keys, (key) => limiter.acquire("leased", { key }), { concurrency: 8 })
        yield* Effect.forEach(keys, (key) => Effect.flip(Effect.scoped(limiter.tryAcquire("leased", { key }))), { concurrency: 8 })
        yield* Effect.forEach(keys.slice(0, 20), (key) => Effect.flip(Effect.scoped(limiter.acquire("leased", { key, timeout: "50 millis" }))), {
          concurrency: 8
        })
        // Checked while the leases are still held: a release would wake (and drop) what was left. Places
        // of callers that timed out are given back in the background, promptly.
        let waiters = store.waiters()
        for (let i = 0; i < 20 && (waiters.subscribed > 0 || waiters.queued > 0); i++) {
          yield* Effect.sleep("100 millis")
          waiters = store.waiters()
        }
        expect(waiters).toEqual({ subscribed: 0, queued: 0 })
      }))
    }).pipe(Effect.scoped))

  it.live("missing grants fail the layer with the GRANT to run", () =>
    Effect.gen(function*() {
      const role = fresh("readonly")
      const table = fresh("ro")
      yield* Effect.promise(() =>
        admin(url, [
          `CREATE TABLE ${table} (group_id VARCHAR(255) PRIMARY KEY, last_acquisition_at TIMESTAMPTZ NOT NULL, version INTEGER NOT NULL DEFAULT 1, current_concurrent INTEGER NOT NULL DEFAULT 0, created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(), updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW())`,
          `CREATE ROLE ${role} LOGIN PASSWORD 'ro'`,
          `GRANT SELECT ON ${table} TO ${role}`
        ])
      )
      const error = yield* Layer.build(
        RateSync.layer({
          stores: { db: { engine: "postgres", url: asUser(url, role, "ro"), table_name: table } },
          limiters: { api: { store: "db", rate_per_second: 1 } }
        }).pipe(Layer.provide(Stores.layer))
      ).pipe(Effect.scoped, Effect.flip)
      expect(error.message).toBe(
        `permission denied on "public"."${table}" (INSERT, UPDATE not granted): GRANT SELECT, INSERT, UPDATE ON "public"."${table}" TO the user of the url`
      )
    }))

  it.live("an unreachable database: the layer starts, fail_closed fails with StoreUnavailable, the default admits", () =>
    Effect.gen(function*() {
      const down = { url: "postgres://postgres@127.0.0.1:1/test", pool_timeout_ms: 1_000 }
      const closed = yield* Effect.scoped(RateLimiter.acquire("api")).pipe(
        Effect.provide(limiters(down, { rate_per_second: 10, fail_closed: true })),
        Effect.flip
      )
      expect(closed._tag).toBe("StoreUnavailable")
      expect(closed._tag === "StoreUnavailable" && closed.reason).toBe("unreachable")
      expect(closed.message).toContain("ECONNREFUSED")
      const open = yield* Effect.scoped(RateLimiter.acquire("api")).pipe(
        Effect.provide(limiters(down, { rate_per_second: 10 }))
      )
      expect(open.degraded).toBe(true)
    }))

  it.live("an exhausted pool fails after pool_timeout_ms with the fix, and never hangs", () =>
    Effect.gen(function*() {
      const store = yield* PostgresStore.make("db", yield* storeConfig({ pool_max_size: 1, pool_min_size: 0, pool_timeout_ms: 300, auto_create: true }))
      // The only connection is busy for 5 s, from the moment the server runs its statement (a busy
      // machine may take a while to get there).
      yield* Effect.forkScoped(store.sql`SELECT pg_sleep(5)`)
      for (let i = 0; i < 400; i++) {
        const [running] = yield* Effect.promise(() =>
          admin(url, [`SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep(5)%' AND pid <> pg_backend_pid()`])
        )
        if (Number((running!.rows[0] as { n: number }).n) > 0) break
        yield* Effect.sleep("25 millis")
      }
      const error = yield* store.acquireRate({
        limiter: { name: "x", store: "db", rate: { _tag: "TokenBucket", ratePerSecond: 10, burst: 1, intervalMs: 100 }, concurrency: undefined, timeoutMs: undefined, failClosed: true, retry: { maxAttempts: 2, baseDelayMs: 1, maxDelayMs: 5 } },
        key: "k",
        cost: 1,
        maxWaitMs: 0
      }).pipe(Effect.flip)
      expect(error.message).toBe(
        "connection pool exhausted: all 1 connections stayed busy for pool_timeout_ms = 300; increase pool_max_size"
      )
    }).pipe(Effect.scoped))

  it.live("waiters of one process on one key are coalesced: no optimistic-lock conflicts", () =>
    Effect.gen(function*() {
      const conflicts = Metrics.conflicts.pipe(Metric.tagged("limiter", "api"), Metric.tagged("store", "db"))
      const before = (yield* Metric.value(conflicts)).count
      yield* Effect.forEach(Array.from({ length: 400 }), () => Effect.scoped(RateLimiter.acquire("api", { key: "hot" })), {
        concurrency: 8
      })
      expect((yield* Metric.value(conflicts)).count - before).toBe(0)
    }).pipe(Effect.provide(limiters({ auto_create: true }, { rate_per_second: 1_000_000 }))))

  it.live("cleanup deletes only rows idle for the given age, limits keep working, and without DELETE it says which grant", () =>
    Effect.gen(function*() {
      const table = fresh("cleanup")
      const store = yield* PostgresStore.make("db", yield* storeConfig({ table_name: table, auto_create: true }))
      const spec = (name: string) => ({
        name,
        store: "db",
        rate: { _tag: "TokenBucket" as const, ratePerSecond: 1, burst: 1, intervalMs: 1_000 },
        concurrency: undefined,
        timeoutMs: undefined,
        failClosed: true,
        retry: { maxAttempts: 3, baseDelayMs: 1, maxDelayMs: 5 }
      })
      const take = (name: string, key: string) =>
        store.acquireRate({ limiter: spec(name), key, cost: 1, maxWaitMs: 0 })
      for (const key of ["old-1", "old-2", "recent"]) expect((yield* take("c", key))._tag).toBe("Admitted")
      // Two keys last used eight days ago; "recent" just now.
      yield* Effect.promise(() =>
        admin(url, [
          `UPDATE ${table} SET last_acquisition_at = now() - interval '8 days', updated_at = now() - interval '8 days' WHERE group_id LIKE '%old-%'`
        ])
      )
      expect(yield* store.cleanup("7 days")).toBe(2)
      const [left] = yield* Effect.promise(() => admin(url, [`SELECT group_id FROM ${table} ORDER BY group_id`]))
      expect(left!.rows.map((r: { group_id: string }) => r.group_id)).toEqual(["r:c:recent"])
      // The recent key is still limited; a cleaned key starts afresh.
      expect((yield* take("c", "recent"))._tag).toBe("RateLimited")
      expect((yield* take("c", "old-1"))._tag).toBe("Admitted")
      const tooYoung = yield* store.cleanup("5 seconds").pipe(Effect.flip)
      expect(tooYoung._tag).toBe("ConfigurationError")

      const role = fresh("nodelete")
      yield* Effect.promise(() => admin(url, [`CREATE ROLE ${role} LOGIN PASSWORD 'nd'`, `GRANT SELECT, INSERT, UPDATE ON ${table} TO ${role}`]))
      const limited = yield* PostgresStore.make("db", yield* storeConfig({ url: asUser(url, role, "nd"), table_name: table }))
      const denied = yield* limited.cleanup("7 days").pipe(Effect.flip)
      expect(denied.message).toBe(
        `permission denied for cleanup on "public"."${table}": it deletes idle rows, so it needs GRANT DELETE ON "public"."${table}" TO the user of the url (nothing else needs DELETE)`
      )
    }).pipe(Effect.scoped))
})

describe("PostgreSQL engine over the program's own PgClient (PostgresStore.layerWith)", () => {
  // The program's client, with the camelCase transform apps often set: the store reads its own column names.
  const client = PgClient.layer({
    url: Redacted.make(url),
    transformResultNames: (name) => name.replace(/_(\w)/g, (_, c: string) => c.toUpperCase()),
    applicationName: "the-program"
  })
  it.live("one pool for the program and its limiters, its name transforms ignored; the limits hold and the client stays open", () =>
    Effect.gen(function*() {
      const table = fresh("shared")
      // The store's url names a role of its own (with no grant on the table): a pool the store opened
      // itself would show under it, whatever other tests run beside this one.
      const role = fresh("shared_role")
      yield* Effect.promise(() => admin(url, [`CREATE ROLE ${role} LOGIN PASSWORD 'sr'`]))
      const limits = RateSync.layer({
        stores: { db: { engine: "postgres", url: asUser(url, role, "sr"), table_name: table, auto_create: true } },
        limiters: {
          rate: { store: "db", rate_per_second: 1 },
          inTransaction: { store: "db", rate_per_second: 1 },
          window: { store: "db", algorithm: "sliding_window", limit: 2, window_seconds: 60 },
          leased: { store: "db", max_concurrent: 1 }
        }
      }).pipe(Layer.provide(PostgresStore.layerWith))
      const connections = (where: string) =>
        Effect.promise(() => admin(url, [`SELECT count(*)::int AS n FROM pg_stat_activity WHERE ${where}`])).pipe(
          Effect.map(([result]) => Number((result!.rows[0] as { n: number }).n))
        )
      yield* Effect.gen(function*() {
        const limiter = yield* RateLimiter
        yield* Effect.scoped(limiter.tryAcquire("rate"))
        expect((yield* Effect.scoped(limiter.tryAcquire("rate")).pipe(Effect.flip))._tag).toBe("RateLimitExceeded")
        yield* Effect.scoped(limiter.tryAcquire("window"))
        yield* Effect.scoped(limiter.tryAcquire("window"))
        expect((yield* Effect.scoped(limiter.tryAcquire("window")).pipe(Effect.flip))._tag).toBe("RateLimitExceeded")
        yield* Effect.scoped(Effect.gen(function*() {
          yield* limiter.acquire("leased")
          expect((yield* Effect.scoped(limiter.tryAcquire("leased")).pipe(Effect.flip))._tag).toBe("RateLimitExceeded")
          expect((yield* limiter.state("leased")).leasesHeld).toBe(1)
        }))
        expect((yield* limiter.state("leased")).leasesHeld).toBe(0)
        // A limiter called inside a transaction of the program's: its write is not part of it, so the
        // program's rollback does not give the slot back (and the row is not locked until it ends).
        const sql = yield* PgClient.PgClient
        const rolledBack = yield* sql.withTransaction(Effect.gen(function*() {
          yield* Effect.scoped(limiter.tryAcquire("inTransaction"))
          return yield* Effect.fail("the program's own failure" as const)
        })).pipe(Effect.flip)
        expect(rolledBack).toBe("the program's own failure")
        // Asked by another process (a store of its own, no cache of this one's writes): the slot is taken.
        const other = yield* Effect.scoped(Effect.flatMap(RateLimiter, (elsewhere) => Effect.scoped(elsewhere.tryAcquire("inTransaction"))).pipe(
          Effect.provide(RateSync.layer({
            stores: { db: { engine: "postgres", url, table_name: table } },
            limiters: { inTransaction: { store: "db", rate_per_second: 1 } }
          }).pipe(Layer.provide(Stores.layer))),
          Effect.flip
        ))
        expect(other._tag).toBe("RateLimitExceeded")
        // No pool of the store's own (at most its LISTEN connection): its statements went through the program's client.
        expect(yield* connections(`usename = '${role}' AND application_name = 'rate-sync'`)).toBe(0)
        expect(yield* connections(`usename = '${role}'`)).toBeLessThanOrEqual(1)
        expect(yield* connections(`application_name = 'the-program'`)).toBeGreaterThan(0)
      }).pipe(Effect.provide(limits))
      // The limiters closed, the program's client still serves.
      const sql = yield* PgClient.PgClient
      expect((yield* sql`SELECT 1 AS one`)[0]).toEqual({ one: 1 })
    }).pipe(Effect.provide(client), Effect.scoped))
})

/**
 * The PostgreSQL engine through a real PgBouncer in transaction pooling mode (started here on a free
 * loopback port, in front of the test database): the rate bound across two stores, lease hand-offs
 * to a waiter in another store with and without `listen_url`, `synchronous_commit = false` set in
 * each writing transaction, a startup parameter PgBouncer refuses failing typed, never admitted, and
 * in session pooling LISTEN through the url, in statement pooling a lease refused as a mistake.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Scope from "effect/Scope"
import { inject } from "vitest"
import * as PostgresStore from "../src/postgres/PostgresStore.js"
import * as RateLimiterModule from "../src/RateLimiter.js"
import * as RateSync from "../src/RateSync.js"
import { decodeSettings, type PostgresStoreConfig, resolvePostgres, toLimiterSpec } from "../src/Settings.js"
import * as Stores from "../src/Stores.js"
import { ConfigurationError } from "../src/Errors.js"
import { admin, scopedClient } from "./support/admin.js"
import * as Bouncer from "./support/pgbouncer.js"

const databaseUrl = inject("databaseUrl")
const installed = Bouncer.findBinary() !== undefined
if (!installed) {
  if (process.env["REQUIRE_PGBOUNCER"] === "1") throw new Error("REQUIRE_PGBOUNCER=1 but pgbouncer is not installed")
  console.warn("WARNING: pgbouncer is not installed (apt-get install -y pgbouncer): the PgBouncer tests are skipped")
}

let n = 0
const fresh = (prefix: string) => `${prefix}_${process.pid}_${n++}`

const median = (values: ReadonlyArray<number>) => {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

/** Decoded settings for one store `db` and the given limiters. */
const settingsFor = (store: Record<string, unknown>, limiters: Record<string, Record<string, unknown>>) =>
  decodeSettings({ stores: { db: { engine: "postgres", timing_margin_ms: 0, ...store } }, limiters })

/** A store and a limiter service on it, both for the scope: what one process of an application has. */
const processOf = (store: Record<string, unknown>, limiters: Record<string, Record<string, unknown>>) =>
  Effect.gen(function*() {
    const settings = yield* settingsFor(store, Object.fromEntries(Object.entries(limiters).map(([k, v]) => [k, { store: "db", ...v }])))
    const config = settings.stores["db"] as PostgresStoreConfig
    const db = yield* PostgresStore.make("db", config)
    const limiter = yield* RateLimiterModule.make({
      stores: new Map([["db", db]]),
      limiters: Object.entries(settings.limiters).map(([name, l]) => toLimiterSpec(name, l))
    })
    return { db, limiter, settings }
  })

/** Warnings logged while `effect` runs. */
const capturingWarnings = () => {
  const lines: Array<string> = []
  const logger = Logger.make(({ logLevel, message }) => {
    if (logLevel._tag === "Warning") lines.push(Array.isArray(message) ? message.join(" ") : String(message))
  })
  return { lines, layer: Logger.replace(Logger.defaultLogger, logger) }
}

describe.skipIf(!installed)(`through ${Bouncer.version() ?? "PgBouncer (not installed)"}, pool_mode = transaction unless a test says otherwise`, () => {
  let bouncer: Bouncer.PgBouncer | undefined
  const viaBouncer = () => bouncer!.url

  beforeAll(async () => {
    bouncer = await Bouncer.start({ databaseUrl, poolMode: "transaction", poolSize: 8 })
  }, 30_000)
  afterAll(async () => {
    await bouncer?.stop()
  }, 30_000)

  it.live("the token bucket's bound holds across two stores: at most burst + rate x T admissions in any T", () =>
    Effect.gen(function*() {
      const table = fresh("pgb_rate")
      const rate = 10
      const burst = 5
      const runMs = 4_000
      const spec = { rate_per_second: rate, burst }
      const a = yield* processOf({ url: viaBouncer(), table_name: table, auto_create: true }, { api: spec })
      const b = yield* processOf({ url: viaBouncer(), table_name: table, auto_create: true }, { api: spec })
      /** Each admission with the interval its decision was made in (sent, answered), in ms. */
      const admitted: Array<{ readonly sent: number; readonly answered: number; readonly by: string }> = []
      const failures: Array<string> = []
      const started = performance.now()
      const hammer = (limiter: typeof a.limiter, by: string) =>
        Effect.gen(function*() {
          while (performance.now() - started < runMs) {
            const sent = performance.now()
            const exit = yield* Effect.exit(Effect.scoped(limiter.tryAcquire("api", { key: "k" })))
            const answered = performance.now()
            if (Exit.isSuccess(exit)) admitted.push({ sent, answered, by })
            else {
              const error = Cause.failureOption(exit.cause)
              if (error._tag === "None" || error.value._tag !== "RateLimitExceeded") failures.push(Cause.pretty(exit.cause))
              yield* Effect.sleep("5 millis")
            }
          }
        })
      yield* Effect.all([hammer(a.limiter, "a"), hammer(a.limiter, "a"), hammer(a.limiter, "a"), hammer(b.limiter, "b"), hammer(b.limiter, "b"), hammer(b.limiter, "b")], {
        concurrency: "unbounded"
      })
      expect(failures).toEqual([])
      const elapsed = performance.now() - started
      // The whole run first (a limit far exceeded fails here, before the windows' cubic count).
      expect(admitted.length).toBeLessThanOrEqual(burst + rate * elapsed / 1000)
      // Every window between one admission's sending and another's answer holds every admission whose
      // whole exchange lies inside it, and the database decided each of those inside the window.
      let worst = { count: 0, allowed: Infinity, excess: -Infinity }
      for (const from of admitted) {
        for (const to of admitted) {
          if (to.answered < from.sent) continue
          const count = admitted.filter((x) => x.sent >= from.sent && x.answered <= to.answered).length
          const allowed = burst + rate * (to.answered - from.sent) / 1000
          if (count - allowed > worst.excess) worst = { count, allowed, excess: count - allowed }
        }
      }
      console.log(`${admitted.length} admissions in ${(elapsed / 1000).toFixed(2)} s; tightest window: ${worst.count} of ${worst.allowed.toFixed(2)} allowed`)
      expect(worst.excess, `${worst.count} admissions where ${worst.allowed.toFixed(2)} are allowed`).toBeLessThanOrEqual(0)
      // Not vacuous: the limit was reached, and both stores took part of it.
      expect(admitted.filter((x) => x.by === "a").length).toBeGreaterThan(0)
      expect(admitted.filter((x) => x.by === "b").length).toBeGreaterThan(0)
      expect(admitted.length).toBeGreaterThanOrEqual(burst + rate * (elapsed / 1000) * 0.6)
    }).pipe(Effect.scoped), 60_000)

  /**
   * Hand-offs of one lease (max_concurrent = 1) from a holder in one store to a waiter in another:
   * the holder releases 200 ms after the waiter was refused and started waiting, so a waiter nobody
   * tells wakes at its re-check, about 800 ms later. Returns each hand-off's time (release started to
   * waiter admitted), and the waiter's store, still open for the scope.
   */
  const handOffs = (waiterStore: Record<string, unknown>, count: number) =>
    Effect.gen(function*() {
      const table = fresh("pgb_lease")
      const lease = { max_concurrent: 1, lease_ttl_seconds: 30 }
      const holder = yield* processOf({ url: viaBouncer(), table_name: table, auto_create: true }, { lease })
      const waiter = yield* processOf({ ...waiterStore, table_name: table, auto_create: true }, { lease })
      const times: Array<number> = []
      for (let i = 0; i < count; i++) {
        const held = yield* Scope.make()
        yield* Scope.extend(holder.limiter.acquire("lease", { key: "k" }), held)
        // Given back as soon as it is had, before the next round.
        const waiting = yield* Effect.fork(Effect.scoped(
          Effect.flatMap(waiter.limiter.acquire("lease", { key: "k" }), () => Effect.sync(() => performance.now()))
        ))
        // The waiter asked, was refused and waits (subscribed to releases) before the holder lets go.
        for (let tries = 0; tries < 400 && waiter.db.waiters().subscribed === 0; tries++) yield* Effect.sleep("5 millis")
        expect(waiter.db.waiters().subscribed).toBe(1)
        yield* Effect.sleep("200 millis")
        const released = performance.now()
        yield* Scope.close(held, Exit.void)
        const admittedAt = yield* Fiber.join(waiting)
        // Never before the holder let go: one holder at a time.
        expect(admittedAt).toBeGreaterThan(released)
        times.push(admittedAt - released)
      }
      return { times, waiter: waiter.db }
    })

  /** The listener's status once its probe was answered or timed out (within 10 s). */
  const settled = (db: PostgresStore.PostgresStore) =>
    Effect.gen(function*() {
      for (let tries = 0; tries < 200 && !["hears", "deaf"].includes(db.listening()); tries++) yield* Effect.sleep("50 millis")
      return db.listening()
    })

  it.live("with listen_url, a release wakes a waiter of another store at once (median well below the 1 s re-check)", () =>
    Effect.gen(function*() {
      const warnings = capturingWarnings()
      const { times, status } = yield* handOffs({ url: viaBouncer(), listen_url: databaseUrl }, 9).pipe(
        Effect.flatMap(({ times, waiter }) => Effect.map(settled(waiter), (status) => ({ times, status }))),
        Effect.provide(warnings.layer),
        Effect.scoped
      )
      console.log(`hand-offs with listen_url (ms): ${times.map((t) => t.toFixed(1)).join(", ")}; median ${median(times).toFixed(1)}`)
      expect(status).toBe("hears")
      expect(warnings.lines.filter((line) => line.includes("LISTEN"))).toEqual([])
      // ~20 ms on a quiet machine; a waiter left to its re-check takes ~800 ms here.
      expect(median(times)).toBeLessThan(300)
      for (const time of times) expect(time).toBeLessThan(1_500)
    }), 60_000)

  it.live("without listen_url, LISTEN through the pooler hears nothing: said once, and hand-offs stay correct by the re-check", () =>
    Effect.gen(function*() {
      const warnings = capturingWarnings()
      const { times, status } = yield* handOffs({ url: viaBouncer() }, 3).pipe(
        Effect.flatMap(({ times, waiter }) => Effect.map(settled(waiter), (status) => ({ times, status }))),
        Effect.provide(warnings.layer),
        Effect.scoped
      )
      console.log(`hand-offs without listen_url (ms): ${times.map((t) => t.toFixed(1)).join(", ")}`)
      // Every waiter got the lease, one holder at a time (handOffs checks), by its re-check at the latest.
      for (const time of times) expect(time).toBeLessThan(2_500)
      expect(status).toBe("deaf")
      // Once per LISTEN connection: the holder's store listens too (a lease caller subscribes before it asks).
      const said = warnings.lines.filter((line) => line.includes("the LISTEN connection (url) heard nothing"))
      expect(said.length).toBeGreaterThanOrEqual(1)
      expect(said.length).toBeLessThanOrEqual(2)
      for (const line of said) expect(line).toMatch(/set listen_url to a direct connection to the same database as the url/)
    }), 60_000)

  it.live("in session pooling, LISTEN through the url holds: fast hand-offs without listen_url", () =>
    Effect.gen(function*() {
      const session = yield* Effect.acquireRelease(
        Effect.promise(() => Bouncer.start({ databaseUrl, poolMode: "session", poolSize: 8 })),
        (started) => Effect.promise(() => started.stop())
      )
      const { times, status } = yield* handOffs({ url: session.url }, 5).pipe(
        Effect.flatMap(({ times, waiter }) => Effect.map(settled(waiter), (status) => ({ times, status })))
      )
      console.log(`hand-offs through session pooling (ms): ${times.map((t) => t.toFixed(1)).join(", ")}; median ${median(times).toFixed(1)}`)
      expect(status).toBe("hears")
      expect(median(times)).toBeLessThan(300)
    }).pipe(Effect.scoped), 60_000)

  it.live("synchronous_commit = false holds in every writing transaction's commit, and never beyond it", () =>
    Effect.gen(function*() {
      const table = fresh("pgb_sync")
      const log = `${table}_log`
      yield* Effect.promise(() =>
        admin(databaseUrl, [
          ...PostgresStore.createTableSql({ schema_name: "public", table_name: table, unlogged: false } as PostgresStoreConfig),
          `CREATE TABLE ${log} (id bigserial PRIMARY KEY, op text, group_id text, setting text)`,
          // Runs at commit (deferred), inside the committing transaction: the setting its commit uses.
          `CREATE FUNCTION ${log}_fn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
             INSERT INTO ${log} (op, group_id, setting) VALUES (TG_OP, NEW.group_id, current_setting('synchronous_commit'));
             RETURN NULL; END $$`,
          `CREATE CONSTRAINT TRIGGER ${log}_trg AFTER INSERT OR UPDATE ON ${table}
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ${log}_fn()`
        ])
      )
      let seen = 0
      /** The settings of the commits since the last call. */
      const commits = Effect.promise(async () => {
        const [result] = await admin(databaseUrl, [`SELECT id, setting FROM ${log} WHERE id > ${seen} ORDER BY id`])
        const rows = result!.rows as Array<{ id: string; setting: string }>
        if (rows.length > 0) seen = Number(rows.at(-1)!.id)
        return rows.map((row) => row.setting)
      })
      const limiters = {
        bucket: { rate_per_second: 1_000, burst: 1 },
        window: { algorithm: "sliding_window", limit: 5, window_seconds: 1 },
        lease: { max_concurrent: 1, rate_per_second: 1_000, lease_ttl_seconds: 0.6 }
      }
      const steps = (synchronous_commit: boolean) =>
        Effect.gen(function*() {
          const { db, limiter, settings } = yield* processOf(
            { url: viaBouncer(), table_name: table, synchronous_commit, pool_max_size: 2, pool_min_size: 0 },
            limiters
          )
          const results: Record<string, ReadonlyArray<string>> = {}
          yield* limiter.consume("bucket", { key: `b${synchronous_commit}` })
          results["token bucket"] = yield* commits
          yield* limiter.consume("window", { key: `w${synchronous_commit}` })
          results["sliding window"] = yield* commits
          yield* Effect.scoped(Effect.gen(function*() {
            yield* limiter.acquire("lease", { key: `l${synchronous_commit}` })
            results["lease"] = yield* commits
            // Renewed every third of the ttl (200 ms).
            yield* Effect.sleep("450 millis")
            results["renewal"] = yield* commits
          }))
          results["release"] = yield* commits
          yield* limiter.backoff("bucket", { key: `b${synchronous_commit}`, retryAfter: "10 millis" })
          results["backoff"] = yield* commits
          // A refund, as a caller that gave up its slot sends it.
          const spec = toLimiterSpec("bucket", settings.limiters["bucket"]!)
          const request = { limiter: spec, key: `r${synchronous_commit}`, cost: 1, maxWaitMs: Infinity }
          yield* db.acquireRate(request)
          yield* commits
          const second = yield* db.acquireRate(request)
          yield* commits
          if (second._tag !== "Admitted" || second.reservation === undefined) return yield* Effect.die("no reservation to refund")
          yield* db.refund(spec, request.key, 1, second.reservation)
          results["refund"] = yield* commits
          return results
        }).pipe(Effect.scoped)
      const off = yield* steps(false)
      const on = yield* steps(true)
      for (const [step, settings] of Object.entries(off)) {
        expect(settings.length, `${step}: no commit logged`).toBeGreaterThan(0)
        expect(settings, `${step} with synchronous_commit = false`).toEqual(settings.map(() => "off"))
      }
      for (const [step, settings] of Object.entries(on)) {
        expect(settings.length, `${step}: no commit logged`).toBeGreaterThan(0)
        expect(settings, `${step} with synchronous_commit = true`).toEqual(settings.map(() => "on"))
      }
      // The setting is the transaction's own: the server sessions PgBouncer hands to others keep theirs.
      const after = yield* Effect.promise(() =>
        Promise.all(Array.from({ length: 8 }, () => admin(viaBouncer(), ["SHOW synchronous_commit"])))
      )
      expect(after.map(([result]) => result!.rows[0].synchronous_commit)).toEqual(after.map(() => "on"))
    }), 60_000)

  it.live("a decision write past operation_timeout_ms is cancelled on the server through the pooler", () =>
    Effect.gen(function*() {
      const table = fresh("pgb_cancel")
      const a = yield* processOf({ url: viaBouncer(), table_name: table, auto_create: true, operation_timeout_ms: 500 }, {
        api: { rate_per_second: 1000, fail_closed: true }
      })
      yield* a.limiter.consume("api", { key: "k" })
      // Another session, straight to PostgreSQL, holds the row: the next write waits for its lock.
      const direct = yield* scopedClient(databaseUrl)
      const locker = yield* scopedClient(databaseUrl)
      yield* Effect.promise(() => locker.query(`BEGIN; SELECT * FROM ${table} FOR UPDATE`))
      const waiting = Effect.promise(() =>
        direct.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND wait_event_type = 'Lock' AND query LIKE '%${table}%'`)
      ).pipe(Effect.map((result) => Number(result.rows[0]?.n)))
      const error = yield* Effect.flip(a.limiter.consume("api", { key: "k" }))
      expect(error._tag).toBe("StoreTimeout")
      // Cancelled through PgBouncer, which routes the cancel request to the server session it chose
      // (checked for up to 5 s, for a loaded machine); a statement left running would wait for the lock.
      let left = yield* waiting
      for (let i = 0; i < 100 && left > 0; i++) left = yield* Effect.zipRight(Effect.sleep("50 millis"), waiting)
      expect(left).toBe(0)
      yield* Effect.promise(() => locker.query("COMMIT"))
    }).pipe(Effect.scoped), 30_000)

  it.live("a startup parameter PgBouncer refuses fails the layer as StoreMisconfigured with the fix, never admitted", () =>
    Effect.gen(function*() {
      const url = new URL(viaBouncer())
      url.searchParams.set("options", "-c synchronous_commit=off")
      const error = yield* Layer.build(
        RateSync.layer({
          stores: { db: { engine: "postgres", url: url.toString(), auto_create: true, table_name: fresh("pgb_opt"), pool_timeout_ms: 2_000 } },
          limiters: { api: { store: "db", rate_per_second: 10, fail_closed: false } }
        }).pipe(Layer.provide(Stores.layer))
      ).pipe(Effect.scoped, Effect.flip)
      expect(error._tag).toBe("StoreMisconfigured")
      expect(error._tag === "StoreMisconfigured" && error.reason).toBe("statement")
      expect(error.message).toMatch(/unsupported startup parameter: options/)
      expect(error.message).toMatch(/Remove them from the url \(options=\.\.\.\) and from PGOPTIONS; synchronous_commit = false is a store key/)
      // A database PgBouncer does not serve is a mistake too (08P01 as well), not an outage.
      const unknown = new URL(viaBouncer())
      unknown.pathname = "/nosuchdb"
      const database = yield* Layer.build(
        RateSync.layer({
          stores: { db: { engine: "postgres", url: unknown.toString(), pool_timeout_ms: 2_000 } },
          limiters: { api: { store: "db", rate_per_second: 10, fail_closed: false } }
        }).pipe(Layer.provide(Stores.layer))
      ).pipe(Effect.scoped, Effect.flip)
      expect(database._tag === "StoreMisconfigured" && database.reason).toBe("database")
      expect(database.message).toMatch(/^the pooler knows no such database \(08P01: no such database: nosuchdb\)/)
    }), 30_000)
})

describe.skipIf(!installed)("through PgBouncer, pool_mode = statement", () => {
  it.live("rate limits pass; a lease, one transaction, fails as StoreMisconfigured with the fix, never admitted", () =>
    Effect.gen(function*() {
      const statement = yield* Effect.acquireRelease(
        Effect.promise(() => Bouncer.start({ databaseUrl, poolMode: "statement", poolSize: 4 })),
        (started) => Effect.promise(() => started.stop())
      )
      const built = yield* Layer.build(
        RateSync.layer({
          stores: { db: { engine: "postgres", url: statement.url, auto_create: true, table_name: fresh("pgb_stmt") } },
          limiters: {
            rate: { store: "db", rate_per_second: 100, fail_closed: false },
            lease: { store: "db", max_concurrent: 2, fail_closed: false }
          }
        }).pipe(Layer.provide(Stores.layer))
      )
      const limiter = Context.get(built, RateLimiterModule.RateLimiter)
      const permit = yield* limiter.consume("rate")
      expect(permit.degraded).toBe(false)
      // fail_closed = false: an outage would be admitted (degraded); this is no outage.
      const error = yield* Effect.scoped(limiter.acquire("lease")).pipe(Effect.flip)
      expect(error._tag).toBe("StoreMisconfigured")
      expect(error.message).toMatch(
        /^the pooler refused a transaction \(08P01: transaction blocks not allowed in statement pooling mode\): leases take one transaction each, which PgBouncer's pool_mode = statement forbids; use pool_mode = transaction \(or session\)/
      )
    }).pipe(Effect.scoped), 30_000)
})

describe("listen_url as a store key", () => {
  it.effect("is optional, and read as the url is: deferred until the store connects, naming its key", () =>
    Effect.gen(function*() {
      const settings = yield* decodeSettings({ stores: { db: { engine: "postgres", url: "postgres://u@h/d" } } })
      expect(settings.stores["db"]).not.toHaveProperty("listen_url")
      const base = settings.stores["db"] as PostgresStoreConfig
      const read = yield* resolvePostgres("db", { ...base, listen_url: Effect.succeed("postgres://u@direct/d") })
      expect(read.listen_url).toBe("postgres://u@direct/d")
      const empty = yield* resolvePostgres("db", { ...base, listen_url: Effect.succeed("  ") }).pipe(Effect.flip)
      expect(empty).toBeInstanceOf(ConfigurationError)
      expect(empty.message).toBe("stores.db.listen_url: Expected a non-empty string")
      const refused = yield* decodeSettings({ stores: { db: { engine: "postgres", url: "postgres://u@h/d", listen_url: "" } } }).pipe(Effect.flip)
      expect(refused.message).toBe("stores.db.listen_url: Expected a non-empty string")
    }))
})

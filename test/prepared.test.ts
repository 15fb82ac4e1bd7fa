/**
 * The decision writes' named statements (src/postgres/prepared.ts), on a real server: prepared once
 * per session, sent again unnamed when a session does not hold them (a pooler's), and a statement
 * whose caller stops waiting cancelled on the server before its connection is used again.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Schedule from "effect/Schedule"
import { SqlError } from "@effect/sql/SqlError"
import pg from "pg"
import { scopedClient } from "./support/admin.js"
import { inject } from "vitest"
import * as Prepared from "../src/postgres/prepared.js"

const url = inject("databaseUrl")
const table = `prepared_${process.pid}`
const timedOut = () => "timed out" as const
const long = { ms: 30_000, timedOut }

/** A pool of one connection, so every statement shares one server session. */
const onePool = Effect.acquireRelease(
  Effect.sync(() => {
    const pool = new pg.Pool({ connectionString: url, max: 1 })
    // As the store's own pool: an idle connection that dies is dropped, not thrown.
    pool.on("error", () => {})
    return pool
  }),
  (pool) => Effect.promise(() => pool.end())
)

/** Asks again every 50 ms until `until` holds, for at most 5 s (a loaded machine's scheduling): the last answer. */
const poll = <A>(ask: Effect.Effect<A>, until: (a: A) => boolean) =>
  Effect.merge(Effect.retry(Effect.filterOrFail(ask, until, (a) => a), { schedule: Schedule.spaced("50 millis"), times: 100 }))

const query = (pool: pg.Pool, text: string) => Effect.promise(() => pool.query(text))

const setup = (pool: pg.Pool) =>
  query(pool, `DROP TABLE IF EXISTS ${table}; CREATE TABLE ${table} (id text PRIMARY KEY, n int NOT NULL)`)

const upsert = `INSERT INTO ${table} AS t (id, n) VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET n = t.n + 1 RETURNING n`

/** The backends of this database (other than the asker's) running a statement on `table`. */
const running = (pool: pg.Pool) =>
  Effect.map(
    query(pool, `SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() AND query LIKE '%${table} AS t%'`),
    (result) => Number(result.rows[0]?.n)
  )

/**
 * A table whose row `id` exists, then is held by another session for the scope: `stuck` runs a
 * statement that waits for that lock (seen waiting on the server before it returns), `unlock` frees it.
 */
const heldRow = (pool: pg.Pool, prepared: Prepared.Prepared, id: string) =>
  Effect.gen(function*() {
    const watcher = yield* onePool
    yield* setup(pool)
    yield* prepared.run(upsert, [id], long)
    const locker = yield* scopedClient(url)
    yield* Effect.promise(() => locker.query(`BEGIN; SELECT * FROM ${table} FOR UPDATE`))
    const stuck = <A, E>(statement: Effect.Effect<A, E>) =>
      Effect.tap(Effect.fork(statement), () => Effect.map(poll(running(watcher), (n) => n === 1), (n) => expect(n).toBe(1)))
    return {
      stuck,
      /** Whether no statement of ours still waits for the lock (asked again for up to 5 s). */
      cancelled: Effect.map(poll(running(watcher), (n) => n === 0), (n) => n === 0),
      unlock: Effect.promise(() => locker.query("COMMIT"))
    }
  })

describe("named statements on the store's pool", () => {
  it.live("a statement is prepared once on its session, and runs as before", () =>
    Effect.gen(function*() {
      const pool = yield* onePool
      yield* setup(pool)
      const prepared = Prepared.make(pool)
      const first = yield* prepared.run<{ n: number }, "timed out">(upsert, ["a"], long)
      const second = yield* prepared.run<{ n: number }, "timed out">(upsert, ["a"], long)
      expect([first[0]?.n, second[0]?.n]).toEqual([1, 2])
      const names = yield* query(pool, "SELECT name FROM pg_prepared_statements")
      expect(names.rows.map((row: { name: string }) => row.name)).toEqual([expect.stringMatching(/^rate_sync_[0-9a-f]{20}$/)])
      expect(prepared.named()).toBe(true)
    }).pipe(Effect.scoped))

  it.live("a session that lost the statement (a pooler's) gets it unnamed, and so does every later one", () =>
    Effect.gen(function*() {
      const pool = yield* onePool
      yield* setup(pool)
      const prepared = Prepared.make(pool)
      yield* prepared.run(upsert, ["b"], long)
      // The driver still thinks the session holds it, as it would after a pooler moved it to another.
      yield* query(pool, "DEALLOCATE ALL")
      const rows = yield* prepared.run<{ n: number }, "timed out">(upsert, ["b"], long)
      expect(rows[0]?.n).toBe(2)
      expect(prepared.named()).toBe(false)
      const names = yield* query(pool, "SELECT name FROM pg_prepared_statements")
      expect(names.rows).toEqual([])
    }).pipe(Effect.scoped))

  it.live("past its bound a statement fails with the bound's error and is cancelled on the server", () =>
    Effect.gen(function*() {
      const pool = yield* onePool
      const prepared = Prepared.make(pool)
      const row = yield* heldRow(pool, prepared, "c")
      const fiber = yield* row.stuck(Effect.flip(prepared.run(upsert, ["c"], { ms: 300, timedOut })))
      expect(yield* Fiber.join(fiber)).toBe("timed out")
      expect(yield* row.cancelled).toBe(true)
      yield* row.unlock
      // The connection is back and usable, and the cancelled statement wrote nothing.
      const rows = yield* prepared.run<{ n: number }, "timed out">(upsert, ["c"], long)
      expect(rows[0]?.n).toBe(2)
    }).pipe(Effect.scoped))

  it.live("a caller interrupted while its statement waits has it cancelled, and the connection returns", () =>
    Effect.gen(function*() {
      const pool = yield* onePool
      const prepared = Prepared.make(pool)
      const row = yield* heldRow(pool, prepared, "d")
      yield* Fiber.interrupt(yield* row.stuck(prepared.run(upsert, ["d"], long)))
      expect(yield* row.cancelled).toBe(true)
      yield* row.unlock
      const rows = yield* prepared.run<{ n: number }, "timed out">(upsert, ["d"], long)
      expect(rows[0]?.n).toBe(2)
    }).pipe(Effect.scoped))

  it.live("a plan the table's DDL changed is sent again unnamed", () =>
    Effect.gen(function*() {
      const pool = yield* onePool
      yield* setup(pool)
      const prepared = Prepared.make(pool)
      yield* prepared.run(upsert, ["e"], long)
      // The statement's result type changes under it: PostgreSQL refuses the prepared plan (0A000).
      yield* query(pool, `ALTER TABLE ${table} ALTER COLUMN n TYPE bigint`)
      const rows = yield* prepared.run<{ n: string }, "timed out">(upsert, ["e"], long)
      expect(rows[0]?.n).toBe("2")
      expect(prepared.named()).toBe(false)
    }).pipe(Effect.scoped))

  it.live("a connection lost under a statement fails that statement alone; the pool goes on", () =>
    Effect.gen(function*() {
      const pool = yield* onePool
      let lent: pg.PoolClient | undefined
      pool.on("acquire", (client) => (lent = client))
      const prepared = Prepared.make(pool)
      const row = yield* heldRow(pool, prepared, "f")
      const fiber = yield* row.stuck(Effect.flip(prepared.run(upsert, ["f"], long)))
      // The socket goes without a word from the server (a reset, a pooler gone): the driver emits an
      // error event on the lent connection at once, which would end this process unless listened to.
      lent?.connection.stream.destroy()
      const error = yield* Fiber.join(fiber)
      expect(error).toBeInstanceOf(SqlError)
      yield* row.unlock
      const rows = yield* prepared.run<{ n: number }, "timed out">(upsert, ["f"], long)
      // The server may still run the lost statement once the lock is free (it notices the socket
      // only when it writes to it): its unit is spent, never given twice.
      expect([2, 3]).toContain(rows[0]?.n)
    }).pipe(Effect.scoped))

  it.live("a bound shorter than the pool's own wait: the caller leaves, and the pool's late answer is harmless", () =>
    Effect.gen(function*() {
      const pool = yield* Effect.acquireRelease(
        Effect.sync(() => new pg.Pool({ connectionString: url, max: 1, connectionTimeoutMillis: 300 })),
        (p) => Effect.promise(() => p.end())
      )
      pool.on("error", () => {})
      yield* setup(pool)
      const prepared = Prepared.make(pool)
      const taken = yield* Effect.promise(() => pool.connect())
      const error = yield* Effect.flip(prepared.run(upsert, ["g"], { ms: 100, timedOut }))
      expect(error).toBe("timed out")
      // pg-pool's wait ends at 300 ms with an error and no release function: nothing may throw then.
      yield* Effect.sleep("500 millis")
      taken.release()
      const rows = yield* prepared.run<{ n: number }, "timed out">(upsert, ["g"], long)
      expect(rows[0]?.n).toBe(1)
    }).pipe(Effect.scoped))
})

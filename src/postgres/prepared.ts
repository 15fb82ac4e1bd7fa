/**
 * The store's decision writes as named prepared statements on its own pool: PostgreSQL plans such a
 * statement once per connection instead of on every call, and planning is about half of what a
 * batched write costs the server (measured: 0.68 ms against 0.37 ms a statement for five keys). The
 * statements are the same SQL (compiled by the store's client from the same fragments); only the way
 * they are sent differs, so a program's own client (`shared`) still runs them through @effect/sql.
 *
 * A pooler may hand the statement's next use to a server session that never prepared it (PgBouncer
 * before 1.21, or with max_prepared_statements = 0, in transaction or statement pooling): PostgreSQL
 * then refuses it before running anything (NOT_PREPARED), and the store sends that statement again
 * unnamed, within what is left of its bound, and every statement after it the same way.
 *
 * A caller that stops waiting (interrupted, or bounded by operation_timeout_ms) has the statement
 * cancelled on the server (`hold` says when its connection may be used again).
 */
import { createHash } from "node:crypto"
import * as net from "node:net"
import { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import type pg from "pg"
import { startTimer } from "../internal/timer.js"

/** The statements a store names (a few texts per table); beyond it they go unnamed. */
const MAX_NAMES = 64

/**
 * The protocol's CancelRequest code (1234 << 16 | 5678), and how long its connection, and then the
 * cancelled statement, may take.
 */
const CANCEL_REQUEST_CODE = 80877102
const CANCEL_TIMEOUT_MS = 5_000

/**
 * PostgreSQL's refusals of a named statement, before it runs: one a pooler's server session does not
 * hold (26000), one another client prepared there under the name (42P05), and a plan the table's DDL
 * changed under it (0A000, "cached plan must not change result type").
 */
const NOT_PREPARED = ["26000", "42P05", "0A000"]

const hasCode = (cause: unknown, code: string): boolean =>
  typeof cause === "object" && cause !== null && "code" in cause && cause.code === code

/** How long a statement may take (ms of the fiber's clock), and what its caller learns past it. */
export interface Bound<E> {
  readonly ms: number
  readonly timedOut: () => E
}

export interface Prepared {
  /**
   * Runs `text` with `values` on the store's pool: its rows, the driver's error as a SqlError, or
   * `bound.timedOut()` once `bound.ms` have passed (the statement then cancelled on the server).
   */
  readonly run: <Row extends object, E>(text: string, values: ReadonlyArray<unknown>, bound: Bound<E>) => Effect.Effect<ReadonlyArray<Row>, SqlError | E>
  /** Whether statements are still sent named (false once a pooler refused one). */
  readonly named: () => boolean
}

/**
 * Best effort, as the driver's own: the statement may have ended meanwhile. A protocol CancelRequest
 * on a connection of its own, so it needs no slot of a pool that stuck statements may fill, and a
 * pooler routes it to the right server session (a pid through a pooler is the pooler's own).
 * `done(sent)`: whether the request went out and its connection closed cleanly.
 */
const sendCancel = (client: pg.PoolClient, done: (sent: boolean) => void) => {
  const pid = "processID" in client ? client.processID : undefined
  const secret = "secretKey" in client ? client.secretKey : undefined
  if (typeof pid !== "number" || typeof secret !== "number") return done(false)
  const request = Buffer.alloc(16)
  request.writeInt32BE(16, 0)
  request.writeInt32BE(CANCEL_REQUEST_CODE, 4)
  request.writeInt32BE(pid, 8)
  request.writeInt32BE(secret, 12)
  const socket = client.host.startsWith("/")
    ? net.connect(`${client.host}/.s.PGSQL.${client.port}`)
    : net.connect(client.port, client.host)
  let failed = false
  socket.setTimeout(CANCEL_TIMEOUT_MS, () => (failed = true, socket.destroy()))
  socket.on("error", () => (failed = true))
  socket.on("close", () => done(!failed))
  // The server (or pooler) closes the connection once it has read the request: closing it first can
  // drop the request (PgBouncer 1.18 reads the end before the packet, and may crash on it).
  socket.write(request)
}

/**
 * A connection held for one statement. It goes back to the pool once the statement has ended and,
 * when one was sent, the cancel request too. It is discarded instead when it broke, when a cancel
 * may still reach its next statement (the statement ended otherwise than cancelled, or the request
 * may not have gone out whole), and when a cancelled statement is still running CANCEL_TIMEOUT_MS
 * later (a half-open connection would keep its pool slot for ever). `onBroken`: the connection
 * failed (pg-pool leaves no listener of its own on a connection it lent: without one the error
 * would end the process).
 */
const hold = (client: pg.PoolClient, release: (error?: Error) => void, onBroken: (error: Error) => void) => {
  let released = false
  let pending = 1
  let cancelled = false
  let discard: Error | undefined
  const onError = (error: Error) => {
    discard ??= error
    onBroken(error)
  }
  client.on("error", onError)
  const giveBack = () => {
    if (released) return
    released = true
    client.off("error", onError)
    release(discard)
  }
  const settle = () => {
    if (--pending === 0) giveBack()
  }
  return {
    /** The statement ended: `error` when it failed. */
    ended: (error: unknown) => {
      if (cancelled && !hasCode(error, "57014")) discard ??= new Error("a cancel request may still reach this connection")
      settle()
    },
    /** Sent a statement that threw before it went out (the connection's state is unknown). */
    broke: (error: Error) => {
      discard ??= error
      settle()
    },
    cancel: () => {
      if (cancelled || released) return
      cancelled = true
      pending++
      sendCancel(client, (sent) => {
        if (!sent) discard ??= new Error("a cancel request that did not go out cleanly")
        settle()
      })
      // A plain timer: the connection's upkeep, outside any decision's time.
      setTimeout(() => {
        discard ??= new Error("a cancelled statement still running")
        giveBack()
      }, CANCEL_TIMEOUT_MS).unref()
    }
  }
}

export const make = (pool: pg.Pool): Prepared => {
  const names = new Map<string, string>()
  let named = true

  const nameOf = (text: string): string | undefined => {
    if (!named) return undefined
    let name = names.get(text)
    if (name === undefined && names.size < MAX_NAMES) {
      name = `rate_sync_${createHash("sha1").update(text).digest("hex").slice(0, 20)}`
      names.set(text, name)
    }
    return name
  }

  const runOnce = <Row extends object, E>(text: string, values: ReadonlyArray<unknown>, name: string | undefined, bound: Bound<E>) =>
    Effect.clockWith((clock) => {
      let expired = false
      /** Ends the wait with `bound.timedOut()`, once it has begun; before that, marks it expired. */
      let expire = () => {
        expired = true
      }
      return Effect.flatMap(startTimer(clock, bound.ms, () => expire()), (stopTimer) =>
        Effect.async<ReadonlyArray<Row>, SqlError | E>((resume) => {
          let gone = false
          let held: ReturnType<typeof hold> | undefined
          const finish = (result: Effect.Effect<ReadonlyArray<Row>, SqlError | E>) => {
            if (gone) return
            gone = true
            stopTimer()
            resume(result)
          }
          const leave = () => {
            gone = true
            stopTimer()
            held?.cancel()
          }
          expire = () => {
            if (gone) return
            leave()
            resume(Effect.fail(bound.timedOut()))
          }
          if (expired) return expire()
          pool.connect((cause, acquired, release) => {
            // pg-pool's own wait for a connection ends with `cause` alone (no release function).
            if (cause !== undefined || acquired === undefined) return finish(Effect.fail(new SqlError({ cause, message: "Failed to acquire connection" })))
            if (gone) return release()
            const connection = hold(acquired, release, (error) => finish(Effect.fail(new SqlError({ cause: error, message: "Connection error" }))))
            held = connection
            try {
              acquired.query<Row>({ text, values: [...values], ...(name === undefined ? {} : { name }) }, (error, result) => {
                finish(error ? Effect.fail(new SqlError({ cause: error, message: "Failed to execute statement" })) : Effect.succeed(result.rows))
                connection.ended(error)
              })
            } catch (error) {
              finish(Effect.fail(new SqlError({ cause: error, message: "Failed to execute statement" })))
              connection.broke(error instanceof Error ? error : new Error(String(error)))
            }
          })
          return Effect.sync(() => {
            if (!gone) leave()
          })
        }))
    })

  const run = <Row extends object, E>(text: string, values: ReadonlyArray<unknown>, bound: Bound<E>): Effect.Effect<ReadonlyArray<Row>, SqlError | E> => {
    const name = nameOf(text)
    if (name === undefined) return runOnce<Row, E>(text, values, undefined, bound)
    return Effect.clockWith((clock) => {
      const started = clock.unsafeCurrentTimeMillis()
      return Effect.catchIf(
        runOnce<Row, E>(text, values, name, bound),
        (error): error is SqlError => error instanceof SqlError && NOT_PREPARED.some((code) => hasCode(error.cause, code)),
        () => {
          named = false
          // The same statement's bound: what is left of it.
          return runOnce<Row, E>(text, values, undefined, { ...bound, ms: bound.ms - (clock.unsafeCurrentTimeMillis() - started) })
        }
      )
    })
  }

  return { run, named: () => named }
}

/**
 * The LISTEN side of lease wake-ups: a connection of its own, outside the pool, because a pooled
 * LISTEN that loses its connection dies silently and never wakes anyone again. This one reconnects
 * after any error, and on every (re)connect tells its owner, who wakes every waiter: releases
 * published while it was away were missed.
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import pg from "pg"

export interface Options {
  readonly connectionString: string
  readonly channel: string
  readonly connectTimeoutMs: number
  readonly onNotify: (payload: string) => void
  readonly onConnect: () => void
}

/** How long after a lost connection the next one is tried. */
const RETRY_MS = 500

/** Starts listening for the scope's lifetime. */
export const start = (options: Options): Effect.Effect<void, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      let closed = false
      let current: pg.Client | undefined
      let timer: ReturnType<typeof setTimeout> | undefined
      const connect = () => {
        if (closed) return
        const client = new pg.Client({
          connectionString: options.connectionString,
          connectionTimeoutMillis: options.connectTimeoutMs,
          application_name: "rate-sync"
        })
        current = client
        let lost = false
        const retry = () => {
          if (lost) return
          lost = true
          client.end().catch(() => {})
          if (!closed) timer = setTimeout(connect, RETRY_MS)
        }
        client.on("error", retry)
        client.on("end", retry)
        client.on("notification", (message) => {
          if (message.channel === options.channel && message.payload !== undefined) options.onNotify(message.payload)
        })
        client.connect()
          .then(() => client.query(`LISTEN "${options.channel}"`))
          .then(() => {
            if (!lost) options.onConnect()
          }, retry)
      }
      connect()
      return () => {
        closed = true
        clearTimeout(timer)
        return current?.end().catch(() => {})
      }
    }),
    (stop) => Effect.promise(async () => stop())
  ).pipe(Effect.asVoid)

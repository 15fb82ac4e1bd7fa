/**
 * The Redis engine's subscriber: one connection in subscriber mode for the release and backoff
 * channels. It subscribes each time it is ready, never before (a SUBSCRIBE sent while it connects
 * makes its ready check fail in subscriber mode, and the subscription is lost for good), and says so
 * each time, since what was published while it was away was missed.
 *
 * On a Redis Cluster, a PUBLISH (a script's included) reaches every node over the cluster bus, so one
 * connection to any node hears every store's messages. That node may go for good (killed, failed over,
 * removed): its connection then gives up reconnecting and the subscriber moves to another node.
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type { Redis } from "ioredis"

export interface Listener {
  readonly channels: ReadonlyArray<string>
  readonly onMessage: (channel: string, message: string) => void
  /** After each subscription: messages published while there was none were missed. */
  readonly onSubscribed: () => void
}

export interface Subscriber {
  /** Subscribes the listener now if connected, and on every connection from now on. */
  readonly listen: (listener: Listener) => void
  /** The connection now, if any (for tests and tools). */
  readonly connection: () => Redis | undefined
}

/**
 * A subscriber over the connections `open` makes: each is used until it ends (a standalone server's
 * reconnects by itself and ends only when closed; a cluster node's gives up), then the next is opened,
 * sooner after a connection that worked. `open` answers undefined when it has nowhere to connect yet.
 */
export const make = (open: () => Redis | undefined): Effect.Effect<Subscriber, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      let current: Redis | undefined
      let listener: Listener | undefined
      let closed = false
      let failures = 0
      let timer: ReturnType<typeof setTimeout> | undefined

      const subscribe = (client: Redis) => {
        const now = listener
        if (now === undefined || client !== current) return
        client.subscribe(...now.channels).then(
          () => {
            failures = 0
            now.onSubscribed()
          },
          () => {}
        )
      }
      const start = (): void => {
        timer = undefined
        if (closed) return
        const client = open()
        current = client
        if (client === undefined) return later()
        client.on("message", (channel: string, message: string) => listener?.onMessage(channel, message))
        client.on("ready", () => subscribe(client))
        client.once("end", () => {
          if (client === current) later()
        })
        if (client.status === "ready") subscribe(client)
      }
      const later = () => {
        if (closed || timer !== undefined) return
        failures++
        timer = setTimeout(start, Math.min(50 * failures, 2_000))
      }
      start()
      return {
        listen: (next: Listener) => {
          listener = next
          if (current?.status === "ready") subscribe(current)
        },
        connection: () => current,
        close: () => {
          closed = true
          if (timer !== undefined) clearTimeout(timer)
          current?.disconnect()
        }
      }
    }),
    (subscriber) => Effect.sync(subscriber.close)
  ).pipe(Effect.map(({ listen, connection }): Subscriber => ({ listen, connection })))

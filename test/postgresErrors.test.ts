/**
 * Which outage a `StoreUnavailable` reports (`reason`), on both engines, so that callers branch on
 * the reason and never on the words of the message.
 */
import { describe, expect, it } from "@effect/vitest"
import { StoreUnavailable } from "../src/Errors.js"
import * as PostgresErrors from "../src/postgres/errors.js"
import * as RedisErrors from "../src/redis/errors.js"

const driverError = (message: string, code?: string) => Object.assign(new Error(message), code === undefined ? {} : { code })

describe("StoreUnavailable's reason", () => {
  const context = { store: "db", table: "t", poolMaxSize: 10, poolTimeoutMs: 5_000, operationTimeoutMs: 2_000 }
  const postgres: ReadonlyArray<readonly [Error, StoreUnavailable["reason"]]> = [
    [driverError("connect ECONNREFUSED 127.0.0.1:5432", "ECONNREFUSED"), "unreachable"],
    [driverError("getaddrinfo EAI_AGAIN db", "EAI_AGAIN"), "unreachable"],
    [driverError("getaddrinfo ENOTFOUND db", "ENOTFOUND"), "unreachable"],
    [driverError("the database system is starting up", "57P03"), "server"],
    [driverError("terminating connection due to administrator command", "57P01"), "server"],
    [driverError("sorry, too many clients already", "53300"), "server"],
    [driverError("cannot execute UPDATE in a read-only transaction", "25006"), "server"],
    [driverError("read ECONNRESET", "ECONNRESET"), "disconnected"],
    [driverError("Connection terminated unexpectedly"), "disconnected"],
    [driverError("Client has encountered a connection error and is not queryable"), "disconnected"]
  ]
  for (const [error, reason] of postgres) {
    it(`PostgreSQL: ${error.message} -> ${reason}`, () => {
      const classified = PostgresErrors.fromCause(context)(error)
      expect(classified._tag === "StoreUnavailable" && classified.reason).toBe(reason)
    })
  }

  const redisContext = { store: "r", where: "redis://127.0.0.1:6379", commandTimeoutMs: 2_000 }
  const redis: ReadonlyArray<readonly [Error, StoreUnavailable["reason"]]> = [
    [driverError("connect ECONNREFUSED 127.0.0.1:6379", "ECONNREFUSED"), "unreachable"],
    [driverError("Reached the max retries per request limit (which is 1)."), "unreachable"],
    [driverError("getaddrinfo EAI_AGAIN redis", "EAI_AGAIN"), "unreachable"],
    [driverError("LOADING Redis is loading the dataset in memory"), "server"],
    [driverError("READONLY You can't write against a read only replica."), "server"],
    [driverError("Stream isn't writeable and enableOfflineQueue options is false"), "disconnected"],
    [driverError("Connection is closed."), "disconnected"],
    [driverError("socket hang up", "ECONNRESET"), "disconnected"]
  ]
  for (const [error, reason] of redis) {
    it(`Redis: ${error.message} -> ${reason}`, () => {
      const classified = RedisErrors.classify(redisContext, error, undefined)
      expect(classified._tag === "StoreUnavailable" && classified.reason).toBe(reason)
    })
  }

  it("made without one, it is unreachable", () => {
    const error = new StoreUnavailable({ store: "s", engine: "test", message: "down" })
    expect(error.reason).toBe("unreachable")
  })
})

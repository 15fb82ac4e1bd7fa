/**
 * How each engine classifies what its driver reports: only an outage may be admitted under
 * fail_closed = false, so a server's reply to a statement or script must never read as one.
 */
import { describe, expect, it } from "vitest"
import * as PostgresErrors from "../src/postgres/errors.js"
import * as RedisErrors from "../src/redis/errors.js"

/** An error as the drivers make them: a message, and a `code` where they set one. */
const driverError = (message: string, code?: string) => Object.assign(new Error(message), code === undefined ? {} : { code })

describe("Redis failures", () => {
  const context = { store: "r", where: "redis://127.0.0.1:6379", commandTimeoutMs: 2_000 }
  const cases: ReadonlyArray<readonly [Error, string, string | undefined]> = [
    [driverError("connect ECONNREFUSED 127.0.0.1:6379", "ECONNREFUSED"), "StoreUnavailable", undefined],
    [driverError("Stream isn't writeable and enableOfflineQueue options is false"), "StoreUnavailable", undefined],
    [driverError("getaddrinfo EAI_AGAIN redis", "EAI_AGAIN"), "StoreUnavailable", undefined],
    [driverError("LOADING Redis is loading the dataset in memory"), "StoreUnavailable", undefined],
    [driverError("READONLY You can't write against a read only replica."), "StoreUnavailable", undefined],
    [driverError("Command timed out"), "StoreTimeout", undefined],
    [driverError("BUSY Redis is busy running a script."), "StoreTimeout", undefined],
    [driverError("WRONGPASS invalid username-password pair or user is disabled."), "StoreMisconfigured", "authentication"],
    [driverError("NOPERM this user has no permissions to run the 'evalsha' command"), "StoreMisconfigured", "permission"],
    [driverError("MOVED 3999 127.0.0.1:7001"), "StoreMisconfigured", "redirect"],
    [driverError("ERR DB index is out of range"), "StoreMisconfigured", "database"],
    // Server replies that merely contain a word starting with E are no outage.
    [driverError("ERR unknown command 'evalsha', with args beginning with: "), "StoreMisconfigured", "statement"],
    [driverError("ERR Error compiling script (new function): user_script:1: syntax error"), "StoreMisconfigured", "statement"],
    [driverError("ERR wrong number of arguments for 'evalsha' command"), "StoreMisconfigured", "statement"]
  ]
  for (const [error, tag, reason] of cases) {
    it(`${error.message} -> ${tag}${reason === undefined ? "" : ` (${reason})`}`, () => {
      const classified = RedisErrors.classify(context, error, undefined)
      expect(classified._tag).toBe(tag)
      if (classified._tag === "StoreMisconfigured") expect(classified.reason).toBe(reason)
    })
  }

  it("a connection refused with a wrong password is a misconfiguration, though the command only says the stream is closed", () => {
    const classified = RedisErrors.classify(context, driverError("Stream isn't writeable"), "WRONGPASS invalid username-password pair")
    expect(classified._tag).toBe("StoreMisconfigured")
  })
})

describe("PostgreSQL failures", () => {
  const context = { store: "db", table: "t", poolMaxSize: 10, poolTimeoutMs: 5_000, operationTimeoutMs: 2_000 }
  const cases: ReadonlyArray<readonly [Error, string]> = [
    [driverError("connect ECONNREFUSED 127.0.0.1:5432", "ECONNREFUSED"), "StoreUnavailable"],
    [driverError("Connection terminated unexpectedly"), "StoreUnavailable"],
    [driverError("terminating connection due to administrator command", "57P01"), "StoreUnavailable"],
    [driverError("sorry, too many clients already", "53300"), "StoreUnavailable"],
    [driverError("cannot execute UPDATE in a read-only transaction", "25006"), "StoreUnavailable"],
    [driverError("getaddrinfo EAI_AGAIN db", "EAI_AGAIN"), "StoreUnavailable"],
    [driverError("timeout exceeded when trying to connect"), "StoreTimeout"],
    [driverError("canceling statement due to statement timeout", "57014"), "StoreTimeout"],
    [driverError("password authentication failed for user \"app\"", "28P01"), "StoreMisconfigured"],
    [driverError("database \"nope\" does not exist", "3D000"), "StoreMisconfigured"],
    [driverError("relation \"t\" does not exist", "42P01"), "StoreMisconfigured"],
    [driverError("value too long for type character varying(255)", "22001"), "StoreMisconfigured"]
  ]
  for (const [error, tag] of cases) {
    it(`${error.message} -> ${tag}`, () => {
      expect(PostgresErrors.fromCause(context)(error)._tag).toBe(tag)
    })
  }
})

/**
 * The client address as a key, as properties: IPv6 grouped by its prefix (two addresses share a key
 * exactly when their first `prefix` bits agree), addresses read back as written, a forwarded header
 * from an untrusted peer never read, and a trusted chain walked to its first untrusted hop.
 */
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as FastCheck from "effect/FastCheck"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as ClientAddress from "../src/http/ClientAddress.js"
import { type Address, contains, format, parseAddress, parseCidr } from "../src/http/ip.js"

const request = (peer: string | undefined, headers: Record<string, string> = {}) => {
  const web = HttpServerRequest.fromWeb(new Request("http://localhost/", { headers }))
  return peer === undefined ? web : web.modify({ remoteAddress: peer })
}

const resolver = (options: ClientAddress.Options) => Either.getOrThrow(ClientAddress.make(options))
const keyOf = (options: ClientAddress.Options, peer: string | undefined, headers: Record<string, string> = {}) =>
  Effect.runSync(Effect.either(resolver(options).key(request(peer, headers))).pipe(Logger.withMinimumLogLevel(LogLevel.None)))

const v6 = FastCheck.uint8Array({ minLength: 16, maxLength: 16 })
  // Not IPv4-mapped: those are IPv4 addresses.
  .filter((bytes) => !(bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff))
  .map((bytes): Address => ({ family: 6, bytes }))
const v4 = FastCheck.uint8Array({ minLength: 4, maxLength: 4 }).map((bytes): Address => ({ family: 4, bytes }))

const sameBits = (a: Uint8Array, b: Uint8Array, bits: number) =>
  Array.from({ length: bits }, (_, i) => i).every((i) => ((a[i >> 3]! >> (7 - (i & 7))) & 1) === ((b[i >> 3]! >> (7 - (i & 7))) & 1))

/** An address near `a`: the same bytes with a few flipped bits, so that shared prefixes are common. */
const near = (a: Address) =>
  FastCheck.array(FastCheck.nat({ max: a.bytes.length * 8 - 1 }), { maxLength: 3 }).map((flips): Address => {
    const bytes = Uint8Array.from(a.bytes)
    for (const bit of flips) bytes[bit >> 3] = bytes[bit >> 3]! ^ (1 << (7 - (bit & 7)))
    return { family: a.family, bytes }
  })

describe("client address", () => {
  it("IPv6 peers share a key exactly when their first `prefix` bits agree", () => {
    const pairs = v6.chain((a) => FastCheck.tuple(FastCheck.constant(a), near(a)))
    FastCheck.assert(
      FastCheck.property(pairs, FastCheck.integer({ min: 1, max: 128 }), ([a, b], prefix) => {
        const ka = ClientAddress.keyOf(a, prefix)
        const kb = ClientAddress.keyOf(b, prefix)
        // Mapped addresses fall out of the IPv6 family; near() can reach one only by chance, so skip it.
        if (parseAddress(format(b))?.family !== 6) return
        expect(ka === kb).toBe(sameBits(a.bytes, b.bytes, prefix))
      }),
      { numRuns: 2000 }
    )
  })

  it("the default groups by /56, over any text form of the peer's address", () => {
    FastCheck.assert(
      FastCheck.property(v6, v6, (a, b) => {
        const peerA = format(a)
        const peerB = `[${format({ family: 6, bytes: Uint8Array.from([...a.bytes.subarray(0, 7), ...b.bytes.subarray(7)]) })}]:4711`
        const [ka, kb] = [keyOf({}, peerA), keyOf({}, peerB)]
        if (parseAddress(peerB)?.family !== 6) return
        expect(ka).toEqual(kb)
        expect(Either.getOrThrow(ka).endsWith("/56")).toBe(true)
      }),
      { numRuns: 500 }
    )
  })

  it("addresses are read back as written, IPv4-mapped ones as IPv4", () => {
    FastCheck.assert(
      FastCheck.property(v6, (a) => {
        expect(parseAddress(format(a))).toEqual(a)
        expect(parseAddress(format(a).toUpperCase())).toEqual(a)
        expect(parseAddress(`[${format(a)}]:443`)).toEqual(a)
      })
    )
    FastCheck.assert(FastCheck.property(v4, (a) => {
      const text = format(a)
      expect(parseAddress(text)).toEqual(a)
      expect(parseAddress(`::ffff:${text}`)).toEqual(a)
      expect(parseAddress(`${text}:8080`)).toEqual(a)
    }))
    expect(parseAddress("2001:DB8::1")).toEqual(parseAddress("2001:db8:0:0:0:0:0:1"))
    expect(format(parseAddress("2001:db8:0:0:1:0:0:1")!)).toBe("2001:db8::1:0:0:1")
    for (const bad of ["", "1.2.3", "1.2.3.256", "01.2.3.4", "1::2::3", "12345::", "unknown", "_hidden", "[::1"]) {
      expect(parseAddress(bad)).toBeUndefined()
    }
  })

  it("CIDR ranges contain exactly the addresses that share their prefix", () => {
    FastCheck.assert(
      FastCheck.property(FastCheck.oneof(v4, v6).chain((a) => FastCheck.tuple(FastCheck.constant(a), near(a))), ([a, b]) => {
        const max = a.bytes.length * 8
        for (const bits of [1, 8, max / 2, max - 1, max]) {
          const cidr = parseCidr(`${format(a)}/${bits}`)
          if (cidr === undefined || cidr.address.family !== a.family || parseAddress(format(b))?.family !== b.family) return
          expect(contains(cidr, b)).toBe(sameBits(a.bytes, b.bytes, bits))
        }
      })
    )
  })

  it("a forwarded header from an untrusted peer is never read, whatever it says", () => {
    FastCheck.assert(
      FastCheck.property(
        FastCheck.string(),
        FastCheck.constantFrom("x-forwarded-for", "forwarded", "x-real-ip"),
        FastCheck.constantFrom<ReadonlyArray<string>>([], ["10.0.0.0/8"], ["::1"], ["192.0.2.0/24", "uniquelocal"]),
        (value, header, trustedProxies) => {
          expect(keyOf({ trustedProxies }, "127.0.0.1", { [header]: value })).toEqual(Either.right("ip:127.0.0.1"))
        }
      )
    )
  })

  it("behind trusted proxies the client is the first untrusted hop from the right", () => {
    const hop = FastCheck.oneof(
      FastCheck.constantFrom("10.0.0.1", "10.1.2.3", "127.0.0.1"),
      v4.map(format).filter((a) => !a.startsWith("10.") && !a.startsWith("127."))
    )
    FastCheck.assert(
      FastCheck.property(FastCheck.array(hop, { maxLength: 6 }), FastCheck.constantFrom("10.9.9.9", "127.0.0.1"), (chain, peer) => {
        const trusted = (a: string) => a.startsWith("10.") || a.startsWith("127.")
        let expected = peer
        for (let i = chain.length - 1; i >= 0 && trusted(expected); i--) expected = chain[i]!
        const headers: Record<string, string> = chain.length === 0 ? {} : { "x-forwarded-for": chain.join(", ") }
        expect(keyOf({ trustedProxies: ["10.0.0.0/8", "loopback"] }, peer, headers)).toEqual(Either.right(`ip:${expected}`))
        // The same chain in RFC 7239's header.
        const forwarded: Record<string, string> = chain.length === 0 ? {} : { forwarded: chain.map((a) => `for=${a};proto=https`).join(", ") }
        expect(keyOf({ trustedProxies: ["10.0.0.0/8", "loopback"], forwardedHeader: "forwarded" }, peer, forwarded)).toEqual(Either.right(`ip:${expected}`))
      })
    )
  })

  it("a forwarded header with no proxy trusted is warned of once per resolver, and still ignored", () => {
    const messages: Array<unknown> = []
    const logger = Logger.replace(Logger.defaultLogger, Logger.make(({ message }) => messages.push(message)))
    const client = resolver({})
    const keys = Effect.runSync(
      Effect.forEach(["198.51.100.1", "198.51.100.2"], (spoofed) => client.key(request("127.0.0.1", { "x-forwarded-for": spoofed }))).pipe(
        Effect.provide(logger)
      )
    )
    expect(keys).toEqual(["ip:127.0.0.1", "ip:127.0.0.1"])
    expect(messages).toHaveLength(1)
    expect(String(messages[0])).toContain("no proxy is trusted")
  })

  it("Forwarded's quoted IPv6 with a port, and what cannot be keyed", () => {
    const trusted = { trustedProxies: ["loopback"], forwardedHeader: "forwarded" as const }
    expect(keyOf(trusted, "::1", { forwarded: "for=\"[2001:db8:cafe:1234::17]:4711\"" })).toEqual(Either.right("ip:2001:db8:cafe:1200::/56"))
    const malformed = keyOf(trusted, "127.0.0.1", { forwarded: "for=unknown" })
    expect(Either.isLeft(malformed) && malformed.left.reason).toBe("MalformedForwarded")
    const noPeer = keyOf({}, undefined)
    expect(Either.isLeft(noPeer) && noPeer.left.reason).toBe("NoPeerAddress")
  })
})

/**
 * The client's address as a rate-limit key: the peer's address, or, when the peer is a trusted
 * proxy, the address it forwarded (`X-Forwarded-For` or `Forwarded`), walked from the nearest hop
 * outwards and stopped at the first untrusted one, so a client cannot choose its own key by sending
 * the header itself. IPv6 addresses are grouped by a prefix (/56 by default), since one subscriber
 * usually holds a whole /56 or /64 and could otherwise take a fresh key per request.
 */
import type * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import { ClientAddressError, HttpRateLimitConfigError } from "./errors.js"
import { type Address, type Cidr, contains, format, mask, parseAddress, parseCidr } from "./ip.js"

export interface Options {
  /**
   * Proxies whose forwarded header is believed: addresses or CIDR ranges (`"10.0.0.0/8"`,
   * `"2001:db8::/32"`), or the names `"loopback"`, `"linklocal"`, `"uniquelocal"`. Default: none, so
   * the key is the peer's own address and a forwarded header is ignored.
   */
  readonly trustedProxies?: ReadonlyArray<string> | undefined
  /** Which header a trusted proxy sets. Default `"x-forwarded-for"`. */
  readonly forwardedHeader?: "x-forwarded-for" | "forwarded" | undefined
  /** IPv6 clients are keyed by this many leading bits (1 to 128). Default 56. */
  readonly ipv6Prefix?: number | undefined
}

/** The client address of a request, and its key. */
export interface Resolver {
  readonly address: (request: HttpServerRequest.HttpServerRequest) => Effect.Effect<Address, ClientAddressError>
  /** `ip:` and the IPv4 address, or the IPv6 prefix (`ip:2001:db8:0:100::/56`). */
  readonly key: (request: HttpServerRequest.HttpServerRequest) => Effect.Effect<string, ClientAddressError>
}

const named: Record<string, ReadonlyArray<string>> = {
  loopback: ["127.0.0.0/8", "::1/128"],
  linklocal: ["169.254.0.0/16", "fe80::/10"],
  uniquelocal: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]
}

const configError = (reason: HttpRateLimitConfigError["reason"], message: string) =>
  Either.left(new HttpRateLimitConfigError({ reason, message }))

/** Checks the options: a setup that cannot be what was meant is an error, never a silent default. */
export const make = (options: Options = {}): Either.Either<Resolver, HttpRateLimitConfigError> => {
  const prefix = options.ipv6Prefix ?? 56
  if (!Number.isInteger(prefix) || prefix < 1 || prefix > 128) {
    return configError("InvalidIpv6Prefix", `ipv6Prefix must be a whole number from 1 to 128, found ${String(prefix)}`)
  }
  const header = options.forwardedHeader ?? "x-forwarded-for"
  if (header !== "x-forwarded-for" && header !== "forwarded") {
    return configError("InvalidForwardedHeader", `forwardedHeader must be "x-forwarded-for" or "forwarded", found ${String(header)}`)
  }
  const entries = options.trustedProxies ?? []
  if (options.forwardedHeader !== undefined && entries.length === 0) {
    return configError(
      "HeaderWithoutTrustedProxy",
      `forwardedHeader is "${header}" but trustedProxies is empty: the header is never read; name the proxies that set it`
    )
  }
  const trusted: Array<Cidr> = []
  for (const entry of entries) {
    for (const range of named[entry] ?? [entry]) {
      const cidr = parseCidr(range)
      if (cidr === undefined) {
        return configError("InvalidTrustedProxy", `trustedProxies: "${entry}" is not an address, a CIDR range, or one of loopback, linklocal, uniquelocal`)
      }
      if (cidr.bits === 0) {
        return configError(
          "PermissiveTrustedProxy",
          `trustedProxies: "${entry}" trusts every address, so any client could set its own key with ${header}; name your proxies' addresses instead`
        )
      }
      trusted.push(cidr)
    }
  }
  return Either.right(resolver(trusted, header, prefix))
}

const resolver = (trusted: ReadonlyArray<Cidr>, header: "x-forwarded-for" | "forwarded", prefix: number): Resolver => {
  const isTrusted = (address: Address) => trusted.some((cidr) => contains(cidr, address))
  let warned = false
  const address = (request: HttpServerRequest.HttpServerRequest): Effect.Effect<Address, ClientAddressError> => {
    const peer = Option.flatMap(request.remoteAddress, (raw) => Option.fromNullable(parseAddress(raw)))
    if (Option.isNone(peer)) {
      return Effect.fail(new ClientAddressError({ reason: "NoPeerAddress", message: `the connection's address is unknown (${Option.getOrElse(request.remoteAddress, () => "none")})` }))
    }
    const value = request.headers[header]
    if (trusted.length === 0) {
      if (value === undefined || warned) return Effect.succeed(peer.value)
      warned = true
      return Effect.as(
        Effect.logWarning(
          `rate-sync/http: a request from ${format(peer.value)} carries ${header} but no proxy is trusted, so it is keyed by the peer's address: behind a proxy every client would share the proxy's limit (set trustedProxies); if clients reach this server directly, ignore this`
        ),
        peer.value
      )
    }
    const hops = value === undefined ? [] : header === "forwarded" ? forwardedFor(value) : value.split(",")
    let current = peer.value
    for (let i = hops.length - 1; i >= 0 && isTrusted(current); i--) {
      const next = parseAddress(hops[i]!.trim())
      if (next === undefined) {
        return Effect.fail(new ClientAddressError({ reason: "MalformedForwarded", message: `${header} from the trusted proxy ${format(current)} names "${hops[i]!.trim()}", not an address` }))
      }
      current = next
    }
    return Effect.succeed(current)
  }
  return {
    address,
    key: (request) => Effect.map(address(request), (client) => keyOf(client, prefix))
  }
}

/** The `for=` values of a `Forwarded` header (RFC 7239), nearest hop last. */
const forwardedFor = (value: string): Array<string> =>
  value.split(",").flatMap((element) =>
    element.split(";").flatMap((pair) => {
      const eq = pair.indexOf("=")
      if (eq < 0 || pair.slice(0, eq).trim().toLowerCase() !== "for") return []
      const raw = pair.slice(eq + 1).trim()
      return [raw.startsWith("\"") && raw.endsWith("\"") ? raw.slice(1, -1) : raw]
    })
  )

/** The key of a client address: IPv4 as is, IPv6 by its prefix. */
export const keyOf = (address: Address, ipv6Prefix: number): string =>
  address.family === 4 ? `ip:${format(address)}` : `ip:${format(mask(address, ipv6Prefix))}/${ipv6Prefix}`

/**
 * The HTTP middleware's own failures, as `Schema.TaggedError` classes like the library's others.
 */
import * as Schema from "effect/Schema"

/**
 * The middleware's options cannot be what was meant (as express-rate-limit's validations): trusting
 * every address as a proxy (any client could then choose its own key), a proxy entry that is no
 * address, a forwarded header named with no proxy trusted to set it, an IPv6 prefix out of range, no
 * limiter, a cost that is not a whole number of 1 or more. Raised when the middleware is made.
 */
export class HttpRateLimitConfigError extends Schema.TaggedError<HttpRateLimitConfigError>()("HttpRateLimitConfigError", {
  reason: Schema.Literal(
    "PermissiveTrustedProxy",
    "InvalidTrustedProxy",
    "HeaderWithoutTrustedProxy",
    "InvalidForwardedHeader",
    "InvalidIpv6Prefix",
    "NoLimiter",
    "InvalidCost"
  ),
  message: Schema.String
}) {}

/**
 * The request's client address could not be told: the connection's address is unknown (the socket
 * already closed), or a trusted proxy forwarded something that is not an address.
 */
export class ClientAddressError extends Schema.TaggedError<ClientAddressError>()("ClientAddressError", {
  reason: Schema.Literal("NoPeerAddress", "MalformedForwarded"),
  message: Schema.String
}) {}

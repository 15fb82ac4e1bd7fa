/**
 * Rate limits at the HTTP edge, as an `@effect/platform` middleware for an `HttpApp`, an `HttpRouter`
 * (`HttpRouter.use`) or one route (`handler.pipe(limit)`):
 *
 * ```ts
 * const limit = yield* HttpRateLimit.make({ limiters: ["per-ip", "global"], clientAddress: { trustedProxies: ["10.0.0.0/8"] } })
 * const router = HttpRouter.empty.pipe(HttpRouter.get("/search", search.pipe(limit)))
 * ```
 *
 * Each request takes a permit of every named limiter without waiting (`tryAcquire`), keyed by the
 * client's address (or `key`), in the request's scope: a limiter's concurrency lease is held until
 * the response has been sent, and released when the handler fails or the client goes away.
 */
import * as HttpApp from "@effect/platform/HttpApp"
import type * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import type * as Scope from "effect/Scope"
import type {
  CostExceedsCapacity,
  InvalidCost,
  InvalidOption,
  LimiterNotFound,
  RateLimitExceeded,
  StoreError
} from "../Errors.js"
import type { LimiterSpec } from "../LimiterSpec.js"
import { RateLimiter } from "../RateLimiter.js"
import type * as ClientAddress from "./ClientAddress.js"
import { addFields, admit, check, type Checked, type Service } from "./decision.js"
import type { ClientAddressError, HttpRateLimitConfigError } from "./errors.js"
import * as Headers from "./headers.js"

export interface Options<E = never, R = never> {
  /** The limiters every request takes a permit of, in this order (the tightest first wastes least). */
  readonly limiters: string | ReadonlyArray<string>
  /** The key of a request (a user id, an API key, a tenant). Default: the client's address (`clientAddress`). */
  readonly key?: ((request: HttpServerRequest.HttpServerRequest) => Effect.Effect<string, E, R>) | undefined
  /** How the client's address is found when it is the key: trusted proxies, the IPv6 prefix. */
  readonly clientAddress?: ClientAddress.Options | undefined
  /** Units a request takes of each limiter. Default 1. */
  readonly cost?: number | ((request: HttpServerRequest.HttpServerRequest) => Effect.Effect<number, E, R>) | undefined
  /** Requests for which this is true pass through untouched (no permit, no headers). */
  readonly skip?: ((request: HttpServerRequest.HttpServerRequest) => boolean | Effect.Effect<boolean, E, R>) | undefined
  /**
   * `"draft-10"` (default): `RateLimit-Policy` and `RateLimit` as lists of every limiter;
   * `"draft-7"`: the combined `RateLimit: limit=, remaining=, reset=` of the tightest limiter; false: none.
   */
  readonly headers?: Headers.Standard | false | undefined
  /** Also `X-RateLimit-Limit`, `-Remaining`, `-Reset` (epoch seconds) of the tightest limiter. Default false. */
  readonly legacyHeaders?: boolean | undefined
  /**
   * Names the limiters whose store was unreachable and that admitted anyway (`fail_closed = false`).
   * Default `"RateLimit-Degraded"`; false: no header.
   */
  readonly degradedHeader?: string | false | undefined
  /** The response to a refused request. Default: 429 `application/problem+json` (`quota-exceeded`). */
  readonly onRefused?: ((refusal: Refusal) => Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>) | undefined
}

/** A refused request: `RateLimit` and `Retry-After` are added to whatever response is given for it. */
export interface Refusal {
  readonly request: HttpServerRequest.HttpServerRequest
  readonly key: string
  /** The refusing limiter's error (`retryAfter`, `limit`, `remaining`). */
  readonly error: RateLimitExceeded
  /** The policies the request exceeded, as the problem body names them. */
  readonly violatedPolicies: ReadonlyArray<string>
  /** `Retry-After`, in seconds. */
  readonly retryAfter: number
}

/** What a request can fail with besides a refusal (a refusal is a response). */
export type RequestError = ClientAddressError | LimiterNotFound | CostExceedsCapacity | InvalidCost | InvalidOption | StoreError

/** Wraps an app; the result needs the request's `Scope`, which servers and routers provide. */
export interface Middleware<E, R> {
  <AE, AR>(app: HttpApp.Default<AE, AR>): HttpApp.Default<AE | E | RequestError, AR | R | Scope.Scope>
}

const decide = <E, R, AE, AR>(
  checked: Checked<E, R>,
  service: Service,
  specs: ReadonlyArray<LimiterSpec>,
  app: HttpApp.Default<AE, AR>
): HttpApp.Default<AE | E | RequestError, AR | R | Scope.Scope> =>
  Effect.flatMap(admit(checked, service, specs), (decision): HttpApp.Default<AE | E, AR | R> => {
    if (decision === undefined) return app
    if (decision.refusal === undefined) {
      // Added to whatever response the request ends with, the app's failures' included.
      return decision.fields.length === 0
        ? app
        : Effect.zipRight(HttpApp.appendPreResponseHandler((_, response) => Effect.succeed(addFields(response, decision.fields))), app)
    }
    const refusal = decision.refusal
    const onRefused = checked.options.onRefused
    const response = onRefused === undefined
      ? Effect.succeed(HttpServerResponse.unsafeJson(Headers.problem(refusal.violatedPolicies, refusal.retryAfter), { status: 429, contentType: "application/problem+json" }))
      : onRefused(refusal)
    return Effect.map(response, (response) => addFields(response, [...decision.fields, ["retry-after", String(refusal.retryAfter)]]))
  })

/**
 * The middleware, its options checked and its limiters looked up now: a setup that cannot work
 * fails here (`HttpRateLimitConfigError`, `LimiterNotFound`), when the server starts, not at the
 * first request. It uses the `RateLimiter` it was made with.
 */
export const make = <E = never, R = never>(
  options: Options<E, R>
): Effect.Effect<Middleware<E, R>, HttpRateLimitConfigError | LimiterNotFound, RateLimiter> =>
  Effect.gen(function*() {
    const checked = yield* check(options)
    const service = yield* RateLimiter
    const specs = yield* Effect.forEach(checked.names, (name) => RateLimiter.spec(name))
    return <AE, AR>(app: HttpApp.Default<AE, AR>) => decide(checked, service, specs, app)
  })

/**
 * The same middleware without a setup step, for a router built outside an Effect: the options are
 * checked now, and a mistake fails every request with `HttpRateLimitConfigError`; the limiters are
 * looked up per request in the `RateLimiter` of the app's context.
 */
export const middleware = <E = never, R = never>(options: Options<E, R>) => {
  const checked = check(options)
  return <AE, AR>(
    app: HttpApp.Default<AE, AR>
  ): HttpApp.Default<AE | E | RequestError | HttpRateLimitConfigError, AR | R | Scope.Scope | RateLimiter> =>
    Either.isLeft(checked)
      ? Effect.fail(checked.left)
      : Effect.flatMap(
        Effect.all([RateLimiter, Effect.forEach(checked.right.names, (name) => RateLimiter.spec(name))]),
        ([service, specs]) => decide(checked.right, service, specs, app)
      )
}

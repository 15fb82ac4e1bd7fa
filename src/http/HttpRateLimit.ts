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
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as Clock from "effect/Clock"
import type * as Context from "effect/Context"
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
import { type Permit, RateLimiter } from "../RateLimiter.js"
import * as ClientAddress from "./ClientAddress.js"
import { type ClientAddressError, HttpRateLimitConfigError } from "./errors.js"
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

interface Checked<E, R> {
  readonly names: ReadonlyArray<string>
  readonly key: (request: HttpServerRequest.HttpServerRequest) => Effect.Effect<string, E | ClientAddressError, R>
  readonly options: Options<E, R>
}

/** The options' own checks, before any limiter is looked up. */
const check = <E, R>(options: Options<E, R>): Either.Either<Checked<E, R>, HttpRateLimitConfigError> => {
  const names = typeof options.limiters === "string" ? [options.limiters] : [...options.limiters]
  if (names.length === 0) return Either.left(new HttpRateLimitConfigError({ reason: "NoLimiter", message: "limiters names no limiter" }))
  const cost = options.cost
  if (typeof cost === "number" && (!Number.isInteger(cost) || cost < 1)) {
    return Either.left(new HttpRateLimitConfigError({ reason: "InvalidCost", message: `cost must be a whole number of 1 or more, found ${cost}` }))
  }
  return Either.map(ClientAddress.make(options.clientAddress), (client) => ({
    names,
    key: options.key ?? client.key,
    options
  }))
}

type Service = Context.Tag.Service<RateLimiter>

/** The fields draft-10 defines as lists: another middleware's items are kept, ours appended. */
const listFields = new Set(["ratelimit", "ratelimit-policy"])

const addFields = (response: HttpServerResponse.HttpServerResponse, pairs: ReadonlyArray<readonly [string, string]>) => {
  const headers: Record<string, string> = {}
  for (const [name, value] of pairs) {
    const existing = response.headers[name]
    if (existing === undefined) headers[name] = value
    else if (listFields.has(name)) headers[name] = `${existing}, ${value}`
  }
  return HttpServerResponse.setHeaders(response, headers)
}

const decide = <E, R, AE, AR>(checked: Checked<E, R>, service: Service, specs: ReadonlyArray<LimiterSpec>, app: HttpApp.Default<AE, AR>) =>
  Effect.gen(function*() {
    const { options } = checked
    const request = yield* HttpServerRequest.HttpServerRequest
    if (options.skip !== undefined) {
      const skip = options.skip(request)
      if (typeof skip === "boolean" ? skip : yield* skip) return yield* app
    }
    const key = yield* checked.key(request)
    const cost = options.cost === undefined ? 1 : typeof options.cost === "number" ? options.cost : yield* options.cost(request)
    const admitted: Array<readonly [LimiterSpec, Permit]> = []
    let refusal: readonly [LimiterSpec, RateLimitExceeded] | undefined
    for (const spec of specs) {
      // Into the request's scope: a lease is held until the response is sent, or the request fails or is interrupted.
      const result = yield* Effect.either(service.tryAcquire(spec.name, { key, cost }))
      if (Either.isRight(result)) {
        admitted.push([spec, result.right])
        continue
      }
      if (result.left._tag !== "RateLimitExceeded") return yield* Effect.fail(result.left)
      refusal = [spec, result.left]
      break
    }
    const policies = specs.flatMap((spec) => Headers.policyOf(spec) ?? [])
    const limits = admitted.flatMap(([spec, permit]) => Headers.afterAdmission(spec, permit) ?? [])
    const refused = refusal === undefined ? undefined : Headers.afterRefusal(refusal[0], refusal[1], cost)
    if (refused !== undefined) limits.push(refused)
    const pairs = Headers.fields(
      { policies, limits, primary: refused ?? Headers.tightest(limits, policies) },
      { standard: options.headers ?? "draft-10", legacy: options.legacyHeaders ?? false, nowMs: yield* Clock.currentTimeMillis }
    )
    const degraded = admitted.filter(([, permit]) => permit.degraded).map(([spec]) => `"${spec.name}"`)
    const degradedHeader = options.degradedHeader ?? "RateLimit-Degraded"
    if (degraded.length > 0 && degradedHeader !== false) pairs.push([degradedHeader.toLowerCase(), degraded.join(", ")])

    if (refusal !== undefined) {
      const retryAfter = Headers.retryAfterSeconds(refusal[0], refusal[1])
      const violatedPolicies = [refusal[0].name]
      const response = options.onRefused === undefined
        ? HttpServerResponse.unsafeJson(Headers.problem(violatedPolicies, retryAfter), { status: 429, contentType: "application/problem+json" })
        : yield* options.onRefused({ request, key, error: refusal[1], violatedPolicies, retryAfter })
      return addFields(response, [...pairs, ["retry-after", String(retryAfter)]])
    }
    // Added to whatever response the request ends with, the app's failures' included.
    if (pairs.length > 0) yield* HttpApp.appendPreResponseHandler((_, response) => Effect.succeed(addFields(response, pairs)))
    return yield* app
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

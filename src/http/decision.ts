/**
 * One request's decision, shared by the `HttpApp` middleware and the `HttpApi` one: the options
 * checked once, then per request the key, the cost, a permit of every limiter (or the first
 * refusal), and the header fields that say so.
 */
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as Clock from "effect/Clock"
import type * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import type * as Scope from "effect/Scope"
import type { RateLimitExceeded } from "../Errors.js"
import type { LimiterSpec } from "../LimiterSpec.js"
import type { Permit, RateLimiter } from "../RateLimiter.js"
import * as ClientAddress from "./ClientAddress.js"
import { type ClientAddressError, HttpRateLimitConfigError } from "./errors.js"
import * as Headers from "./headers.js"
import type { Options, Refusal, RequestError } from "./HttpRateLimit.js"

export interface Checked<E, R> {
  readonly names: ReadonlyArray<string>
  readonly key: (request: HttpServerRequest.HttpServerRequest) => Effect.Effect<string, E | ClientAddressError, R>
  readonly options: Options<E, R>
}

/** The options' own checks, before any limiter is looked up. */
export const check = <E, R>(options: Options<E, R>): Either.Either<Checked<E, R>, HttpRateLimitConfigError> => {
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

export type Service = Context.Tag.Service<RateLimiter>

/** A request admitted (`refusal` undefined) or refused; the fields to add to its response either way. */
export interface Decision {
  readonly fields: Array<readonly [string, string]>
  readonly refusal: Refusal | undefined
}

/** The fields draft-10 defines as lists: another middleware's items are kept, ours appended. */
const listFields = new Set(["ratelimit", "ratelimit-policy"])

export const addFields = (response: HttpServerResponse.HttpServerResponse, pairs: ReadonlyArray<readonly [string, string]>) => {
  const headers: Record<string, string> = {}
  for (const [name, value] of pairs) {
    const existing = response.headers[name]
    if (existing === undefined) headers[name] = value
    else if (listFields.has(name)) headers[name] = `${existing}, ${value}`
  }
  return HttpServerResponse.setHeaders(response, headers)
}

/**
 * Takes a permit of every limiter in turn, into the request's scope (a lease is held until the
 * response is sent, or the request fails or is interrupted), stopping at the first refusal; undefined
 * when the request is skipped.
 */
export const admit = <E, R>(
  checked: Checked<E, R>,
  service: Service,
  specs: ReadonlyArray<LimiterSpec>
): Effect.Effect<Decision | undefined, E | RequestError, R | HttpServerRequest.HttpServerRequest | Scope.Scope> =>
  Effect.gen(function*() {
    const { options } = checked
    const request = yield* HttpServerRequest.HttpServerRequest
    if (options.skip !== undefined) {
      const skip = options.skip(request)
      if (typeof skip === "boolean" ? skip : yield* skip) return undefined
    }
    const key = yield* checked.key(request)
    const cost = options.cost === undefined ? 1 : typeof options.cost === "number" ? options.cost : yield* options.cost(request)
    const admitted: Array<readonly [LimiterSpec, Permit]> = []
    let refused: readonly [LimiterSpec, RateLimitExceeded] | undefined
    for (const spec of specs) {
      const result = yield* Effect.either(service.tryAcquire(spec.name, { key, cost }))
      if (Either.isRight(result)) {
        admitted.push([spec, result.right])
        continue
      }
      if (result.left._tag !== "RateLimitExceeded") return yield* Effect.fail(result.left)
      refused = [spec, result.left]
      break
    }
    const policies = specs.flatMap((spec) => Headers.policyOf(spec) ?? [])
    const limits = admitted.flatMap(([spec, permit]) => Headers.afterAdmission(spec, permit) ?? [])
    const refusedLimit = refused === undefined ? undefined : Headers.afterRefusal(refused[0], refused[1], cost)
    if (refusedLimit !== undefined) limits.push(refusedLimit)
    const fields = Headers.fields(
      { policies, limits, primary: refusedLimit ?? Headers.tightest(limits, policies) },
      { standard: options.headers ?? "draft-10", legacy: options.legacyHeaders ?? false, nowMs: yield* Clock.currentTimeMillis }
    )
    const degraded = admitted.filter(([, permit]) => permit.degraded).map(([spec]) => `"${spec.name}"`)
    const degradedHeader = options.degradedHeader ?? "RateLimit-Degraded"
    if (degraded.length > 0 && degradedHeader !== false) fields.push([degradedHeader.toLowerCase(), degraded.join(", ")])
    const refusal: Refusal | undefined = refused === undefined ? undefined : {
      request,
      key,
      error: refused[1],
      violatedPolicies: [refused[0].name],
      retryAfter: Headers.retryAfterSeconds(refused[0], refused[1])
    }
    return { fields, refusal }
  })

/**
 * Rate limits for an `HttpApi`, as an `HttpApiMiddleware`: declared on an endpoint, a group or the
 * whole API, with its failure (`QuotaExceeded`, a 429 `application/problem+json`) in the API's
 * errors, so clients and the OpenAPI document know it.
 *
 * ```ts
 * class Search extends HttpApiGroup.make("search").add(HttpApiEndpoint.get("find", "/search")).middleware(HttpApiRateLimit.RateLimited) {}
 * const RateLimitedLive = HttpApiRateLimit.layer({ limiters: "per-ip" })
 * ```
 *
 * Several configurations (per route, per group) each take a tag of their own:
 * `class Reports extends HttpApiMiddleware.Tag<Reports>()("Reports", { failure: HttpApiRateLimit.QuotaExceeded }) {}`,
 * then `Layer.effect(Reports, HttpApiRateLimit.make({ limiters: ["per-ip", "reports"] }))`.
 */
import * as HttpApp from "@effect/platform/HttpApp"
import * as HttpApiMiddleware from "@effect/platform/HttpApiMiddleware"
import * as HttpApiSchema from "@effect/platform/HttpApiSchema"
import type * as HttpRouter from "@effect/platform/HttpRouter"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import type { LimiterNotFound } from "../Errors.js"
import { RateLimiter } from "../RateLimiter.js"
import { addFields, admit, check } from "./decision.js"
import type { HttpRateLimitConfigError } from "./errors.js"
import * as Headers from "./headers.js"
import type { Options as HttpOptions } from "./HttpRateLimit.js"

/**
 * The draft's `quota-exceeded` problem (RFC 9457): sent as a 429 `application/problem+json`, with
 * `RateLimit` and `Retry-After` beside it. (`_tag` comes along, as an extension member.)
 */
export class QuotaExceeded extends Schema.TaggedError<QuotaExceeded>()("QuotaExceeded", {
  type: Schema.Literal(Headers.QUOTA_EXCEEDED),
  title: Schema.String,
  status: Schema.Literal(429),
  detail: Schema.String,
  "violated-policies": Schema.Array(Schema.String)
}, {
  [HttpApiSchema.AnnotationStatus]: 429,
  [HttpApiSchema.AnnotationEncoding]: { kind: "Json", contentType: "application/problem+json" }
}) {}

/** A ready-made tag, for an API with one rate-limit configuration. */
export class RateLimited extends HttpApiMiddleware.Tag<RateLimited>()("rate-sync/http/RateLimited", { failure: QuotaExceeded }) {}

/** The options of `HttpRateLimit`, but a refusal is always `QuotaExceeded`. */
export type Options<E = never, R = never> = Omit<HttpOptions<E, R>, "onRefused">

/**
 * The middleware's effect, its options checked and its limiters looked up now (failing as
 * `HttpRateLimit.make` does). The services the key, cost and skip functions need are taken from the
 * layer's context. A failure other than a refusal (an unreachable store under `fail_closed`, a client
 * address that cannot be told) is a defect: the API answers 500.
 */
export const make = <E = never, R = never>(
  options: Options<E, R>
): Effect.Effect<HttpApiMiddleware.HttpApiMiddleware<void, QuotaExceeded>, HttpRateLimitConfigError | LimiterNotFound, RateLimiter | R> =>
  Effect.gen(function*() {
    const checked = yield* check(options)
    const service = yield* RateLimiter
    const specs = yield* Effect.forEach(checked.names, (name) => RateLimiter.spec(name))
    const context = yield* Effect.context<R>()
    return admit(checked, service, specs).pipe(
      Effect.mapInputContext((input: Context.Context<HttpRouter.HttpRouter.Provided>) => Context.merge(context, input)),
      Effect.orDie,
      Effect.flatMap((decision) => {
        if (decision === undefined) return Effect.void
        const refusal = decision.refusal
        const fields = refusal === undefined ? decision.fields : [...decision.fields, ["retry-after", String(refusal.retryAfter)] as const]
        const added = fields.length === 0
          ? Effect.void
          : HttpApp.appendPreResponseHandler((_, response) => Effect.succeed(addFields(response, fields)))
        if (refusal === undefined) return added
        const problem = Headers.problem(refusal.violatedPolicies, refusal.retryAfter)
        return Effect.zipRight(added, Effect.fail(new QuotaExceeded(problem)))
      })
    )
  })

/** `RateLimited`, served with these options. */
export const layer = <E = never, R = never>(
  options: Options<E, R>
): Layer.Layer<RateLimited, HttpRateLimitConfigError | LimiterNotFound, RateLimiter | R> => Layer.effect(RateLimited, make(options))

/**
 * `rate-sync status LIMITER [--key K] [--watch] [--config F]`: a limiter's state as
 * `RateLimiter.state` reads it from its store (durations in ms); `--watch` prints it every second
 * until Ctrl-C. Only the limiter's own store is opened.
 */
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import * as Console from "effect/Console"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import { LimiterNotFound } from "../Errors.js"
import type { LimiterState } from "../RateLimiter.js"
import { RateLimiter } from "../RateLimiter.js"
import * as RateSync from "../RateSync.js"
import type { Settings } from "../Settings.js"
import * as Stores from "../Stores.js"
import { describeLimiter } from "./check.js"
import { configOption, loadSettings, ms } from "./shared.js"

export const formatState = (state: LimiterState): string =>
  [
    `limit ${state.limit ?? "-"}`,
    `remaining ${state.remaining ?? "-"}`,
    `next slot in ${ms(Duration.toMillis(state.nextSlotAfter))}`,
    `reset in ${ms(Duration.toMillis(state.resetAfter))}`,
    `leases held ${state.leasesHeld}${state.maxConcurrent === undefined ? "" : ` of ${state.maxConcurrent}`}`,
    `waiting ${state.waiting}`
  ].join(", ")

/** The configuration cut down to one limiter and its store. */
const only = (settings: Settings, limiter: string): Effect.Effect<Settings, LimiterNotFound> => {
  const config = Object.hasOwn(settings.limiters, limiter) ? settings.limiters[limiter] : undefined
  const store = config === undefined ? undefined : settings.stores[config.store]
  return config === undefined || store === undefined
    ? Effect.fail(new LimiterNotFound({ limiter, known: Object.keys(settings.limiters) }))
    : Effect.succeed({ stores: { [config.store]: store }, limiters: { [limiter]: config } })
}

const clock = () => new Date().toISOString().slice(11, 19)

export const run = (options: {
  readonly limiter: string
  readonly key: Option.Option<string>
  readonly watch: boolean
  readonly config: Option.Option<string>
}) =>
  Effect.gen(function*() {
    const { settings } = yield* loadSettings(options.config)
    const subset = yield* only(settings, options.limiter)
    const limiter = subset.limiters[options.limiter]!
    const key = Option.getOrUndefined(options.key)
    yield* Console.log(`limiter ${options.limiter}${key === undefined ? "" : ` key ${JSON.stringify(key)}`}: ${describeLimiter(limiter)} on store ${limiter.store}`)
    const show = Effect.flatMap(RateLimiter.state(options.limiter, { key }), (state) =>
      Console.log(`${options.watch ? `${clock()}  ` : ""}${formatState(state)}`))
    const program = options.watch ? Effect.repeat(show, Schedule.spaced(Duration.seconds(1))) : show
    yield* program.pipe(Effect.provide(RateSync.layer(subset).pipe(Layer.provide(Stores.layer))))
  })

export const command = Command.make(
  "status",
  {
    limiter: Args.text({ name: "LIMITER" }).pipe(Args.withDescription("the limiter's name in the configuration")),
    key: Options.text("key").pipe(Options.withAlias("k"), Options.withDescription("the key whose state to show (default: the limiter's default key)"), Options.optional),
    watch: Options.boolean("watch").pipe(Options.withAlias("w"), Options.withDescription("print the state every second until Ctrl-C")),
    config: configOption
  },
  run
).pipe(
  Command.withDescription(
    "Shows a limiter's state in its store: limit, remaining, next slot and reset (in ms), leases held and waiting (waiters of this process only, so 0 here)."
  )
)

/**
 * The optimistic-lock retry policy as a typed `Schedule`: jittered exponential back-off, each
 * delay capped, bounded in attempts.
 */
import * as Duration from "effect/Duration"
import * as Schedule from "effect/Schedule"
import type { RetryPolicy } from "./LimiterSpec.js"

export const schedule = (policy: RetryPolicy): Schedule.Schedule<unknown> =>
  Schedule.exponential(Duration.millis(policy.baseDelayMs)).pipe(
    Schedule.jittered,
    Schedule.modifyDelay((delay) => Duration.min(delay, Duration.millis(policy.maxDelayMs))),
    Schedule.intersect(Schedule.recurs(Math.max(0, policy.maxAttempts - 1))),
    Schedule.asVoid
  )

/**
 * The rules of a limiter's table that span several keys (which store, which algorithm's keys, a
 * bound at all, how far a bucket may run ahead), as issues at key paths within the table.
 */
import type { FilterIssue } from "effect/Schema"
import type { LimiterConfig } from "../Settings.js"
import { MAX_STATE_SECONDS } from "./configValues.js"

const issue = (path: ReadonlyArray<string>, message: string): FilterIssue => ({ path, message })

/** The store a limiter names must be one of `stores`, every store declared (decoded or not). */
const storeReference = (limiter: LimiterConfig, stores: ReadonlyArray<string>): Array<FilterIssue> => {
  if (stores.includes(limiter.store)) return []
  const known = stores.length === 0 ? "no store is configured" : `configured: ${stores.map((s) => JSON.stringify(s)).join(", ")}`
  return [issue(["store"], `Expected the name of a configured store (${known}), found ${JSON.stringify(limiter.store)}`)]
}

const algorithmKeys = (limiter: LimiterConfig): Array<FilterIssue> => {
  const issues: Array<FilterIssue> = []
  if (limiter.algorithm === "token_bucket") {
    for (const key of ["limit", "window_seconds"] as const) {
      if (limiter[key] !== undefined) issues.push(issue([key], `belongs to algorithm = "sliding_window"`))
    }
    if (limiter.burst !== undefined && limiter.rate_per_second === undefined) issues.push(issue(["burst"], "needs rate_per_second"))
  } else {
    for (const key of ["rate_per_second", "burst"] as const) {
      if (limiter[key] !== undefined) issues.push(issue([key], `belongs to algorithm = "token_bucket"`))
    }
    for (const key of ["limit", "window_seconds"] as const) {
      if (limiter[key] === undefined) issues.push(issue([key], `is required with algorithm = "sliding_window"`))
    }
  }
  return issues
}

const bounds = (limiter: LimiterConfig): Array<FilterIssue> => {
  const issues: Array<FilterIssue> = []
  if (
    limiter.rate_per_second === undefined && limiter.limit === undefined && limiter.window_seconds === undefined &&
    limiter.max_concurrent === undefined
  ) {
    issues.push(issue([], "needs at least one of rate_per_second, limit + window_seconds, or max_concurrent"))
  }
  if (limiter.burst !== undefined && limiter.rate_per_second !== undefined) {
    const seconds = limiter.burst / limiter.rate_per_second
    if (seconds > MAX_STATE_SECONDS) {
      issues.push(issue(
        ["burst"],
        `Expected burst / rate_per_second at most ${MAX_STATE_SECONDS} seconds (a drained bucket must refill within about 31 years, which every store's time holds), found ${limiter.burst} / ${limiter.rate_per_second} = ${seconds} seconds`
      ))
    }
  }
  if (limiter.retry_base_delay_ms > limiter.retry_max_delay_ms) {
    issues.push(issue(["retry_base_delay_ms"], `Expected at most retry_max_delay_ms (${limiter.retry_max_delay_ms}), found ${limiter.retry_base_delay_ms}`))
  }
  return issues
}

/** Every rule a decoded limiter breaks, its store reference first. */
export const limiterIssues = (limiter: LimiterConfig, stores: ReadonlyArray<string>): Array<FilterIssue> => [
  ...storeReference(limiter, stores),
  ...algorithmKeys(limiter),
  ...bounds(limiter)
]

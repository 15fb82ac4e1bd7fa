/**
 * The rules of a limiter's table that span several keys (which store, which algorithm's keys, a
 * bound at all, how far a bucket may run ahead), as issues with their key paths.
 */
import { ConfigIssue } from "../Errors.js"
import type { LimiterConfig } from "../Settings.js"
import { MAX_STATE_SECONDS } from "./configValues.js"

const issue = (path: string, message: string) => new ConfigIssue({ path, message })

export const limiterIssues = (name: string, limiter: LimiterConfig, stores: ReadonlyArray<string>): Array<ConfigIssue> => {
  const path = `limiters.${name}`
  const issues: Array<ConfigIssue> = []
  if (!stores.includes(limiter.store)) {
    const known = stores.length === 0 ? "no store is configured" : `configured: ${stores.map((s) => JSON.stringify(s)).join(", ")}`
    issues.push(issue(`${path}.store`, `Expected the name of a configured store (${known}), found ${JSON.stringify(limiter.store)}`))
  }
  if (limiter.algorithm === "token_bucket") {
    for (const key of ["limit", "window_seconds"] as const) {
      if (limiter[key] !== undefined) issues.push(issue(`${path}.${key}`, `belongs to algorithm = "sliding_window"`))
    }
    if (limiter.burst !== undefined && limiter.rate_per_second === undefined) {
      issues.push(issue(`${path}.burst`, "needs rate_per_second"))
    }
  } else {
    for (const key of ["rate_per_second", "burst"] as const) {
      if (limiter[key] !== undefined) issues.push(issue(`${path}.${key}`, `belongs to algorithm = "token_bucket"`))
    }
    for (const key of ["limit", "window_seconds"] as const) {
      if (limiter[key] === undefined) issues.push(issue(`${path}.${key}`, `is required with algorithm = "sliding_window"`))
    }
  }
  if (
    limiter.rate_per_second === undefined && limiter.limit === undefined && limiter.window_seconds === undefined &&
    limiter.max_concurrent === undefined
  ) {
    issues.push(issue(path, "needs at least one of rate_per_second, limit + window_seconds, or max_concurrent"))
  }
  if (limiter.burst !== undefined && limiter.rate_per_second !== undefined) {
    const seconds = limiter.burst / limiter.rate_per_second
    if (seconds > MAX_STATE_SECONDS) {
      issues.push(issue(
        `${path}.burst`,
        `Expected burst / rate_per_second at most ${MAX_STATE_SECONDS} seconds (a drained bucket must refill within about 31 years, which every store's time holds), found ${limiter.burst} / ${limiter.rate_per_second} = ${seconds} seconds`
      ))
    }
  }
  if (limiter.retry_base_delay_ms > limiter.retry_max_delay_ms) {
    issues.push(issue(`${path}.retry_base_delay_ms`, `Expected at most retry_max_delay_ms (${limiter.retry_max_delay_ms}), found ${limiter.retry_base_delay_ms}`))
  }
  return issues
}


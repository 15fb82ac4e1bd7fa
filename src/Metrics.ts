/**
 * The limiter's metrics, labelled by limiter (and store for store-side events). Export them
 * with any Effect metrics exporter (OpenTelemetry, Prometheus).
 */
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"

export const acquisitions = Metric.counter("rate_sync_acquisitions_total", {
  description: "Permits granted",
  incremental: true
})

export const waitTime = Metric.histogram(
  "rate_sync_wait_ms",
  MetricBoundaries.exponential({ start: 0.5, factor: 2, count: 18 }),
  "Time from asking for a permit to holding it, in milliseconds"
)

export const timeouts = Metric.counter("rate_sync_timeouts_total", {
  description: "Acquires that failed with AcquireTimeout",
  incremental: true
})

export const rejections = Metric.counter("rate_sync_rejections_total", {
  description: "tryAcquire calls that found no free permit",
  incremental: true
})

export const storeErrors = Metric.counter("rate_sync_store_errors_total", {
  description: "Store operations that failed",
  incremental: true
})

export const failOpen = Metric.counter("rate_sync_fail_open_total", {
  description: "Permits granted without the store because it was unavailable and fail_closed = false",
  incremental: true
})

export const conflicts = Metric.counter("rate_sync_conflicts_total", {
  description: "Optimistic-lock conflicts retried by a store",
  incremental: true
})

export const leasesLost = Metric.counter("rate_sync_leases_lost_total", {
  description: "Held leases found expired at renewal (the holder stalled past lease_ttl_seconds)",
  incremental: true
})

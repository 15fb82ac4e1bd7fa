/**
 * The limiter's metrics, labelled by limiter and store. Export them with any Effect metrics
 * exporter (OpenTelemetry, Prometheus); read one limiter's value with
 * `Metric.value(Metrics.acquisitions.pipe(Metric.tagged("limiter", name), Metric.tagged("store", store)))`.
 */
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import * as MetricKey from "effect/MetricKey"
import * as MetricLabel from "effect/MetricLabel"

const keys = {
  acquisitions: MetricKey.counter("rate_sync_acquisitions_total", { description: "Permits granted", incremental: true }),
  waitTime: MetricKey.histogram(
    "rate_sync_wait_ms",
    MetricBoundaries.exponential({ start: 0.5, factor: 2, count: 18 }),
    "Time from asking for a permit to holding it, in milliseconds"
  ),
  timeouts: MetricKey.counter("rate_sync_timeouts_total", {
    description: "Acquires that failed with AcquireTimeout",
    incremental: true
  }),
  rejections: MetricKey.counter("rate_sync_rejections_total", {
    description: "tryAcquire calls that found no free permit",
    incremental: true
  }),
  storeErrors: MetricKey.counter("rate_sync_store_errors_total", { description: "Store operations that failed", incremental: true }),
  failOpen: MetricKey.counter("rate_sync_fail_open_total", {
    description: "Permits granted without the store because it was unavailable and fail_closed = false",
    incremental: true
  }),
  conflicts: MetricKey.counter("rate_sync_conflicts_total", {
    description: "Optimistic-lock conflicts retried by a store",
    incremental: true
  }),
  slotsGivenUp: MetricKey.counter("rate_sync_slots_given_up_total", {
    description:
      "Rate slots reserved for this process and never used: a caller woke too long after its slot, or a slot reserved ahead went unclaimed. Capacity lost; it rises when processes are starved of CPU",
    incremental: true
  }),
  shadowRefusals: MetricKey.counter("rate_sync_shadow_refusals_total", {
    description:
      "Calls of a limiter in shadow mode that enforcing would have refused (reason: rate) or made wait for a lease (reason: concurrency); they proceeded",
    incremental: true
  }),
  shadowWait: MetricKey.histogram(
    "rate_sync_shadow_wait_ms",
    MetricBoundaries.exponential({ start: 0.5, factor: 2, count: 18 }),
    "How long calls of a limiter in shadow mode would have waited for their slot, in milliseconds (0 for none); they proceeded at once"
  ),
  leasesLost: MetricKey.counter("rate_sync_leases_lost_total", {
    description: "Held leases found expired at renewal (the holder stalled past lease_ttl_seconds)",
    incremental: true
  })
}

/** The metrics, each with `labels` in its key. (`Metric.tagged` would build a new metric key, and hash
 * it, on every update: a large share of a fast acquire.) */
const labelled = (labels: ReadonlyArray<MetricLabel.MetricLabel>) => ({
  acquisitions: Metric.fromMetricKey(MetricKey.taggedWithLabels(keys.acquisitions, labels)),
  waitTime: Metric.fromMetricKey(MetricKey.taggedWithLabels(keys.waitTime, labels)),
  timeouts: Metric.fromMetricKey(MetricKey.taggedWithLabels(keys.timeouts, labels)),
  rejections: Metric.fromMetricKey(MetricKey.taggedWithLabels(keys.rejections, labels)),
  storeErrors: Metric.fromMetricKey(MetricKey.taggedWithLabels(keys.storeErrors, labels)),
  failOpen: Metric.fromMetricKey(MetricKey.taggedWithLabels(keys.failOpen, labels)),
  conflicts: Metric.fromMetricKey(MetricKey.taggedWithLabels(keys.conflicts, labels)),
  leasesLost: Metric.fromMetricKey(MetricKey.taggedWithLabels(keys.leasesLost, labels)),
  slotsGivenUp: Metric.fromMetricKey(MetricKey.taggedWithLabels(keys.slotsGivenUp, labels)),
  shadowRefusedRate: Metric.fromMetricKey(MetricKey.taggedWithLabels(keys.shadowRefusals, [...labels, MetricLabel.make("reason", "rate")])),
  shadowRefusedConcurrency: Metric.fromMetricKey(
    MetricKey.taggedWithLabels(keys.shadowRefusals, [...labels, MetricLabel.make("reason", "concurrency")])
  ),
  shadowWait: Metric.fromMetricKey(MetricKey.taggedWithLabels(keys.shadowWait, labels))
})

export const { acquisitions, conflicts, failOpen, leasesLost, rejections, shadowWait, slotsGivenUp, storeErrors, timeouts, waitTime } =
  labelled([])

/** Would-be refusals of limiters in shadow mode (label `reason`: "rate" or "concurrency"). */
export const shadowRefusals = Metric.fromMetricKey(keys.shadowRefusals)

/** One limiter's metrics, labelled by limiter and store. */
export const forLimiter = (limiter: string, store: string) =>
  labelled([MetricLabel.make("limiter", limiter), MetricLabel.make("store", store)])

export type LimiterMetrics = ReturnType<typeof forLimiter>

const givenUpByLimiter = new Map<string, Metric.Metric.Counter<number>>()

/** `slotsGivenUp` of one limiter, for code that counts outside the caller's fiber (a store's pool of slots). */
export const slotsGivenUpOf = (limiter: string, store: string): Metric.Metric.Counter<number> => {
  const id = `${store}\u0000${limiter}`
  let metric = givenUpByLimiter.get(id)
  if (metric === undefined) {
    metric = Metric.fromMetricKey(
      MetricKey.taggedWithLabels(keys.slotsGivenUp, [MetricLabel.make("limiter", limiter), MetricLabel.make("store", store)])
    )
    givenUpByLimiter.set(id, metric)
  }
  return metric
}

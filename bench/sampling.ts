/** Runs of contenders on workloads, and what the results report of them: admissions per second and latencies. */
import type { Contender, Workload } from "./contenders.js"

export interface Sample {
  readonly perSecond: number
  readonly p50: number
  readonly p99: number
}

/** Each workload's rounds, per contender: `sampleId` names them. */
export type Samples = ReadonlyMap<string, ReadonlyArray<Sample>>

export const sampleId = (workload: Workload, contender: Contender) => `${workload.label}|${contender.store}|${contender.name}`

const percentile = (sorted: Float64Array, p: number) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? 0

/** `latencies`: every call's, in ms, over a run of `seconds`. */
const summarize = (latencies: ReadonlyArray<number>, seconds: number): Sample => {
  // A typed array sorts numbers without a comparator: a second or more less per run of millions of calls.
  const sorted = Float64Array.from(latencies).sort()
  return { perSecond: sorted.length / seconds, p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99) }
}

export const median = (values: ReadonlyArray<number>) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? 0

/** The median over rounds of a contender's admissions per second on a workload. */
export const medianPerSecond = (samples: Samples, workload: Workload, contender: Contender) =>
  median((samples.get(sampleId(workload, contender)) ?? []).map((s) => s.perSecond))

export const perSecondText = (perSecond: number) => Math.round(perSecond).toLocaleString("en-US")

/**
 * Every workload, `runs` rounds each, every contender once per round in turn, `seconds` a run;
 * prints each run as it ends. A workload with a `keyPrefix` starts every round with none of its keys
 * stored: new keys (the round's number after the prefix), memory stores started anew.
 */
export const measure = async (
  workloads: ReadonlyArray<Workload>,
  contenders: ReadonlyArray<Contender>,
  seconds: number,
  runs: number
): Promise<Samples> => {
  const samples = new Map<string, Array<Sample>>()
  const total = workloads.length * runs * contenders.length
  let done = 0
  for (const workload of workloads) {
    for (let run = 1; run <= runs; run++) {
      const inRound = workload.keyPrefix === undefined ? workload : { ...workload, keyPrefix: `${workload.keyPrefix}${run}:` }
      for (const contender of contenders) {
        done++
        if (workload.keyPrefix !== undefined && contender.store === "memory") {
          await contender.stop()
          await contender.start()
        }
        process.stdout.write(`[${done}/${total}] ${workload.label}, round ${run}/${runs}: ${contender.store} ${contender.name}... `)
        const sample = summarize(await contender.run(inRound, seconds), seconds)
        const id = sampleId(workload, contender)
        samples.set(id, [...(samples.get(id) ?? []), sample])
        console.log(`${perSecondText(sample.perSecond)}/s, p50 ${sample.p50.toFixed(3)} ms, p99 ${sample.p99.toFixed(3)} ms`)
      }
    }
  }
  return samples
}

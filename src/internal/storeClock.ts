/**
 * Where the store's instants fall on this process's clock. A store answers with a slot on its own
 * clock and how long after its decision the slot lies; counted from when the answer was read, the
 * slot lands late by however long the answer took to come back, which varies from call to call and
 * from process to process (a busy event loop, a slow commit). Callers of different processes then
 * proceed at different distances from their slots, and admissions bunch where they proceed.
 *
 * Instead, every answer gives a bound: the store's instant `s` was read before this process read
 * the answer at `t`, so the store's clock leads ours by at least `s - t`. The largest such bound
 * (from the fastest answer) is the best estimate that is never too large: a slot mapped with it is
 * never early, and late by at most the fastest round trip. The estimate decays slowly (far faster
 * than clocks drift), and a bound far below it is taken as a clock step and starts it afresh.
 * Plain arithmetic, no Effect: every engine's answers pass through it.
 */

/** How fast (ms per ms) the estimate gives way, so that a clock drifting back is followed. */
const DECAY = 0.001

/** A bound this far (ms) below the estimate is a clock step, not a slow answer: start afresh. */
const STEP_MS = 1_000

export interface StoreClock {
  /**
   * How much earlier than `waitMs` after `readAtMs` the slot of an answer read at `readAtMs` (local
   * ms) lies, for an answer decided at `storeNowMs` (the store's ms): 0 or negative.
   */
  readonly correction: (storeNowMs: number, readAtMs: number) => number
}

export const make = (): StoreClock => {
  let lead = -Infinity
  let since = 0
  return {
    correction: (storeNowMs, readAtMs) => {
      const bound = storeNowMs - readAtMs
      // A reply that is not a number says nothing of the clocks.
      if (!Number.isFinite(bound)) return 0
      const current = lead - Math.max(0, readAtMs - since) * DECAY
      if (bound >= current || bound < current - STEP_MS) {
        lead = bound
        since = readAtMs
        return 0
      }
      return bound - current
    }
  }
}

/**
 * How the demos count: every admission is stamped when its caller proceeds, and windows are taken on
 * those stamps, never on the demo's own sleeps (a one-second sleep lasts longer on a busy machine,
 * and a count over a longer window looks like a broken bound).
 */

/** Milliseconds on the machine's clock, sub-millisecond, comparable across processes of one host. */
export const stamp = (): number => performance.timeOrigin + performance.now()

export interface Limits {
  readonly rate: number
  readonly burst: number
}

/** How many stamps fall in each whole second `[start + k s, start + (k + 1) s)` of a period. */
export const perSecond = (stamps: ReadonlyArray<number>, start: number, seconds: number): Array<number> => {
  const counts = new Array<number>(seconds).fill(0)
  for (const t of stamps) {
    const second = Math.floor((t - start) / 1000)
    if (second >= 0 && second < seconds) counts[second]!++
  }
  return counts
}

/** The most stamps in any window `[t, t + windowMs)`, wherever it starts. */
export const mostInAnyWindow = (stamps: ReadonlyArray<number>, windowMs: number): number => {
  const sorted = [...stamps].sort((a, b) => a - b)
  let most = 0
  let first = 0
  for (let last = 0; last < sorted.length; last++) {
    while (sorted[last]! - sorted[first]! >= windowMs) first++
    most = Math.max(most, last - first + 1)
  }
  return most
}

/**
 * What the stamps show against the limiter's bound: at most `burst + rate x T` in any window of
 * length T (the bucket is full when the period starts), and the rate reached over the period.
 */
export const verdict = (
  stamps: ReadonlyArray<number>,
  start: number,
  end: number,
  limits: Limits,
  /** Why the run may fall short of the rate, said when it does. */
  shortfall: string
): Array<string> => {
  const inPeriod = stamps.filter((t) => t >= start && t < end)
  const seconds = (end - start) / 1000
  const periodBound = Math.floor(limits.burst + limits.rate * seconds)
  const oneSecondBound = limits.burst + limits.rate
  const most = mostInAnyWindow(inPeriod, 1000)
  const lines = [
    `measured ${seconds.toFixed(2)} s: ${inPeriod.length} admitted = ${(inPeriod.length / seconds).toFixed(1)}/s ` +
    `(configured ${limits.rate}/s, ${(100 * inPeriod.length / seconds / limits.rate).toFixed(0)}%)`,
    `  whole period: ${inPeriod.length} against at most burst + rate x ${seconds.toFixed(2)} s = ${periodBound}: ` +
    (inPeriod.length <= periodBound ? "within" : `OVER by ${inPeriod.length - periodBound}`),
    `  most in any 1 s (a window sliding over the stamps): ${most} against at most burst + rate = ${oneSecondBound}: ` +
    (most <= oneSecondBound ? "within" : `over by ${most - oneSecondBound}`)
  ]
  if (inPeriod.length / seconds < 0.9 * limits.rate) {
    lines.push(`  below the configured rate: ${shortfall}`)
  }
  if (most > oneSecondBound) {
    // The bound is on the slots the store hands out; a caller proceeds a little after its slot, and
    // callers that a busy machine wakes late proceed together.
    lines.push(
      `  (the bound holds on the slots the store grants; stamps are taken where callers proceed, a little ` +
        `after their slots, and callers a busy machine wakes late proceed together, up to 10 ms late)`
    )
  }
  return lines
}

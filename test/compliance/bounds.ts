/** Checks of the contract's bounds over recorded admissions (slot times in ms, units each). */
export interface Admission {
  readonly slot: number
  readonly cost: number
}

const sorted = (admissions: ReadonlyArray<Admission>) => [...admissions].sort((a, b) => a.slot - b.slot)

/**
 * The worst excess over `burst + L * rate` for any interval [t_i, t_j]; at most 0 when the
 * token-bucket bound holds. Linear: keep the minimum of (units before i) - rate * t_i.
 */
export const rateExcess = (admissions: ReadonlyArray<Admission>, ratePerSecond: number, burst: number): number => {
  const perMs = ratePerSecond / 1000
  let before = 0
  let minimum = Infinity
  let worst = -Infinity
  for (const admission of sorted(admissions)) {
    minimum = Math.min(minimum, before - perMs * admission.slot)
    const through = before + admission.cost
    worst = Math.max(worst, through - perMs * admission.slot - minimum - burst)
    before = through
  }
  return worst
}

/** The most units in any half-open interval of `windowMs` (entries exactly a window apart are in different ones; 1 ns absorbs float error). */
export const windowPeak = (admissions: ReadonlyArray<Admission>, windowMs: number): number => {
  const list = sorted(admissions)
  let peak = 0
  let units = 0
  let start = 0
  for (const admission of list) {
    units += admission.cost
    while (list[start]!.slot <= admission.slot - windowMs + 1e-6) units -= list[start++]!.cost
    peak = Math.max(peak, units)
  }
  return peak
}

export const units = (admissions: ReadonlyArray<Admission>) => admissions.reduce((sum, a) => sum + a.cost, 0)

/** The most permits held at once, from [start, end] intervals (a release at the instant of a grant counts first). */
export const peakHeld = (holds: ReadonlyArray<readonly [number, number]>) => {
  const events = holds.flatMap(([start, end]) => [[start, 1], [end, -1]] as const).sort((a, b) => a[0] - b[0] || a[1] - b[1])
  let held = 0
  let peak = 0
  for (const [, delta] of events) peak = Math.max(peak, (held += delta))
  return peak
}

/**
 * Concurrency leases with a line of waiters, both expiring unless refreshed, so a holder or
 * waiter that dies gives its place back by itself. Maps keep insertion order, which is the
 * order of the line.
 */
export interface LeaseTable {
  readonly holders: Map<string, number>
  readonly waiting: Map<string, number>
}

export const empty = (): LeaseTable => ({ holders: new Map(), waiting: new Map() })

export const purge = (table: LeaseTable, now: number): void => {
  for (const [id, expiresAt] of table.holders) if (expiresAt <= now) table.holders.delete(id)
  for (const [id, expiresAt] of table.waiting) if (expiresAt <= now) table.waiting.delete(id)
}

/** Whether `id` may hold a lease now: already holding, or a free lease not owed to anyone ahead in line. */
export const canGrant = (table: LeaseTable, id: string, max: number): boolean => {
  if (table.holders.has(id)) return true
  let ahead = 0
  for (const waiter of table.waiting.keys()) {
    if (waiter === id) break
    ahead++
  }
  return table.holders.size + ahead < max
}

export const grant = (table: LeaseTable, id: string, expiresAt: number): void => {
  table.waiting.delete(id)
  table.holders.set(id, expiresAt)
}

/** Takes a place at the end of the line, or refreshes the place already held. */
export const enqueue = (table: LeaseTable, id: string, expiresAt: number): void => {
  table.waiting.set(id, expiresAt)
}

/** True when a held lease was given back (a waiter leaving the line frees nothing). */
export const release = (table: LeaseTable, id: string): boolean => {
  table.waiting.delete(id)
  return table.holders.delete(id)
}

export const renew = (table: LeaseTable, id: string, expiresAt: number): boolean => {
  if (!table.holders.has(id)) return false
  table.holders.set(id, expiresAt)
  return true
}

export const soonestExpiry = (table: LeaseTable): number | undefined => {
  let soonest: number | undefined
  for (const expiresAt of table.holders.values()) if (soonest === undefined || expiresAt < soonest) soonest = expiresAt
  return soonest
}

export const isEmpty = (table: LeaseTable): boolean => table.holders.size === 0 && table.waiting.size === 0

export const latestExpiry = (table: LeaseTable): number => {
  let latest = -Infinity
  for (const expiresAt of table.holders.values()) latest = Math.max(latest, expiresAt)
  for (const expiresAt of table.waiting.values()) latest = Math.max(latest, expiresAt)
  return latest
}

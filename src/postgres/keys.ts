/**
 * The rows a limiter and key live in: `group_id`s for the rate's row (`r:` token bucket, `w:` a
 * sliding window's header, its ring rows `#0..`), the lease slots (`c:...#i`), and the digests that
 * name a key and a table in NOTIFY payloads. Keys stand in a group_id as they are when that is safe
 * and short; anything else is hashed, so distinct keys are distinct rows whatever their text.
 */
import { digest, wtf8 } from "../internal/keys.js"
import { type LimiterSpec, stateKey } from "../LimiterSpec.js"

/** Keys that can stand in a group_id as they are; anything else is hashed (long, unicode, '#'). */
const PLAIN = /^[\x20-\x22\x24-\x7e]{0,150}$/

/**
 * The most a limiter and key may take of a group_id (VARCHAR(255)) as they are: room is left for the
 * "r:" prefix and a "#" row suffix of up to 9 digits. A longer pair hashes its key.
 */
const MAX_PLAIN_PART = 240

const keyPart = (limiter: string, key: string) =>
  `${limiter}:${PLAIN.test(key) && limiter.length + 1 + key.length <= MAX_PLAIN_PART ? key : `#${digest(wtf8(key))}`}`

/** The rate's row: the token bucket's, or the sliding window's header. */
export const rateId = (limiter: LimiterSpec, key: string) =>
  `${limiter.rate?._tag === "SlidingWindow" ? "w" : "r"}:${keyPart(limiter.name, key)}`

/** A sliding window's ring rows, one per admission it can hold. */
export const ringIds = (header: string, limit: number) => Array.from({ length: limit }, (_, i) => `${header}#${i}`)

/** The lease slots of a key: `max_concurrent` rows. */
export const slotIds = (limiter: LimiterSpec, key: string) =>
  Array.from({ length: limiter.concurrency?.max ?? 0 }, (_, i) => `c:${keyPart(limiter.name, key)}#${i}`)

/** What a release's NOTIFY carries: the key's digest (never with a colon). */
export const notifyKey = (limiter: LimiterSpec, key: string) => digest(wtf8(stateKey(limiter.name, key))).slice(0, 32)

/** The NOTIFY channel of a table (its quoted name). */
export const channelOf = (table: string) => `rate_sync_${digest(table).slice(0, 20).replace(/[^A-Za-z0-9]/g, "_")}`

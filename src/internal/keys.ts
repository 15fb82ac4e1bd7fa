/**
 * Keys as bytes for the server engines. A JavaScript string may hold lone UTF-16 surrogates, which
 * UTF-8 turns into U+FFFD, so "a\uD800" and "a\uDC00" would become one limit. WTF-8 (UTF-8 extended
 * to lone surrogates) gives every string bytes of its own, and the very bytes UTF-8 gives a
 * well-formed string, so keys that were stored before keep their state.
 */
import { createHash } from "node:crypto"

const isLead = (unit: number) => unit >= 0xd800 && unit <= 0xdbff
const isTrail = (unit: number) => unit >= 0xdc00 && unit <= 0xdfff

/** Whether every surrogate in `text` is part of a pair. */
export const isWellFormed = (text: string): boolean => {
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i)
    if (isLead(unit) && isTrail(text.charCodeAt(i + 1))) i++
    else if (isLead(unit) || isTrail(unit)) return false
  }
  return true
}

/** Lone surrogates take the three bytes UTF-8's pattern would give them (never valid UTF-8, so never another key's). */
const encodeIllFormed = (text: string): Buffer => {
  const bytes: Array<number> = []
  for (let i = 0; i < text.length; i++) {
    let point = text.charCodeAt(i)
    if (isLead(point) && isTrail(text.charCodeAt(i + 1))) {
      point = 0x10000 + ((point - 0xd800) << 10) + (text.charCodeAt(++i) - 0xdc00)
    }
    if (point < 0x80) bytes.push(point)
    else if (point < 0x800) bytes.push(0xc0 | (point >> 6), 0x80 | (point & 0x3f))
    else if (point < 0x10000) bytes.push(0xe0 | (point >> 12), 0x80 | ((point >> 6) & 0x3f), 0x80 | (point & 0x3f))
    else bytes.push(0xf0 | (point >> 18), 0x80 | ((point >> 12) & 0x3f), 0x80 | ((point >> 6) & 0x3f), 0x80 | (point & 0x3f))
  }
  return Buffer.from(bytes)
}

export const wtf8 = (text: string): Buffer => isWellFormed(text) ? Buffer.from(text, "utf8") : encodeIllFormed(text)

/** A key's digest, safe to put in SQL text or a channel name. */
export const digest = (bytes: Buffer | string): string => createHash("sha256").update(bytes).digest("base64url")

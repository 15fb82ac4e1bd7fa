/**
 * IP addresses as bytes: parsing (IPv4, IPv6 with `::`, an embedded IPv4 tail or a zone, an
 * optional port or brackets as forwarded headers carry them), CIDR ranges, prefixes and the
 * canonical text form (RFC 5952). An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, as a dual-stack
 * socket reports IPv4 peers) is its IPv4 address.
 */
export interface Address {
  readonly family: 4 | 6
  readonly bytes: Uint8Array
}

export interface Cidr {
  readonly address: Address
  readonly bits: number
}

const parseIpv4Bytes = (text: string): Uint8Array | undefined => {
  const parts = text.split(".")
  if (parts.length !== 4) return undefined
  const bytes = new Uint8Array(4)
  for (let i = 0; i < 4; i++) {
    const part = parts[i]!
    // No leading zeros: "010" is octal to some parsers and decimal to others.
    if (!/^(0|[1-9][0-9]{0,2})$/.test(part)) return undefined
    const n = Number(part)
    if (n > 255) return undefined
    bytes[i] = n
  }
  return bytes
}

const parseIpv6Bytes = (input: string): Uint8Array | undefined => {
  const text = input.includes("%") ? input.slice(0, input.indexOf("%")) : input
  if (text.length === 0 || text.length > 45) return undefined
  const halves = text.split("::")
  if (halves.length > 2) return undefined
  const groups = (half: string): Array<number> | undefined => {
    if (half === "") return []
    const out: Array<number> = []
    const parts = half.split(":")
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i]!
      if (i === parts.length - 1 && part.includes(".")) {
        const v4 = parseIpv4Bytes(part)
        if (v4 === undefined) return undefined
        out.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!)
      } else if (/^[0-9a-fA-F]{1,4}$/.test(part)) {
        out.push(parseInt(part, 16))
      } else {
        return undefined
      }
    }
    return out
  }
  const head = groups(halves[0]!)
  const tail = halves.length === 2 ? groups(halves[1]!) : []
  if (head === undefined || tail === undefined) return undefined
  const missing = 8 - head.length - tail.length
  if (halves.length === 2 ? missing < 1 : missing !== 0) return undefined
  const all = [...head, ...new Array<number>(missing).fill(0), ...tail]
  const bytes = new Uint8Array(16)
  all.forEach((group, i) => {
    bytes[2 * i] = group >> 8
    bytes[2 * i + 1] = group & 0xff
  })
  return bytes
}

const isMappedIpv4 = (bytes: Uint8Array): boolean =>
  bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff

/** An address as a socket or a forwarded header gives it, or undefined when it is not one. */
export const parseAddress = (input: string): Address | undefined => {
  let text = input.trim()
  if (text.startsWith("[")) {
    // "[2001:db8::1]" or "[2001:db8::1]:4711"
    const close = text.indexOf("]")
    if (close < 0 || (close !== text.length - 1 && !/^:\d{1,5}$/.test(text.slice(close + 1)))) return undefined
    text = text.slice(1, close)
  } else if (/^[0-9.]+:\d{1,5}$/.test(text)) {
    // "192.0.2.1:4711"
    text = text.slice(0, text.indexOf(":"))
  }
  const v4 = parseIpv4Bytes(text)
  if (v4 !== undefined) return { family: 4, bytes: v4 }
  const v6 = parseIpv6Bytes(text)
  if (v6 === undefined) return undefined
  return isMappedIpv4(v6) ? { family: 4, bytes: v6.slice(12) } : { family: 6, bytes: v6 }
}

/** `"10.0.0.0/8"`, `"2001:db8::/32"`, or a single address (all its bits). */
export const parseCidr = (input: string): Cidr | undefined => {
  const slash = input.indexOf("/")
  const address = parseAddress(slash < 0 ? input : input.slice(0, slash))
  if (address === undefined) return undefined
  const max = address.bytes.length * 8
  if (slash < 0) return { address, bits: max }
  const bitsText = input.slice(slash + 1)
  if (!/^\d{1,3}$/.test(bitsText)) return undefined
  // A mapped range ("::ffff:10.0.0.0/104") counts its bits on the IPv4 address.
  const bits = Number(bitsText) - (max === 32 && input.includes(":") ? 96 : 0)
  return bits < 0 || bits > max ? undefined : { address, bits }
}

/** The address with every bit after the first `bits` cleared. */
export const mask = (address: Address, bits: number): Address => {
  const bytes = new Uint8Array(address.bytes.length)
  for (let i = 0; i < bytes.length; i++) {
    const keep = Math.max(0, Math.min(8, bits - 8 * i))
    bytes[i] = address.bytes[i]! & ((0xff << (8 - keep)) & 0xff)
  }
  return { family: address.family, bytes }
}

export const contains = (cidr: Cidr, address: Address): boolean => {
  if (cidr.address.family !== address.family) return false
  const a = mask(cidr.address, cidr.bits).bytes
  const b = mask(address, cidr.bits).bytes
  return a.every((byte, i) => byte === b[i])
}

/** Dotted IPv4, or IPv6 in RFC 5952 form (lower case, the longest run of zero groups as `::`). */
export const format = (address: Address): string => {
  if (address.family === 4) return Array.from(address.bytes).join(".")
  const groups: Array<number> = []
  for (let i = 0; i < 16; i += 2) groups.push((address.bytes[i]! << 8) | address.bytes[i + 1]!)
  let bestStart = -1
  let bestLength = 1
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++
      continue
    }
    let j = i
    while (j < 8 && groups[j] === 0) j++
    if (j - i > bestLength) {
      bestStart = i
      bestLength = j - i
    }
    i = j
  }
  const hex = groups.map((group) => group.toString(16))
  if (bestStart < 0) return hex.join(":")
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLength).join(":")}`
}

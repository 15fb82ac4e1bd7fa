import { describe, expect, it } from "@effect/vitest"
import * as FastCheck from "effect/FastCheck"
import * as RoundRobin from "../src/internal/roundRobin.js"

describe("round robin over a Map", () => {
  it("property: whatever is added and deleted meanwhile, every entry present throughout is visited within one lap", () => {
    FastCheck.assert(
      FastCheck.property(
        FastCheck.integer({ min: 1, max: 50 }),
        FastCheck.array(FastCheck.tuple(FastCheck.boolean(), FastCheck.integer({ min: 0, max: 200 })), { maxLength: 200 }),
        (initial, changes) => {
          const map = new Map<number, number>(Array.from({ length: initial }, (_, i) => [i, i]))
          const next = RoundRobin.make(map)
          // Interleaves visits with additions and deletions of other keys, then laps: every key kept
          // from the start is seen at most 2 * size visits after the changes.
          const kept = new Set(map.keys())
          for (const [add, key] of changes) {
            next()
            if (add) map.set(1_000 + key, key)
            else map.delete(1_000 + key)
          }
          const seen = new Set<number>()
          for (let i = 0; i < 2 * map.size; i++) seen.add(next()![0])
          for (const key of kept) expect(seen.has(key)).toBe(true)
        }
      )
    )
  })

  it("an empty map gives nothing, and entries added later are found", () => {
    const map = new Map<string, number>()
    const next = RoundRobin.make(map)
    expect(next()).toBeUndefined()
    map.set("a", 1)
    expect(next()).toEqual(["a", 1])
    expect(next()).toEqual(["a", 1])
  })
})

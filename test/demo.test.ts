/**
 * The two first commands a newcomer runs (`npm start`, `npm run start:memory`), as they run them:
 * the demo waits for its workers before it measures (a fixed start-up delay once printed 0/s for
 * every second on a busy machine), every measured second admits, and both bounds are reported within.
 */
import { execFile } from "node:child_process"
import { promisify } from "node:util"
import { describe, expect, it } from "vitest"

const run = promisify(execFile)

const demo = async (script: string) => {
  const { stdout } = await run(process.execPath, ["--import", "tsx", script], {
    env: { ...process.env, DEMO_SECONDS: "3" },
    timeout: 150_000
  })
  return stdout.split("\n")
}

const seconds = (lines: ReadonlyArray<string>, pattern: RegExp) =>
  lines.flatMap((line) => {
    const match = pattern.exec(line)
    return match === null ? [] : [Number(match[1])]
  })

describe("the demos", () => {
  it("npm start: measures only once all three workers said ready, admits in every second, within both bounds", async () => {
    const lines = await demo("examples/main.ts")
    const measuring = lines.findIndex((line) => line.startsWith("all 3 ready"))
    expect(measuring).toBeGreaterThan(0)
    expect(lines.slice(0, measuring).filter((line) => /^worker \d ready after/.test(line))).toHaveLength(3)
    const combined = seconds(lines, /^second \d+:.*combined (\d+)/)
    expect(combined).toHaveLength(3)
    for (const admitted of combined) expect(admitted).toBeGreaterThan(0)
    expect(lines.filter((line) => line.includes(": within"))).toHaveLength(2)
  }, 160_000)

  it("npm run start:memory: admits in every second, within both bounds", async () => {
    const lines = await demo("examples/memory.ts")
    const admitted = seconds(lines, /^second \d+: admitted\s+(\d+)/)
    expect(admitted).toHaveLength(3)
    for (const count of admitted) expect(count).toBeGreaterThan(0)
    expect(lines.filter((line) => line.includes(": within"))).toHaveLength(2)
  }, 160_000)
})

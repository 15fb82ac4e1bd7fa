/**
 * Finds the Redis the tests use: `TEST_REDIS_URL`, else the machine's server at
 * redis://127.0.0.1:6379, else a throwaway `redis-server` when one is installed.
 */
import { spawn } from "node:child_process"
import { Redis } from "ioredis"
import { freePort, type Started } from "./embeddedPostgres.js"

export const LOCAL_REDIS = "redis://127.0.0.1:6379"

const answers = async (url: string) => {
  const client = new Redis(url, { lazyConnect: true, connectTimeout: 1_000, maxRetriesPerRequest: 0, retryStrategy: () => null })
  client.on("error", () => {})
  try {
    await client.connect()
    return (await client.ping()) === "PONG"
  } catch {
    return false
  } finally {
    client.disconnect()
  }
}

/** A `redis-server` of ours on `port` (a free one by default), without persistence; undefined when none is installed. */
export const startRedisServer = async (port?: number): Promise<Started | undefined> => {
  const chosen = port ?? await freePort()
  const child = spawn("redis-server", ["--port", String(chosen), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: "ignore"
  })
  const spawned = await new Promise<boolean>((resolve) => {
    child.once("error", () => resolve(false))
    child.once("spawn", () => resolve(true))
  })
  if (!spawned) return undefined
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
  const stop = async () => {
    child.kill("SIGKILL")
    await exited
  }
  const url = `redis://127.0.0.1:${chosen}`
  for (let i = 0; i < 50; i++) {
    if (await answers(url)) return { url, stop }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  await stop()
  return undefined
}

/** `given` when set, else the machine's server, else one started now; undefined when there is none to be had. */
export const findRedis = async (given: string | undefined): Promise<Started | undefined> => {
  if (given !== undefined && given !== "") return { url: given, stop: async () => {} }
  if (await answers(LOCAL_REDIS)) return { url: LOCAL_REDIS, stop: async () => {} }
  console.log("no Redis at 127.0.0.1:6379: starting redis-server")
  return startRedisServer()
}

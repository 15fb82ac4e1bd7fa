/**
 * A throwaway Redis Cluster on loopback: `redis-server` processes with `cluster-enabled yes`, each on
 * free ports (its client port and its cluster bus port) with a temporary directory of its own and no
 * persistence, joined by `redis-cli --cluster create`, stopped by pid.
 */
import { execFile, spawn } from "node:child_process"
import { mkdir, mkdtemp, rm } from "node:fs/promises"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Redis } from "ioredis"
import { freePort } from "./embeddedPostgres.js"

export interface ClusterNode {
  readonly port: number
  readonly url: string
  readonly pid: number
  /** Kills the process (SIGKILL) and waits until it has exited. */
  readonly kill: () => Promise<void>
}

export interface RedisCluster {
  readonly nodes: ReadonlyArray<ClusterNode>
  /** Every node's url, comma-separated: a store's `url` with `cluster = true`. */
  readonly seeds: string
  /** Kills every process and removes their directories. */
  readonly stop: () => Promise<void>
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** A command on one node, with a connection of its own that never retries. */
export const onNode = async <A>(url: string, use: (redis: Redis) => Promise<A>): Promise<A> => {
  const redis = new Redis(url, { lazyConnect: true, connectTimeout: 1_000, maxRetriesPerRequest: 0, retryStrategy: () => null })
  redis.on("error", () => {})
  try {
    await redis.connect()
    return await use(redis)
  } finally {
    redis.disconnect()
  }
}

const info = (url: string) => onNode(url, (redis) => redis.cluster("INFO")).catch(() => "")

/** Until every node of `urls` says the cluster is ok with all slots served, and knows `known` nodes (dead ones included). */
export const waitUntilOk = async (urls: ReadonlyArray<string>, timeoutMs = 30_000, known = urls.length) => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const infos = await Promise.all(urls.map(info))
    if (infos.every((text) => /cluster_state:ok/.test(text) && /cluster_slots_ok:16384/.test(text) && text.includes(`cluster_known_nodes:${known}`))) return
    if (Date.now() > deadline) throw new Error(`the cluster is not ok after ${timeoutMs} ms:\n${infos.join("\n")}`)
    await sleep(100)
  }
}

/** A free port none of this cluster's nodes has taken (the operating system may hand one out twice). */
const untakenPort = async (taken: Set<number>) => {
  for (;;) {
    const port = await freePort()
    if (!taken.has(port)) {
      taken.add(port)
      return port
    }
  }
}

const answers = (url: string) => onNode(url, (redis) => redis.ping()).then((reply) => reply === "PONG", () => false)

/** One node, answering PING; started again on other ports if it exits first (a port taken meanwhile). */
const startNode = async (dir: string, taken: Set<number>): Promise<ClusterNode> => {
  for (let attempt = 1;; attempt++) {
    const [port, busPort] = [await untakenPort(taken), await untakenPort(taken)]
    const child = spawn("redis-server", [
      "--port", String(port),
      "--cluster-port", String(busPort),
      "--bind", "127.0.0.1",
      "--cluster-enabled", "yes",
      "--cluster-config-file", join(dir, "nodes.conf"),
      // Short, so a failover takes seconds; a replica takes over however long it was cut off.
      "--cluster-node-timeout", "1000",
      "--cluster-replica-validity-factor", "0",
      "--dir", dir,
      "--save", "",
      "--appendonly", "no"
    ], { stdio: "ignore" })
    await new Promise<void>((resolve, reject) => {
      child.once("error", reject)
      child.once("spawn", () => resolve())
    })
    const pid = child.pid!
    let gone = false
    const exited = new Promise<void>((resolve) =>
      child.once("exit", () => {
        gone = true
        resolve()
      })
    )
    const kill = async () => {
      try {
        process.kill(pid, "SIGKILL")
      } catch {
        // Already gone.
      }
      await exited
    }
    const url = `redis://127.0.0.1:${port}`
    for (let i = 0; i < 100 && !gone; i++) {
      if (await answers(url)) return { port, url, pid, kill }
      await sleep(50)
    }
    await kill()
    await rm(join(dir, "nodes.conf"), { force: true })
    if (attempt === 5) throw new Error(`redis-server did not start in cluster mode on 127.0.0.1:${port} (bus ${busPort})`)
  }
}

const run = (command: string, args: ReadonlyArray<string>) =>
  new Promise<string>((resolve, reject) =>
    execFile(command, args, { timeout: 60_000 }, (error, stdout, stderr) => error ? reject(new Error(`${command} failed: ${stderr || stdout}`)) : resolve(stdout))
  )

/** Whether redis-server and redis-cli are installed. */
export const installed = () => Promise.all([run("redis-server", ["--version"]), run("redis-cli", ["--version"])]).then(() => true, () => false)

/** `masters` masters with `replicas` replicas each, the slots spread evenly; undefined when redis-server or redis-cli is missing. */
export const startRedisCluster = async (masters = 3, replicas = 0): Promise<RedisCluster | undefined> => {
  if (!(await installed())) return undefined
  const root = await mkdtemp(join(tmpdir(), "rate-sync-cluster-"))
  const nodes: Array<ClusterNode> = []
  const taken = new Set<number>()
  const stop = async () => {
    await Promise.all(nodes.map((node) => node.kill()))
    await rm(root, { recursive: true, force: true })
  }
  try {
    for (let i = 0; i < masters * (1 + replicas); i++) {
      const dir = join(root, String(i))
      await mkdir(dir)
      nodes.push(await startNode(dir, taken))
    }
    await run("redis-cli", ["--cluster", "create", ...nodes.map((node) => `127.0.0.1:${node.port}`), "--cluster-replicas", String(replicas), "--cluster-yes"])
    const urls = nodes.map((node) => node.url)
    await waitUntilOk(urls)
    return { nodes, seeds: urls.join(","), stop }
  } catch (error) {
    await stop()
    throw error
  }
}

/** The url of the master serving `key`'s slot, as the cluster's nodes say now. */
export const masterOf = async (anyNode: string, key: string | Buffer): Promise<string> =>
  onNode(anyNode, async (redis) => {
    const slot = Number(await redis.cluster("KEYSLOT", key))
    const master = (await redis.cluster("SLOTS")).find(([from, to]) => slot >= from && slot <= to)?.[2]
    if (master === undefined) throw new Error(`no node serves slot ${slot}`)
    return `redis://${master[0]}:${master[1]}`
  })

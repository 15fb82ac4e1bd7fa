/** What the bench leaves in its servers, removed when it ends so that runs do not grow them: its tables, its run's Redis keys. */
import { Redis } from "ioredis"
import pg from "pg"
import { POSTGRES_TABLES } from "./contenders.js"

const dropTables = async (databaseUrl: string) => {
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  try {
    await client.query(`DROP TABLE IF EXISTS ${POSTGRES_TABLES.join(", ")}`)
  } finally {
    await client.end()
  }
}

/** Deletes every key starting with `prefix`; how many there were. */
const deleteKeys = async (redisUrl: string, prefix: string) => {
  const client = new Redis(redisUrl)
  try {
    const pattern = `${prefix.replace(/[*?[\]\\]/g, "\\$&")}*`
    let cursor = "0"
    let deleted = 0
    do {
      const [next, keys] = await client.scan(cursor, "MATCH", pattern, "COUNT", 1000)
      if (keys.length > 0) deleted += await client.unlink(...keys)
      cursor = next
    } while (cursor !== "0")
    return deleted
  } finally {
    await client.quit()
  }
}

export const cleanUp = async (databaseUrl: string, redisUrl: string, redisPrefix: string) => {
  await dropTables(databaseUrl)
  const keys = await deleteKeys(redisUrl, redisPrefix)
  console.log(`cleaned up: dropped ${POSTGRES_TABLES.join(", ")}; deleted ${keys.toLocaleString("en-US")} Redis keys under ${redisPrefix}`)
}

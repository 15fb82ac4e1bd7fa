/** Runs statements as the test database's administrator (for roles, schemas and grants). */
import * as Effect from "effect/Effect"
import pg from "pg"

/** A connected client of its own to `url`, ended with the scope (a lock holder, an observer). */
export const scopedClient = (url: string) =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const client = new pg.Client({ connectionString: url })
      await client.connect()
      return client
    }),
    (client) => Effect.promise(() => client.end())
  )

export const admin = async (url: string, statements: ReadonlyArray<string>): Promise<Array<pg.QueryResult>> => {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    const results: Array<pg.QueryResult> = []
    for (const statement of statements) results.push(await client.query(statement))
    return results
  } finally {
    await client.end()
  }
}

/** The same server and database, as another user. */
export const asUser = (url: string, user: string, password: string) => {
  const parsed = new URL(url)
  parsed.username = user
  parsed.password = password
  return parsed.toString()
}

/** The README's "Manual Table Setup (Production)", to the letter. */
export const SEED_TABLE_SQL = `CREATE TABLE rate_limiter_state (
    group_id VARCHAR(255) PRIMARY KEY,
    last_acquisition_at TIMESTAMPTZ NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    current_concurrent INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE INDEX idx_rate_limiter_state_updated
    ON rate_limiter_state(updated_at);`

/**
 * The documented production setup is enough for every feature: its exact table SQL,
 * auto_create = false, and a role granted only SELECT, INSERT, UPDATE on that table.
 */
import { beforeAll, inject } from "vitest"
import * as Stores from "../../src/Stores.js"
import { admin, asUser, SEED_TABLE_SQL } from "../support/admin.js"
import { complianceSuite } from "./suite.js"

const url = inject("databaseUrl")
const schema = `grants_${process.pid}`
const role = `rate_sync_app_${process.pid}`

beforeAll(async () => {
  await admin(url, [
    `DROP SCHEMA IF EXISTS ${schema} CASCADE`,
    `CREATE SCHEMA ${schema}`,
    `DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '${role}') THEN CREATE ROLE ${role} LOGIN PASSWORD 'app'; END IF; END $$`,
    `SET search_path TO ${schema}`,
    SEED_TABLE_SQL,
    `GRANT USAGE ON SCHEMA ${schema} TO ${role}`,
    `GRANT SELECT, INSERT, UPDATE ON rate_limiter_state TO ${role}`
  ])
})

complianceSuite({
  name: "postgres, production grants only",
  factory: Stores.layer,
  store: {
    engine: "postgres",
    url: asUser(url, role, "app"),
    schema_name: schema,
    auto_create: false,
    timing_margin_ms: 0
  },
  clock: "live"
})

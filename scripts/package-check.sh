#!/usr/bin/env bash
# Proves the tarball works as a user gets it: `npm pack`, install it into a fresh app outside the
# repository with the README's install command, then run there an ESM and a CommonJS program (a
# permit on the memory store and on PostgreSQL each), `tsc --noEmit --strict` on TypeScript programs
# under moduleResolution nodenext, node16 and bundler, `rate-sync/http` (a loopback server asked once, ESM
# and CommonJS, and its types), every other subpath loaded both ways, and the installed `rate-sync`
# command line.
# Uses TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test) and TEST_REDIS_URL
# (default redis://127.0.0.1:6379). Installs prefer the npm cache (--prefer-offline).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
DATABASE_URL=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
REDIS_URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379}
export DATABASE_URL REDIS_URL
work=$(mktemp -d "${TMPDIR:-/tmp}/rate-sync-package.XXXXXX")
table="pkgcheck_$$_$RANDOM"
export RATE_SYNC_TABLE="$table"
started=$(date +%s)
step() { echo "== $(($(date +%s) - started))s: $*"; }

cleanup() {
  if [ -d "$work/app/node_modules/pg" ]; then
    (cd "$work/app" && node -e '
      const pg = require("pg")
      const c = new pg.Client(process.env.DATABASE_URL)
      c.connect().then(() => c.query(`DROP TABLE IF EXISTS "public"."${process.env.RATE_SYNC_TABLE}"`)).finally(() => c.end())
    ') || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

step "npm pack (prepack builds dist)"
tarball="$work/$(npm pack --silent --pack-destination "$work" | tail -n 1)"
ls -l "$tarball"

mkdir "$work/app"
cd "$work/app"
echo '{ "name": "rate-sync-package-check", "version": "1.0.0", "private": true }' > package.json
npm_flags=(--prefer-offline --no-audit --no-fund --loglevel=error)
step "install as the README says: npm i rate-sync effect@^3.22 @effect/sql-pg@^0.53 pg ioredis"
npm i "${npm_flags[@]}" "$tarball" effect@^3.22 @effect/sql-pg@^0.53 pg ioredis
npm i "${npm_flags[@]}" -D typescript@~5.9 @types/node@^20

cat > rate-sync.toml <<EOF
[stores.mem]
engine = "memory"

[stores.db]
engine = "postgres"
url = "\${DATABASE_URL}"
table_name = "$table"
auto_create = true
pool_min_size = 0

[stores.cache]
engine = "redis"
url = "\${REDIS_URL}"
key_prefix = "rate-sync-package-check:"

[limiters.local]
store = "mem"
rate_per_second = 100
burst = 5

[limiters.shared]
store = "db"
rate_per_second = 100
burst = 5
max_concurrent = 2
EOF

cat > esm.mjs <<'EOF'
import { Effect, Layer } from "effect"
import { RateLimiter, RateSync, Stores } from "rate-sync"
import { acquire, close, loadConfig } from "rate-sync/promise"
import { createTableSql } from "rate-sync/postgres"

const permits = Effect.scoped(Effect.gen(function*() {
  const local = yield* RateLimiter.acquire("local")
  const shared = yield* RateLimiter.acquire("shared")
  return [local.degraded, shared.degraded, shared.leaseId !== undefined]
}))
const answer = await Effect.runPromise(permits.pipe(Effect.provide(RateSync.layerToml().pipe(Layer.provide(Stores.layer)))))
if (answer.join() !== "false,false,true") throw new Error(`esm: unexpected permits ${answer}`)
await loadConfig()
const permit = await acquire("shared", { timeout: 2_000 })
await permit.release()
await close()
if (typeof createTableSql !== "function") throw new Error("esm: rate-sync/postgres has no createTableSql")
console.log("esm: permits on memory and PostgreSQL")
EOF

cat > cjs.cjs <<'EOF'
const { Effect, Layer } = require("effect")
const { RateLimiter, RateSync, Stores, ConfigurationError } = require("rate-sync")
const promise = require("rate-sync/promise")
const { createTableSql } = require("rate-sync/postgres")

const permits = Effect.scoped(Effect.gen(function*() {
  const local = yield* RateLimiter.acquire("local")
  const shared = yield* RateLimiter.acquire("shared")
  return [local.degraded, shared.degraded, shared.leaseId !== undefined]
}))
const main = async () => {
  const answer = await Effect.runPromise(permits.pipe(Effect.provide(RateSync.layerToml().pipe(Layer.provide(Stores.layer)))))
  if (answer.join() !== "false,false,true") throw new Error(`cjs: unexpected permits ${answer}`)
  await promise.loadConfig()
  const permit = await promise.acquire("local")
  await permit.release()
  await promise.close()
  if (typeof createTableSql !== "function" || typeof ConfigurationError !== "function") throw new Error("cjs: missing exports")
  console.log("cjs: permits on memory and PostgreSQL")
}
main().catch((error) => {
  console.error(error)
  process.exit(1)
})
EOF

step "ESM program"
node esm.mjs
step "CommonJS program"
# Without require(esm) (Node 20.19+ and 22.12+ would load an ES module through require): the CommonJS
# build must stand on its own on every Node 20.
node --no-experimental-require-module cjs.cjs

# The same TypeScript program as an ES module (.mts), as CommonJS (.cts) and for a bundler (.ts).
program='
import { Duration, Effect, Layer } from "effect"
import { type LimiterState, RateLimiter, RateSync, Stores } from "rate-sync"
import { acquire, type HeldPermit, RateLimitExceeded } from "rate-sync/promise"
import { createTableSql } from "rate-sync/postgres"

export const program: Effect.Effect<number, unknown> = Effect.scoped(
  Effect.gen(function*() {
    const permit = yield* RateLimiter.acquire("local", { timeout: Duration.seconds(1) })
    const state: LimiterState = yield* RateLimiter.state("local")
    return (permit.remaining ?? 0) + state.waiting
  })
).pipe(Effect.provide(RateSync.layerToml().pipe(Layer.provide(Stores.layer))))

export const withPromise = async (): Promise<boolean> => {
  try {
    const permit: HeldPermit = await acquire("local", { key: "user" })
    await permit.release()
    return true
  } catch (error) {
    return error instanceof RateLimitExceeded && Duration.toMillis(error.retryAfter) >= 0
  }
}
export const ddl: typeof createTableSql = createTableSql
'
mkdir -p ts
printf '%s' "$program" > ts/esm.mts
printf '%s' "$program" > ts/cjs.cts
printf '%s' "$program" > ts/bundler.ts
tsc_flags=(--noEmit --strict --target es2022 --lib es2022,esnext.disposable --types node)
step "tsc --noEmit --strict: nodenext (.mts, .cts, declarations checked too), node16, bundler (.ts)"
npx tsc "${tsc_flags[@]}" --skipLibCheck false --module nodenext --moduleResolution nodenext ts/esm.mts ts/cjs.cts
npx tsc "${tsc_flags[@]}" --skipLibCheck --module node16 --moduleResolution node16 ts/esm.mts ts/cjs.cts
npx tsc "${tsc_flags[@]}" --skipLibCheck --module esnext --moduleResolution bundler ts/bundler.ts

step "rate-sync/http, with @effect/platform as its README section says: npm i @effect/platform@^0.97"
npm i "${npm_flags[@]}" @effect/platform@^0.97
# A router limited by "local" on a free loopback port, asked once: 200 and the draft's RateLimit field.
http_program='
const program = Effect.gen(function*() {
  const limit = yield* HttpRateLimit.make({ limiters: "local" })
  yield* HttpServer.serveEffect(HttpRouter.empty.pipe(HttpRouter.get("/", HttpServerResponse.text("ok")), HttpRouter.use(limit)))
  const address = (yield* HttpServer.HttpServer).address
  const response = yield* Effect.promise(() => fetch(`http://127.0.0.1:${address.port}/`, { headers: { connection: "close" } }))
  return [response.status, response.headers.get("ratelimit")].join(" ")
})
const layer = Layer.merge(RateSync.layerToml().pipe(Layer.provide(Stores.layer)), NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" }))
const check = (answer) => {
  if (answer !== "200 \"local\";r=4;t=1") throw new Error(`rate-sync/http: unexpected answer ${answer}`)
}
'
{
  echo 'import { HttpRouter, HttpServer, HttpServerResponse } from "@effect/platform"'
  echo 'import { NodeHttpServer } from "@effect/platform-node"'
  echo 'import { Effect, Layer } from "effect"'
  echo 'import { createServer } from "node:http"'
  echo 'import { RateSync, Stores } from "rate-sync"'
  echo 'import { HttpRateLimit } from "rate-sync/http"'
  printf '%s\n' "$http_program"
  echo 'check(await Effect.runPromise(Effect.scoped(program).pipe(Effect.provide(layer))))'
  echo 'console.log("esm: rate-sync/http answered")'
} > http.mjs
{
  echo 'const { HttpRouter, HttpServer, HttpServerResponse } = require("@effect/platform")'
  echo 'const { NodeHttpServer } = require("@effect/platform-node")'
  echo 'const { Effect, Layer } = require("effect")'
  echo 'const { createServer } = require("node:http")'
  echo 'const { RateSync, Stores } = require("rate-sync")'
  echo 'const { HttpRateLimit } = require("rate-sync/http")'
  printf '%s\n' "$http_program"
  echo 'Effect.runPromise(Effect.scoped(program).pipe(Effect.provide(layer))).then(check).then(() => console.log("cjs: rate-sync/http answered"), (error) => { console.error(error); process.exit(1) })'
} > http.cjs
node http.mjs
node --no-experimental-require-module http.cjs
http_types='
import { HttpRouter, HttpServerResponse } from "@effect/platform"
import { Effect } from "effect"
import { ClientAddressError, HttpApiRateLimit, HttpRateLimit, HttpRateLimitConfigError } from "rate-sync/http"

export const routes = Effect.map(HttpRateLimit.make({ limiters: "local", clientAddress: { trustedProxies: ["loopback"] } }), (limit) =>
  HttpRouter.empty.pipe(HttpRouter.get("/", HttpServerResponse.text("ok")), HttpRouter.use(limit)))
export const layer = HttpApiRateLimit.layer({ limiters: "local" })
export const errors = [ClientAddressError, HttpRateLimitConfigError] as const
'
printf '%s' "$http_types" > ts/http.mts
printf '%s' "$http_types" > ts/http.cts
printf '%s' "$http_types" > ts/http-bundler.ts
# @effect/platform's own declarations name DOM types (Storage, Transferable): the dom lib, as its users have.
http_flags=(--noEmit --strict --target es2022 --lib es2022,esnext.disposable,dom --types node)
npx tsc "${http_flags[@]}" --skipLibCheck false --module nodenext --moduleResolution nodenext ts/http.mts ts/http.cts
npx tsc "${http_flags[@]}" --skipLibCheck --module node16 --moduleResolution node16 ts/http.mts ts/http.cts
npx tsc "${http_flags[@]}" --skipLibCheck --module esnext --moduleResolution bundler ts/http-bundler.ts

step "every subpath loads, as an ES module and through require (without require(esm))"
# The frameworks' modules name their frameworks only as types: none is installed here.
# rate-sync/experimental needs the package it serves, as its README section says.
npm i --prefer-offline --no-audit --no-fund @effect/experimental@^0.61 > /dev/null
for subpath in redis express hono fastify nest experimental; do
  node --input-type=module -e "await import('rate-sync/$subpath')"
  node --no-experimental-require-module -e "require('rate-sync/$subpath')"
done

step "the installed command line"
npx rate-sync --help > help.txt
grep -q "check" help.txt && grep -q "cleanup" help.txt
npx rate-sync check --help > /dev/null
npx rate-sync check --config rate-sync.toml
npx rate-sync status shared --config rate-sync.toml
set +e
npx rate-sync cleanup --older-than soon --config rate-sync.toml 2> bad.txt
code=$?
set -e
if [ "$code" != 2 ] || [ "$(wc -l < bad.txt)" != 1 ]; then
  echo "a bad --older-than should print one line and exit 2 (exit $code):"; cat bad.txt; exit 1
fi
step "package check passed"

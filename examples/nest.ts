/**
 * @nestjs/throttler with a rate-sync storage: `npx tsx examples/nest.ts`.
 *
 * Starts on a free loopback port, sends itself 7 requests, prints each answer's status and
 * rate-limit headers, and exits. `SERVE=1` keeps it serving (on `PORT`, default 3000).
 *
 * The limiter "api" comes from the TOML file `RATE_SYNC_CONFIG` names, when set (on PostgreSQL or
 * Redis, every process serving it shares one limit); otherwise it lives in memory: 5 at once, then 1
 * a second. The throttler's `limit` is the limiter's burst.
 *
 * Decorators are applied as plain calls, so this file runs without `experimentalDecorators`; in an
 * app, `@Controller()`, `@Get()` and `@Module({...})` read the same.
 */
import "reflect-metadata"
import { Controller, Get, Module } from "@nestjs/common"
import { APP_GUARD, NestFactory } from "@nestjs/core"
import { ThrottlerGuard, ThrottlerModule } from "@nestjs/throttler"
import type { Server } from "node:http"
import type { AddressInfo } from "node:net"
import { RateSyncThrottlerStorage } from "../src/frameworks/nest.js"
import * as RateSync from "../src/promise.js"

if (process.env["RATE_SYNC_CONFIG"] !== undefined) {
  await RateSync.loadConfig()
} else {
  await RateSync.configureStore("local", { engine: "memory" })
  await RateSync.configureLimiter("api", { store: "local", rate_per_second: 1, burst: 5 })
}

class HelloController {
  hello(): string {
    return `hello from process ${process.pid}\n`
  }
}
Get()(HelloController.prototype, "hello", Object.getOwnPropertyDescriptor(HelloController.prototype, "hello")!)
Controller()(HelloController)

class AppModule {}
Module({
  imports: [ThrottlerModule.forRoot({
    throttlers: [{ ttl: 5_000, limit: 5 }],
    storage: new RateSyncThrottlerStorage({ limiter: "api" })
  })],
  controllers: [HelloController],
  providers: [{ provide: APP_GUARD, useClass: ThrottlerGuard }]
})(AppModule)

const app = await NestFactory.create(AppModule, { logger: ["error", "warn"] })
const serve = process.env["SERVE"] === "1"
await app.listen(serve ? Number(process.env["PORT"] ?? 3000) : 0, "127.0.0.1")
const url = `http://127.0.0.1:${((app.getHttpServer() as Server).address() as AddressInfo).port}`
console.log(`listening on ${url}`)

if (!serve) {
  for (let i = 1; i <= 7; i++) {
    const response = await fetch(url)
    const shown = ["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "retry-after"].flatMap((name) => {
      const value = response.headers.get(name)
      return value === null ? [] : [`${name}: ${value}`]
    })
    console.log(`request ${i}: ${response.status}  ${shown.join("  ")}`)
  }
  await app.close()
  await RateSync.close()
}

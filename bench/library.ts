/**
 * rate-sync as the package ships it: the build in dist (`npm run bench` makes it first), not the
 * TypeScript source run through tsx, whose esbuild keepNames wrapper around every closure costs
 * about a fifth of an in-memory acquire. Typed by the source it was built from.
 */
import { pathToFileURL } from "node:url"
import type * as Source from "../src/index.js"

// RATE_SYNC_DIST: another build's directory (say, one made with `tsc -p tsconfig.build.json --outDir`), to compare two.
const dist = process.env["RATE_SYNC_DIST"]
const built: typeof Source = await import(dist === undefined ? new URL("../dist/index.js", import.meta.url).href : pathToFileURL(`${dist}/index.js`).href)

export const { RateLimiter, RateSync, Stores } = built
export type RateLimiter = Source.RateLimiter

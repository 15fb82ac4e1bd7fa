/**
 * rate-sync as the package ships it: the build in dist (`npm run bench` makes it first), not the
 * TypeScript source run through tsx, whose esbuild keepNames wrapper around every closure costs
 * about a fifth of an in-memory acquire. Typed by the source it was built from.
 */
import type * as Source from "../src/index.js"

const built: typeof Source = await import(new URL("../dist/index.js", import.meta.url).href)

export const { RateLimiter, RateSync, Stores } = built
export type RateLimiter = Source.RateLimiter

/** Each Lua script with its SHA1, the name EVALSHA runs it by (sent whole with EVAL after NOSCRIPT). */
import { createHash } from "node:crypto"
import * as Scripts from "./scripts.js"

export interface Script {
  readonly lua: string
  readonly sha: string
}

const script = (lua: string): Script => ({ lua, sha: createHash("sha1").update(lua).digest("hex") })

export const SCRIPTS = {
  acquireLease: script(Scripts.acquireLease),
  acquireAll: script(Scripts.acquireAll),
  acquireRates: script(Scripts.acquireRates),
  acquireBuckets: script(Scripts.acquireBuckets),
  release: script(Scripts.release),
  renew: script(Scripts.renew),
  refund: script(Scripts.refund),
  backoff: script(Scripts.backoff),
  state: script(Scripts.state)
}

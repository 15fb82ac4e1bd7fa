import { complianceSuite } from "./suite.js"
import * as MemoryStore from "../../src/memory/MemoryStore.js"

complianceSuite({ name: "memory", factory: MemoryStore.layer, store: { engine: "memory" }, clock: "test" })

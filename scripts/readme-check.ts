/**
 * `npx tsx scripts/readme-check.ts [README.md]`: every TypeScript block of the README compiles, and the
 * runnable ones run, so the documentation cannot drift from the code. Exits non-zero on any failure,
 * naming the block's line.
 *
 * Conventions, for whoever writes a block (any ```ts or ```typescript fence, whatever its section):
 *
 * - Each block is its own ES module, compiled strict against this repository's `src`: `rate-sync`,
 *   `rate-sync/promise` and `rate-sync/postgres` resolve to `src/index.ts`, `src/promise.ts` and
 *   `src/postgres/PostgresStore.ts`. Top-level `await` and `await using` work. Unused names are allowed
 *   (a snippet may define what it shows).
 * - HTML comments right before the fence (blank lines between are fine; readers never see them) say
 *   what the block assumes:
 *     `<!-- preamble: declare const callUpstream: Effect.Effect<string> -->`: code put before the block,
 *       one comment per piece, any number of lines. It may use the block's imports.
 *     `<!-- run: memory postgres -->`: the block is also run, once per store named (default: memory), in
 *       a directory of its own holding a `rate-sync.toml` whose store `db` has that engine (postgres with
 *       `auto_create = true`) and whose limiter `api` is 100/s, burst 10, at most 50 at once, timeout 30 s,
 *       as in the README's configuration. PostgreSQL is `DATABASE_URL`, else the machine's server at
 *       127.0.0.1:5432; with neither, the postgres runs are skipped with a warning. A memory run has no
 *       DATABASE_URL. A run must end by itself (within 60 s) with exit code 0. `node20` among the
 *       targets: the block with its preamble must also be plain JavaScript that Node parses as an ES
 *       module (`node --check`; CI runs Node 20, the oldest the package supports, where `await using` is
 *       a SyntaxError), for blocks shown to JavaScript users.
 * - Names the README uses for the reader's own code need no preamble when a block only compiles:
 *   `callUpstream` (an Effect, or a function returning a Promise: both are used) and `userId`. A block
 *   that declares its own shadows them. A block that runs
 *   defines what it uses in a preamble.
 */
import { spawn } from "node:child_process"
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { dirname, join, relative, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import pg from "pg"
import ts from "typescript"
import { LOCAL_POSTGRES } from "../test/support/embeddedPostgres.js"

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..")
const readmePath = resolve(process.argv[2] ?? join(root, "README.md"))
/** How failures name the file: `README.md:LINE`. */
const readmeName = relative(process.cwd(), readmePath) || readmePath
// Inside the repository, so `effect` and the other packages resolve from its node_modules.
const work = join(root, ".tmp", "readme-check")

type Target = "memory" | "postgres"
const isTarget = (name: string): name is Target => name === "memory" || name === "postgres"

interface Block {
  /** The README line of the opening fence (1-based). */
  readonly line: number
  readonly code: string
  readonly preamble: string
  readonly runs: ReadonlyArray<Target>
  /** Marked `node20`: as written (with its preamble) it must also be a JavaScript module Node 20 parses. */
  readonly node20: boolean
}

// ---- finding the blocks -----------------------------------------------------------------------

const FENCE = /^(\s*)(`{3,}|~{3,})\s*([\w-]*)/

const parseBlocks = (text: string): Array<Block> => {
  const lines = text.split("\n")
  const blocks: Array<Block> = []
  // The comments met since the last block or prose line: they belong to the next fence.
  let comments: Array<string> = []
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!
    if (line.trim() === "") continue
    if (line.trimStart().startsWith("<!--")) {
      let comment = line
      while (!comment.includes("-->") && i + 1 < lines.length) comment += `\n${lines[++i]!}`
      comments.push(comment.slice(comment.indexOf("<!--") + 4, comment.lastIndexOf("-->")).trim())
      continue
    }
    const fence = FENCE.exec(line)
    if (fence === null) {
      comments = []
      continue
    }
    const [, indent, marker, language] = fence
    const body: Array<string> = []
    const start = i
    while (++i < lines.length && !lines[i]!.trimStart().startsWith(marker!)) body.push(lines[i]!.slice(indent!.length))
    if (language === "ts" || language === "typescript") {
      const preamble = comments.flatMap((c) => c.startsWith("preamble:") ? [c.slice("preamble:".length).trim()] : [])
      const run = comments.find((c) => c === "run" || c.startsWith("run:"))
      const named = run === undefined ? [] : run === "run" ? ["memory"] : run.slice("run:".length).trim().split(/\s+/)
      const runs = named.filter(isTarget)
      const unknown = named.filter((target) => !isTarget(target) && target !== "node20")
      if (unknown.length > 0) throw new Error(`${readmeName}:${start + 1}: unknown run target ${unknown.join(", ")} (memory, postgres, node20)`)
      blocks.push({ line: start + 1, code: body.join("\n"), preamble: preamble.join("\n"), runs, node20: named.includes("node20") })
    }
    comments = []
  }
  return blocks
}

// ---- compiling --------------------------------------------------------------------------------

/** The README's stand-ins for the reader's own code, global so that a block's own declaration shadows them. */
const PLACEHOLDERS = `
declare const callUpstream: import("effect").Effect.Effect<string> & (() => Promise<string>)
declare const userId: string
`

const fileOf = (block: Block) => join(work, `block-${block.line}.ts`)

/** The module a block compiles as: its preamble, then the block; `export {}` keeps it a module. */
const sourceOf = (block: Block) => `${block.preamble}\n${block.code}\nexport {}\n`

const preambleLines = (block: Block) => block.preamble.split("\n").length

const compilerOptions: ts.CompilerOptions = {
  target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.NodeNext,
  moduleResolution: ts.ModuleResolutionKind.NodeNext,
  lib: ["lib.es2022.d.ts", "lib.esnext.disposable.d.ts"],
  types: ["node"],
  strict: true,
  noUncheckedIndexedAccess: true,
  skipLibCheck: true,
  esModuleInterop: true,
  noEmit: true,
  baseUrl: root,
  paths: {
    "rate-sync": ["src/index.ts"],
    "rate-sync/promise": ["src/promise.ts"],
    "rate-sync/postgres": ["src/postgres/PostgresStore.ts"],
    "rate-sync/redis": ["src/redis/RedisStore.ts"],
    "rate-sync/http": ["src/http/index.ts"],
    "rate-sync/express": ["src/frameworks/express.ts"],
    "rate-sync/hono": ["src/frameworks/hono.ts"],
    "rate-sync/fastify": ["src/frameworks/fastify.ts"],
    "rate-sync/nest": ["src/frameworks/nest.ts"],
    "rate-sync/experimental": ["src/experimental/index.ts"]
  },
  typeRoots: [join(root, "node_modules", "@types")]
}

/** Where a diagnostic is, in README terms. */
const locate = (block: Block, line: number): string => {
  const inBlock = line - preambleLines(block)
  return inBlock < 0
    ? `${readmeName}:${block.line} (the block's preamble, line ${line + 1})`
    : `${readmeName}:${block.line + 1 + inBlock}`
}

const compile = (blocks: ReadonlyArray<Block>): Array<string> => {
  const placeholders = join(work, "placeholders.d.ts")
  writeFileSync(placeholders, PLACEHOLDERS)
  for (const block of blocks) writeFileSync(fileOf(block), sourceOf(block))
  const program = ts.createProgram([placeholders, ...blocks.map(fileOf)], compilerOptions)
  const byFile = new Map(blocks.map((block) => [resolve(fileOf(block)), block]))
  const failures: Array<string> = []
  for (const diagnostic of ts.getPreEmitDiagnostics(program)) {
    const message = ts.flattenDiagnosticMessageText(diagnostic.messageText, "\n  ")
    const block = diagnostic.file === undefined ? undefined : byFile.get(resolve(diagnostic.file.fileName))
    // Errors inside src are tsc's to report (npm test); here only the blocks' own count.
    if (diagnostic.file !== undefined && block === undefined) continue
    if (block === undefined || diagnostic.file === undefined || diagnostic.start === undefined) {
      failures.push(`compiler: ${message}`)
      continue
    }
    const { line } = diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start)
    failures.push(`${locate(block, line)}: does not compile (block at line ${block.line}): ${message}`)
  }
  return failures
}

// ---- running ----------------------------------------------------------------------------------

const tomlFor = (target: Target) =>
  `[stores.db]
${target === "memory" ? `engine = "memory"` : `engine = "postgres"\nurl = "\${DATABASE_URL}"\nauto_create = true`}

[limiters.api]
store = "db"
rate_per_second = 100.0
burst = 10
max_concurrent = 50
timeout = 30.0
`

const postgresAnswers = async (url: string): Promise<boolean> => {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2_000 })
  try {
    await client.connect()
    return true
  } catch {
    return false
  } finally {
    await client.end().catch(() => {})
  }
}

const findDatabase = async (): Promise<string | undefined> => {
  const given = process.env["DATABASE_URL"]
  if (given !== undefined && given !== "") return given
  return await postgresAnswers(LOCAL_POSTGRES) ? LOCAL_POSTGRES : undefined
}

const RUN_TIMEOUT_MS = 60_000

const runOnce = (block: Block, target: Target, database: string | undefined): Promise<string | undefined> => {
  const dir = join(work, `run-${block.line}-${target}`)
  mkdirSync(dir, { recursive: true })
  const file = join(dir, "main.ts")
  writeFileSync(file, sourceOf(block))
  writeFileSync(join(dir, "rate-sync.toml"), tomlFor(target))
  // tsx resolves `rate-sync` through this tsconfig's paths.
  writeFileSync(
    join(dir, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: {
        target: "ES2022",
        module: "NodeNext",
        moduleResolution: "NodeNext",
        baseUrl: relative(dir, root) || ".",
        paths: compilerOptions.paths
      }
    })
  )
  const env: NodeJS.ProcessEnv = { ...process.env, TSX_TSCONFIG_PATH: join(dir, "tsconfig.json") }
  delete env["RATE_SYNC_CONFIG"]
  if (target === "postgres" && database !== undefined) env["DATABASE_URL"] = database
  else delete env["DATABASE_URL"]
  return new Promise((resolveRun) => {
    const child = spawn(process.execPath, ["--import", "tsx", file], { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"] })
    let output = ""
    child.stdout.on("data", (chunk: Buffer) => output += chunk.toString())
    child.stderr.on("data", (chunk: Buffer) => output += chunk.toString())
    const timer = setTimeout(() => child.kill("SIGKILL"), RUN_TIMEOUT_MS)
    child.on("exit", (code, signal) => {
      clearTimeout(timer)
      const where = `${readmeName}:${block.line}: run on ${target}`
      const shown = output.trim() === "" ? "" : `\n    ${output.trim().split("\n").slice(-15).join("\n    ")}`
      resolveRun(
        signal === "SIGKILL"
          ? `${where}: still running after ${RUN_TIMEOUT_MS / 1000} s (a program with a server store must close its scope)${shown}`
          : code !== 0
          ? `${where}: exit code ${code ?? signal}${shown}`
          : undefined
      )
    })
  })
}

/**
 * A block shown to plain JavaScript users must parse as such on the Node the package supports
 * (`await using` is a SyntaxError on Node 20): `node --check` on it as an ES module, with this Node.
 */
const parsesAsJavaScript = (block: Block): Promise<string | undefined> => {
  const dir = join(work, `node20-${block.line}`)
  mkdirSync(dir, { recursive: true })
  const file = join(dir, "main.mjs")
  writeFileSync(file, sourceOf(block))
  return new Promise((resolveCheck) => {
    const child = spawn(process.execPath, ["--check", file], { stdio: ["ignore", "pipe", "pipe"] })
    let output = ""
    child.stderr.on("data", (chunk: Buffer) => output += chunk.toString())
    child.on("exit", (code) =>
      resolveCheck(
        code === 0
          ? undefined
          : `${readmeName}:${block.line}: not JavaScript Node ${process.versions.node} parses\n    ${output.trim().split("\n").slice(0, 6).join("\n    ")}`
      ))
  })
}

// ---- main -------------------------------------------------------------------------------------

const main = async () => {
  const blocks = parseBlocks(readFileSync(readmePath, "utf8"))
  rmSync(work, { recursive: true, force: true })
  mkdirSync(work, { recursive: true })
  console.log(`${blocks.length} TypeScript blocks in ${readmeName}`)
  const failures = compile(blocks)
  console.log(failures.length === 0 ? "all compile" : `${failures.length} compile errors`)

  for (const block of blocks.filter((b) => b.node20)) {
    const failure = await parsesAsJavaScript(block)
    console.log(`${readmeName}:${block.line}: parses as JavaScript on Node ${process.versions.node}: ${failure === undefined ? "ok" : "FAILED"}`)
    if (failure !== undefined) failures.push(failure)
  }

  const runnable = blocks.filter((block) => block.runs.length > 0)
  const database = runnable.some((block) => block.runs.includes("postgres")) ? await findDatabase() : undefined
  for (const block of runnable) {
    for (const target of block.runs) {
      if (target === "postgres" && database === undefined) {
        console.log(`${readmeName}:${block.line}: skipped on postgres (no DATABASE_URL, nothing at 127.0.0.1:5432)`)
        continue
      }
      const failure = await runOnce(block, target, database)
      console.log(`${readmeName}:${block.line}: run on ${target}: ${failure === undefined ? "ok" : "FAILED"}`)
      if (failure !== undefined) failures.push(failure)
    }
  }
  for (const failure of failures) console.error(failure)
  process.exit(failures.length === 0 ? 0 : 1)
}

await main()

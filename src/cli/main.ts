#!/usr/bin/env node
/**
 * The `rate-sync` command line: check, migrate, status, cleanup. Every failure it expects (a bad
 * argument, an invalid configuration, a store that refuses) is printed as its message, without a
 * stack trace, and sets the exit code (`ExitCode`).
 */
import * as Command from "@effect/cli/Command"
import * as ValidationError from "@effect/cli/ValidationError"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import * as NodePath from "@effect/platform-node/NodePath"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as NodeTerminal from "@effect/platform-node/NodeTerminal"
import * as Cause from "effect/Cause"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Check from "./check.js"
import * as Cleanup from "./cleanup.js"
import * as Migrate from "./migrate.js"
import * as Status from "./status.js"
import { ExitCode } from "./shared.js"
import { version } from "./version.js"

const rateSync = Command.make("rate-sync").pipe(
  Command.withDescription("rate-sync's tools: check a configuration and its stores, create the PostgreSQL table, show a limiter's state, delete idle rows."),
  Command.withSubcommands([Check.command, Migrate.command, Status.command, Cleanup.command])
)

const cli = Command.run(rateSync, { name: "rate-sync", version })

type Failure = Effect.Effect.Error<ReturnType<typeof cli>>

/** Prints a failure as one message and gives its exit code. */
const report = (error: Failure): Effect.Effect<number> => {
  // @effect/cli has printed its own message (and the usage) already.
  if (ValidationError.isValidationError(error)) return Effect.succeed(ExitCode.usage)
  switch (error._tag) {
    case "ProblemsFound":
      return Effect.as(Console.error(`rate-sync: ${error.message}`), ExitCode.failed)
    case "UsageError":
    case "LimiterNotFound":
      return Effect.as(Console.error(`rate-sync: ${error.message}`), ExitCode.usage)
    case "ConfigurationError":
      return Effect.as(Console.error(`rate-sync: invalid configuration:\n${error.message.replace(/^/gm, "  ")}`), ExitCode.configuration)
    default:
      return Effect.as(Console.error(`rate-sync: ${"store" in error ? `store ${error.store}: ` : ""}${error.message}`), ExitCode.failed)
  }
}

const program = Effect.suspend(() => cli(process.argv)).pipe(
  Effect.as(ExitCode.ok),
  Effect.catchAll(report),
  Effect.catchAllDefect((defect) =>
    Effect.as(Console.error(`rate-sync: unexpected error: ${defect instanceof Error ? defect.message : String(defect)}`), ExitCode.failed)
  ),
  // What @effect/cli needs of the platform (NodeContext would also load the command executor and workers).
  Effect.provide(Layer.mergeAll(NodeFileSystem.layer, NodePath.layer, NodeTerminal.layer))
)

NodeRuntime.runMain(program, {
  disableErrorReporting: true,
  teardown: (exit, onExit) =>
    onExit(Exit.isSuccess(exit) ? (typeof exit.value === "number" ? exit.value : ExitCode.ok) : Cause.isInterruptedOnly(exit.cause) ? ExitCode.ok : ExitCode.failed)
})

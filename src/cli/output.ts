/**
 * Standard output whose reader went away: `hotstack inspect F | head -3`.
 *
 * Node ignores SIGPIPE, so a write to a closed pipe fails with EPIPE, and
 * an unhandled stream error would end the program with a stack trace.
 * git and coreutils die of SIGPIPE instead (status 141, which shells hide
 * in pipelines). hotstack does neither: output nobody reads any more is
 * discarded, the command runs to its end, and the exit status is the
 * command's own (0 when it succeeded). Running to the end matters for the
 * live commands: an apply or revert must not be cut short half-way
 * because `| head` stopped reading.
 */

/** What to exit with, given the command's status (a write error other than EPIPE makes a success 1). */
export interface OutputGuard {
  status(commandStatus: number): number;
}

/**
 * Install the handlers on the process's streams (once, in bin/hotstack:
 * not in main(), which tests call in-process).
 */
export function guardOutput(out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr): OutputGuard {
  let failed = false;
  out.on('error', (e: NodeJS.ErrnoException) => {
    // The reader closed the pipe: not an error of hotstack's, and the stream drops later writes.
    if (e.code === 'EPIPE' || failed) return;
    failed = true;
    // Disk full, I/O error...: the output is incomplete, so say so and fail.
    try {
      err.write(`hotstack: cannot write standard output: ${e.code ?? 'EIO'}: ${e.message.replace(/^E[A-Z0-9]+: /, '')}\n`);
    } catch {
      /* nowhere left to report it */
    }
    // The error may arrive after the command's status was set (it is emitted on a later tick).
    if (!process.exitCode) process.exitCode = 1;
  });
  err.on('error', () => {
    /* stderr closed as well: nowhere left to report anything */
  });
  return { status: (n) => (failed && n === 0 ? 1 : n) };
}

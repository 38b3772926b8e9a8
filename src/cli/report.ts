/**
 * How a command tells what it did: xen-livepatch's text, or (--json) one
 * JSON object on standard output. A command picks its reporter once, from
 * its --json option, and reports through it; the two renderings never mix.
 */
import type { HotstackError } from '../errors.js';
import type { PayloadStateName } from '../core/state.js';
import type { ActionJson, JsonError, JsonStep } from './json-types.js';

/** Where a command writes: standard output and standard error. */
export interface Io {
  out(s: string): void;
  err(s: string): void;
}

/** The process's own streams. */
export const stdio: Io = {
  out: (s) => process.stdout.write(s),
  err: (s) => process.stderr.write(s),
};

/** A step's text: what goes to stdout (`completed`), what to stderr (`Error 22: ...`). */
export interface StepText {
  out?: string;
  err?: string;
}

/** A step as the commands build it: errno, code and message default to "no error". */
export type StepInput = Omit<JsonStep, 'errno' | 'code' | 'message'> & Partial<JsonStep>;

/**
 * A command's output. `out`/`err` are text only: what a reader gets as it
 * happens (progress, warnings), which the JSON object carries in its
 * fields instead, so the JSON reporter drops them.
 */
export interface Reporter extends Io {
  /** --json: progress bars and other terminal niceties are off. */
  readonly json: boolean;
  /** The command's result: text renders it with `print`; JSON prints `value`. */
  result<T>(value: T, print: (v: T, io: Io) => void): void;
  /** The command failed: text prints `line` on stderr; JSON prints `{...context, error}`. */
  failure(err: HotstackError, context: object, line: string, extra?: object): void;
  /** One step of a live command (upload, apply...): JSON collects it, text prints `text`. */
  step(s: StepInput, text?: StepText): void;
  /** The steps so far, in the JSON form (empty for text). */
  readonly steps: JsonStep[];
  /** End a live command with its status: JSON prints `{"ok","steps"}`. Returns `status`. */
  end(status: number): number;
}

/** The step of an action that failed with `err`. */
export function failedStep(action: string, name: string, state: PayloadStateName | null, err: HotstackError): StepInput {
  return { action, name, ok: false, result: 'failed', state, errno: err.errno, code: err.code, message: err.message };
}

/** `{errno, code, message}` of an error, as every JSON error object holds it. */
export function errorJson(err: HotstackError): JsonError {
  return { errno: err.errno, code: err.code, message: err.message };
}

/** JSON text of a value, bigints as "0x..." (addresses, sizes of the analysis). */
export function toJson(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? `0x${x.toString(16)}` : x));
}

/** xen-livepatch's lines on the given streams. */
export function textReporter(io: Io): Reporter {
  return {
    json: false,
    out: (s) => io.out(s),
    err: (s) => io.err(s),
    result: (v, print) => print(v, io),
    failure: (_err, _context, line) => io.err(line),
    step: (_s, text) => {
      if (text?.out) io.out(text.out);
      if (text?.err) io.err(text.err);
    },
    steps: [],
    end: (status) => status,
  };
}

/** One JSON object on `io`'s stdout per command; nothing on stderr. */
export function jsonReporter(io: Io): Reporter {
  const steps: JsonStep[] = [];
  return {
    json: true,
    out: () => {},
    err: () => {},
    result: (v) => io.out(toJson(v) + '\n'),
    failure: (err, context, _line, extra) => io.out(toJson({ ...context, error: { ...errorJson(err), ...extra } }) + '\n'),
    step: (s) => {
      // Field order is part of the output: scripts and tests compare it.
      const { action, name, ok, result, state, errno = null, code = 0, message = '', ...more } = s;
      steps.push({ action, name, ok, result, state, errno, code, message, ...more });
    },
    steps,
    end: (status) => {
      const v: ActionJson = { ok: status === 0, steps };
      io.out(toJson(v) + '\n');
      return status;
    },
  };
}

/** The reporter `--json` (or its absence) asks for. */
export function reporterFor(json: boolean | undefined, io: Io): Reporter {
  return json ? jsonReporter(io) : textReporter(io);
}

/**
 * The shape of every object the CLI prints with --json. Scripts depend on
 * these fields: add fields, never rename or drop one. Tests parse the
 * output as these types rather than declaring their own.
 */
import type { FunctionReport, Hazard } from '../analysis/types.js';
import type { BuildReport } from '../builder/build.js';
import type { CheckReport, CheckStep } from '../check/dry-run.js';
import type { PayloadSignature, PayloadStateName } from '../core/state.js';
import type { DiffReport } from '../diff/diff.js';
import type { ErrnoName } from '../errors.js';
import type { FleetActionName, FleetResult } from '../fleet/task.js';
import type { InspectedPayload } from '../payload/inspect.js';
import type { GeneratedKey } from '../trust/keys.js';
import type { SignReport } from './trust.js';

/** A value as JSON holds it: bigints become "0x..." strings (report.ts toJson). */
export type Jsonified<T> = T extends bigint
  ? string
  : T extends readonly (infer U)[]
    ? Jsonified<U>[]
    : T extends object
      ? { [K in keyof T]: Jsonified<T[K]> }
      : T;

/** The `error` member of a failed command's object. */
export interface JsonError {
  errno: ErrnoName;
  /** The negative errno, as Xen's hypercalls return it. */
  code: number;
  message: string;
}

/** A function entered through a preserving veneer, and the registers it keeps. */
export interface VeneerJson {
  function: string;
  registers: string[];
  /** The veneer's runtime address ("0x..."): live processes only. */
  address?: string;
}

/** A payload file's signature (src/trust/signature.ts signatureJson); `null` where a file is unsigned. */
export interface SignatureJson {
  keyId: string | null;
  key: string | null;
  valid: boolean;
  detached: boolean;
  /** Why it is not valid. */
  reason?: string;
}

/** One step of a live command (upload, apply, revert, unload, replace, load). */
export interface JsonStep {
  action: string;
  name: string;
  ok: boolean;
  /** What happened: "completed", "no action needed", "wrong state", or "failed". */
  result: string;
  state: PayloadStateName | null;
  errno: ErrnoName | null;
  code: number;
  message: string;
  hooksCalled?: string[];
  hooksSkipped?: string[];
  /** apply, revert, replace, unload: consistency checks it took to find a safe moment (each retry is a short stop of its own). */
  tries?: number;
  /** Compiler hazards of the patched functions (upload, apply). */
  hazards?: Hazard[];
  /** Functions entered through a preserving veneer (upload). */
  veneers?: VeneerJson[];
  /** upload: the file's signature, null when unsigned. */
  signature?: SignatureJson | null;
}

/** `--pid PID upload|apply|revert|unload|replace|load --json`. */
export interface ActionJson {
  ok: boolean;
  steps: JsonStep[];
  /** The command could not run at all (no such process, not allowed...). */
  error?: JsonError;
}

/** One entry of `list --json` (an array of them). */
export interface ListEntryJson {
  name: string;
  state: PayloadStateName;
  /** The last action's return code: 0, or a negative errno. */
  rc: number;
  errno: string | null;
  buildId: string;
  depends: string;
  base: { path: string; buildId: string };
  metadata: string[];
  veneers: VeneerJson[];
  hazards: Hazard[];
  /** Signed payloads only. */
  signature?: PayloadSignature;
}

/** `inspect --json FILE`. */
export type InspectJson = { file: string } & InspectedPayload & { signature: SignatureJson | null };

/** `inspect --json FILE` of a file that is not a valid payload. */
export interface InspectErrorJson {
  file: string;
  /** `offset`: where in the file the problem is, null when not tied to one place. */
  error: JsonError & { offset: number | null };
}

/** `check --json`. */
export type CheckJson = Omit<CheckReport, 'steps'> & { steps: CheckStepJson[] };

/** One step of `check --json`. */
export type CheckStepJson = Omit<CheckStep, 'signature'> & { signature?: SignatureJson | null };

/** `check --json` whose image could not be used. */
export interface CheckErrorJson {
  image: { path: string; buildId: null };
  error: JsonError;
}

/** `analyze --json`. */
export interface AnalyzeJson {
  base: { path: string; buildId: string | null };
  functions: Jsonified<FunctionReport>[];
  analyzed: number;
}

/** `analyze --json` that failed. */
export interface AnalyzeErrorJson {
  base: { path: string; buildId: null };
  error: JsonError;
}

/** The signing key of `build --sign`. */
export interface BuildSignatureJson {
  key: string;
  keyId: string;
}

/** `build --json` from C sources. */
export type BuildJson = BuildReport & { signature?: BuildSignatureJson };

/** `diff --json`, and `build --json --source DIR --patch FILE`. */
export type DiffJson = DiffReport & { signature?: BuildSignatureJson };

/** `build --json` or `diff --json` that failed (OUT is not written). */
export interface OutputErrorJson {
  output: string;
  error: JsonError;
}

/** `cflags --json`: the flags. */
export type CflagsJson = string[];

/** `keygen --json`. */
export type KeygenJson = GeneratedKey;

/** `keygen --json` that failed. */
export interface KeygenErrorJson {
  error: JsonError;
}

/** `sign --json`. */
export type SignJson = SignReport;

/** `sign --json` that failed. */
export interface SignErrorJson {
  payload: string;
  error: JsonError;
}

/** One process of a fleet run. */
export interface FleetProcessJson {
  pid: number;
  comm: string;
  result: FleetResult;
  /** One line: what was done, or why not. */
  detail: string;
  errno: string | null;
  code: number;
  message: string;
  /** Wall time spent on it, ms (two decimals). */
  ms: number;
  /** list: its payloads. */
  payloads?: ListEntryJson[];
  /** The other actions: the steps, as the single-process --json prints them. */
  steps?: JsonStep[];
  /** Repairs done on open (a journal a killed hotstack left). */
  notices?: string[];
}

/** `--all ACTION --json` (or several --pid). */
export interface FleetJson {
  ok: boolean;
  action: FleetActionName;
  name: string;
  /** Processes per result: the action's own word ("patched", "listed"), "skipped", "failed". */
  summary: Record<string, number>;
  processes: FleetProcessJson[];
}

/** A fleet run that could not start (payload unreadable, bad option). */
export interface FleetErrorJson {
  ok: false;
  action: FleetActionName;
  name: string;
  error: JsonError;
}

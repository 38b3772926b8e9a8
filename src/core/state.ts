/**
 * Engine state: everything needed to act on loaded payloads later, in a
 * plain-data form so a process target can persist it between commands
 * (see serializeState) and an image target can keep it in memory.
 */
import type { HookName, MultiHook } from '../payload/sections.js';
import type { Hazard } from '../analysis/types.js';

export type PayloadStateName = 'CHECKED' | 'APPLIED';

/** Xen's numeric states, as hooks see them. */
export const STATE_NUMBER: Record<PayloadStateName, number> = { CHECKED: 1, APPLIED: 2 };

export interface ExpectationRecord {
  enabled: boolean;
  len: number;
  rsv: number;
  /** Hex of expect.data (31 bytes). */
  data: string;
}

export interface FuncRecord {
  name: string;
  oldAddr: bigint;
  /** 0n for NOP patching. */
  newAddr: bigint;
  oldSize: number;
  newSize: number;
  /** 4 when the old function starts with endbr64, else 0. */
  patchOffset: number;
  expect: ExpectationRecord;
  /** Hex of the bytes saved at oldAddr+patchOffset when applied; '' when not applied. */
  undo: string;
  applied: boolean;
  /**
   * The preserving veneer the jump enters instead of newAddr, when callers
   * rely on registers the replacement may clobber (absent: jump to newAddr).
   */
  veneer?: { addr: bigint; size: number; registers: string[] };
}

export interface RegionRecord {
  addr: bigint;
  size: number;
  perm: Perm;
}

/** Memory permissions of a payload region (W^X: never writable and executable). */
export type Perm = 'rx' | 'r' | 'rw';

/** Hook addresses: an array for each multi hook, at most one address for each single hook. */
export type HookAddrs = Record<MultiHook, bigint[]> & Partial<Record<Exclude<HookName, MultiHook>, bigint>>;

export interface ExportedSymbol {
  name: string;
  addr: bigint;
  size: bigint;
}

/** An undefined symbol of a payload resolved outside the base and payloads (libc and friends). */
export interface ExternalRecord {
  symbol: string;
  /** Path of the object that defined it. */
  object: string;
  /** Offline: the address used is the IFUNC's resolver (it cannot run in a dry run). */
  ifuncResolver?: boolean;
}

/** A payload file's signature as checked when it was uploaded (src/trust/signature.ts). */
export interface PayloadSignature {
  /** Hex key id of the signer. */
  keyId: string;
  /** Keyring name of that key; null when the key was not in the keyring. */
  key: string | null;
  /** Whether a trusted key verified it. */
  valid: boolean;
}

export interface PayloadRecord {
  name: string;
  state: PayloadStateName;
  rc: number;
  /** Reverted at least once (Xen's `reverted`). */
  reverted: boolean;
  /** No non-empty writable section other than .livepatch.funcs. */
  safeToReapply: boolean;
  /** Hex build-ids. */
  buildId: string;
  depends: string;
  baseBuildId: string;
  basePath: string;
  metadata: string[];
  regions: RegionRecord[];
  funcs: FuncRecord[];
  hooks: HookAddrs;
  /** New symbols exported to later payloads (overriding symbols excluded). */
  symbols: ExportedSymbol[];
  /** Undefined symbols resolved in other objects, and which (absent in state written by older versions). */
  externals?: ExternalRecord[];
  /** Address of the struct hotstack_payload handed to hooks (0n when none). */
  hookArg: bigint;
  /** Run-time address of the payload's .livepatch.funcs (0n when none). */
  funcsAddr: bigint;
  /** Text range of the payload (code being removed on unload). */
  text: { start: bigint; end: bigint } | null;
  uploadSeq: number;
  /** The file's signature, when it had one (absent for unsigned payloads and in older state files). */
  signature?: PayloadSignature;
  /** Compiler hazards of the patched functions, found at upload (absent in older state files). */
  hazards?: Hazard[];
}

/** One memory write of an action in progress, for crash repair. */
export interface JournalWrite {
  addr: bigint;
  before: string;
  after: string;
}

/**
 * Intent written before an action touches target memory. A later command
 * that finds it undoes whatever of it reached memory, so no payload is
 * ever left half-applied.
 */
export interface Journal {
  action: string;
  payload: string;
  writes: JournalWrite[];
  /** Regions allocated by an upload in progress: freed on repair. */
  regions: RegionRecord[];
}

export interface EngineState {
  version: 1;
  payloads: PayloadRecord[];
  /** Applied stacks, keyed by base build-id hex, bottom to top. */
  stacks: Record<string, string[]>;
  pending: Journal | null;
  nextSeq: number;
}

export function emptyState(): EngineState {
  return { version: 1, payloads: [], stacks: {}, pending: null, nextSeq: 1 };
}

const BIG_TAG = '\u0000big:';

/** JSON with bigints kept exact (tagged strings). */
export function serializeState(s: EngineState): string {
  return JSON.stringify(s, (_k, v) => (typeof v === 'bigint' ? BIG_TAG + v.toString(16) : v));
}

/** Inverse of serializeState. Throws on malformed text (callers treat that as corrupt state). */
export function deserializeState(text: string): EngineState {
  const s = JSON.parse(text, (_k, v) =>
    typeof v === 'string' && v.startsWith(BIG_TAG) ? BigInt('0x' + v.slice(BIG_TAG.length)) : v,
  ) as EngineState;
  if (!s || s.version !== 1 || !Array.isArray(s.payloads)) throw new Error('unrecognised state');
  return s;
}

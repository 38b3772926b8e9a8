/**
 * The small interface the core engine drives. The engine knows nothing
 * about ptrace or files: a target is something with memory, base objects
 * to patch, a way to stop the world, and a place to keep engine state.
 */
import type { EngineState, Perm } from './state.js';
import type { HookName } from '../payload/sections.js';
import type { FunctionReport } from '../analysis/types.js';

// Perm lives with the state records that keep it, so state.ts needs nothing from here (no import cycle).
export type { Perm };

/** A symbol of a base object, at its run-time address (load bias applied). */
export interface BaseSymbol {
  name: string;
  addr: bigint;
  size: bigint;
  isFunc: boolean;
}

/** One ELF object that payloads can patch: Xen itself, or an object mapped in a process. */
export interface BaseObject {
  /** Path shown to people (the file, or the mapped object's path). */
  readonly path: string;
  /** GNU build-id, or null when the object has none. */
  readonly buildId: Uint8Array | null;
  /** Added to link-time addresses to get run-time ones (0 for Xen and non-PIE executables). */
  readonly bias: bigint;
  /**
   * Find a symbol by name: global/weak symbols by plain name, local symbols
   * as `FILE#NAME`, and a local by plain name when it is the only one so named.
   */
  lookup(name: string): BaseSymbol | undefined;
  /** True when `name` is a global (or weak) defined symbol of this object: the EEXIST rule. */
  hasGlobal(name: string): boolean;
  /**
   * In a live process: the object (path) that calls of the exported `name`
   * through the PLT are bound to instead of this one, because it comes
   * first in the dynamic linker's lookup order (LD_PRELOAD, the program).
   */
  interposer?(name: string): string | undefined;
  /** The names of the IFUNCs whose resolver is at run-time address `addr` (globals first; empty when none). */
  ifuncsAt?(addr: bigint): string[];
  /**
   * Patch-safety analysis of a function of this object (link-time
   * addresses), from its machine code; undefined when not a function or
   * when the object cannot be analysed.
   */
  analyze?(name: string): FunctionReport | undefined;
  /**
   * Hazards are only reported, never acted on (no veneers, no refusals):
   * Xen's own image, whose loader builds no veneers.
   */
  readonly reportOnly?: boolean;
}

/** A symbol resolved outside the bases and payloads, and who defined it. */
export interface ExternalSymbol {
  addr: bigint;
  /** Path of the defining object (a library). */
  object: string;
  /** True when `addr` is an IFUNC resolver, not the implementation (offline: the resolver cannot run). */
  ifuncResolver?: boolean;
}

/** A range of run-time addresses [start, end). */
export interface AddrRange {
  start: bigint;
  end: bigint;
  /** What it is, for messages: a function name or "payload hello text". */
  label: string;
}

/** Which hook is being run, for messages and for targets that care: one of the payload's hook sections. */
export type HookKind = HookName;

/** Result of running a hook: its int return value, or null when the target cannot run hooks (offline). */
export type HookResult = number | null;

/** Where the engine keeps its state between commands. */
export interface StateStore {
  load(): EngineState | null;
  save(state: EngineState): void;
}

/** The world while it is stopped: what the engine may do inside the quiesced window. */
export interface Quiesced {
  /** Consistency checks it took to find a safe moment (1: the first stop was safe); each retry is a stop of its own. */
  readonly tries: number;
  /** Run a hook inside the target while stopped. */
  callHook(kind: HookKind, fn: bigint, arg: bigint): HookResult;
}

/** One region to allocate: its size (whole pages) and final permission. */
export interface AllocRequest {
  size: number;
  perm: Perm;
}

export interface Target {
  /** 'image' (offline) or 'process' (live). */
  readonly kind: 'image' | 'process';
  /** Human description: "image xen-syms" or "process 1234 (server)". */
  readonly description: string;
  /** Whether hooks can actually run (false offline). */
  readonly canRunHooks: boolean;
  /** Default timeout in ms for reaching a safe moment when an action gives 0. */
  readonly defaultTimeoutMs: number;

  /** The base object whose GNU build-id equals `buildId`, if any. */
  findBase(buildId: Uint8Array): BaseObject | undefined;
  /** Every base object, for messages ("no object with build-id X; loaded: ..."). */
  bases(): BaseObject[];
  /**
   * Resolve a symbol in objects other than the bases (a process: dynamic
   * symbols of libc and friends; an image: the libraries it needs, found
   * as ld.so would). Returns the run-time address and the defining object.
   */
  lookupExternal(name: string): ExternalSymbol | undefined;
  /** What lookupExternal searches, for "unknown symbol" messages: "another loaded object". */
  externalScope(): string;

  read(addr: bigint, len: number): Uint8Array;
  write(addr: bigint, data: Uint8Array): void;
  /**
   * Reserve memory for each of `reqs` (sizes in whole pages) with its final
   * permission, within +-2 GiB of `near` so rel32 jumps and PC-relative
   * relocations reach; one call for all of an upload's regions, so a live
   * target maps them together. Contents are zero; the engine fills them
   * with write() (which works on read-only memory for a tracer). Returns
   * the addresses in the order of `reqs`.
   */
  allocate(reqs: AllocRequest[], near: BaseObject): bigint[];
  /**
   * Run `fn`, whose target operations (allocations) need the target
   * stopped, under one stop instead of one each. Optional: targets that
   * never stop (an image) run `fn` as it is.
   */
  batch?<T>(fn: () => T): T;
  free(addr: bigint, size: number): void;

  /**
   * Stop the world so that no thread is executing in, or will return into,
   * any of `busy`; then run `fn` and resume. Retries until `timeoutMs`,
   * then throws HotstackError EBUSY naming the thread and the range.
   */
  quiesce<T>(busy: AddrRange[], timeoutMs: number, fn: (q: Quiesced) => T): T;

  /** Run a hook outside the quiesced window (pre/post hooks). */
  callHook(kind: HookKind, fn: bigint, arg: bigint): HookResult;

  /** Engine state storage (in memory for images; persistent for processes). */
  readonly store: StateStore;
  /** What loading the state found worth telling a person (a state recovered from elsewhere). */
  readonly notices?: readonly string[];
}

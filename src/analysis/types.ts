/**
 * What patch-safety analysis reports about a function of a base object,
 * learnt from its machine code alone (plus DWARF when present). The
 * loader uses `reliedRegisters` and `stackArguments` to build preserving
 * veneers; `build`, `check` and `analyze` show the hazards.
 */

/** A general register by its 64-bit name ('rdi', 'r8', ...) or a vector register ('xmm3'). */
export type RegName = string;

/** A register the callers keep live across a call, and how wide (vector registers). */
export interface ReliedRegister {
  /** 'rdi', 'rsi', 'rdx', 'rcx', 'r8'..'r11', 'rax' (void functions), or 'xmm0'..'xmm15'. */
  name: RegName;
  /** Bytes the callers read after the call: 8 for general registers, 16/32/64 for xmm/ymm/zmm. */
  width: number;
}

/** One place that reaches the function. */
export interface CallerSite {
  /** 'call' | 'jmp' (tail call, incl. conditional) | 'address' (RIP-relative lea/mov) | 'data' (pointer in data) | 'reloc' (dynamic relocation) | 'export' (exported in .dynsym: other objects may call it). */
  kind: 'call' | 'jmp' | 'address' | 'data' | 'reloc' | 'export';
  /** Link-time address of the instruction or data word (0n for 'export'). */
  at: bigint;
  /** Function containing it (symbol name, or null when unknown). */
  in: string | null;
  /** For 'call': registers this site relies on (read after the call before written, not clobbered by the original). */
  relies?: RegName[];
}

/**
 * A direct branch into a function past its first byte: from other code (a
 * second entry point, as hand-written assembly has: glibc's mempcpy jumps
 * 3 bytes into memmove), or the function's own branch back into its first
 * bytes (a loop at its start), which matters only when other code enters it.
 */
export interface InteriorEntry {
  /** Link-time address of the branch instruction. */
  at: bigint;
  /** Function containing it (symbol name, or null when unknown). */
  in: string | null;
  kind: 'call' | 'jmp';
  /** Where it lands: bytes past the function's start. */
  offset: number;
  /** The function's own branch (or its `.cold` part's): it runs only while a thread is inside the function. */
  own: boolean;
  /**
   * The branch lies in code a function symbol or an unwind entry covers.
   * Else the linear sweep may have decoded data kept in the text (OpenSSL's
   * assembly keeps tables and strings there) as a branch.
   */
  inCode: boolean;
}

/** A hazard, as `check --json` and `build` show it. */
export interface Hazard {
  function: string;
  /** 'inlined' (no caller at all), 'registers' (callers rely on registers), 'copy' (clone such as f.constprop.N), 'alias' (another symbol at the same address), 'stack-arguments' (arguments on the stack: no veneer possible), 'entry' (other code branches into the function past its start), 'interposed' (in a live process, calls through the PLT are bound to another object's function of that name), 'unwind' (C++ exceptions cannot pass through a replacement), 'unanalysable' (analysis could not finish, e.g. code it cannot decode). */
  kind: 'inlined' | 'registers' | 'copy' | 'alias' | 'stack-arguments' | 'entry' | 'interposed' | 'unwind' | 'unanalysable';
  detail: string;
}

/** Everything the analysis knows about one function. */
export interface FunctionReport {
  /** The name asked for (FILE#NAME for statics). */
  function: string;
  /** Link-time address and size from the symbol table. */
  addr: bigint;
  size: bigint;
  callers: CallerSite[];
  /** True when nothing at all reaches the function: inlined everywhere, or unused. */
  noCallers: boolean;
  /** From DWARF: the functions it was inlined into (empty without DWARF). */
  inlinedInto: string[];
  /** Union over call sites (and tail-call chains): what a replacement must preserve. */
  reliedRegisters: ReliedRegister[];
  /** Registers the original may write (transitively through its direct callees). */
  clobbers: RegName[];
  /** true: reads arguments from the caller's stack frame; 'unknown': could not tell. */
  stackArguments: boolean | 'unknown';
  /** Branches into the function past its start (other code's anywhere in it; its own into its first 64 bytes). */
  interiorEntries: InteriorEntry[];
  /** Clones and aliases: `f.constprop.N`, `f.isra.N`, `f.part.N`, `f.cold`, other symbols at `addr`, other versions of its name (`exp@GLIBC_2.2.5`). */
  copies: { name: string; addr: bigint; kind: 'constprop' | 'isra' | 'part' | 'cold' | 'clone' | 'alias' | 'version' }[];
  hazards: Hazard[];
}

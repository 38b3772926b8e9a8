/**
 * `hotstack analyze --base ELF [FUNCTION...] [--json]`: what the compiler
 * assumed about functions of a base (spec/real-programs.md): who reaches
 * them, which registers callers keep live across calls, stack arguments,
 * clones and aliases, and the hazards these make for a patch.
 */
import type { Command } from 'commander';
import type { FunctionReport } from '../analysis/types.js';
import { ElfFile, SHT_SYMTAB } from '../elf/index.js';
import { findDebugFile, MAX_DEBUG_FILE_SIZE } from '../elf/debugfile.js';
import { readBoundedFile } from '../payload/file.js';
import { fail, HotstackError, toHotstackError } from '../errors.js';
import { errorLine, exitCodeFor } from './format.js';
import type { AnalyzeErrorJson } from './json-types.js';
import { reporterFor, stdio, type Io } from './report.js';

const HELP = `
With FUNCTION names (NAME, or FILE#NAME for a static whose name is not
unique), prints for each: address and size, what reaches it (calls, tail
jumps, addresses taken in code, pointers in data, dynamic relocations,
export), the registers its callers keep live across the call, what it may
clobber, whether it reads stack arguments, its clones and aliases, and the
hazards. Without FUNCTION, prints one line per function with a hazard.

Hazards: inlined (nothing reaches it: patching it changes nothing; DWARF
names where it was inlined), registers (callers rely on registers beyond
the ABI, gcc -fipa-ra: a replacement must keep them), stack-arguments (it
reads its caller's frame: no preserving veneer possible), copy (a clone
such as f.constprop.0 the patch does not reach), alias (another name for
the same code: the patch reaches it too), unanalysable (the analysis could
not finish; the reason says why).

A stripped base names only its exported functions; its debug file
(--debug-file, or found by build-id under /usr/lib/debug) adds the rest and
the DWARF that says where functions were inlined.

Example:
  hotstack analyze --base ./server discount_percent
  hotstack analyze --base /usr/lib/x86_64-linux-gnu/libz.so.1 --json
`;

export interface AnalyzeOptions {
  base: string;
  functions: string[];
  debugFile?: string;
}

export interface AnalyzeResult {
  base: { path: string; buildId: string | null };
  /** The reports: the functions asked for, or (none asked) every function with a hazard. */
  functions: FunctionReport[];
  /** Functions analysed (all of them when none was asked for). */
  analyzed: number;
}

/** Analyse the base; EINVAL/ENOENT for an unreadable base or an unknown function name. */
export async function runAnalyze(o: AnalyzeOptions): Promise<AnalyzeResult> {
  // Loaded here, not at start-up: the decoder is WebAssembly that only this command needs.
  const { BaseAnalysis } = await import('../analysis/index.js');
  // Bounded and regular files only: a FIFO or /dev/zero named as the base must not hang or fill memory.
  const bytes = readBoundedFile(o.base, { what: 'base', max: MAX_DEBUG_FILE_SIZE });
  let elf: ElfFile;
  try {
    elf = ElfFile.parse(bytes, o.base);
  } catch (e) {
    const err = toHotstackError(e);
    throw new HotstackError(err.errno, err.message.includes(o.base) ? err.message : `base ${o.base}: ${err.message}`, err.offset);
  }
  let debug: ElfFile | undefined;
  if (o.debugFile !== undefined) debug = findDebugFile(elf, o.base, { debugFile: o.debugFile })?.elf;
  else if (!elf.section('.debug_info') || !elf.sections.some((s) => s.type === SHT_SYMTAB)) {
    try {
      debug = findDebugFile(elf, o.base)?.elf;
    } catch {
      debug = undefined; // an unusable automatic candidate: analyse without it
    }
  }
  const a = BaseAnalysis.of(elf, { debug, path: o.base });
  const base = { path: o.base, buildId: a.buildId };
  if (o.functions.length) {
    const reports = o.functions.map((name) => {
      const r = a.report(name);
      if (!r) {
        const clones = a.functions().filter((f) => f.startsWith(name + '.'));
        fail('ENOENT', `no function ${name} in ${o.base}${clones.length ? `: the compiler left only ${clones.join(', ')} (analyze those)` : ' (NAME, or FILE#NAME for a static function; a stripped base names only exported functions: give --debug-file)'}`);
      }
      return r;
    });
    return { base, functions: reports, analyzed: reports.length };
  }
  const names = a.functions();
  const hazardous: FunctionReport[] = [];
  for (const n of names) {
    const r = a.report(n);
    if (r && r.hazards.length) hazardous.push(r);
  }
  return { base, functions: hazardous, analyzed: names.length };
}

const hex = (v: bigint): string => `0x${v.toString(16)}`;
const SHOWN_SITES = 6;

/** One function, readable. */
export function printReport(r: FunctionReport, io: Io): void {
  io.out(`${r.function}  ${hex(r.addr)}, ${r.size} bytes\n`);
  const counts = new Map<string, number>();
  for (const c of r.callers) counts.set(c.kind, (counts.get(c.kind) ?? 0) + 1);
  const summary = [...counts].map(([k, n]) => `${n} ${k}`).join(', ');
  io.out(`  callers:        ${r.noCallers ? 'none' : summary}\n`);
  for (const c of r.callers.slice(0, SHOWN_SITES)) {
    const where = c.kind === 'export' ? 'exported in .dynsym: other objects may call it' : `${hex(c.at)}${c.in ? ` in ${c.in}` : ''}`;
    const relies = c.relies && c.relies.length ? `, relies on ${c.relies.join(', ')}` : '';
    io.out(`    ${c.kind.padEnd(8)} ${where}${relies}\n`);
  }
  if (r.callers.length > SHOWN_SITES) io.out(`    ... and ${r.callers.length - SHOWN_SITES} more\n`);
  if (r.inlinedInto.length) io.out(`  inlined into:   ${r.inlinedInto.join(', ')}\n`);
  io.out(`  relied upon:    ${r.reliedRegisters.length ? r.reliedRegisters.map((x) => (x.width > 8 ? `${x.name} (${x.width} bytes)` : x.name)).join(', ') : 'nothing beyond the ABI'}\n`);
  io.out(`  clobbers:       ${r.clobbers.length ? r.clobbers.join(', ') : 'nothing'}\n`);
  io.out(`  stack args:     ${r.stackArguments === 'unknown' ? 'unknown' : r.stackArguments ? 'yes' : 'no'}\n`);
  io.out(`  copies:         ${r.copies.length ? r.copies.map((c) => `${c.name} (${c.kind}, ${hex(c.addr)})`).join(', ') : 'none'}\n`);
  if (!r.hazards.length) io.out('  hazards:        none\n');
  else {
    io.out('  hazards:\n');
    for (const h of r.hazards) io.out(`    ${h.kind}: ${h.detail}\n`);
  }
}

export function printAnalyze(r: AnalyzeResult, asked: boolean, io: Io): void {
  io.out(`${r.base.path} (build-id ${r.base.buildId ?? 'none'})\n`);
  if (asked) {
    for (const f of r.functions) printReport(f, io);
    return;
  }
  const width = Math.min(40, Math.max(0, ...r.functions.map((f) => f.function.length)));
  for (const f of r.functions) {
    const kinds = [...new Set(f.hazards.map((h) => h.kind))];
    const regs = f.reliedRegisters.length ? ` (${f.reliedRegisters.map((x) => x.name).join(', ')})` : '';
    io.out(`  ${f.function.padEnd(width)}  ${hex(f.addr)}  ${kinds.join(', ')}${kinds.includes('registers') ? regs : ''}\n`);
  }
  io.out(`${r.functions.length} of ${r.analyzed} functions have hazards\n`);
}

/** Register `hotstack analyze`. */
export function registerAnalyze(program: Command, setExit: (n: number) => void, io: Io = stdio): void {
  program
    .command('analyze')
    .description('what the compiler assumed about functions of a base: callers, relied-on registers, clones, hazards')
    .requiredOption('--base <elf>', 'the program or library (ELF executable or shared object)')
    .option('--debug-file <file>', 'separate debug file of a stripped base (same build-id)')
    .option('--json', 'print one JSON object')
    .argument('[functions...]', 'functions to report on (default: every function with a hazard)')
    .addHelpText('after', HELP)
    .action(async (functions: string[], o: { base: string; debugFile?: string; json?: boolean }) => {
      const rep = reporterFor(o.json, io);
      let r: AnalyzeResult;
      try {
        r = await runAnalyze({ base: o.base, functions, debugFile: o.debugFile });
      } catch (e) {
        const err = toHotstackError(e);
        rep.failure(err, { base: { path: o.base, buildId: null } } satisfies Omit<AnalyzeErrorJson, 'error'>, `hotstack: ${errorLine(err)}\n`);
        setExit(exitCodeFor(err));
        return;
      }
      // The JSON form holds addresses as "0x..." strings (report.ts toJson).
      rep.result(r, (v, out) => printAnalyze(v, functions.length > 0, out));
      setExit(0);
    });
}

/**
 * `hotstack diff`: ORIG.o / PATCHED.o pairs -> a payload (src/diff).
 */
import type { Command } from 'commander';
import { diffPayload, type DiffReport } from '../diff/diff.js';
import { buildFromSource } from '../diff/source.js';
import { buildSigner } from './trust.js';
import { fail, toHotstackError } from '../errors.js';
import { printBuild, printSigned, withSigner } from './build.js';
import { errorLine, exitCodeFor } from './format.js';
import type { DiffJson, OutputErrorJson } from './json-types.js';
import { reporterFor, type Io } from './report.js';

const DIFF_HELP = `
Each ORIG.o / PATCHED.o pair is one C file compiled twice, before and after
the fix, with the compiler and flags the base was built with plus
-ffunction-sections -fdata-sections. The ORIG objects must match the base
(sizes and bytes of every function the base has), else the diff is refused.

Included in the payload: changed functions (one record each, patching the
base's function), new functions, new variables, and the strings and
read-only data they use; .cold parts follow their function. Everything else
they use is resolved in the base (or the --depends payload). Refused:
changed values or sizes of existing variables, TLS, IFUNCs, constructors, a
function dropping its static variable, and no change at all. Differences
that only move __LINE__ (in calls to __assert_fail or a --line-macro
function) are not changes.

The payload is then finished and checked like \`hotstack build\` does
(sizes, --expect, notes, .modinfo, dry run on the base); OUT is written
only when everything passed.

Example:
  gcc -O2 -ffunction-sections -fdata-sections -c -o orig/app.o app.c
  gcc -O2 -ffunction-sections -fdata-sections -c -o new/app.o app-fixed.c
  hotstack diff --base ./app --expect -o fix.livepatch orig/app.o new/app.o
`;

function collect(v: string, prev: string[] | undefined): string[] {
  return [...(prev ?? []), v];
}

/** Human rendering: the build report, then what the diff found per pair. */
export function printDiff(r: DiffReport, io: Io): void {
  printBuild(r, io);
  for (const p of r.pairs) {
    io.out(`  diff      ${p.orig} -> ${p.patched} (${p.matched} functions match the base)\n`);
    for (const f of p.functions) io.out(`    ${f.status.padEnd(7)} ${f.name}: ${f.why}${f.record ? `; patches ${f.record}` : ''}\n`);
    if (p.lineOnly.length) io.out(`    same    ${p.lineOnly.join(', ')}: only line numbers moved\n`);
  }
}

export interface DiffCliOptions {
  base: string; depends?: string; name?: string; meta?: string[]; expect?: boolean; debugFile?: string;
  libPath?: string[]; sysroot?: string; output: string; json?: boolean; lineMacro?: string[];
}

/** Pair up ORIG PATCHED ORIG PATCHED...; an odd count is EINVAL. */
export function pairObjects(objects: string[]): [string, string][] {
  if (objects.length % 2 !== 0) fail('EINVAL', `${objects.length} objects given: name them in pairs, ORIG.o PATCHED.o (the last one, ${objects[objects.length - 1]}, has no partner)`);
  const out: [string, string][] = [];
  for (let i = 0; i < objects.length; i += 2) out.push([objects[i]!, objects[i + 1]!]);
  return out;
}

/** Register `diff` on the program. */
export function registerDiff(program: Command, setExit: (n: number) => void, io: Io): void {
  program
    .command('diff')
    .description('build a payload from the differences between original and patched objects')
    .usage('--base ELF [--debug-file FILE] [--lib-path DIR]... [--sysroot DIR] [--depends PAYLOAD] [--name NAME] [--meta KEY=VALUE]... [--expect] [--line-macro FN]... -o OUT ORIG.o PATCHED.o [ORIG.o PATCHED.o]...')
    .requiredOption('--base <elf>', 'the program (or shared object) the payload patches; needs a build-id')
    .option('--depends <payload>', 'the payload this one stacks on (default: the base itself)')
    .option('--name <name>', "payload name recorded in .modinfo (default: OUT's base name without extension)")
    .option('--meta <key=value>', 'add KEY=VALUE to .modinfo (repeatable)', collect)
    .option('--expect', 'give each function an expectation: its current first bytes, checked at apply')
    .option('--line-macro <fn>', 'a function whose call arguments carry __LINE__ (besides __assert_fail; repeatable)', collect)
    .option('--debug-file <file>', 'separate debug file of a stripped base (its .symtab names static functions)')
    .option('--lib-path <dir>', "for the dry run: look for the base's libraries in DIR first (repeatable)", collect)
    .option('--sysroot <dir>', "for the dry run: DIR is the target system's /, where the base's libraries are")
    .requiredOption('-o, --output <file>', 'the payload file to write')
    .option('--json', 'print one JSON object')
    .argument('<objects...>', 'ORIG.o PATCHED.o pairs')
    .addHelpText('after', DIFF_HELP)
    .action((objects: string[], o: DiffCliOptions) => {
      const rep = reporterFor(o.json, io);
      try {
        const r = diffPayload({
          base: o.base, depends: o.depends, name: o.name, meta: o.meta, expect: o.expect, out: o.output,
          pairs: pairObjects(objects), lineMacros: o.lineMacro, debugFile: o.debugFile, libPaths: o.libPath, sysroot: o.sysroot,
        });
        rep.result(r, printDiff);
        setExit(0);
      } catch (e) {
        const err = toHotstackError(e);
        rep.failure(err, { output: o.output } satisfies Omit<OutputErrorJson, 'error'>, `hotstack diff: ${errorLine(err)}\n`);
        setExit(exitCodeFor(err));
      }
    });
}

/** The options of `hotstack build` that select a source-patch build. */
export interface SourceCliOptions {
  source?: string; patch?: string[]; cumulative?: boolean; cflagsFromDwarf?: boolean; lineMacro?: string[];
}

/** `hotstack build --source DIR --patch FILE...`: returns the exit status. */
export function runSourceBuild(o: DiffCliOptions & SourceCliOptions & { cc?: string; sign?: string }, sources: string[], cflags: string[], io: Io): number {
  const rep = reporterFor(o.json, io);
  try {
    if (sources.length) fail('EINVAL', `give either C sources (${sources[0]}...) or --source DIR --patch FILE, not both`);
    if (o.source === undefined) fail('EINVAL', '--patch needs --source DIR: the source tree the patch applies to');
    const signer = o.sign !== undefined ? buildSigner(o.sign) : undefined;
    const r = buildFromSource({
      base: o.base, depends: o.depends, name: o.name, meta: o.meta, expect: o.expect, out: o.output, source: o.source, patches: o.patch ?? [],
      cc: o.cc, cflags, cflagsFromDwarf: o.cflagsFromDwarf, cumulative: o.cumulative, lineMacros: o.lineMacro,
      debugFile: o.debugFile, libPaths: o.libPath, sysroot: o.sysroot, finish: signer?.sign,
    });
    const signed: DiffJson = withSigner(r, signer);
    rep.result(signed, (v, out) => {
      printDiff(v, out);
      printSigned(v, out);
    });
    return 0;
  } catch (e) {
    const err = toHotstackError(e);
    rep.failure(err, { output: o.output } satisfies Omit<OutputErrorJson, 'error'>, `hotstack build: ${errorLine(err)}\n`);
    return exitCodeFor(err);
  }
}

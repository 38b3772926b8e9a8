/**
 * `hotstack build` (C sources -> payload) and `hotstack cflags` (the
 * compiler flags, for people who build payloads in their own build system).
 */
import { Option, type Command } from 'commander';
import { buildPayload, type BuildReport } from '../builder/build.js';
import { payloadCflags, shellQuote } from '../builder/tools.js';
import { toHotstackError } from '../errors.js';
import { runSourceBuild, type SourceCliOptions } from './diff.js';
import { errorLine, exitCodeFor } from './format.js';
import type { BuildJson, BuildSignatureJson, CflagsJson, OutputErrorJson } from './json-types.js';
import { safetyText } from './lifecycle.js';
import { reporterFor, stdio, type Io } from './report.js';
import { buildSigner } from './trust.js';

const BUILD_HELP = `
Each SRC is compiled with \`hotstack cflags\` plus CFLAGS, the objects are
linked with \`ld -r\`, and the records declared with HOTSTACK_PATCH /
HOTSTACK_NOP (include <hotstack.h>) get their sizes from the base's symbol
table. The payload stacks on --depends PAYLOAD (or on the base when absent):
its .livepatch.depends holds that build-id, .livepatch.xen_depends the
base's. --expect gives each function an expectation (its current first
bytes, checked at apply), except functions a payload lower in the stack
already patches. .modinfo gets hotstack.name=NAME, hotstack.patched=...
(every function patched by this payload and those below it) and each
--meta KEY=VALUE. Before OUT is written, the payload is checked on the base
like \`hotstack check\` (with --depends: that payload applied --nodeps
first); any failure leaves OUT untouched.

A stripped base (only .dynsym) names only its exported functions; static
ones come from its separate debug file (objcopy --only-keep-debug): give
--debug-file FILE, or it is found by build-id in
$HOTSTACK_DEBUG_ROOT/.build-id/xx/rest.debug (default /usr/lib/debug, where
debug packages install) or through the base's .gnu_debuglink. Its build-id
must be the base's.

Functions of libraries the base needs (printf, ...) are found for the dry
run as \`hotstack check\` finds them: --lib-path DIR and --sysroot DIR as
there (see hotstack check --help).

With --source DIR --patch FILE.patch instead of SRC.c files, the payload is
made from a source patch: the C files the last patch touches are compiled
in two scratch copies of DIR (the earlier patches applied, then the last
one too; --cumulative: none, then all) with CFLAGS (the base's flags, or
--cflags-from-dwarf) plus -ffunction-sections -fdata-sections, and the
objects are diffed as \`hotstack diff\` does (see hotstack diff --help).

Example:
  hotstack build --base ./server --expect -o fix1.livepatch fix1.c
  hotstack build --base ./server --depends fix1.livepatch -o fix2.livepatch fix2.c -- -DNDEBUG
  hotstack build --base ./server --source src --patch fix.patch -o fix.livepatch -- -O2 -g
`;

const CFLAGS_HELP = `
Prints the flags \`hotstack build\` compiles payload sources with: -fPIC,
one section per function and datum, no common symbols, no unwind tables,
-fcf-protection=none (put your own -fcf-protection after them to
override it), and -I for hotstack.h.

Compiling is only the first step of a payload. Built elsewhere, the objects
still need what \`hotstack build\` adds: new_size/old_size in each record
(from \`nm -S\`), the notes .livepatch.depends and .livepatch.xen_depends
(build-ids of the payload below and of the base), local symbols discarded,
and a final \`ld -r --build-id=sha1\`. Or hand the sources to hotstack build.

Example:
  gcc -c $(hotstack cflags) -o fix.o fix.c
`;

function collect(v: string, prev: string[] | undefined): string[] {
  return [...(prev ?? []), v];
}

/** Human rendering of what was built. */
export function printBuild(r: BuildReport, io: Io): void {
  io.out(`Built ${r.output}: payload ${r.name}\n`);
  io.out(`  build-id  ${r.buildId}\n`);
  io.out(`  depends   ${r.depends.buildId} (${r.depends.kind === 'base' ? `the base ${r.depends.path}` : `payload ${r.depends.path}${r.depends.name ? `, ${r.depends.name}` : ''}`})\n`);
  io.out(`  base      ${r.base.buildId} (${r.base.path})\n`);
  for (const f of r.funcs) {
    const what = f.kind === 'nop'
      ? `NOP ${f.newSize} bytes (function is ${f.oldSize} bytes)`
      : `old ${f.oldSize} bytes -> new ${f.newSize} bytes (${f.newFunction ?? '?'})${f.endbr64 ? ', jump after endbr64' : ''}`;
    const exp = f.expect ? `expects ${f.expect.len} bytes ${f.expect.bytes}` : f.noExpectation ?? 'no expectation';
    io.out(`  ${f.name}: ${what}; ${exp}\n`);
  }
  if (r.hooks.length) io.out(`  hooks     ${r.hooks.map((h) => (h.count > 1 ? `${h.kind} x${h.count}` : h.kind)).join(', ')}\n`);
  io.out(`  metadata  ${r.metadata.join('; ')}\n`);
  const chain = r.checks.filter((s) => s.action === 'apply').map((s) => `${s.name}${s.nodeps ? ' (--nodeps)' : ''}`);
  io.out(`  checked   on ${r.base.path}: ${chain.join(' -> ')} applied\n`);
  io.out(safetyText(r.hazards, r.veneers));
}

/** The report with the key that signed the payload (`build --sign`); unchanged when unsigned. */
export function withSigner<T extends object>(r: T, signer: ReturnType<typeof buildSigner> | undefined): T & { signature?: BuildSignatureJson } {
  return signer ? { ...r, signature: { key: signer.key.name, keyId: signer.key.keyId } } : r;
}

/** The line after a signed build's report. */
export function printSigned(r: { signature?: BuildSignatureJson }, io: Io): void {
  if (r.signature) io.out(`  signed    key ${r.signature.key} (${r.signature.keyId})\n`);
}

/** Register `build` and `cflags` on the program. */
export function registerBuild(program: Command, setExit: (n: number) => void, io: Io = stdio): void {
  const build = program
    .command('build')
    .description('compile C replacement functions into a payload that stacks on the base or on --depends')
    .usage('--base ELF [--debug-file FILE] [--lib-path DIR]... [--sysroot DIR] [--depends PAYLOAD] [--name NAME] [--meta KEY=VALUE]... [--expect] [--cc CC] [--sign KEY] -o OUT (SRC.c... | --source DIR --patch FILE.patch... [--cumulative] [--cflags-from-dwarf] [--line-macro FN]...) [-- CFLAGS...]')
    .requiredOption('--base <elf>', 'the program (or shared object) the payload patches; needs a build-id')
    .option('--depends <payload>', 'the payload this one stacks on (default: the base itself)')
    .option('--name <name>', "payload name recorded in .modinfo (default: OUT's base name without extension)")
    .option('--meta <key=value>', 'add KEY=VALUE to .modinfo (repeatable)', collect)
    .option('--expect', "give each function an expectation: its current first bytes, checked at apply")
    .option('--cc <cc>', 'C compiler (default: $CC, else gcc)')
    .option('--debug-file <file>', "separate debug file of a stripped base (its .symtab names static functions); default: found by build-id under $HOTSTACK_DEBUG_ROOT or /usr/lib/debug, or by .gnu_debuglink")
    .option('--lib-path <dir>', "for the dry run: look for the base's libraries in DIR first (repeatable)", collect)
    .option('--sysroot <dir>', "for the dry run: DIR is the target system's /, where the base's libraries are")
    .requiredOption('-o, --output <file>', 'the payload file to write')
    .option('--sign <key>', 'sign the payload with this private key (hotstack keygen) as the last step')
    .option('--json', 'print one JSON object')
    .addOption(new Option('--source <dir>', "the program's source tree: build the payload of --patch by compiling the files it touches before and after it and diffing them (see hotstack diff --help)"))
    .option('--patch <file>', 'a source patch (patch -p1) against --source; repeatable: the payload is the last one\'s, stacked with --depends on the earlier ones\' payload', collect)
    .option('--cumulative', 'with --source: one payload of all the patches against the pristine tree, for REPLACE')
    .option('--cflags-from-dwarf', "with --source: compile with the flags in the base's DW_AT_producer (it needs DWARF)")
    .option('--line-macro <fn>', 'with --source: a function whose call arguments carry __LINE__ (besides __assert_fail; repeatable)', collect)
    .argument('[sources...]', 'C sources, then optionally -- and compiler flags')
    .addHelpText('after', BUILD_HELP)
    .action((args: string[], o: { base: string; depends?: string; name?: string; meta?: string[]; expect?: boolean; cc?: string; debugFile?: string; libPath?: string[]; sysroot?: string; output: string; json?: boolean; sign?: string } & SourceCliOptions) => {
      // Commander hands everything after `--` over as more sources: split them off.
      // (rawArgs, the argv given to parse(), is public in commander but missing from its typings.)
      const raw = (program as unknown as { rawArgs?: string[] }).rawArgs ?? [];
      const dd = raw.indexOf('--');
      const nflags = dd >= 0 ? Math.min(raw.length - dd - 1, args.length) : 0;
      const sources = args.slice(0, args.length - nflags);
      const cflags = args.slice(args.length - nflags);
      if (o.source !== undefined || o.patch !== undefined) return setExit(runSourceBuild(o, sources, cflags, io));
      const rep = reporterFor(o.json, io);
      try {
        // The key is read first: a bad key fails before anything is compiled.
        const signer = o.sign !== undefined ? buildSigner(o.sign) : undefined;
        const built = buildPayload({
          base: o.base, depends: o.depends, name: o.name, meta: o.meta, expect: o.expect, cc: o.cc,
          out: o.output, sources, cflags, debugFile: o.debugFile, libPaths: o.libPath, sysroot: o.sysroot, finish: signer?.sign,
        });
        rep.result(withSigner(built, signer) satisfies BuildJson, (r, out) => {
          // JSON carries the compiler's warnings in compilerOutput.
          if (r.compilerOutput.trim()) out.err(r.compilerOutput);
          printBuild(r, out);
          printSigned(r, out);
        });
        setExit(0);
      } catch (e) {
        const err = toHotstackError(e);
        rep.failure(err, { output: o.output } satisfies Omit<OutputErrorJson, 'error'>, `hotstack build: ${errorLine(err)}\n`);
        setExit(exitCodeFor(err));
      }
    });
  void build;

  program
    .command('cflags')
    .description('print the compiler flags for payload sources (for your own build system)')
    .option('--json', 'print them as a JSON array')
    .addHelpText('after', CFLAGS_HELP)
    .action((o: { json?: boolean }) => {
      try {
        const flags: CflagsJson = payloadCflags();
        reporterFor(o.json, io).result(flags, (f, out) => out.out(f.map(shellQuote).join(' ') + '\n'));
        setExit(0);
      } catch (e) {
        const err = toHotstackError(e);
        // Not a JSON object even with --json: cflags fails only when hotstack itself is broken.
        io.err(`hotstack cflags: ${errorLine(err)}\n`);
        setExit(exitCodeFor(err));
      }
    });
}

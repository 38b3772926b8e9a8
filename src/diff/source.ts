/**
 * `hotstack build --source DIR --patch FILE.patch...`: the payload of a
 * source patch. Two scratch copies of DIR: ORIG with the earlier patches
 * applied (none with --cumulative), PATCHED with all of them; every C file
 * the last patch (with --cumulative: any patch) touches is compiled in
 * both with the base's flags plus -ffunction-sections -fdata-sections, and
 * the object pairs are diffed (diff.ts). Nothing in DIR is changed.
 */
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, normalize, resolve } from 'node:path';
import { DwarfInlines } from '../analysis/dwarf.js';
import { openBase } from '../builder/build.js';
import { runTool, splitCommand } from '../builder/tools.js';
import { readSymbols, SHT_SYMTAB, STT_FILE, STT_FUNC, type ElfFile } from '../elf/index.js';
import { fail, toHotstackError } from '../errors.js';
import { diffPayload, type DiffOptions, type DiffReport } from './diff.js';

export interface SourceBuildOptions extends Omit<DiffOptions, 'pairs'> {
  /** The program's source tree as the base was built from it. */
  source: string;
  /** Patches, in order (`patch -p1`); the payload is the last one's (all of them with `cumulative`). */
  patches: string[];
  /** C compiler command (default `$CC`, else gcc). */
  cc?: string;
  /** The flags the base was built with. */
  cflags?: string[];
  /** Take the flags from the base's DW_AT_producer. */
  cflagsFromDwarf?: boolean;
  /** Diff the pristine tree against all patches: one payload for REPLACE. */
  cumulative?: boolean;
}

/** Flags every object of the diff is compiled with, besides the base's. */
export const DIFF_CFLAGS = ['-ffunction-sections', '-fdata-sections'];
/** Most C files a header change recompiles. */
const MAX_FILES = 2000;

/** Files a unified diff creates or changes (`+++ b/PATH`, one leading component stripped as -p1 does). */
export function touchedFiles(patchText: string, patchPath: string): { path: string; added: boolean }[] {
  const out: { path: string; added: boolean }[] = [];
  const lines = patchText.split('\n');
  lines.forEach((l, i) => {
    if (!l.startsWith('+++ ')) return;
    const name = l.slice(4).split('\t')[0]!.trim();
    if (name === '/dev/null') return; // a deleted file
    const slash = name.indexOf('/');
    const rel = normalize(slash >= 0 ? name.slice(slash + 1) : name);
    if (rel.startsWith('..') || rel.startsWith('/')) fail('EINVAL', `${patchPath}: ${name} lies outside the source tree`);
    out.push({ path: rel, added: (lines[i - 1] ?? '').startsWith('--- /dev/null') });
  });
  if (!out.length) fail('EINVAL', `${patchPath} is not a unified diff (no "+++ b/FILE" line): make it with diff -u or git diff`);
  return out;
}

function cFilesUnder(dir: string, rel = ''): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(dir, rel), { withFileTypes: true })) {
    const p = rel ? join(rel, e.name) : e.name;
    if (e.isDirectory() && !e.name.startsWith('.')) out.push(...cFilesUnder(dir, p));
    else if (e.isFile() && e.name.endsWith('.c')) out.push(p);
    if (out.length > MAX_FILES) fail('E2BIG', `${dir} holds more than ${MAX_FILES} C files; a patch touching a header would recompile them all: patch the C files instead`);
  }
  return out;
}

/**
 * The compiler flags the base was built with, from DW_AT_producer: the
 * compile unit of a function of `file`, else the unit of any function.
 */
export function cflagsFromDwarf(elf: ElfFile, debug: ElfFile | undefined, file: string, basePath: string): string[] {
  const withDwarf = debug ?? elf;
  const dwarf = new DwarfInlines(withDwarf);
  if (!dwarf.present) fail('ENODATA', `--cflags-from-dwarf: the base ${basePath} has no DWARF (.debug_info): build it with -g, give its debug file with --debug-file, or give the flags after --`);
  const tab = withDwarf.sections.find((s) => s.type === SHT_SYMTAB);
  const syms = tab ? readSymbols(withDwarf, tab) : [];
  let current: string | undefined;
  let producer: string | undefined;
  for (const s of syms) {
    if (s.type === STT_FILE) current = s.name;
    else if (s.type === STT_FUNC && s.size > 0n && current !== undefined && basename(current) === basename(file)) producer ??= dwarf.producerAt(Number(s.value));
  }
  for (const s of syms) if (producer === undefined && s.type === STT_FUNC && s.size > 0n) producer = dwarf.producerAt(Number(s.value));
  if (producer === undefined) fail('ENODATA', `--cflags-from-dwarf: no DW_AT_producer in ${basePath} covers its functions; give the flags after --`);
  if (!/^GNU /.test(producer)) fail('EOPNOTSUPP', `--cflags-from-dwarf: ${basePath} was built by "${producer.slice(0, 60)}", which does not record its flags; give them after --`);
  return producer.split(/\s+/).filter((t) => t.startsWith('-'));
}

function applyPatch(tree: string, patch: string, what: string): void {
  runTool(['patch', '-p1', '--batch', '--forward', '--silent', '-d', tree, '-i', patch], `applying ${what} to a copy of the source tree (patch -p1)`);
}

/** Build the payload of the patches. Throws HotstackError; OUT is written only when everything succeeded. */
export function buildFromSource(opts: SourceBuildOptions): DiffReport {
  const cwd = opts.cwd ?? process.cwd();
  const src = resolve(cwd, opts.source);
  try {
    if (!statSync(src).isDirectory()) fail('EINVAL', `--source ${opts.source} is not a directory`);
  } catch (e) {
    const err = toHotstackError(e);
    fail(err.errno, err.message.startsWith('--source') ? err.message : `--source ${opts.source}: ${err.message}`);
  }
  if (!opts.patches.length) fail('EINVAL', '--source needs at least one --patch FILE');
  if (opts.cumulative && opts.depends !== undefined) fail('EINVAL', '--cumulative builds a payload for REPLACE, which stacks on the base: leave out --depends');
  if (opts.patches.length > 1 && !opts.cumulative && opts.depends === undefined) {
    fail('EINVAL', `${opts.patches.length} patches without --depends: the payload of the last one stacks on the payload of the others (give it with --depends), or give --cumulative for one payload of them all`);
  }
  const texts = opts.patches.map((p) => {
    try {
      if (statSync(resolve(cwd, p)).isDirectory()) fail('EINVAL', `--patch ${p} is a directory`);
      return readFileSync(resolve(cwd, p), 'latin1');
    } catch (e) {
      const err = toHotstackError(e);
      return fail(err.errno, err.message.startsWith('--patch') ? err.message : `--patch ${p}: ${err.message}`);
    }
  });
  const diffed = opts.cumulative ? opts.patches.map((p, i) => touchedFiles(texts[i]!, p)).flat() : touchedFiles(texts[texts.length - 1]!, opts.patches[opts.patches.length - 1]!);
  const added = diffed.find((f) => f.added && f.path.endsWith('.c'));
  if (added) fail('EOPNOTSUPP', `the patch adds the C file ${added.path}: nothing of the running program can call into a new file; put the new code in a file the program has`);

  let cflags = opts.cflags ?? [];
  if (opts.cflagsFromDwarf) {
    const base = openBase(resolve(cwd, opts.base), opts.base, opts.debugFile !== undefined ? resolve(cwd, opts.debugFile) : undefined);
    cflags = [...cflagsFromDwarf(base.elf, base.debugElf, diffed.find((f) => f.path.endsWith('.c'))?.path ?? '', opts.base), ...cflags];
  }
  const work = mkdtempSync(join(tmpdir(), 'hotstack-source-'));
  try {
    const orig = join(work, 'orig');
    const patched = join(work, 'patched');
    // Version-control metadata is not source: a large .git would only cost time.
    cpSync(src, orig, { recursive: true, filter: (from) => basename(from) !== '.git' });
    const before = opts.cumulative ? [] : opts.patches.slice(0, -1);
    before.forEach((p) => applyPatch(orig, resolve(cwd, p), p));
    cpSync(orig, patched, { recursive: true });
    const last = opts.cumulative ? opts.patches : opts.patches.slice(-1);
    last.forEach((p) => applyPatch(patched, resolve(cwd, p), p));

    const headers = diffed.some((f) => !f.path.endsWith('.c'));
    const files = headers ? cFilesUnder(patched) : [...new Set(diffed.map((f) => f.path))];
    if (!files.length) fail('EINVAL', `the patch touches no C file (${diffed.map((f) => f.path).join(', ')})`);
    const cc = splitCommand(opts.cc ?? process.env.CC, 'gcc');
    const objs = join(work, 'objects');
    const pairs: [string, string][] = files.map((f, i) => {
      const pair = ['orig', 'patched'].map((side) => {
        const dir = join(objs, side);
        mkdirSync(dir, { recursive: true });
        const obj = join(dir, `${i}-${basename(f).replace(/\.c$/, '')}.o`);
        runTool([...cc, '-c', ...cflags, ...DIFF_CFLAGS, f, '-o', obj], `compiling ${f} (${side === 'orig' ? 'before' : 'after'} the patch)`, { cwd: side === 'orig' ? orig : patched });
        return obj;
      });
      return [pair[0]!, pair[1]!];
    });
    const labels = files.map((f): [string, string] => [`${f} (before the patch)`, `${f} (patched)`]);
    return diffPayload({ ...opts, pairs, labels, cwd });
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

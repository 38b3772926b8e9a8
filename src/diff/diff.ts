/**
 * `hotstack diff`: pairs of objects (ORIG.o, PATCHED.o) -> one payload.
 *
 *   1. every ORIG.o must match the base (basematch.ts);
 *   2. each pair is correlated, compared and planned (include.ts);
 *   3. each plan is written as a relocatable object with its records (emit.ts);
 *   4. `hotstack build` finishes them like compiled sources: sizes and
 *      expectations from the base, notes, `.modinfo`, `ld -r --build-id`,
 *      the dry run, and OUT written only when all of it passed.
 */
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { BaseAnalysis } from '../analysis/index.js';
import { buildPayload, openBase, openDepends, type BuildOptions, type BuildReport } from '../builder/build.js';
import { fail, HotstackError, toHotstackError } from '../errors.js';
import { readSymbols, SHT_SYMTAB } from '../elf/index.js';
import { copiedVariables } from './basename.js';
import { checkOrigMatchesBase } from './basematch.js';
import { emitPlan } from './emit.js';
import { planPair, type Plan } from './include.js';
import { DiffObject } from './object.js';

/** Functions whose arguments carry `__LINE__` by default. */
export const DEFAULT_LINE_FUNCTIONS = ['__assert_fail'];

export interface DiffOptions extends Omit<BuildOptions, 'sources' | 'objects' | 'cc' | 'cflags'> {
  /** (ORIG.o, PATCHED.o) pairs. */
  pairs: [string, string][];
  /** What to call each pair's objects in messages (default: their paths). */
  labels?: [string, string][];
  /** More functions called with __LINE__ among their arguments (--line-macro). */
  lineMacros?: string[];
}

export interface DiffPairReport {
  orig: string;
  patched: string;
  functions: Plan['functions'];
  /** Functions whose only differences were line numbers (not changes). */
  lineOnly: string[];
  /** Functions of ORIG.o checked against the base. */
  matched: number;
}

export interface DiffReport extends BuildReport {
  pairs: DiffPairReport[];
}

function readObject(cwd: string, path: string, label: string): DiffObject {
  let bytes: Uint8Array;
  try {
    if (statSync(resolve(cwd, path)).isDirectory()) fail('EINVAL', `${path} is a directory; give an object file`);
    bytes = readFileSync(resolve(cwd, path));
  } catch (e) {
    const err = toHotstackError(e);
    throw new HotstackError(err.errno, err.message.startsWith(path) ? err.message : `${label}: ${err.message}`);
  }
  return DiffObject.open(label, bytes);
}

/** Diff the pairs into a payload. Throws HotstackError; OUT is written only when everything succeeded. */
export function diffPayload(opts: DiffOptions): DiffReport {
  const cwd = opts.cwd ?? process.cwd();
  if (!opts.pairs.length) fail('EINVAL', 'no objects given: name ORIG.o PATCHED.o pairs');
  const base = openBase(resolve(cwd, opts.base), opts.base, opts.debugFile !== undefined ? resolve(cwd, opts.debugFile) : undefined);
  const dep = opts.depends !== undefined ? openDepends(resolve(cwd, opts.depends), opts.depends, base) : undefined;
  const below = new Set(dep?.patched ?? []);
  const lineFns = new Set([...DEFAULT_LINE_FUNCTIONS, ...(opts.lineMacros ?? [])]);
  let analysis: BaseAnalysis | undefined;
  try {
    analysis = base.reportOnly ? undefined : BaseAnalysis.of(base.elf, { debug: base.debugElf, path: base.path });
  } catch {
    analysis = undefined; // not analysable: every changed function gets its record, the dry run judges
  }
  const symtab = (base.debugElf ?? base.elf).sections.find((s) => s.type === SHT_SYMTAB);
  const copies = copiedVariables(symtab ? readSymbols(base.debugElf ?? base.elf, symtab) : []);
  const names = { path: base.path, index: base.index, locals: base.locals, elf: base.elf, copies };

  const plans: Plan[] = [];
  const pairs: DiffPairReport[] = [];
  const seen = new Set<string>();
  for (const [i, [o, p]] of opts.pairs.entries()) {
    const [ol, pl] = opts.labels?.[i] ?? [o, p];
    for (const f of [o, p]) {
      if (resolve(cwd, f) === resolve(cwd, opts.out)) fail('EINVAL', `-o ${opts.out} is also an input object; write the payload somewhere else`);
    }
    if (seen.has(resolve(cwd, p))) fail('EINVAL', `${p} is given twice`);
    seen.add(resolve(cwd, p));
    const orig = readObject(cwd, o, ol);
    const patched = readObject(cwd, p, pl);
    const { matched, skipped } = checkOrigMatchesBase(names, orig, below);
    if (!matched && !skipped && orig.functions().length) {
      fail('EINVAL', `no function of ${ol} is in the base ${base.path}: is it an object of that program (built from the same source, same flags)?`);
    }
    const plan = planPair(orig, patched, {
      base: names, lineFns, stacked: dep !== undefined,
      belowFunction: (n) => dep?.functions.has(n) === true,
      unreached: (n) => analysis?.report(n)?.noCallers === true,
    });
    plans.push(plan);
    pairs.push({ orig: ol, patched: pl, functions: plan.functions, lineOnly: plan.lineOnly, matched });
  }
  const included = plans.flatMap((pl) => pl.functions);
  if (!included.length && !plans.some((pl) => pl.sections.length)) {
    const lines = plans.flatMap((pl) => pl.lineOnly);
    fail('ENODATA', `no change: the PATCHED objects hold the same code as the ORIG ones${lines.length ? ` (only line numbers moved, in ${lines.join(', ')})` : ''}; nothing to build`);
  }
  if (!plans.some((pl) => pl.records.length)) {
    fail('EINVAL', `the change reaches no function the base calls (included: ${included.map((f) => `${f.name} (${f.why})`).join(', ') || 'new data only'}): a payload needs at least one changed function the program calls`);
  }

  const work = mkdtempSync(join(tmpdir(), 'hotstack-diff-'));
  try {
    const objects = plans.filter((pl) => pl.sections.length || pl.records.length).map((pl, i) => {
      const f = join(work, `${i}-diff.o`);
      writeFileSync(f, emitPlan(pl));
      return f;
    });
    const built = buildPayload({ ...opts, sources: [], objects, cwd });
    // The payload carries the .cold parts of the functions it replaces: the analysis's warning that a
    // patch of f does not reach f.cold is about hand-written payloads, not this one.
    const carried = new Set(plans.flatMap((pl) => pl.functions.filter((f) => f.status === 'follows').map((f) => f.name)));
    const hazards = built.hazards.filter((h) => !(h.kind === 'copy' && [...carried].some((c) => h.detail.startsWith(`${c} `))));
    return { ...built, hazards, pairs };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

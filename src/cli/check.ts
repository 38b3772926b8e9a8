/**
 * `hotstack check --image ELF FILE...`: the dry run (src/check/dry-run.ts)
 * rendered for a reader, and its exit status.
 */
import { basename } from 'node:path';
import { errnoOf } from './format.js';
import { safetyText } from './lifecycle.js';
import type { Io } from './report.js';
import type { CheckReport, CheckStep } from '../check/dry-run.js';

export { runCheck, type CheckOptions, type CheckReport, type CheckStep } from '../check/dry-run.js';

/** "snprintf, qsort (libc.so.6); foo (libfoo.so)": grouped by library, in first-use order. */
function externalsText(symbols: NonNullable<CheckStep['symbols']>): string {
  const by = new Map<string, string[]>();
  for (const x of symbols) by.set(x.object, [...(by.get(x.object) ?? []), x.name]);
  return [...by].map(([obj, names]) => `${names.join(', ')} (${basename(obj)})`).join('; ');
}

/** Human rendering: one line per step and the final stack. */
export function printCheck(r: CheckReport, io: Io): void {
  io.out(`Image ${r.image.path} (build-id ${r.image.buildId ?? 'none'})\n`);
  const w = Math.max(4, ...r.steps.map((s) => s.name.length));
  for (const s of r.steps) {
    const status = s.ok ? `ok: ${s.message}` : `FAILED ${s.errno} (${s.code}): ${s.message}`;
    io.out(`  ${s.action.padEnd(7)} ${s.name.padEnd(w)}  ${status}\n`);
    if (s.action === 'upload') io.out(safetyText(s.hazards, s.veneers).replace(/^ {2}/gm, ' '.repeat(12 + w)));
    if (s.symbols?.length) io.out(`${' '.repeat(12 + w)}from libraries: ${externalsText(s.symbols)}\n`);
  }
  io.out(`Stack (bottom to top): ${r.stack.length ? r.stack.join(' -> ') : '(empty)'}\n`);
}

export function checkExit(r: CheckReport): number {
  return r.steps.every((s) => s.ok) ? 0 : 1;
}

export { errnoOf };

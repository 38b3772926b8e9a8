/**
 * `hotstack check --image ELF FILE...`: a dry run on a fresh offline
 * image: upload and apply each payload in order (a failed apply unloads
 * it again, like `load`), then optionally REPLACE with one more.
 */
import { toHex } from '../elf/bytes.js';
import { Engine } from '../core/engine.js';
import { toHotstackError } from '../errors.js';
import { ImageTarget } from '../targets/image/index.js';
import { errnoOf, nameFromFile } from './format.js';
import { readPayloadFile, type Io } from './lifecycle.js';

export interface CheckStep {
  file: string;
  name: string;
  action: 'upload' | 'apply' | 'replace';
  ok: boolean;
  errno: string | null;
  code: number;
  message: string;
  hooksRun: boolean;
  /** Hooks the step would run but could not, offline. */
  hooksSkipped: string[];
}

export interface CheckReport {
  image: { path: string; buildId: string | null };
  steps: CheckStep[];
  stack: string[];
}

export interface CheckOptions {
  image: string;
  files: string[];
  replace?: string;
  nodeps?: boolean;
  /** Called after each file, for progress on long runs. */
  progress?: (done: number, total: number) => void;
}

/** Run the dry run and return the report (throws only for an unusable image). */
export function runCheck(opts: CheckOptions): CheckReport {
  const target = ImageTarget.open(opts.image);
  const engine = new Engine(target);
  const steps: CheckStep[] = [];
  const step = (file: string, name: string, action: CheckStep['action'], fn: () => string[] | void, okMsg: string): boolean => {
    try {
      const skipped = fn() ?? [];
      steps.push({ file, name, action, ok: true, errno: null, code: 0, message: okMsg + (skipped.length ? ` (hooks not run offline: ${skipped.join(', ')})` : ''), hooksRun: false, hooksSkipped: skipped });
      return true;
    } catch (e) {
      const err = toHotstackError(e);
      steps.push({ file, name, action, ok: false, errno: err.errno, code: err.code, message: err.message, hooksRun: false, hooksSkipped: [] });
      return false;
    }
  };
  const uploadStep = (file: string): string | undefined => {
    const name = nameFromFile(file);
    return step(file, name, 'upload', () => void engine.upload(name, readPayloadFile(file)), 'uploaded') ? name : undefined;
  };
  const total = opts.files.length + (opts.replace ? 1 : 0);
  opts.files.forEach((file, i) => {
    const name = uploadStep(file);
    if (name) {
      const ok = step(file, name, 'apply', () => engine.action(name, 'APPLY', { nodeps: opts.nodeps }).hooksSkipped, 'applied');
      if (!ok) engine.action(name, 'UNLOAD');
    }
    opts.progress?.(i + 1, total);
  });
  if (opts.replace) {
    const file = opts.replace;
    const name = uploadStep(file);
    if (name) step(file, name, 'replace', () => engine.action(name, 'REPLACE').hooksSkipped, 'replaced the stack');
    opts.progress?.(total, total);
  }
  return {
    image: { path: opts.image, buildId: target.base.buildId ? toHex(target.base.buildId) : null },
    steps,
    stack: engine.list().filter((p) => p.state === 'APPLIED').map((p) => p.name),
  };
}

/** Human rendering: one line per step and the final stack. */
export function printCheck(r: CheckReport, io: Io): void {
  io.out(`Image ${r.image.path} (build-id ${r.image.buildId ?? 'none'})\n`);
  const w = Math.max(4, ...r.steps.map((s) => s.name.length));
  for (const s of r.steps) {
    const status = s.ok ? `ok: ${s.message}` : `FAILED ${s.errno} (${s.code}): ${s.message}`;
    io.out(`  ${s.action.padEnd(7)} ${s.name.padEnd(w)}  ${status}\n`);
  }
  io.out(`Stack (bottom to top): ${r.stack.length ? r.stack.join(' -> ') : '(empty)'}\n`);
}

export function checkExit(r: CheckReport): number {
  return r.steps.every((s) => s.ok) ? 0 : 1;
}

export { errnoOf };

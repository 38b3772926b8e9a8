/**
 * The offline dry run behind `hotstack check --image ELF FILE...` and
 * `hotstack build`: on a fresh in-memory copy of an image, upload and
 * apply each payload in order (a failed apply unloads it again, like
 * `load`), then optionally REPLACE with one more. Printing is the CLI's.
 */
import { toHex } from '../elf/bytes.js';
import { Engine } from '../core/engine.js';
import { toHotstackError } from '../errors.js';
import { ImageTarget } from '../targets/image/index.js';
import type { PayloadRecord } from '../core/state.js';
import { veneersOf } from '../core/safety.js';
import type { Hazard } from '../analysis/types.js';
import { readPayloadFile } from '../payload/file.js';
import { nameFromFile } from '../payload/name.js';
import { signatureJson, signatureText, type LoadedPayload } from '../trust/signature.js';

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
  /** Compiler hazards of the functions the payload patches (empty when its upload failed). */
  hazards: Hazard[];
  /** Functions that will be entered through a preserving veneer, and the registers it keeps. */
  veneers: { function: string; registers: string[] }[];
  /** Upload steps (CLI): the payload's signature, null when unsigned (signature.ts SignatureInfo). */
  signature?: Record<string, unknown> | null;
  /** Upload steps: the payload's undefined symbols resolved in a library, and which. */
  symbols?: { name: string; object: string; ifuncResolver?: boolean }[];
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
  /** Separate debug file of a stripped image (`--debug-file`). */
  debugFile?: string;
  /** Where the image's libraries are: `--lib-path` directories (searched first), `--sysroot`. */
  libPaths?: string[];
  sysroot?: string;
  /** Called after each file, for progress on long runs. */
  progress?: (done: number, total: number) => void;
  /** Reads a payload and checks its signature (the CLI: policy, keyring); absent: plain bounded read. */
  load?: (file: string) => LoadedPayload;
}

/** Run the dry run and return the report (throws only for an unusable image). */
export function runCheck(opts: CheckOptions): CheckReport {
  const target = ImageTarget.open(opts.image, { debugFile: opts.debugFile, libPaths: opts.libPaths, sysroot: opts.sysroot });
  const engine = new Engine(target);
  const steps: CheckStep[] = [];
  const step = (file: string, name: string, action: CheckStep['action'], fn: () => string[] | void, okMsg: string): boolean => {
    try {
      const skipped = fn() ?? [];
      const p = engine.find(name);
      const safety = { hazards: p?.hazards ?? [], veneers: p ? veneersOf(p) : [], ...(action === 'upload' ? { symbols: externalsOf(p) } : {}) };
      steps.push({ file, name, action, ok: true, errno: null, code: 0, message: okMsg + (skipped.length ? ` (hooks not run offline: ${skipped.join(', ')})` : ''), hooksRun: false, hooksSkipped: skipped, ...safety });
      return true;
    } catch (e) {
      const err = toHotstackError(e);
      steps.push({ file, name, action, ok: false, errno: err.errno, code: err.code, message: err.message, hooksRun: false, hooksSkipped: [], hazards: [], veneers: [], ...(action === 'upload' ? { symbols: [] } : {}) });
      return false;
    }
  };
  const uploadStep = (file: string): string | undefined => {
    const name = nameFromFile(file);
    let loaded: LoadedPayload | undefined;
    const ok = step(file, name, 'upload', () => {
      loaded = opts.load?.(file);
      void engine.upload(name, loaded ? loaded.bytes : readPayloadFile(file));
    }, 'uploaded');
    if (opts.load) {
      // Each upload step says whether (and by which key) its payload is signed.
      const s = steps[steps.length - 1]!;
      s.signature = signatureJson(loaded?.signature ?? null);
      if (ok) s.message += ` (signature: ${signatureText(loaded?.signature ?? null)})`;
    }
    return ok ? name : undefined;
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

/** A payload's external symbols as the report shows them. */
function externalsOf(p: PayloadRecord | undefined): NonNullable<CheckStep['symbols']> {
  return (p?.externals ?? []).map((x) => ({ name: x.symbol, object: x.object, ...(x.ifuncResolver ? { ifuncResolver: true } : {}) }));
}

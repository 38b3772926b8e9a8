/**
 * The xen-livepatch commands over any engine: list, upload, apply, revert,
 * unload, replace, load. Same words, output and exit codes as
 * xen-livepatch (actions.md).
 */
import { readPayloadFile } from '../payload/file.js';
import { HotstackError, toHotstackError } from '../errors.js';
import type { ActionCmd, Engine } from '../core/engine.js';
import type { PayloadStateName } from '../core/state.js';
import { errorLine, exitCodeFor, listJson, listTable, nameFromFile, veneersOf } from './format.js';
import type { Hazard } from '../analysis/types.js';
import type { JsonStep, VeneerJson } from './json-types.js';
import { failedStep, type Reporter } from './report.js';
import { recordedSignature, signatureJson, signatureLine, type LoadedPayload } from './trust.js';

/** Read a payload file (bounded, regular files only: src/payload/file.ts); unreadable files are typed errors. */
export { readPayloadFile } from '../payload/file.js';

/** `list`: xen-livepatch's table, or (--json) the array of list entries. */
export function cmdList(engine: Engine, rep: Reporter): number {
  const list = engine.list();
  rep.result(list.map(listJson), (_json, io) => io.out(listTable(list)));
  return 0;
}

/** What a command adds to its step: the optional fields of the JSON step, and text for the terminal. */
type Outcome = Pick<JsonStep, 'hooksCalled' | 'hooksSkipped' | 'tries' | 'hazards' | 'veneers' | 'signature'> & { text?: string };

/**
 * `<what>... completed` or `failed` plus `Error N: ERRNO: why`, as
 * xen-livepatch prints; with --json, one step instead.
 */
function attempt(rep: Reporter, what: string, action: string, name: string, engine: Engine, fn: () => Outcome | void): number {
  rep.out(`${what}... `);
  try {
    const o = fn() ?? {};
    const extra = { hooksCalled: o.hooksCalled, hooksSkipped: o.hooksSkipped, tries: o.tries, hazards: o.hazards, veneers: o.veneers, signature: o.signature };
    rep.step({ action, name, ok: true, result: 'completed', state: engine.find(name)?.state ?? null, ...extra }, { out: `completed\n${o.text ?? ''}` });
    return 0;
  } catch (e) {
    const err = toHotstackError(e);
    rep.step(failedStep(action, name, engine.find(name)?.state ?? null, err), { out: 'failed\n', err: errorLine(err) + '\n' });
    return exitCodeFor(err);
  }
}

/** `pre`: the file already read and its signature checked (trust.ts preloadForLive); else read here. */
export function cmdUpload(engine: Engine, name: string, file: string, rep: Reporter, pre?: LoadedPayload): number {
  return attempt(rep, `Uploading ${file}`, 'upload', name, engine, () => {
    const p = engine.upload(name, pre ? pre.bytes : readPayloadFile(file), { signature: recordedSignature(pre) });
    const hazards = p.hazards ?? [];
    const veneers = veneersOf(p);
    const signature = pre ? signatureJson(pre.signature) : undefined;
    return { hazards, veneers, signature, text: signatureLine(pre) + safetyText(hazards, veneers) || undefined };
  });
}

/** Indented notes after `completed`: functions entered through veneers, then hazards. */
export function safetyText(hazards: Hazard[], veneers: VeneerJson[]): string {
  let out = '';
  for (const v of veneers) out += `  veneer: ${v.function}: callers keep ${v.registers.join(', ')} across calls to it; the replacement is entered through a veneer that preserves them\n`;
  // A register hazard with a veneer is defused: the veneer line says so.
  const veneered = new Set(veneers.map((v) => v.function));
  for (const h of hazards) if (h.kind !== 'registers' || !veneered.has(h.function)) out += `  hazard: ${h.function}: ${h.kind}: ${h.detail}\n`;
  return out;
}

interface ActionDef {
  cmd: ActionCmd;
  verb: string;
  allow: PayloadStateName;
  /** State after success; null for unload (gone). */
  expected: PayloadStateName | null;
}

export const ACTIONS: Record<string, ActionDef> = {
  apply: { cmd: 'APPLY', verb: 'Applying', allow: 'CHECKED', expected: 'APPLIED' },
  revert: { cmd: 'REVERT', verb: 'Reverting', allow: 'APPLIED', expected: 'CHECKED' },
  unload: { cmd: 'UNLOAD', verb: 'Unloading', allow: 'CHECKED', expected: null },
  replace: { cmd: 'REPLACE', verb: 'Replacing all live patches with', allow: 'CHECKED', expected: 'APPLIED' },
};

export interface ActionCliOptions {
  nodeps?: boolean;
  timeoutMs?: number;
}

/** apply, revert, unload, replace of a loaded payload, checking its state first as xen-livepatch does. */
export function cmdAction(engine: Engine, action: string, name: string, opts: ActionCliOptions, rep: Reporter): number {
  const def = ACTIONS[action]!;
  const p = engine.find(name);
  if (!p) {
    const e = new HotstackError('ENOENT', `no payload named ${name} is loaded`);
    rep.step(failedStep(action, name, null, e), { err: `${name}: failed to get status: ${errorLine(e)}\n` });
    return 1;
  }
  if (p.state !== def.allow) {
    if (def.expected === p.state) {
      rep.step({ action, name, ok: true, result: 'no action needed', state: p.state }, { out: 'No action needed.\n' });
      return 0;
    }
    const message = `${name} is ${p.state}; ${action} needs ${def.allow}`;
    rep.step({ action, name, ok: false, result: 'wrong state', state: p.state, errno: 'EINVAL', code: -22, message }, { err: `${name} is in the wrong state.\nCurrent state: ${p.state}\nExpected state: ${def.allow}\n` });
    return 1;
  }
  return attempt(rep, `${def.verb} ${name}`, action, name, engine, () => {
    const o = engine.action(name, def.cmd, { nodeps: opts.nodeps, timeoutMs: opts.timeoutMs });
    // Patching a function nothing calls changes nothing: say so every time it is applied.
    const inlined = def.cmd === 'APPLY' || def.cmd === 'REPLACE' ? (engine.find(name)?.hazards ?? []).filter((h) => h.kind === 'inlined') : [];
    // JSON carries them in the step's hazards.
    for (const h of inlined) rep.err(`hotstack: warning: ${h.function}: ${h.detail}\n`);
    const notes = [
      ...(o.hooksSkipped.length ? [`hooks not run: ${o.hooksSkipped.join(', ')}`] : []),
      ...(o.tries > 1 ? [`a safe moment after ${o.tries} consistency checks`] : []),
    ];
    return { ...o, hazards: inlined.length ? inlined : undefined, text: notes.length ? `(${notes.join('; ')})\n` : undefined };
  });
}

/** load: upload under the file's base name, apply; unload again if the apply fails. */
export function cmdLoad(engine: Engine, file: string, opts: ActionCliOptions, rep: Reporter, pre?: LoadedPayload): number {
  const name = nameFromFile(file);
  const rc = cmdUpload(engine, name, file, rep, pre);
  if (rc) return rc;
  const arc = cmdAction(engine, 'apply', name, opts, rep);
  if (arc) {
    try {
      engine.action(name, 'UNLOAD', { timeoutMs: opts.timeoutMs });
      rep.step({ action: 'unload', name, ok: true, result: 'completed', state: null });
    } catch (e) {
      const err = toHotstackError(e);
      rep.step(failedStep('unload', name, engine.find(name)?.state ?? null, err), { err: `also failed to unload ${name} again: ${errorLine(err)}\n` });
    }
  }
  return arc;
}

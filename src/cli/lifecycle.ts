/**
 * The xen-livepatch commands over any engine: list, upload, apply, revert,
 * unload, replace, load. Same words, output and exit codes as
 * xen-livepatch (actions.md).
 */
import { readFileSync } from 'node:fs';
import { HotstackError, toHotstackError } from '../errors.js';
import type { ActionCmd, Engine } from '../core/engine.js';
import type { PayloadStateName } from '../core/state.js';
import { errorLine, exitCodeFor, listJson, listTable, nameFromFile } from './format.js';

export interface Io {
  out(s: string): void;
  err(s: string): void;
  /** When set (--json), steps are collected here instead of printed. */
  steps?: JsonStep[];
}

/** One step of a command, as `--json` reports it. */
export interface JsonStep {
  action: string;
  name: string;
  ok: boolean;
  /** What happened: "completed", "no action needed", "wrong state", or the error. */
  result: string;
  state: PayloadStateName | null;
  errno: string | null;
  code: number;
  message: string;
  hooksCalled?: string[];
  hooksSkipped?: string[];
}

function step(io: Io, s: Omit<JsonStep, 'errno' | 'code' | 'message'> & Partial<JsonStep>): void {
  const { action, name, ok, result, state, errno = null, code = 0, message = '', ...hooks } = s;
  io.steps!.push({ action, name, ok, result, state, errno, code, message, ...hooks });
}

/** Read a payload file; unreadable files are typed errors. */
export function readPayloadFile(file: string): Uint8Array {
  try {
    return readFileSync(file);
  } catch (e) {
    throw toHotstackError(e);
  }
}

export function cmdList(engine: Engine, json: boolean, io: Io): number {
  const list = engine.list();
  io.out(json ? JSON.stringify(list.map(listJson)) + '\n' : listTable(list));
  return 0;
}

interface Outcome {
  text?: string;
  hooksCalled?: string[];
  hooksSkipped?: string[];
}

/**
 * `<what>... completed` or `failed` plus `Error N: ERRNO: why`, as
 * xen-livepatch prints; with --json, one step instead.
 */
function attempt(io: Io, what: string, action: string, name: string, engine: Engine, fn: () => Outcome | void): number {
  if (!io.steps) io.out(`${what}... `);
  try {
    const o = fn() ?? {};
    if (io.steps) step(io, { action, name, ok: true, result: 'completed', state: engine.find(name)?.state ?? null, hooksCalled: o.hooksCalled, hooksSkipped: o.hooksSkipped });
    else {
      io.out('completed\n');
      if (o.text) io.out(o.text);
    }
    return 0;
  } catch (e) {
    const err = toHotstackError(e);
    if (io.steps) step(io, { action, name, ok: false, result: 'failed', state: engine.find(name)?.state ?? null, errno: err.errno, code: err.code, message: err.message });
    else {
      io.out('failed\n');
      io.err(errorLine(err) + '\n');
    }
    return exitCodeFor(err);
  }
}

export function cmdUpload(engine: Engine, name: string, file: string, io: Io): number {
  return attempt(io, `Uploading ${file}`, 'upload', name, engine, () => void engine.upload(name, readPayloadFile(file)));
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

export function cmdAction(engine: Engine, action: string, name: string, opts: ActionCliOptions, io: Io): number {
  const def = ACTIONS[action]!;
  const p = engine.find(name);
  if (!p) {
    const e = new HotstackError('ENOENT', `no payload named ${name} is loaded`);
    if (io.steps) step(io, { action, name, ok: false, result: 'failed', state: null, errno: e.errno, code: e.code, message: e.message });
    else io.err(`${name}: failed to get status: ${errorLine(e)}\n`);
    return 1;
  }
  if (p.state !== def.allow) {
    if (def.expected === p.state) {
      if (io.steps) step(io, { action, name, ok: true, result: 'no action needed', state: p.state });
      else io.out('No action needed.\n');
      return 0;
    }
    const message = `${name} is ${p.state}; ${action} needs ${def.allow}`;
    if (io.steps) step(io, { action, name, ok: false, result: 'wrong state', state: p.state, errno: 'EINVAL', code: -22, message });
    else io.err(`${name} is in the wrong state.\nCurrent state: ${p.state}\nExpected state: ${def.allow}\n`);
    return 1;
  }
  return attempt(io, `${def.verb} ${name}`, action, name, engine, () => {
    const o = engine.action(name, def.cmd, { nodeps: opts.nodeps, timeoutMs: opts.timeoutMs });
    return { ...o, text: o.hooksSkipped.length ? `(hooks not run: ${o.hooksSkipped.join(', ')})\n` : undefined };
  });
}

/** load: upload under the file's base name, apply; unload again if the apply fails. */
export function cmdLoad(engine: Engine, file: string, opts: ActionCliOptions, io: Io): number {
  const name = nameFromFile(file);
  const rc = cmdUpload(engine, name, file, io);
  if (rc) return rc;
  const arc = cmdAction(engine, 'apply', name, opts, io);
  if (arc) {
    try {
      engine.action(name, 'UNLOAD', { timeoutMs: opts.timeoutMs });
      if (io.steps) step(io, { action: 'unload', name, ok: true, result: 'completed', state: null });
    } catch (e) {
      const err = toHotstackError(e);
      if (io.steps) step(io, { action: 'unload', name, ok: false, result: 'failed', state: engine.find(name)?.state ?? null, errno: err.errno, code: err.code, message: err.message });
      else io.err(`also failed to unload ${name} again: ${errorLine(err)}\n`);
    }
  }
  return arc;
}

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

/** `<what>... completed` or `failed` plus `Error N: ERRNO: why`, as xen-livepatch prints. */
function attempt(io: Io, what: string, fn: () => string | void): number {
  io.out(`${what}... `);
  try {
    const extra = fn();
    io.out('completed\n');
    if (extra) io.out(extra);
    return 0;
  } catch (e) {
    const err = toHotstackError(e);
    io.out('failed\n');
    io.err(errorLine(err) + '\n');
    return exitCodeFor(err);
  }
}

export function cmdUpload(engine: Engine, name: string, file: string, io: Io): number {
  return attempt(io, `Uploading ${file}`, () => void engine.upload(name, readPayloadFile(file)));
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
    io.err(`${name}: failed to get status: ${errorLine(e)}\n`);
    return 1;
  }
  if (p.state !== def.allow) {
    if (def.expected === p.state) {
      io.out('No action needed.\n');
      return 0;
    }
    io.err(`${name} is in the wrong state.\nCurrent state: ${p.state}\nExpected state: ${def.allow}\n`);
    return 1;
  }
  return attempt(io, `${def.verb} ${name}`, () => {
    const outcome = engine.action(name, def.cmd, { nodeps: opts.nodeps, timeoutMs: opts.timeoutMs });
    return outcome.hooksSkipped.length ? `(hooks not run: ${outcome.hooksSkipped.join(', ')})\n` : undefined;
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
    } catch (e) {
      io.err(`also failed to unload ${name} again: ${errorLine(toHotstackError(e))}\n`);
    }
  }
  return arc;
}

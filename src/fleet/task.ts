/**
 * One process of a fleet command: open it, run the same command the
 * single-process CLI runs (src/cli/lifecycle.ts), and say whether the
 * process was patched, skipped (exited meanwhile, already in the wanted
 * state, payload not there) or failed. Never throws: every problem ends up
 * in the outcome, so one process cannot stop the others.
 */
import { HotstackError, toHotstackError } from '../errors.js';
import type { Engine } from '../core/engine.js';
import { listJson } from '../cli/format.js';
import type { FleetProcessJson, JsonStep, ListEntryJson } from '../cli/json-types.js';
import { cmdAction, cmdLoad, cmdUpload } from '../cli/lifecycle.js';
import { jsonReporter, type Reporter } from '../cli/report.js';
import type { LoadedPayload } from '../cli/trust.js';
import { openProcessEngine } from '../targets/process/session.js';
import { statFacts, type StatFacts } from '../targets/process/procfs.js';
import { leaderLeftEarly } from '../targets/process/threads.js';

export type FleetActionName = 'list' | 'upload' | 'load' | 'apply' | 'revert' | 'unload' | 'replace';

/** What to do in every process (structured-cloneable: it is posted to worker threads). */
export interface FleetAction {
  action: FleetActionName;
  /** The payload name (upload: given; load: from the file; the actions: given). */
  name: string;
  /** upload/load: the file, already read and its signature checked once for all processes. */
  payload?: LoadedPayload;
  /** upload/load: the payload's own build-id (hex), to recognise it already loaded. */
  buildId?: string;
  nodeps?: boolean;
  timeoutMs?: number;
}

export type FleetResult = 'patched' | 'skipped' | 'failed' | 'listed';

/** What happened in one process: the JSON a fleet run prints for it, with its steps and notices always there. */
export type ProcessOutcome = Omit<FleetProcessJson, 'steps' | 'notices' | 'nodeps' | 'timeoutMs'> & {
  steps: JsonStep[];
  notices: string[];
};

/**
 * The stat facts of `pid` (its start time tells an exit from a failure;
 * the open takes the rest from the same read), or null when it does not
 * exist or has exited and is only waiting to be reaped (a zombie whose
 * threads are all gone).
 */
function liveFacts(pid: number): StatFacts | null {
  try {
    const f = statFacts(pid);
    if ('ZX'.includes(f.state) && !leaderLeftEarly(pid)) return null;
    return f;
  } catch {
    return null;
  }
}

function startTime(pid: number): bigint | null {
  return liveFacts(pid)?.startTime ?? null;
}

/** Result of running the command in an open engine: the status and, for skips, why. */
interface Ran {
  rc: number;
  skip?: string;
  payloads?: ListEntryJson[];
}

function runIn(engine: Engine, a: FleetAction, rep: Reporter): Ran {
  if (a.action === 'list') return { rc: 0, payloads: engine.list().map(listJson) };
  if (a.action === 'upload' || a.action === 'load') {
    // The same payload (by build-id) already here, under any name: do only what is left.
    const there = engine.list().find((p) => p.buildId === a.buildId);
    if (there?.state === 'APPLIED') return { rc: 0, skip: `${there.name} is already applied` };
    if (there && a.action === 'upload') return { rc: 0, skip: `${there.name} is already loaded (${there.state})` };
    if (there) return { rc: cmdAction(engine, 'apply', there.name, { nodeps: a.nodeps, timeoutMs: a.timeoutMs }, rep) };
    const file = a.payload!.file;
    if (a.action === 'upload') return { rc: cmdUpload(engine, a.name, file, rep, a.payload) };
    // Upload and apply in one stop (nothing is printed meanwhile: the steps are collected).
    return { rc: engine.together(() => cmdLoad(engine, file, { nodeps: a.nodeps, timeoutMs: a.timeoutMs }, rep, a.payload)) };
  }
  if (!engine.find(a.name)) return { rc: 0, skip: `no payload named ${a.name} is loaded in it` };
  const rc = cmdAction(engine, a.action, a.name, { nodeps: a.nodeps, timeoutMs: a.timeoutMs }, rep);
  const last = rep.steps[rep.steps.length - 1];
  if (rc === 0 && last?.result === 'no action needed') return { rc, skip: `${a.name} is already ${last.state}` };
  return { rc };
}

/** Run `a` on process `pid`; never throws. */
export function runOnProcess(pid: number, comm: string, a: FleetAction): ProcessOutcome {
  const t0 = performance.now();
  // The steps are collected, not printed: the fleet prints one line (or object) per process.
  const rep = jsonReporter({ out: () => {}, err: () => {} });
  const base = { pid, comm, steps: rep.steps, notices: [] as string[] };
  const done = (o: Omit<ProcessOutcome, keyof typeof base | 'ms'>): ProcessOutcome => ({ ...base, ...o, ms: performance.now() - t0 });
  const facts = liveFacts(pid);
  if (facts === null) return done({ result: 'skipped', detail: 'exited', errno: null, code: 0, message: '' });
  const started = facts.startTime;
  let ran: Ran;
  try {
    ran = openProcessEngine(pid, (engine) => {
      base.notices = engine.notices;
      return runIn(engine, a, rep);
    }, facts);
  } catch (e) {
    const err = toHotstackError(e);
    // Gone, or another process now under that pid: it exited meanwhile, nothing to patch.
    if (startTime(pid) !== started) return done({ result: 'skipped', detail: 'exited', errno: null, code: 0, message: '' });
    return done({ result: 'failed', detail: `${err.errno}: ${err.message}`, errno: err.errno, code: err.code, message: err.message });
  }
  if (ran.payloads) return done({ result: 'listed', detail: `${ran.payloads.length} payload${ran.payloads.length === 1 ? '' : 's'}`, errno: null, code: 0, message: '', payloads: ran.payloads });
  if (ran.skip) return done({ result: 'skipped', detail: ran.skip, errno: null, code: 0, message: '' });
  if (ran.rc === 0) {
    const summary = rep.steps.map((s) => `${s.action} ${s.name}`).join(', ');
    return done({ result: 'patched', detail: `${summary}: completed`, errno: null, code: 0, message: '' });
  }
  const bad = rep.steps.find((s) => !s.ok);
  if (startTime(pid) !== started) return done({ result: 'skipped', detail: 'exited', errno: null, code: 0, message: '' });
  const err = bad?.errno ? new HotstackError(bad.errno, bad.message) : new HotstackError('EIO', 'failed');
  return done({ result: 'failed', detail: `${bad ? `${bad.action} ${bad.name}: ` : ''}${err.errno}: ${err.message}`, errno: err.errno, code: err.code, message: err.message });
}

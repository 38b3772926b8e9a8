/**
 * `hotstack --all ACTION ...` (or several --pid): one command on every
 * process running a build. Picks the processes (src/targets/process/
 * discover.ts), runs the action in each with bounded parallelism
 * (src/fleet/pool.ts), and prints one line per process, a summary, and
 * a progress bar on a terminal for runs longer than a second.
 */
import { toHotstackError, HotstackError } from '../errors.js';
import { inspectPayload } from '../payload/inspect.js';
import { discover, type FleetFilter, type FleetProcess } from '../targets/process/discover.js';
import { defaultJobs, FleetPool, type FleetRun } from '../fleet/pool.js';
import { runOnProcess, type FleetAction, type FleetActionName, type ProcessOutcome } from '../fleet/task.js';
import { testMode } from '../core/fault.js';
import { errorLine, exitCodeFor, listTable } from './format.js';
import type { FleetErrorJson, FleetJson, FleetProcessJson, ListEntryJson } from './json-types.js';
import { reporterFor, type Io } from './report.js';
import { loadPayloadFile, type TrustCliOptions } from './trust.js';
import type { PayloadRecord } from '../core/state.js';

/** The options that make and narrow a fleet run. */
export interface FleetOptions {
  all?: boolean;
  /** Every --pid given (repeated or comma-separated). */
  pids?: number[];
  exe?: string;
  uid?: number;
  baseBuildId?: string;
  jobs?: number;
}

/** True when the command acts on a fleet: --all, or more than one --pid. */
export function isFleet(o: FleetOptions): boolean {
  return !!o.all || (o.pids?.length ?? 0) > 1;
}

/** EINVAL when fleet-only options are given to a single-process command. */
export function checkSingleProcess(o: FleetOptions): void {
  const stray = [o.exe !== undefined && '--exe', o.uid !== undefined && '--uid', o.baseBuildId !== undefined && '--base-build-id', o.jobs !== undefined && '--jobs'].filter(Boolean);
  if (stray.length) throw new HotstackError('EINVAL', `${stray.join(', ')} narrow${stray.length === 1 ? 's' : ''} a fleet: add --all (or give several --pid)`);
}

/** A build-id as given on the command line: hex, lower-cased. */
export function parseBuildIdArg(v: string): string {
  const h = v.toLowerCase();
  if (!/^([0-9a-f]{2}){1,64}$/.test(h)) throw new HotstackError('EINVAL', `--base-build-id ${JSON.stringify(v)} is not a build-id (an even number of hex digits, as readelf -n or hotstack inspect print it)`);
  return h;
}

export interface FleetCommand {
  action: FleetActionName;
  /** upload: NAME; the actions: NAME; load: derived from FILE. */
  name: string;
  /** upload/load: the payload file. */
  file?: string;
  nodeps?: boolean;
  timeoutMs?: number;
  json?: boolean;
  trust?: TrustCliOptions;
}

const PAST: Record<FleetActionName, string> = {
  list: 'listed', upload: 'patched', load: 'patched', apply: 'patched', revert: 'patched', unload: 'patched', replace: 'patched',
};

/** The selection and the per-process action, or a user error (payload unreadable, bad option). */
function prepare(c: FleetCommand, o: FleetOptions): { filter: FleetFilter; action: FleetAction } {
  const action: FleetAction = { action: c.action, name: c.name, nodeps: c.nodeps, timeoutMs: c.timeoutMs };
  const filter: FleetFilter = { pids: o.all && !(o.pids?.length) ? undefined : o.pids, exe: o.exe, uid: o.uid };
  if (c.action === 'upload' || c.action === 'load') {
    const payload = loadPayloadFile(c.file!, c.trust);
    const info = inspectPayload(payload.bytes);
    if (!info.baseBuildId) throw new HotstackError('EINVAL', `${c.file} names no base object (.livepatch.xen_depends is missing): no process can be selected for it`);
    if (o.baseBuildId !== undefined && o.baseBuildId !== info.baseBuildId) {
      throw new HotstackError('EINVAL', `${c.file} is built for the object with build-id ${info.baseBuildId}, not ${o.baseBuildId}`);
    }
    action.payload = payload;
    action.buildId = info.buildId;
    filter.buildId = info.baseBuildId;
  } else {
    filter.withState = true;
    filter.buildId = o.baseBuildId;
  }
  return { filter, action };
}

/** Processes found by the scan handed to the workers at a time. */
const STREAM_BATCH = 16;

/** A terminal progress bar on stderr, shown once a run has lasted a second (and its total is known). */
class Progress {
  private shown = false;
  private timer: NodeJS.Timeout | undefined;
  private done = 0;
  private total = 0;

  constructor(private readonly io: Io, private readonly enabled: boolean) {}

  /** The number of processes, once the scan has found them all: the bar starts counting from the run's start. */
  start(total: number, since: number): void {
    this.total = total;
    if (this.enabled && total > 0) {
      this.timer = setInterval(() => {
        if (performance.now() - since >= 1000) this.draw();
      }, 100);
    }
  }

  tick(): void {
    this.done++;
  }

  /** Take the bar off the line before printing a result line under it. */
  clear(): void {
    if (this.shown) this.io.err('\r\x1b[K');
    this.shown = false;
  }

  private draw(): void {
    const width = 30;
    const full = Math.round((this.done / this.total) * width);
    this.io.err(`\r[${'#'.repeat(full)}${'.'.repeat(width - full)}] ${this.done}/${this.total} processes`);
    this.shown = true;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.clear();
  }
}

function outcomeLine(o: ProcessOutcome): string {
  return `${o.pid} (${o.comm}): ${o.result}: ${o.detail}\n`;
}

/** The per-process `list` text: the same table `--pid PID list` prints, under a header. */
function listText(o: ProcessOutcome): string {
  return `process ${o.pid} (${o.comm}):\n${listTable((o.payloads ?? []).map(asRecord))}`;
}

/** listTable reads these fields of a record; list --json entries carry them. */
function asRecord(j: ListEntryJson): PayloadRecord {
  return { name: j.name, state: j.state, rc: j.rc, metadata: j.metadata, basePath: j.base.path } as PayloadRecord;
}

/** Exit status of a fleet run: 0 when none failed, 2 when every failure is worth retrying (EBUSY, EAGAIN), else 1. */
export function fleetExit(outcomes: ProcessOutcome[]): number {
  const failed = outcomes.filter((o) => o.result === 'failed');
  if (!failed.length) return 0;
  return failed.every((o) => o.errno === 'EBUSY' || o.errno === 'EAGAIN') ? 2 : 1;
}

function unselectedOutcome(u: { pid: number; comm: string | null; gone: boolean; reason: string }): ProcessOutcome {
  return {
    pid: u.pid, comm: u.comm ?? '?', result: 'skipped', detail: u.gone ? 'exited' : `not selected: ${u.reason}`,
    errno: null, code: 0, message: '', steps: [], notices: [], ms: 0,
  };
}

/**
 * Run a fleet command; resolves to the exit status. With --json, prints one
 * object `{"ok","action","name","summary":{...},"processes":[...]}`.
 */
export async function runFleet(c: FleetCommand, o: FleetOptions, io: Io, stderrIsTty: boolean): Promise<number> {
  const rep = reporterFor(c.json, io);
  const started = performance.now();
  const progress = new Progress(io, !rep.json && stderrIsTty);
  const show = (x: ProcessOutcome): void => {
    progress.tick();
    // Text only (the JSON reporter drops these): the JSON object holds every process at the end.
    progress.clear();
    for (const n of x.notices) rep.err(`hotstack: process ${x.pid}: ${n}\n`);
    rep.out(x.result === 'listed' ? listText(x) : outcomeLine(x));
  };
  let prep: ReturnType<typeof prepare>;
  let procs: FleetProcess[];
  let pre: ProcessOutcome[];
  let pool: FleetPool | undefined;
  let run: FleetRun | undefined;
  try {
    prep = prepare(c, o);
    // Test switch: every job a worker thread (how the pool copes with workers that die).
    const workersOnly = testMode() && process.env.HOTSTACK_TEST_FLEET_WORKERS_ONLY === '1';
    pool = new FleetPool(prep.action, o.jobs ?? defaultJobs(), workersOnly ? undefined : runOnProcess);
    const acting = (run = pool.start(show));
    // The workers start on the first processes found while the scan goes on (it took 55 ms for
    // 1000 processes, which they spent waiting), a few at a time to keep the messages few.
    const batch: FleetProcess[] = [];
    const flush = (): void => acting.add(batch.splice(0));
    const d = discover(prep.filter, undefined, (p) => {
      batch.push(p);
      if (batch.length >= STREAM_BATCH) flush();
    });
    flush();
    procs = d.selected;
    pre = d.unselected.map(unselectedOutcome);
  } catch (e) {
    // Processes already given are being acted on: never stop a worker in the middle of one.
    if (run) await run.end();
    else pool?.close();
    const err = toHotstackError(e);
    rep.failure(err, { ok: false, action: c.action, name: c.name } satisfies Omit<FleetErrorJson, 'error'>, `hotstack: ${errorLine(err)}\n`);
    return exitCodeFor(err);
  }
  const total = procs.length + pre.length;
  progress.start(total, started);
  pre.forEach(show);
  const acted = await run.end();
  progress.stop();
  const all = [...pre, ...acted].sort((a, b) => a.pid - b.pid);
  const count = (r: string) => all.filter((x) => x.result === r).length;
  const done = PAST[c.action];
  const summary = { [done]: count(done), skipped: count('skipped'), failed: count('failed') };
  const status = fleetExit(all);
  const processes = all.map((x): FleetProcessJson => ({
    pid: x.pid, comm: x.comm, result: x.result, detail: x.detail, errno: x.errno, code: x.code, message: x.message, ms: Math.round(x.ms * 100) / 100,
    ...(x.payloads ? { payloads: x.payloads } : { steps: x.steps }), ...(x.notices.length ? { notices: x.notices } : {}),
  }));
  const result: FleetJson = { ok: status === 0, action: c.action, name: c.name, summary, processes };
  rep.result(result, (_v, out) => {
    if (!total) out.err(`hotstack: no process selected: ${whyNone(prep.filter)}\n`);
    out.out(`${done} ${summary[done]}, skipped ${summary.skipped}, failed ${summary.failed}\n`);
  });
  return status;
}

function whyNone(f: FleetFilter): string {
  const parts: string[] = [];
  if (f.buildId) parts.push(`an object with build-id ${f.buildId} mapped`);
  if (f.withState) parts.push('hotstack payloads loaded');
  if (f.exe) parts.push(`running ${f.exe}`);
  if (f.uid !== undefined) parts.push(`of user ${f.uid}`);
  return `no process with ${parts.join(', ')}`;
}

/**
 * Which processes a fleet command (`hotstack --all ...`) acts on: every
 * process of the machine, or an explicit set, narrowed by executable, user,
 * a mapped object's build-id, and whether hotstack holds state for it.
 *
 * Everything here reads /proc of processes that may exit at any moment: a
 * process that vanishes, or that we may not look at, is simply not
 * selected (an explicitly named one is reported with the reason).
 */
import { existsSync, readdirSync, readFileSync, readlinkSync, realpathSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { BuildIdCache } from './buildid.js';
import { processIdentity } from './lock.js';
import { groupObjects, parseMaps, procBase } from './maps.js';
import { stateFileOf } from './store.js';

export interface FleetFilter {
  /** Explicit process ids (--pid); absent: every process in /proc. */
  pids?: number[];
  /** --exe PATH: processes running this executable (also its deleted or replaced inode). */
  exe?: string;
  /** --uid UID: processes whose effective user id is UID. */
  uid?: number;
  /** Lower-case hex: processes in which an object with this build-id is mapped. */
  buildId?: string;
  /** Only processes for which hotstack keeps state (that have a stack). */
  withState?: boolean;
}

/** A process picked for the fleet. */
export interface FleetProcess {
  pid: number;
  comm: string;
  /** Path of the mapped object whose build-id matched (when matching by build-id). */
  object?: string;
}

/** A process named with --pid that is not acted on, and why. */
export interface Unselected {
  pid: number;
  comm: string | null;
  /** True when the process does not exist (any more). */
  gone: boolean;
  reason: string;
}

export interface Discovery {
  selected: FleetProcess[];
  /** Explicitly named processes left out (never filled for a whole-machine scan). */
  unselected: Unselected[];
  /** Processes looked at. */
  scanned: number;
  /** Distinct files whose build-id notes were read (the rest came from the cache). */
  filesRead: number;
}

/** What --exe names: the file's identity now, and the path a replaced/deleted executable still shows. */
interface ExeTarget {
  path: string;
  dev?: number;
  ino?: number;
}

function exeTarget(path: string): ExeTarget {
  const abs = resolve(path);
  try {
    const st = statSync(abs);
    return { path: realpathSync(abs), dev: st.dev, ino: st.ino };
  } catch {
    // Gone from disk (deleted since the processes started): the path still names them.
    return { path: abs };
  }
}

/** Why `pid`'s executable is not `t`, or null when it is. */
function exeMismatch(pid: number, t: ExeTarget): string | null {
  let link: string;
  try {
    link = readlinkSync(`/proc/${pid}/exe`);
  } catch {
    return 'its executable cannot be read (a kernel thread, or not permitted)';
  }
  const path = link.endsWith(' (deleted)') ? link.slice(0, -' (deleted)'.length) : link;
  if (path === t.path) return null;
  if (t.ino !== undefined) {
    try {
      const st = statSync(`/proc/${pid}/exe`);
      if (st.dev === t.dev && st.ino === t.ino) return null;
    } catch {
      /* exited */
    }
  }
  return `it runs ${link}, not ${t.path}`;
}

/** Effective uid from /proc/PID/status, or null when unreadable. */
function effectiveUid(status: string): number | null {
  const m = /^Uid:\s+\d+\s+(\d+)/m.exec(status);
  return m ? Number(m[1]) : null;
}

function comm(pid: number): string | null {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return null;
  }
}

/** Every process id in /proc but ours (readdir of /proc lists thread-group leaders only). */
export function allPids(): number[] {
  const out: number[] = [];
  for (const n of readdirSync('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    const pid = Number(n);
    if (pid !== process.pid) out.push(pid);
  }
  return out.sort((a, b) => a - b);
}

/**
 * Why `pid` is not selected by `f`, or the mapped object that matched
 * (`''` when no build-id was asked for). Cheap checks first: uid, state
 * file, executable, then the maps and build-ids.
 */
function check(pid: number, f: FleetFilter, exe: ExeTarget | undefined, ids: BuildIdCache): { why: string; gone: boolean } | { object: string } {
  let status: string;
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return { why: 'it does not exist (any more)', gone: true };
  }
  if (/^State:\s+Z/m.test(status)) return { why: 'it is a zombie', gone: true };
  if (f.uid !== undefined) {
    const uid = effectiveUid(status);
    if (uid !== f.uid) return { why: `its user id is ${uid ?? 'unknown'}, not ${f.uid}`, gone: false };
  }
  if (f.withState) {
    let has = false;
    try {
      has = existsSync(stateFileOf(processIdentity(pid)));
    } catch {
      return { why: 'it does not exist (any more)', gone: true };
    }
    if (!has) return { why: 'hotstack has no payloads in it', gone: false };
  }
  if (exe) {
    const why = exeMismatch(pid, exe);
    if (why) return { why, gone: false };
  }
  if (f.buildId === undefined) return { object: '' };
  const base = procBase(pid);
  let maps;
  try {
    maps = parseMaps(readFileSync(`${base}/maps`, 'utf8'));
  } catch {
    return { why: 'its memory map cannot be read (exited, or not permitted)', gone: false };
  }
  for (const o of groupObjects(pid, maps, base)) {
    if (ids.get(o.dev, o.inode, o.mapFilesPath) === f.buildId) return { object: o.deleted ? `${o.path} (deleted)` : o.path };
  }
  return { why: `no object with build-id ${f.buildId} is mapped in it`, gone: false };
}

/** The processes `f` selects, in pid order. */
export function discover(f: FleetFilter, ids = new BuildIdCache()): Discovery {
  const exe = f.exe !== undefined ? exeTarget(f.exe) : undefined;
  const explicit = f.pids !== undefined;
  const pids = explicit ? [...new Set(f.pids)].sort((a, b) => a - b) : allPids();
  const selected: FleetProcess[] = [];
  const unselected: Unselected[] = [];
  const before = ids.reads;
  for (const pid of pids) {
    const r = check(pid, f, exe, ids);
    if (!('object' in r) && !explicit) continue;
    const name = comm(pid);
    if ('object' in r) {
      // It may exit between the check and here: it is then skipped when acted on.
      selected.push({ pid, comm: name ?? '?', ...(r.object ? { object: r.object } : {}) });
    } else {
      unselected.push({ pid, comm: name, gone: r.gone || name === null, reason: r.why });
    }
  }
  return { selected, unselected, scanned: pids.length, filesRead: ids.reads - before };
}

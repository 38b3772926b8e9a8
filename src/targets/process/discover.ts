/**
 * Which processes a fleet command (`hotstack --all ...`) acts on: every
 * process of the machine, or an explicit set, narrowed by executable, user,
 * a mapped object's build-id, and whether hotstack holds state for it.
 *
 * Everything here reads /proc of processes that may exit at any moment: a
 * process that vanishes, or that we may not look at, is simply not
 * selected (an explicitly named one is reported with the reason).
 */
import { existsSync, realpathSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { BuildIdCache } from './buildid.js';
import { processIdentity } from './lock.js';
import { allPids, effectiveUidOf, exeFile, exeLink, mapFilesPath, procExists, readComm, readMapsText, readStatus } from './procfs.js';
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
    link = exeLink(pid);
  } catch {
    return 'its executable cannot be read (a kernel thread, or not permitted)';
  }
  const path = link.endsWith(' (deleted)') ? link.slice(0, -' (deleted)'.length) : link;
  if (path === t.path) return null;
  if (t.ino !== undefined) {
    try {
      const st = exeFile(pid);
      if (st.dev === t.dev && st.ino === t.ino) return null;
    } catch {
      /* exited */
    }
  }
  return `it runs ${link}, not ${t.path}`;
}

/**
 * Why `pid` is not selected by `f`, or the mapped object that matched
 * (`''` when no build-id was asked for). Cheap checks first: uid, state
 * file, executable, then the maps and build-ids.
 */
function check(pid: number, f: FleetFilter, exe: ExeTarget | undefined, ids: BuildIdCache): { why: string; gone: boolean } | { object: string } {
  if (f.uid !== undefined) {
    let status: string;
    try {
      status = readStatus(pid);
    } catch {
      return GONE;
    }
    const uid = effectiveUidOf(status);
    if (uid !== f.uid) return { why: `its user id is ${uid ?? 'unknown'}, not ${f.uid}`, gone: false };
  }
  if (f.withState) {
    let has = false;
    try {
      has = existsSync(stateFileOf(processIdentity(pid)));
    } catch {
      return GONE;
    }
    if (!has) return { why: 'hotstack has no payloads in it', gone: false };
  }
  if (exe) {
    const why = exeMismatch(pid, exe);
    if (why) return { why, gone: !procExists(pid) };
  }
  if (f.buildId === undefined) {
    return procExists(pid) ? { object: '' } : GONE;
  }
  let maps: { text: string; base: string };
  try {
    maps = readMapsText(pid);
  } catch {
    return procExists(pid) ? { why: 'its memory map cannot be read (not permitted)', gone: false } : GONE;
  }
  const object = matchingObject(maps.text, maps.base, f.buildId, ids);
  if (object !== undefined) return { object };
  return { why: `no object with build-id ${f.buildId} is mapped in it`, gone: false };
}

const GONE = { why: 'it does not exist (any more)', gone: true } as const;

/**
 * The path of the first mapped file whose build-id is `buildId`, or
 * undefined. Reads the maps text field by field rather than through
 * parseMaps: across a whole machine this is the hot loop, and only the
 * device, inode, first range and path of file mappings matter; each file
 * is recognised by device and inode before anything is read from it.
 */
function matchingObject(text: string, base: string, buildId: string, ids: BuildIdCache): string | undefined {
  const seen = new Set<string>();
  for (const line of text.split('\n')) {
    // start-end perms offset dev inode [path]
    const f = line.split(' ', 6);
    const inode = f[4];
    if (inode === undefined || inode === '0') continue;
    const key = `${f[3]}/${inode}`;
    if (seen.has(key)) continue;
    seen.add(key);
    const path = line.slice(line.indexOf('/'));
    if (!path.startsWith('/')) continue; // anon_inode:... and the like
    const [start, end] = f[0]!.split('-');
    if (ids.getByKey(key, mapFilesPath(base, BigInt(`0x${start}`), BigInt(`0x${end}`))) === buildId) return path;
  }
  return undefined;
}

/**
 * The processes `f` selects, in pid order. `onSelected` is told of each
 * as soon as it is found (a fleet starts on the first ones while the scan
 * goes on); it is never called once anything here has thrown.
 */
export function discover(f: FleetFilter, ids = new BuildIdCache(), onSelected?: (p: FleetProcess) => void): Discovery {
  const exe = f.exe !== undefined ? exeTarget(f.exe) : undefined;
  const explicit = f.pids !== undefined;
  const pids = explicit ? [...new Set(f.pids)].sort((a, b) => a - b) : allPids();
  const selected: FleetProcess[] = [];
  const unselected: Unselected[] = [];
  const before = ids.reads;
  for (const pid of pids) {
    const r = check(pid, f, exe, ids);
    if (!('object' in r) && !explicit) continue;
    const name = readComm(pid);
    if ('object' in r) {
      // It may exit between the check and here: it is then skipped when acted on.
      const p: FleetProcess = { pid, comm: name ?? '?', ...(r.object ? { object: r.object } : {}) };
      selected.push(p);
      onSelected?.(p);
    } else {
      unselected.push({ pid, comm: name, gone: r.gone || name === null, reason: r.why });
    }
  }
  return { selected, unselected, scanned: pids.length, filesRead: ids.reads - before };
}

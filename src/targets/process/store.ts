/**
 * Engine state of one process, in a file under the state directory keyed
 * by PID and start time: it survives the tool exiting, and a recycled PID
 * (another start time) never sees it. Files of processes that are gone are
 * removed, so the state vanishes with its process. Writes are atomic
 * (write + rename) so a killed tool leaves the old or the new state.
 */
import { readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fail } from '../../errors.js';
import { deserializeState, serializeState, type EngineState } from '../../core/state.js';
import type { StateStore } from '../../core/target.js';
import { ensureStateDir, processIdentity, stateDir, type ProcessIdentity } from './lock.js';

/** The state file of a process: what `ProcessStore` reads and writes (and what the fleet looks for). */
export function stateFileOf(id: ProcessIdentity): string {
  return join(stateDir(), `${id.key}.json`);
}

/**
 * When the state directory was last swept, per directory. A fleet run opens
 * thousands of processes in one hotstack; sweeping on every open would read
 * /proc/PID/stat for every state file each time (quadratic), so one sweep a
 * second is enough there. A single-process run still sweeps on its open.
 */
const lastSweep = new Map<string, number>();
const SWEEP_INTERVAL_MS = 1000;

/** What is kept besides the engine state: the process's runtime page. */
export interface RuntimeState {
  /** Address of an int3 in an executable page of ours (return trap of remote calls). */
  trap?: bigint;
}

interface FileShape {
  key: string;
  engine: string;
  runtime: { trap?: string };
}

export class ProcessStore implements StateStore {
  readonly file: string;
  runtime: RuntimeState = {};
  private readonly key: string;

  constructor(id: ProcessIdentity) {
    const dir = ensureStateDir();
    this.key = id.key;
    this.file = join(dir, `${id.key}.json`);
    const now = performance.now();
    const last = lastSweep.get(dir);
    if (last === undefined || now - last >= SWEEP_INTERVAL_MS) {
      lastSweep.set(dir, now);
      removeStale(dir);
    }
  }

  load(): EngineState | null {
    let text: string;
    try {
      text = readFileSync(this.file, 'utf8');
    } catch {
      return null;
    }
    try {
      const f = JSON.parse(text) as FileShape;
      if (f.key !== this.key) return null;
      this.runtime = { trap: f.runtime?.trap ? BigInt(f.runtime.trap) : undefined };
      return deserializeState(f.engine);
    } catch (e) {
      return fail('EIO', `state file ${this.file} is corrupt (${(e as Error).message}); move it away to start afresh (payloads already in the process are then unknown to hotstack)`);
    }
  }

  save(s: EngineState): void {
    const f: FileShape = {
      key: this.key,
      engine: serializeState(s),
      runtime: { trap: this.runtime.trap !== undefined ? this.runtime.trap.toString() : undefined },
    };
    const tmp = `${this.file}.tmp`;
    writeFileSync(tmp, JSON.stringify(f));
    renameSync(tmp, this.file);
  }
}

/** Delete state files of processes that no longer exist (or whose PID was reused). */
export function removeStale(dir: string): void {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  for (const n of names) {
    const m = /^(\d+)-(\d+)\.json$/.exec(n);
    if (!m) continue;
    let alive = false;
    try {
      alive = processIdentity(Number(m[1])).startTime === BigInt(m[2]!);
    } catch {
      alive = false;
    }
    if (!alive) rmSync(join(dir, n), { force: true });
  }
}

/**
 * Engine state of one process, in a file under the state directory keyed
 * by PID and start time: it survives the tool exiting, and a recycled PID
 * (another start time) never sees it. Files of processes that are gone are
 * removed, so the state vanishes with its process. Writes are atomic
 * (write + rename) so a killed tool leaves the old or the new state.
 */
import { fail } from '../../errors.js';
import { deserializeState, serializeState, type EngineState } from '../../core/state.js';
import type { StateStore } from '../../core/target.js';
import { processIdentity, type ProcessIdentity } from './lock.js';
import { StateDir } from './statedir.js';

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
  /** The state file, for messages. */
  readonly file: string;
  runtime: RuntimeState = {};
  private readonly key: string;
  private readonly dir: StateDir;
  private readonly name: string;

  constructor(id: ProcessIdentity) {
    this.dir = StateDir.open();
    this.key = id.key;
    this.name = `${id.key}.json`;
    this.file = this.dir.shown(this.name);
    removeStale(this.dir);
  }

  load(): EngineState | null {
    const bytes = this.dir.readFile(this.name);
    if (bytes === null) return null;
    const text = Buffer.from(bytes).toString('utf8');
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
    this.dir.writeFile(this.name, JSON.stringify(f));
  }
}

/**
 * Delete state files (and the temporary files a killed hotstack left) of
 * processes that no longer exist or whose PID was reused.
 */
export function removeStale(dir: StateDir = StateDir.open()): void {
  for (const n of dir.names()) {
    const m = /^(\d+)-(\d+)\.json(\.tmp)?$/.exec(n);
    if (!m) continue;
    let alive = false;
    try {
      alive = processIdentity(Number(m[1])).startTime === BigInt(m[2]!);
    } catch {
      alive = false;
    }
    if (!alive) dir.remove(n);
  }
}

/**
 * Engine state of one process, in a file under the state directory keyed
 * by PID and start time: it survives the tool exiting, and a recycled PID
 * (another start time) never sees it. Files of processes that are gone are
 * removed, so the state vanishes with its process. Writes are atomic
 * (write + rename) so a killed tool leaves the old or the new state.
 */
import { fail } from '../../errors.js';
import { deserializeState, emptyState, serializeState, type EngineState } from '../../core/state.js';
import type { StateStore } from '../../core/target.js';
import { join } from 'node:path';
import { processIdentity, type ProcessIdentity } from './lock.js';
import { StateDir, stateDir } from './statedir.js';

/** The state file of a process: what `ProcessStore` reads and writes (and what the fleet looks for). */
export function stateFileOf(id: ProcessIdentity): string {
  return join(stateDir(), stateFileName(id));
}

function stateFileName(id: ProcessIdentity): string {
  return `${id.key}.json`;
}

/**
 * State directories this thread has swept. Once per command: a fleet run
 * opens thousands of processes in one hotstack, and sweeping on every open
 * (or every second, as before: the last sweeps of a 1000-process run read
 * /proc/PID/stat for every file it had just written) costs a read per
 * state file each time. Files of processes that die meanwhile wait for
 * the next command's sweep.
 */
const swept = new Set<string>();

/** A mapping about to be made in the process: freed by the next command if a killed tool never recorded it. */
export interface MappingIntent {
  addr: bigint;
  size: number;
  /** /proc/PID/maps permissions it is made with, e.g. "r-xp". */
  perms: string;
}

/** What is kept besides the engine state: the process's runtime page, mappings in progress. */
export interface RuntimeState {
  /** Address of an int3 in an executable page of ours (return trap of remote calls). */
  trap?: bigint;
  /** The parts of one mapping in progress (one per purpose and permission). */
  intents?: MappingIntent[];
}

interface IntentShape {
  addr: string;
  size: number;
  perms: string;
}

interface FileShape {
  key: string;
  /** Save counter, shared with the copy in the process (mirror.ts); absent in older files. */
  seq?: string;
  engine: string;
  /** `intent`: the single mapping in progress earlier versions wrote. */
  runtime: { trap?: string; intents?: IntentShape[]; intent?: IntentShape };
}

/** An intent as read from a file (untrusted: repair checks it against the process before acting). */
function intentOf(i: IntentShape): MappingIntent {
  const ok = typeof i === 'object' && i !== null && /^\d{1,20}$/.test(String(i.addr))
    && Number.isSafeInteger(i.size) && i.size >= 0 && /^[r-][w-][x-]p$/.test(String(i.perms));
  if (!ok) throw new Error('malformed mapping intent');
  return { addr: BigInt(i.addr), size: i.size, perms: i.perms };
}

export class ProcessStore implements StateStore {
  /** The state file, for messages. */
  readonly file: string;
  runtime: RuntimeState = {};
  private readonly key: string;
  private readonly dir: StateDir;
  private readonly name: string;
  /** The engine state last read or written (serialized), for saveRuntime(). */
  private engineText: string = serializeState(emptyState());
  /** The engine state being saved, while its copy in the process is written. */
  private nextText: string | undefined;
  /** Number of the last save (the copy in the process carries the same). */
  seq = 0n;
  /** Called before each full save writes the file: keeps the copy in the process first (see mirror.ts). */
  beforeSave?: () => void;
  /** deferSaves() depth, and whether a save is waiting for the file. */
  private deferring = 0;
  private dirty = false;

  constructor(id: ProcessIdentity) {
    this.dir = StateDir.open();
    this.key = id.key;
    this.name = stateFileName(id);
    this.file = this.dir.shown(this.name);
    if (!swept.has(this.dir.path)) {
      swept.add(this.dir.path);
      removeStale(this.dir);
    }
  }

  load(): EngineState | null {
    const bytes = this.dir.readFile(this.name);
    if (bytes === null) return null;
    try {
      return this.parse(Buffer.from(bytes).toString('utf8'), true);
    } catch (e) {
      return fail('EIO', `state file ${this.file} is corrupt (${(e as Error).message}); move it away to start afresh (payloads already in the process are then unknown to hotstack)`);
    }
  }

  /** Take the state from the copy kept in the process (its key is the PID of whoever wrote it: not checked). */
  adopt(text: string): EngineState {
    const s = this.parse(text, false);
    if (!s) fail('EIO', 'the state kept in the process is unreadable');
    return s;
  }

  private parse(text: string, checkKey: boolean): EngineState | null {
    const f = JSON.parse(text) as FileShape;
    if (checkKey && f.key !== this.key) return null;
    const shapes = f.runtime?.intents ?? (f.runtime?.intent ? [f.runtime.intent] : undefined);
    const s = deserializeState(f.engine);
    this.runtime = {
      trap: f.runtime?.trap ? BigInt(f.runtime.trap) : undefined,
      intents: Array.isArray(shapes) ? shapes.map(intentOf) : this.runtime.intents,
    };
    this.engineText = f.engine;
    this.seq = f.seq !== undefined && /^\d+$/.test(f.seq) ? BigInt(f.seq) : 0n;
    return s;
  }

  /** The text kept in the process: the file's, less the mapping intent (a matter of this file). */
  mirrorText(): string {
    return this.text(false, this.nextText ?? this.engineText);
  }

  /** The engine text last quoted for text(): a save quotes the same state for the process's copy and the file. */
  private quoted: { engine: string; json: string } | undefined;

  /** JSON.stringify of the FileShape, byte for byte, with the engine text quoted once per state. */
  private text(withIntent: boolean, engine = this.engineText): string {
    const { trap, intents } = this.runtime;
    const runtime: FileShape['runtime'] = {
      trap: trap !== undefined ? trap.toString() : undefined,
      intents: withIntent && intents?.length ? intents.map((i) => ({ addr: i.addr.toString(), size: i.size, perms: i.perms })) : undefined,
    };
    if (this.quoted?.engine !== engine) this.quoted = { engine, json: JSON.stringify(engine) };
    return `{"key":${JSON.stringify(this.key)},"seq":${JSON.stringify(this.seq.toString())},"engine":${this.quoted.json},"runtime":${JSON.stringify(runtime)}}`;
  }

  save(s: EngineState): void {
    const next = serializeState(s);
    this.seq++;
    // The copy in the process gets the new state; files written meanwhile (a
    // mapping intent while that copy is made) keep the old one until it is in.
    this.nextText = next;
    try {
      this.beforeSave?.();
    } catch (e) {
      this.seq--;
      throw e;
    } finally {
      this.nextText = undefined;
    }
    this.engineText = next;
    if (this.deferring) this.dirty = true;
    else this.saveRuntime();
  }

  /** Write the file now (a mapping intent), with the engine state as last saved. */
  saveRuntime(): void {
    this.dirty = false;
    this.dir.writeFile(this.name, this.text(true));
  }

  /**
   * Run `fn` with the file's state saves put off until it returns. The
   * target calls this around each stop: the copy in the process, written
   * at once, is the state; the file is its cache, and replacing a file
   * (write, then rename over the old one) costs about 0.7 ms on ext4 —
   * twice per action, most of the stall, for nothing the stop needs. A
   * tool killed before the deferred write leaves an older file, which the
   * copy in the process supersedes. Mapping intents are still written at
   * once (saveRuntime): they must be on disk before the mmap they announce.
   */
  deferSaves<T>(fn: () => T): T {
    this.deferring++;
    try {
      return fn();
    } finally {
      this.endDeferral();
    }
  }

  /**
   * Put the file's state saves off until release(): for a whole command,
   * whose every save is kept in the process first (see deferSaves). A
   * fleet load made about ten file writes per process without this.
   */
  hold(): void {
    this.deferring++;
  }

  /** End a hold(): the file gets the last state saved, if any save waited. */
  release(): void {
    this.endDeferral();
  }

  private endDeferral(): void {
    if (--this.deferring === 0 && this.dirty) this.saveRuntime();
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

/**
 * Where a process's engine state comes from and goes to: the copy kept in
 * the process itself (mirror.ts) first, the state file (store.ts) as its
 * cache; whatever is read is checked against the process (validate.ts)
 * before the engine sees it, and a mapping a killed tool made without
 * recording it is given back.
 */
import { fail, HotstackError } from '../../errors.js';
import type { EngineState } from '../../core/state.js';
import type { StateStore } from '../../core/target.js';
import type { MapEntry } from './maps.js';
import type { ProcessMemory } from './memory.js';
import { findMirrors, fits, initMirror, mirrorSizeFor, writeMirror, type Mirror } from './mirror.js';
import type { ProcessObject } from './objects.js';
import { RUNTIME_PAGE_SIZE, runtimePageValid } from './remote/runtime.js';
import type { MappingIntent, ProcessStore } from './store.js';
import { coveredByAnonymous, StateValidator } from './validate.js';

/** Largest mapping intent repaired (a payload's memory is at most 64 MiB). */
const MAX_INTENT = 128 * 1024 * 1024;
/** Most intents looked at (one allocation makes at most a handful). */
const MAX_INTENTS = 16;
/** Room for one more payload's records in a copy made with an allocation. */
const MIRROR_HEADROOM = 64 * 1024;

/** What the keeper needs of the process target. */
export interface StateHost {
  pid: number;
  mem: ProcessMemory;
  /** The process's maps (as read when the command opened it, while it runs). */
  maps(): MapEntry[];
  objects(): ProcessObject[];
  /** Map `size` bytes of private anonymous read-only memory in the process. */
  mapReadOnly(size: number): bigint;
  /** Unmap memory hotstack mapped. */
  free(addr: bigint, size: number): void;
}

export class StateKeeper implements StateStore {
  /** Things a person should know about (a state recovered from the process). */
  readonly notices: string[] = [];
  /** The copy of the state kept in the process, once found or made. */
  private mirror: Mirror | undefined;
  /** Older copies found (a tool killed while replacing one): freed by the next save. */
  private staleMirrors: Mirror[] = [];

  constructor(
    private readonly file: ProcessStore,
    private readonly host: StateHost,
  ) {
    file.beforeSave = () => this.saveMirror();
  }

  /**
   * The state: the copy kept in the process when there is one (it wins over
   * the file: only someone who can write the process could have changed
   * it), else the file; refused unless it matches the process (validate.ts).
   */
  load(): EngineState | null {
    const { pid, mem } = this.host;
    const maps = this.host.maps();
    const mirrors = findMirrors(maps, mem);
    const best = mirrors.find((m) => m.text !== null);
    let s: EngineState | null = null;
    try {
      s = this.file.load();
    } catch (e) {
      if (!(best && e instanceof HotstackError && e.errno === 'EIO')) throw e;
      this.notices.push(`${e.message.replace(/; move it away.*$/, '')}: recovered the state from the copy kept in process ${pid}; the file is rewritten by the next change`);
    }
    this.mirror = best ?? mirrors[0];
    if (best) {
      const hadFile = s !== null;
      s = this.file.adopt(best.text!);
      if (!hadFile && !this.notices.length && (s.payloads.length || s.pending)) {
        this.notices.push(`state of process ${pid} found in the process itself (no state file ${this.file.file}: written from another PID namespace, or removed)`);
      }
    }
    this.staleMirrors = mirrors.filter((m) => m !== this.mirror);
    if (!s) return s;
    if (!best && (s.payloads.length || s.pending) && process.env.HOTSTACK_TRUST_STATE_FILE !== '1') {
      // Every save keeps the state in the process before the file: a file with payloads
      // and no copy there was not written for this process by this hotstack.
      fail('EPERM', `state file ${this.file.file} lists payloads, but process ${pid} holds no copy of hotstack's state, which hotstack keeps there before writing the file: the file was not written for this process by this hotstack, so nothing in it is used. If an older hotstack loaded them, run this once with HOTSTACK_TRUST_STATE_FILE=1 (the file is then checked against the process and copied into it); else move the file away`);
    }
    const v = new StateValidator(maps, this.host.objects(), this.file.file, pid);
    try {
      v.check(s);
    } catch (e) {
      if (e instanceof HotstackError) throw e;
      fail('EPERM', `state file ${this.file.file} is malformed (${(e as Error).message}); hotstack never writes such a state: check the process, then move the file away`);
    }
    this.repairIntent(s, maps);
    return s;
  }

  save(s: EngineState): void {
    this.file.save(s);
  }

  /**
   * Keep the state in the process before the file is written (the file is
   * a cache of it): in the current mirror when it fits, else in a new,
   * larger one, the old one freed once the new one holds the state.
   */
  private saveMirror(): void {
    const { mem } = this.host;
    let text = this.file.mirrorText();
    const old = this.mirror;
    const len = Buffer.byteLength(text, 'utf8');
    if (!old || !fits(old.size, len)) {
      const size = mirrorSizeFor(len);
      this.mirror = initMirror(mem, this.host.mapReadOnly(size), size);
      if (old) this.staleMirrors.push(old);
      // The text again: making the runtime page or the mirror may have changed it.
      text = this.file.mirrorText();
    }
    writeMirror(mem, this.mirror!, this.file.seq, text);
    for (const m of this.staleMirrors.splice(0)) {
      try {
        this.host.free(m.addr, m.size);
      } catch {
        /* a leftover page or two is harmless; it is never read again (older sequence) */
      }
    }
  }

  /**
   * Size of the copy to make along with the next allocation (one mapping
   * for both), 0 when there is one: room for the state as it is now plus
   * a payload's records, so the save that records the allocation needs no
   * mapping of its own.
   */
  mirrorWanted(): number {
    return this.mirror ? 0 : mirrorSizeFor(Buffer.byteLength(this.file.mirrorText(), 'utf8') + MIRROR_HEADROOM);
  }

  /** Take the fresh (all zero) mapping at `addr` as the copy of the state (see mirrorWanted). */
  adoptMirror(addr: bigint, size: number): void {
    if (this.mirror) this.staleMirrors.push(this.mirror);
    this.mirror = initMirror(this.host.mem, addr, size);
  }

  /**
   * Mappings a killed tool made but never recorded (their intents are
   * still in the file): unmap each, but only while it is what that mmap
   * made (private anonymous, those permissions, all zeros: hotstack writes
   * into a mapping only once it is recorded) and no recorded memory
   * overlaps it. A runtime page counts as recorded only once it holds its
   * trap (it is recorded together with the intent, before it exists).
   */
  private repairIntent(s: EngineState, maps: MapEntry[]): void {
    const intents = this.file.runtime.intents;
    if (!intents?.length) return;
    const trap = this.file.runtime.trap;
    const trapValid = trap !== undefined && runtimePageValid(maps, this.host.mem, trap);
    const records = [
      ...s.payloads.flatMap((p) => p.regions), ...(s.pending?.regions ?? []),
      ...(trapValid ? [{ addr: trap, size: RUNTIME_PAGE_SIZE }] : []),
      ...(this.mirror ? [this.mirror] : []),
    ];
    const freed: MappingIntent[] = [];
    for (const i of intents.slice(0, MAX_INTENTS)) {
      const end = i.addr + BigInt(i.size);
      const recorded = records.some((r) => r.addr < end && i.addr < r.addr + BigInt(r.size));
      const ours = !recorded && i.size > 0 && i.size <= MAX_INTENT && i.addr % BigInt(RUNTIME_PAGE_SIZE) === 0n
        && coveredByAnonymous(maps, i.addr, end, i.perms) && this.host.mem.read(i.addr, i.size).every((b) => b === 0);
      if (!ours) continue;
      this.host.free(i.addr, i.size);
      freed.push(i);
    }
    if (freed.length) {
      const bytes = freed.reduce((n, i) => n + i.size, 0);
      const pieces = freed.length > 1 ? ` (${freed.length} mappings)` : '';
      this.notices.push(`repaired an interrupted upload: freed the ${bytes} bytes at 0x${freed[0]!.addr.toString(16)}${pieces} a killed hotstack had mapped but not yet recorded`);
    }
    if (!trapValid && trap !== undefined && freed.length) this.file.runtime.trap = undefined;
    this.file.runtime.intents = undefined;
    this.file.saveRuntime();
  }
}

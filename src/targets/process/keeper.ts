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
import { readMaps, type MapEntry } from './maps.js';
import type { ProcessMemory } from './memory.js';
import { findMirrors, fits, initMirror, mirrorSizeFor, writeMirror, type Mirror } from './mirror.js';
import type { ProcessObject } from './objects.js';
import { RUNTIME_PAGE_SIZE } from './remote/runtime.js';
import type { ProcessStore } from './store.js';
import { coveredByAnonymous, StateValidator } from './validate.js';

/** Largest mapping intent repaired (a payload's memory is at most 64 MiB). */
const MAX_INTENT = 128 * 1024 * 1024;

/** What the keeper needs of the process target. */
export interface StateHost {
  pid: number;
  mem: ProcessMemory;
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
    const maps = readMaps(pid);
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
    const len = Buffer.byteLength(this.file.mirrorText(), 'utf8');
    const old = this.mirror;
    if (!old || !fits(old.size, len)) {
      const size = mirrorSizeFor(len);
      this.mirror = initMirror(mem, this.host.mapReadOnly(size), size);
      if (old) this.staleMirrors.push(old);
    }
    // The text again: making the runtime page or the mirror may have changed it.
    writeMirror(mem, this.mirror!, this.file.seq, this.file.mirrorText());
    for (const m of this.staleMirrors.splice(0)) {
      try {
        this.host.free(m.addr, m.size);
      } catch {
        /* a leftover page or two is harmless; it is never read again (older sequence) */
      }
    }
  }

  /**
   * A mapping a killed tool made but never recorded (its intent is still in
   * the file): unmap it, but only while it is what that mmap made (private
   * anonymous, those permissions, all zeros: hotstack writes into a mapping
   * only once it is recorded) and no recorded memory overlaps it.
   */
  private repairIntent(s: EngineState, maps: MapEntry[]): void {
    const i = this.file.runtime.intent;
    if (!i) return;
    const end = i.addr + BigInt(i.size);
    const trap = this.file.runtime.trap;
    const recorded = [
      ...s.payloads.flatMap((p) => p.regions), ...(s.pending?.regions ?? []),
      ...(trap !== undefined ? [{ addr: trap, size: RUNTIME_PAGE_SIZE }] : []),
      ...(this.mirror ? [this.mirror] : []),
    ].some((r) => r.addr < end && i.addr < r.addr + BigInt(r.size));
    const ours = !recorded && i.size > 0 && i.size <= MAX_INTENT && i.addr % BigInt(RUNTIME_PAGE_SIZE) === 0n
      && coveredByAnonymous(maps, i.addr, end, i.perms) && this.host.mem.read(i.addr, i.size).every((b) => b === 0);
    if (ours) {
      this.host.free(i.addr, i.size);
      this.notices.push(`repaired an interrupted upload: freed the ${i.size} bytes at 0x${i.addr.toString(16)} a killed hotstack had mapped but not yet recorded`);
    }
    this.file.runtime.intent = undefined;
    this.file.saveRuntime();
  }
}

/**
 * The state file is a cache, not an authority: every address in it drives
 * writes, munmap or remote calls in the process, so before any of them is
 * used the state is checked against the process as it is now.
 *
 * - Payload regions are hotstack's own: private anonymous mappings (no
 *   file, no [heap]/[stack]) with the recorded permissions, covering the
 *   recorded size, overlapping nothing else recorded.
 * - Code addresses (replacements, veneers, hooks, payload text) lie in the
 *   payload's own executable regions; the hook argument and funcs table in
 *   its regions; exported symbols in its regions.
 * - Patch sites lie in an executable mapping of the payload's base object
 *   (or in an earlier payload's code), and every byte string hotstack may
 *   write there (undo buffers, journaled before/after) is one it could
 *   have written: the base file's own bytes at that address, NOPs, or a
 *   jump into a payload's code.
 *
 * A state that fails is refused whole, before anything is written.
 */
import { fail } from '../../errors.js';
import { fromHex, bytesEqual, toHex } from '../../elf/bytes.js';
import { arch } from '../../arch/index.js';
import { patchLength } from '../../core/patching.js';
import type { EngineState, FuncRecord, PayloadRecord, RegionRecord } from '../../core/state.js';
import type { Perm } from '../../core/target.js';
import type { MapEntry } from './maps.js';
import type { ProcessObject } from './objects.js';

const PAGE = 4096n;
const MAP_PERMS: Record<Perm, string> = { rx: 'r-xp', r: 'r--p', rw: 'rw-p' };

function hex(a: bigint): string {
  return '0x' + a.toString(16);
}

/** A private anonymous mapping: what hotstack's remote mmap makes (not a file, [heap], [stack], [vdso]). */
export function isOwnAnonymous(m: MapEntry): boolean {
  return m.inode === 0n && m.path === '' && m.perms.endsWith('p');
}

/**
 * Whether [start, end) is covered, without a hole, by private anonymous
 * mappings with permissions `perms` (or any permissions when undefined):
 * the kernel may have merged neighbouring regions of ours into one mapping.
 */
export function coveredByAnonymous(maps: MapEntry[], start: bigint, end: bigint, perms?: string): boolean {
  let at = start;
  for (const m of maps) {
    if (m.end <= at || m.start > at) continue;
    if (!isOwnAnonymous(m) || (perms !== undefined && m.perms !== perms)) return false;
    at = m.end;
    if (at >= end) return true;
  }
  return false;
}

/** Nothing of [start, end) is mapped. */
export function unmapped(maps: MapEntry[], start: bigint, end: bigint): boolean {
  return !maps.some((m) => m.start < end && start < m.end);
}

interface Span {
  start: bigint;
  end: bigint;
}

function inside(spans: Span[], a: bigint, len = 1n): boolean {
  return spans.some((s) => a >= s.start && a + len <= s.end);
}

/** Checks one state against one process; fail() with the first problem found. */
export class StateValidator {
  private readonly code: Span[] = [];
  private readonly problem: (what: string) => never;

  constructor(
    private readonly maps: MapEntry[],
    private readonly objects: ProcessObject[],
    file: string,
    pid: number,
  ) {
    this.problem = (what) =>
      fail('EPERM', `state file ${file} does not match process ${pid}: ${what}. hotstack never writes such a state, so it was changed by someone else; nothing was done. Check the process, then move the file away (the payloads it lists are then unknown to hotstack)`);
  }

  /** Check everything; `trap` is the runtime page recorded beside the engine state. */
  check(s: EngineState): void {
    const all: { r: RegionRecord; p: PayloadRecord }[] = [];
    for (const p of s.payloads) {
      if (!Array.isArray(p.regions) || !Array.isArray(p.funcs)) this.problem(`payload ${String(p.name)} has no region or function list`);
      for (const r of p.regions) {
        this.region(r, `region ${hex(r.addr)} of payload ${p.name}`);
        if (r.perm === 'rx') this.code.push({ start: r.addr, end: r.addr + BigInt(r.size) });
        all.push({ r, p });
      }
    }
    all.sort((a, b) => (a.r.addr < b.r.addr ? -1 : a.r.addr > b.r.addr ? 1 : 0));
    for (let i = 1; i < all.length; i++) {
      const prev = all[i - 1]!;
      if (prev.r.addr + BigInt(prev.r.size) > all[i]!.r.addr) this.problem(`regions of payloads ${prev.p.name} and ${all[i]!.p.name} overlap`);
    }
    for (const p of s.payloads) this.payload(p);
    if (s.pending) {
      for (const r of s.pending.regions) {
        const end = r.addr + BigInt(r.size);
        if (!this.shape(r) || !(unmapped(this.maps, r.addr, end) || coveredByAnonymous(this.maps, r.addr, end, MAP_PERMS[r.perm]))) {
          this.problem(`the interrupted ${s.pending.action} would free ${hex(r.addr)} (+${r.size}), which is not memory hotstack mapped`);
        }
      }
      for (const w of s.pending.writes) {
        const f = this.siteOf(s, w.addr);
        if (!f) this.problem(`the interrupted ${s.pending.action} wrote at ${hex(w.addr)}, which is no patch site of a loaded payload`);
        const len = patchLength(f.f);
        for (const [k, v] of [['before', w.before], ['after', w.after]] as const) {
          if (typeof v !== 'string' || v.length !== len * 2 || !this.writable(f.p, f.f, fromHex(v))) {
            this.problem(`the interrupted ${s.pending.action} would write ${k} bytes ${String(v).slice(0, 40)} at ${hex(w.addr)}, which hotstack never writes there`);
          }
        }
      }
    }
  }

  private shape(r: RegionRecord): boolean {
    return typeof r.addr === 'bigint' && Number.isSafeInteger(r.size) && r.size > 0 && r.addr % PAGE === 0n && r.perm in MAP_PERMS;
  }

  private region(r: RegionRecord, what: string): void {
    if (!this.shape(r)) this.problem(`${what} is malformed`);
    if (!coveredByAnonymous(this.maps, r.addr, r.addr + BigInt(r.size), MAP_PERMS[r.perm])) {
      this.problem(`${what} (+${r.size}, ${r.perm}) is not memory hotstack mapped (a private anonymous ${MAP_PERMS[r.perm]} mapping)`);
    }
  }

  private payload(p: PayloadRecord): void {
    const own: Span[] = p.regions.map((r) => ({ start: r.addr, end: r.addr + BigInt(r.size) }));
    const code = p.regions.filter((r) => r.perm === 'rx').map((r) => ({ start: r.addr, end: r.addr + BigInt(r.size) }));
    const text = p.text;
    if (text && !(text.start <= text.end && inside(code, text.start, text.end - text.start))) this.problem(`the code of payload ${p.name} is outside its code regions`);
    const textSpans = text ? [{ start: text.start, end: text.end }] : [];
    const h = p.hooks;
    const hookAddrs: [string, bigint | undefined][] = [
      ...h.load.map((a): [string, bigint] => ['load', a]), ...h.unload.map((a): [string, bigint] => ['unload', a]),
      ['preapply', h.preapply], ['postapply', h.postapply], ['prerevert', h.prerevert], ['postrevert', h.postrevert], ['apply', h.apply], ['revert', h.revert],
    ];
    for (const [k, a] of hookAddrs) {
      if (a !== undefined && !inside(textSpans, a)) this.problem(`the ${k} hook of payload ${p.name} at ${hex(a)} is not in its code`);
    }
    if (p.hookArg !== 0n && !inside(own, p.hookArg, 160n)) this.problem(`the hook argument of payload ${p.name} at ${hex(p.hookArg)} is not in its memory`);
    if (p.funcsAddr !== 0n && !inside(own, p.funcsAddr)) this.problem(`the function table of payload ${p.name} at ${hex(p.funcsAddr)} is not in its memory`);
    for (const sym of p.symbols) {
      if (!own.some((s) => sym.addr >= s.start && sym.addr <= s.end)) this.problem(`symbol ${sym.name} of payload ${p.name} at ${hex(sym.addr)} is not in its memory`);
    }
    for (const f of p.funcs) {
      if (f.newAddr !== 0n && !inside(code, f.newAddr)) this.problem(`the replacement of ${f.name} in payload ${p.name} at ${hex(f.newAddr)} is not in its code`);
      if (f.veneer && !inside(code, f.veneer.addr, BigInt(f.veneer.size))) this.problem(`the veneer of ${f.name} in payload ${p.name} is not in its code`);
      if (f.patchOffset !== 0 && f.patchOffset !== 4) this.problem(`function ${f.name} of payload ${p.name} has a patch offset of ${f.patchOffset}`);
      const site = f.oldAddr + BigInt(f.patchOffset);
      const len = BigInt(patchLength(f));
      if (len > 64n) this.problem(`function ${f.name} of payload ${p.name} patches ${len} bytes`);
      if (!this.inBaseCode(p, site, len) && !inside(this.code, site, len)) {
        this.problem(`function ${f.name} of payload ${p.name} at ${hex(f.oldAddr)} is neither in the code of ${p.basePath} nor of a payload`);
      }
      if (f.applied && (typeof f.undo !== 'string' || f.undo.length !== Number(len) * 2 || !this.writable(p, f, fromHex(f.undo)))) {
        this.problem(`the saved bytes of ${f.name} in payload ${p.name} (${String(f.undo).slice(0, 40)}) are not what was there before it was patched`);
      }
    }
  }

  private base(p: PayloadRecord): ProcessObject | undefined {
    return this.objects.find((o) => o.buildId && toHex(o.buildId) === p.baseBuildId);
  }

  /** [a, a+len) lies in an executable file mapping of the payload's base object. */
  private inBaseCode(p: PayloadRecord, a: bigint, len: bigint): boolean {
    const o = this.base(p);
    if (!o || a < o.range.start || a + len > o.range.end) return false;
    return this.maps.some((m) => m.start <= a && a + len <= m.end && m.perms[2] === 'x' && m.inode !== 0n);
  }

  /** The function record (and payload) whose patch site is `addr`. */
  private siteOf(s: EngineState, addr: bigint): { p: PayloadRecord; f: FuncRecord } | undefined {
    for (const p of s.payloads) for (const f of p.funcs) if (f.oldAddr + BigInt(f.patchOffset) === addr) return { p, f };
    return undefined;
  }

  /**
   * Bytes hotstack may write at the patch site of `f`: the base file's own
   * bytes there, NOPs of that length, or a jump into payload code.
   */
  private writable(p: PayloadRecord, f: FuncRecord, bytes: Uint8Array): boolean {
    const site = f.oldAddr + BigInt(f.patchOffset);
    const to = arch.jumpTarget(site, bytes);
    if (to !== undefined && inside(this.code, to)) return true;
    if (bytesEqual(bytes, arch.encodeNops(bytes.length))) return true;
    if (inside(this.code, site, BigInt(bytes.length))) return true; // a payload's own code: ours to write
    const file = this.base(p)?.fileBytes(site, bytes.length);
    return file !== undefined && bytesEqual(file, bytes);
  }
}

/**
 * The state's home in the process itself: a private anonymous read-only
 * mapping hotstack makes in the target, holding the same text as the state
 * file. Only someone who can already write the process can change it; it
 * survives a lost or corrupt state file, is found from any PID namespace
 * (by its magic, scanning the process's anonymous read-only mappings), and
 * dies with the process. The file stays as a cache and for older versions.
 *
 * Layout: a header page (magic, total size), then two slots, each
 * [sequence u64][length u64][SHA-256 of the text][text]. A save writes the
 * slot its sequence number picks, so a tool killed mid-write leaves the
 * other slot, one save older, intact; a reader takes the valid slot with
 * the highest sequence.
 */
import { createHash } from 'node:crypto';
import { bytesEqual } from '../../elf/bytes.js';
import type { MapEntry } from './maps.js';
import { coveredByAnonymous, isOwnAnonymous } from './validate.js';

/** 16 bytes at the start of the mapping. */
const MAGIC = new Uint8Array(Buffer.from('hotstack-state\u0000\u0001', 'latin1'));
const PAGE = 4096;
const HEADER = PAGE;
const SLOT_HEAD = 48;
/** Largest mirror looked at (twice the largest state file, plus slack). */
export const MAX_MIRROR = 160 * 1024 * 1024;
/** Pages of anonymous read-only memory looked at for the magic, at most. */
const MAX_SCAN_PAGES = 65536;
/** /proc/PID/maps permissions of a mirror. */
export const MIRROR_PERMS = 'r--p';

/** Memory access the mirror needs (the target's /proc/PID/mem). */
export interface MirrorMemory {
  read(addr: bigint, len: number): Uint8Array;
  write(addr: bigint, data: Uint8Array): void;
}

/** A mirror found in (or made in) a process. */
export interface Mirror {
  addr: bigint;
  size: number;
  /** Sequence number of the newest valid slot (0n: none yet). */
  seq: bigint;
  /** That slot's text, or null when no slot is valid. */
  text: string | null;
}

function slotSize(size: number): number {
  return Math.floor((size - HEADER) / 2);
}

/** Size of a mirror able to hold `len` bytes of text with room to grow. */
export function mirrorSizeFor(len: number): number {
  const slot = SLOT_HEAD + Math.max(64 * 1024, 2 * len);
  return Math.ceil((HEADER + 2 * slot) / PAGE) * PAGE;
}

/** True when a mirror of `size` can hold `len` bytes of text. */
export function fits(size: number, len: number): boolean {
  return SLOT_HEAD + len <= slotSize(size);
}

function sha(b: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(b).digest());
}

/** The newest valid slot of the mirror at `addr` (its header already checked). */
function readSlots(mem: MirrorMemory, addr: bigint, size: number): { seq: bigint; text: string | null } {
  let best: { seq: bigint; text: string | null } = { seq: 0n, text: null };
  const room = slotSize(size) - SLOT_HEAD;
  for (let i = 0; i < 2; i++) {
    const at = addr + BigInt(HEADER + i * slotSize(size));
    const h = mem.read(at, SLOT_HEAD);
    const dv = new DataView(h.buffer, h.byteOffset, SLOT_HEAD);
    const seq = dv.getBigUint64(0, true);
    const len = dv.getBigUint64(8, true);
    if (seq === 0n || seq <= best.seq || len > BigInt(room)) continue;
    const text = mem.read(at + BigInt(SLOT_HEAD), Number(len));
    if (!bytesEqual(sha(text), h.subarray(16, 48))) continue; // torn by a killed tool
    best = { seq, text: Buffer.from(text).toString('utf8') };
  }
  return best;
}

/**
 * Every mirror in the process, newest first: page starts of private
 * anonymous read-only mappings that begin with the magic and whose recorded
 * size is covered by such mappings.
 */
export function findMirrors(maps: MapEntry[], mem: MirrorMemory): Mirror[] {
  const out: Mirror[] = [];
  let budget = MAX_SCAN_PAGES;
  for (const m of maps) {
    if (!isOwnAnonymous(m) || m.perms !== MIRROR_PERMS) continue;
    for (let a = m.start; a < m.end && budget > 0; a += BigInt(PAGE), budget--) {
      let head: Uint8Array;
      try {
        head = mem.read(a, 24);
      } catch {
        break;
      }
      if (!bytesEqual(head.subarray(0, 16), MAGIC)) continue;
      const size = Number(new DataView(head.buffer, head.byteOffset, 24).getBigUint64(16, true));
      if (size % PAGE !== 0 || size < HEADER + 2 * (SLOT_HEAD + PAGE) || size > MAX_MIRROR) continue;
      if (!coveredByAnonymous(maps, a, a + BigInt(size), MIRROR_PERMS)) continue;
      try {
        out.push({ addr: a, size, ...readSlots(mem, a, size) });
      } catch {
        /* unreadable: not one */
      }
      a += BigInt(size - PAGE);
    }
  }
  return out.sort((x, y) => (x.seq > y.seq ? -1 : x.seq < y.seq ? 1 : 0));
}

/** Write the header of a fresh (all zero) mirror. */
export function initMirror(mem: MirrorMemory, addr: bigint, size: number): Mirror {
  const h = new Uint8Array(24);
  h.set(MAGIC, 0);
  new DataView(h.buffer).setBigUint64(16, BigInt(size), true);
  mem.write(addr, h);
  return { addr, size, seq: 0n, text: null };
}

/** Store `text` as the next sequence number (the caller checked it fits). */
export function writeMirror(mem: MirrorMemory, m: Mirror, seq: bigint, text: string): void {
  const data = new Uint8Array(Buffer.from(text, 'utf8'));
  const at = m.addr + BigInt(HEADER + Number(seq % 2n) * slotSize(m.size));
  const h = new Uint8Array(SLOT_HEAD);
  const dv = new DataView(h.buffer);
  // The old sequence stays until the text is in place: a torn write is never the newest valid slot.
  mem.write(at + BigInt(SLOT_HEAD), data);
  dv.setBigUint64(0, seq, true);
  dv.setBigUint64(8, BigInt(data.length), true);
  h.set(sha(data), 16);
  mem.write(at, h);
  m.seq = seq;
  m.text = text;
}

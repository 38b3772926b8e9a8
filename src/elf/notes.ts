/**
 * ELF notes, from SHT_NOTE sections and PT_NOTE segments, and the GNU
 * build-id. Layout: namesz, descsz, type (u32 each), name padded to 4,
 * descriptor padded to 4.
 */
import { fail } from '../errors.js';
import type { ElfFile } from './file.js';
import { NT_GNU_BUILD_ID, PT_NOTE, SHT_NOTE } from './constants.js';

export interface ElfNote {
  name: string;
  type: number;
  desc: Uint8Array;
}

/**
 * Parse every note in a blob. Malformed notes are EINVAL with the offset
 * (relative to `base`, the blob's file offset). Sizes are checked in
 * bigint-free integer arithmetic that cannot overflow (u32 + u32 < 2^53).
 */
export function parseNotes(blob: Uint8Array, base = 0, what = 'note'): ElfNote[] {
  const dv = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
  const out: ElfNote[] = [];
  let o = 0;
  while (o < blob.length) {
    if (blob.length - o < 12) fail('EINVAL', `${what}: truncated note header`, base + o);
    const namesz = dv.getUint32(o, true);
    const descsz = dv.getUint32(o + 4, true);
    const type = dv.getUint32(o + 8, true);
    const nameStart = o + 12;
    const descStart = nameStart + pad4(namesz);
    const end = descStart + pad4(descsz);
    if (descStart + descsz > blob.length || nameStart + namesz > blob.length) {
      fail('EINVAL', `${what}: note (namesz ${namesz}, descsz ${descsz}) does not fit in its section`, base + o);
    }
    let nameLen = namesz;
    if (nameLen > 0 && blob[nameStart + nameLen - 1] === 0) nameLen--;
    out.push({
      name: Buffer.from(blob.buffer, blob.byteOffset + nameStart, nameLen).toString('latin1'),
      type,
      desc: blob.slice(descStart, descStart + descsz),
    });
    o = Math.min(end, blob.length);
  }
  return out;
}

function pad4(n: number): number {
  return n + ((4 - (n % 4)) % 4);
}

/**
 * Validate one build-id note the way Xen does (xen_build_id_check): type
 * NT_GNU_BUILD_ID, name "GNU\0", non-zero descriptor, inside the section.
 * Returns the build-id bytes.
 */
export function parseBuildIdNote(blob: Uint8Array, what: string, base = 0): Uint8Array {
  if (blob.length <= 12) fail('EINVAL', `${what}: section (${blob.length} bytes) is too small for a note`, base);
  const dv = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
  const namesz = dv.getUint32(0, true);
  const descsz = dv.getUint32(4, true);
  const type = dv.getUint32(8, true);
  if (type !== NT_GNU_BUILD_ID) fail('EINVAL', `${what}: note type ${type} is not NT_GNU_BUILD_ID (3)`, base + 8);
  if (namesz !== 4) fail('EINVAL', `${what}: note name size ${namesz} is not 4 ("GNU\\0")`, base);
  if (descsz === 0) fail('EINVAL', `${what}: empty build-id`, base + 4);
  const nameStart = 12;
  const descStart = nameStart + pad4(namesz);
  if (descStart + descsz > blob.length) {
    fail('EINVAL', `${what}: note (namesz ${namesz} + descsz ${descsz}) does not fit in the ${blob.length}-byte section`, base);
  }
  const name = blob.subarray(nameStart, nameStart + 4);
  if (name[0] !== 0x47 || name[1] !== 0x4e || name[2] !== 0x55 || name[3] !== 0) {
    fail('EINVAL', `${what}: note name is not "GNU"`, base + nameStart);
  }
  return blob.slice(descStart, descStart + descsz);
}

/**
 * The GNU build-id of an object: from SHT_NOTE sections, else PT_NOTE
 * segments. Malformed note areas are skipped (a base image with odd notes
 * still has a usable build-id if one note is sound). Null when none.
 */
export function findBuildId(elf: ElfFile): Uint8Array | null {
  const blobs: { data: Uint8Array; off: number }[] = [];
  for (const s of elf.sections) {
    if (s.type === SHT_NOTE && elf.inFile(s)) blobs.push({ data: elf.data(s), off: Number(s.offset) });
  }
  for (const p of elf.segments) {
    if (p.type !== PT_NOTE) continue;
    if (p.offset + p.filesz > BigInt(elf.bytes.length)) continue;
    blobs.push({ data: elf.view.slice(p.offset, p.filesz), off: Number(p.offset) });
  }
  for (const b of blobs) {
    let notes: ElfNote[];
    try {
      notes = parseNotes(b.data, b.off);
    } catch {
      continue;
    }
    const n = notes.find((x) => x.type === NT_GNU_BUILD_ID && x.name === 'GNU' && x.desc.length > 0);
    if (n) return n.desc;
  }
  return null;
}

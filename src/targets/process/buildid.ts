/**
 * The GNU build-id of a file mapped in some process, read through
 * /proc/PID/map_files as root: only the ELF header, the program headers and
 * the PT_NOTE segments are read, each bounded, from a descriptor checked to
 * be a regular file. Used to pick processes out of thousands, so it never
 * reads a whole object and never trusts a size it has not checked.
 */
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { toHex } from '../../elf/bytes.js';
import { NT_GNU_BUILD_ID, PT_NOTE } from '../../elf/constants.js';
import { parseNotes } from '../../elf/notes.js';

const EHDR_SIZE = 64;
const PHDR_SIZE = 56;
/** Far more program headers than any linker writes; PN_XNUM (0xffff) is refused with it. */
const MAX_PHNUM = 256;
/** A note segment holds a few small notes (build-id, ABI tag, properties). */
const MAX_NOTE_BYTES = 64 * 1024;

/** `len` bytes at `pos`, or null when the file ends first. */
export function readExactly(fd: number, len: number, pos: number): Buffer | null {
  const b = Buffer.alloc(len);
  let got = 0;
  while (got < len) {
    const n = readSync(fd, b, got, len - got, pos + got);
    if (n <= 0) return null;
    got += n;
  }
  return b;
}

/**
 * The build-id (lower-case hex) of the ELF file at `path`, or null when it
 * is not a regular file, not a little-endian ELF64, or has no sound
 * build-id note; undefined when it cannot be opened (the process exited,
 * or we may not look). Never throws: an unreadable file matches nothing.
 */
export function readFileBuildId(path: string): string | null | undefined {
  let fd: number;
  try {
    // O_NONBLOCK: a FIFO would otherwise block the open until a writer came; it is refused below.
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch {
    return undefined;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.size < EHDR_SIZE) return null;
    const eh = readExactly(fd, EHDR_SIZE, 0);
    if (!eh || eh.readUInt32BE(0) !== 0x7f454c46 || eh[4] !== 2 || eh[5] !== 1) return null;
    const phoff = eh.readBigUInt64LE(32);
    const phentsize = eh.readUInt16LE(54);
    const phnum = eh.readUInt16LE(56);
    if (phentsize !== PHDR_SIZE || phnum === 0 || phnum > MAX_PHNUM) return null;
    if (phoff + BigInt(phnum * PHDR_SIZE) > BigInt(st.size)) return null;
    const ph = readExactly(fd, phnum * PHDR_SIZE, Number(phoff));
    if (!ph) return null;
    for (let i = 0; i < phnum; i++) {
      const o = i * PHDR_SIZE;
      if (ph.readUInt32LE(o) !== PT_NOTE) continue;
      const off = ph.readBigUInt64LE(o + 8);
      const size = ph.readBigUInt64LE(o + 32);
      if (size === 0n || size > BigInt(MAX_NOTE_BYTES) || off + size > BigInt(st.size)) continue;
      const blob = readExactly(fd, Number(size), Number(off));
      if (!blob) continue;
      try {
        const n = parseNotes(blob, Number(off)).find((x) => x.type === NT_GNU_BUILD_ID && x.name === 'GNU' && x.desc.length > 0);
        if (n) return toHex(n.desc);
      } catch {
        /* a malformed note segment: another one may still hold the build-id */
      }
    }
    return null;
  } catch {
    return null;
  } finally {
    closeSync(fd);
  }
}

/**
 * Build-ids by file identity, so each distinct file is read once however
 * many processes map it. The key is what /proc/PID/maps says (device and
 * inode), which names the mapped inode even after the path was replaced.
 */
export class BuildIdCache {
  private readonly byFile = new Map<string, string | null>();
  /** Files actually read (the rest were answered from the cache). */
  reads = 0;

  get(dev: string, inode: bigint, path: string): string | null {
    return this.getByKey(`${dev}/${inode}`, path);
  }

  /** The same, keyed by maps' own `dev/inode` text (e.g. "fd:01/1234"). */
  getByKey(key: string, path: string): string | null {
    if (this.byFile.has(key)) return this.byFile.get(key)!;
    this.reads++;
    const id = readFileBuildId(path);
    // Not opened (its process just exited): another process mapping the same file may still be read.
    if (id === undefined) return null;
    this.byFile.set(key, id);
    return id;
  }
}

/**
 * /etc/ld.so.cache, read the way glibc's dl-cache.c does, without running
 * ldconfig: the "glibc-ld.so.cache1.1" format, alone or after the old
 * "ld.so-1.7.0" table (whose own entries are used only when no new table
 * follows). Only x86-64 libc6 entries count. The cache is a hint: a
 * malformed one is ignored with a note, never fatal.
 */
import { fail, toHotstackError } from '../errors.js';
import { ByteView, cString } from '../elf/bytes.js';
import { withRegularFile } from './file.js';

const OLD_MAGIC = 'ld.so-1.7.0';
const NEW_MAGIC = 'glibc-ld.so.cache1.1';
const OLD_HEADER = 16; // magic[11], pad, nlibs
const OLD_ENTRY = 12; // flags, key, value
const NEW_HEADER = 48; // magic+version[20], nlibs, len_strings, flags, pad[3], extension_offset, unused[3]
const NEW_ENTRY = 24; // flags, key, value, osversion, hwcap
/** FLAG_ELF_LIBC6 | FLAG_X8664_LIB64: what ld.so on x86-64 accepts (_dl_cache_check_flags). */
export const FLAG_X86_64_LIBC6 = 0x0303;
/** cache_file_new.flags: the endianness ldconfig wrote it in (2 = little). */
const ENDIAN_BIG = 3;
/** A cache larger than this is not one (a busy system's is well under 1 MiB). */
const MAX_CACHE = 64 * 1024 * 1024;

export interface LdCacheEntry {
  /** The library name (the SONAME ldconfig found). */
  name: string;
  /** Its path, as ldconfig recorded it (absolute, on the system the cache describes). */
  path: string;
  flags: number;
  /** Non-zero: an entry for a hardware-capability subdirectory (glibc-hwcaps). */
  hwcap: bigint;
}

function magicAt(view: ByteView, off: number, magic: string): boolean {
  if (off + magic.length > view.length) return false;
  for (let i = 0; i < magic.length; i++) if (view.u8(off + i) !== magic.charCodeAt(i)) return false;
  return true;
}

function alignUp8(n: number): number {
  return Math.ceil(n / 8) * 8;
}

/**
 * Parse a cache file's bytes into its entries, in file order. Throws
 * HotstackError EINVAL (with the offset) when the file is not a cache or
 * lies about its sizes.
 */
export function parseLdCache(bytes: Uint8Array): LdCacheEntry[] {
  const view = new ByteView(bytes, 'ld.so.cache');
  let newAt = 0;
  if (magicAt(view, 0, OLD_MAGIC)) {
    const nlibs = view.u32(12, 'old header nlibs');
    const end = OLD_HEADER + nlibs * OLD_ENTRY;
    view.check(OLD_HEADER, nlibs * OLD_ENTRY, `old table of ${nlibs} entries`);
    newAt = alignUp8(end);
    if (!magicAt(view, newAt, NEW_MAGIC)) return parseOld(view, nlibs, end);
  } else if (!magicAt(view, 0, NEW_MAGIC)) {
    fail('EINVAL', `neither "${NEW_MAGIC}" nor "${OLD_MAGIC}" at the start: not an ld.so.cache`, 0);
  }
  return parseNew(view, newAt);
}

/** The old format: string offsets count from the end of the entry table. */
function parseOld(view: ByteView, nlibs: number, strings: number): LdCacheEntry[] {
  const table = view.bytes.subarray(strings);
  const out: LdCacheEntry[] = [];
  for (let i = 0; i < nlibs; i++) {
    const o = OLD_HEADER + i * OLD_ENTRY;
    const ctx = `old entry ${i} at offset ${o}`;
    out.push({
      flags: view.i32(o, ctx),
      name: cString(table, view.u32(o + 4, ctx), `${ctx}: key`),
      path: cString(table, view.u32(o + 8, ctx), `${ctx}: value`),
      hwcap: 0n,
    });
  }
  return out;
}

/** The new format: string offsets count from the start of the new header. */
function parseNew(view: ByteView, at: number): LdCacheEntry[] {
  const nlibs = view.u32(at + 20, 'header nlibs');
  const endian = view.u8(at + 28, 'header flags');
  if (endian === ENDIAN_BIG) fail('EOPNOTSUPP', 'the cache was written big-endian (by another machine\'s ldconfig)', at + 28);
  view.check(at + NEW_HEADER, nlibs * NEW_ENTRY, `table of ${nlibs} entries`);
  const table = view.bytes.subarray(at);
  const out: LdCacheEntry[] = [];
  for (let i = 0; i < nlibs; i++) {
    const o = at + NEW_HEADER + i * NEW_ENTRY;
    const ctx = `entry ${i} at offset ${o}`;
    out.push({
      flags: view.i32(o, ctx),
      name: cString(table, view.u32(o + 4, ctx), `${ctx}: key`),
      path: cString(table, view.u32(o + 8, ctx), `${ctx}: value`),
      hwcap: view.u64(o + 16, ctx),
    });
  }
  return out;
}

/**
 * The x86-64 libc6 view of a cache: library name -> path. Offline we do
 * not know the CPU, so baseline entries (no hwcap) win over glibc-hwcaps
 * ones, which are the same library built for newer CPUs.
 */
export class LdCache {
  /** Why the cache was ignored (malformed, unreadable), or null. */
  readonly note: string | null;
  private readonly byName: Map<string, string>;

  constructor(entries: LdCacheEntry[], note: string | null = null) {
    this.note = note;
    this.byName = new Map();
    const fallback = new Map<string, string>();
    for (const e of entries) {
      if (e.flags !== FLAG_X86_64_LIBC6) continue;
      const into = e.hwcap === 0n ? this.byName : fallback;
      if (!into.has(e.name)) into.set(e.name, e.path);
    }
    for (const [k, v] of fallback) if (!this.byName.has(k)) this.byName.set(k, v);
  }

  /** The path recorded for `name`, if any. */
  get(name: string): string | undefined {
    return this.byName.get(name);
  }

  get size(): number {
    return this.byName.size;
  }

  /**
   * Read the cache at `path`. A missing file is an empty cache (normal in
   * a sysroot); an unreadable or malformed one is empty with a note.
   */
  static load(path: string): LdCache {
    let bytes: Uint8Array | null;
    try {
      bytes = withRegularFile(path, MAX_CACHE, (f) => f.read(0, f.size));
      if (!bytes) return new LdCache([]);
    } catch (e) {
      return new LdCache([], `ignored ${path}: ${toHotstackError(e).message}`);
    }
    try {
      return new LdCache(parseLdCache(bytes));
    } catch (e) {
      return new LdCache([], `ignored ${path}, which is not a usable ld.so.cache: ${toHotstackError(e).message}`);
    }
  }
}

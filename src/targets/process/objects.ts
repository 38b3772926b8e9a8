/**
 * The ELF objects mapped in a process, as base objects payloads can patch
 * and as sources of dynamic symbols (libc and friends). Each object is
 * read through /proc/PID/map_files, so the mapped inode is used even when
 * the file on disk was replaced or deleted.
 */
import { closeSync, constants, fstatSync, openSync, statSync, type BigIntStats } from 'node:fs';
import { fail } from '../../errors.js';
import { DT_DEBUG, dynamicValueAddress, ElfFile, findBuildId, readDynamic, SymbolIndex, type DynamicInfo, type IndexedSymbol } from '../../elf/index.js';
import { fromHex } from '../../elf/bytes.js';
import { readExactly, readFileBuildId } from './buildid.js';
import type { BaseObject, BaseSymbol } from '../../core/target.js';
import { readObjects, type MappedObject, type MapsSnapshot } from './maps.js';
import { baseSymbols } from '../../elf/debugfile.js';
import { BaseAnalysis, type FunctionReport } from '../../analysis/index.js';

const PAGE_MASK = ~0xfffn;

/**
 * What is the same for every process mapping one file: the parsed ELF and
 * its symbol indexes (and, through BaseAnalysis's cache on the ElfFile,
 * its analysis). Shared so that one hotstack acting on a fleet of
 * processes of one build parses libc and the program once, not once per
 * process.
 */
interface FileData {
  elf: ElfFile;
  /** Bytes of the file held (what the cache's byte bound counts). */
  size: number;
  index?: SymbolIndex;
  dynamic?: SymbolIndex;
  debug?: ElfFile;
  /** Its GNU build-id, once looked for (null: none). */
  buildId?: Uint8Array | null;
  /** Link-time address of its DT_DEBUG value word, once looked for (null: none). */
  debugSlot?: bigint | null;
  /** Its DT_NEEDED names and DT_SONAME, once read (null: unreadable). */
  dynamicInfo?: DynamicInfo | null;
}

/**
 * Parsed files by identity: device, inode, size and modification time of
 * the mapped inode (a file rewritten in place, or an inode number reused
 * after a delete, gets a new entry). Bounded: past the limit the oldest
 * entries go, so a scan of a machine with many distinct objects does not
 * keep them all.
 */
const files = new Map<string, FileData>();
const MAX_CACHED_FILES = 64;
/** Bytes of files the cache holds at most across actions (a fleet worker lives for many); `maxBytes` lowered only by tests. */
export const fileCache = { maxBytes: 1024 * 1024 * 1024 };
let cachedBytes = 0;

/** Keep `data` for the next process mapping the same file, within the bounds. */
function remember(key: string, data: FileData): void {
  files.set(key, data);
  cachedBytes += data.size;
  trimCache();
}

/** Evict the oldest entries until the cache is within both bounds. */
function trimCache(): void {
  for (const [k, old] of files) {
    if (files.size <= MAX_CACHED_FILES && cachedBytes <= fileCache.maxBytes) break;
    files.delete(k);
    cachedBytes -= old.size;
  }
}

/** Bytes the file cache holds now (for tests of its bound). */
export function cachedFileBytes(): number {
  return cachedBytes;
}

/** An ELF object mapped in the process. */
export class ProcessObject implements BaseObject {
  readonly path: string;
  readonly buildId: Uint8Array | null;
  readonly bias: bigint;
  /** Run-time range of its mappings. */
  readonly range: { start: bigint; end: bigint };
  private readonly elf: ElfFile;
  private readonly file: FileData;

  constructor(m: MappedObject, file: FileData) {
    this.path = m.deleted ? `${m.path} (deleted)` : m.path;
    this.file = file;
    const elf = (this.elf = file.elf);
    // Once per file, not per process mapping it (a fleet maps the same few files a thousand times).
    this.buildId = file.buildId === undefined ? (file.buildId = findBuildId(elf)) : file.buildId;
    this.bias = loadBias(m, elf);
    this.range = { start: m.mappings[0]!.start, end: m.mappings[m.mappings.length - 1]!.end };
  }

  /**
   * `.symtab`, else (stripped) that of its debug file found by the object's
   * own build-id (ROOT/.build-id/xx/rest.debug), else `.dynsym`. By
   * build-id, not path: the mapped file may have been replaced or deleted.
   */
  private symbols(): SymbolIndex {
    const f = this.file;
    if (!f.index) {
      const found = baseSymbols(this.elf, undefined);
      f.index = new SymbolIndex(found.symbols);
      f.debug = found.debug?.elf;
    }
    return f.index;
  }

  analyze(name: string): FunctionReport | undefined {
    this.symbols();
    return BaseAnalysis.of(this.elf, { debug: this.file.debug, path: this.path }).report(name);
  }

  lookup(name: string): BaseSymbol | undefined {
    const s = this.symbols().lookup(name);
    return s ? { name: s.name, addr: s.value + this.bias, size: s.size, isFunc: s.isFunc } : undefined;
  }

  hasGlobal(name: string): boolean {
    return this.symbols().hasGlobal(name);
  }

  ifuncsAt(addr: bigint): string[] {
    return this.symbols().ifuncsAt(addr - this.bias).map((s) => s.name);
  }

  /** The object file's own bytes at run-time address `addr` (undefined outside its segments). */
  fileBytes(addr: bigint, len: number): Uint8Array | undefined {
    try {
      return this.elf.readVirtual(addr - this.bias, len);
    } catch {
      return undefined;
    }
  }

  /**
   * Run-time address of the word where the dynamic linker put the address
   * of r_debug (its DT_DEBUG entry: executables have one), or undefined.
   */
  debugSlot(): bigint | undefined {
    if (this.file.debugSlot === undefined) {
      try {
        this.file.debugSlot = dynamicValueAddress(this.elf, DT_DEBUG) ?? null;
      } catch {
        this.file.debugSlot = null; // a malformed dynamic segment: no link map through it
      }
    }
    return this.file.debugSlot === null ? undefined : this.file.debugSlot + this.bias;
  }

  /**
   * Set by the process target: the objects of the process's global lookup
   * scope in order (see globalScope), or undefined when its link map is
   * not known.
   */
  lookupScope: (() => readonly ProcessObject[] | undefined) | undefined;

  private dynamicInfo(): DynamicInfo | null {
    if (this.file.dynamicInfo === undefined) {
      try {
        this.file.dynamicInfo = readDynamic(this.elf);
      } catch {
        this.file.dynamicInfo = null; // malformed: it names nothing, and nothing finds it by name
      }
    }
    return this.file.dynamicInfo;
  }

  /** Its DT_NEEDED names (empty when it has none or they cannot be read). */
  needed(): string[] {
    return this.dynamicInfo()?.needed ?? [];
  }

  /** Its DT_SONAME, if any. */
  soname(): string | undefined {
    return this.dynamicInfo()?.soname;
  }

  /**
   * The object the program's calls of `name` through the PLT are bound to
   * instead of this one (path), when one of the global scope before it
   * exports `name` too: an LD_PRELOAD library, the program itself, or for
   * a plugin dlopen'd RTLD_LOCAL any object of the global scope. Undefined
   * when this object's `name` is not exported, nothing comes first with
   * it, or the link map is unknown.
   */
  interposer(name: string): string | undefined {
    // The executable (it has the DT_DEBUG slot) comes first: nothing interposes on it.
    if (!this.dynamicSymbol(name) || this.debugSlot() !== undefined) return undefined;
    // Every lookup searches the global scope first: an object outside it (a plugin dlopen'd
    // RTLD_LOCAL) loses its calls to any object of it; one inside, to those before it.
    for (const o of this.lookupScope?.() ?? []) {
      if (o === this) return undefined;
      if (o.dynamicSymbol(name)) return o.path;
    }
    return undefined;
  }

  /** An exported dynamic symbol (default version), link-time value. */
  dynamicSymbol(name: string): IndexedSymbol | undefined {
    return (this.file.dynamic ??= SymbolIndex.dynamicOf(this.elf)).lookup(name);
  }
}

/** Load bias: where the first PT_LOAD's page landed minus where it was linked. */
function loadBias(m: MappedObject, elf: ElfFile): bigint {
  const loads = elf.loads();
  if (!loads.length) return 0n;
  const first = loads.reduce((a, b) => (b.vaddr < a.vaddr ? b : a));
  const map = m.mappings.find((e) => e.offset === (first.offset & PAGE_MASK)) ?? m.mappings[0]!;
  return map.start - (first.vaddr & PAGE_MASK);
}

/** Largest mapped file read whole; a larger one is not read (its build-id is, from its headers, for messages). */
export const MAX_OBJECT_FILE = 512 * 1024 * 1024;

/**
 * Most bytes of mapped ELF files one action uses, all files together: a
 * process can map many files each under MAX_OBJECT_FILE. Files past it, in
 * map order, are not read (like an oversized one). Counted whether or not
 * the file was already parsed for another process, so that what an action
 * may use does not depend on what ran before it.
 */
export const MAX_OBJECT_BYTES_PER_ACTION = 2 * 1024 * 1024 * 1024;

/** A mapped ELF file not read: too large itself (`file`), or past the per-action total (`total`). */
export interface OversizedObject {
  path: string;
  size: number;
  buildId: Uint8Array | null;
  over: 'file' | 'total';
}

/** What a process maps: the objects read, and the ELF files too large to be. */
export interface ProcessObjects {
  objects: ProcessObject[];
  oversized: OversizedObject[];
}

/**
 * The parsed ELF file a mapping shows, from the cache when the same inode
 * (unchanged) was parsed before. The process chose what to map, and
 * hotstack runs as root: a device or a FIFO is never opened for reading
 * (stat first: opening a device can act on it; O_NONBLOCK), a file that is
 * not ELF costs four bytes, one over MAX_OBJECT_FILE only its headers.
 * Null for what is not a usable ELF file (or vanished).
 */
function fileData(m: MappedObject, budget: { left: number }): FileData | OversizedObject | null {
  const path = m.mapFilesPath;
  let st: BigIntStats;
  try {
    // The map_files link names the very inode mapped (it cannot be pointed elsewhere): a
    // stat of it is enough to find a file parsed for another process, without opening it.
    st = statSync(path, { bigint: true });
  } catch {
    return null;
  }
  if (!st.isFile() || st.size < 64n) return null;
  const hit = files.get(fileKey(st));
  if (hit) return charged(m, hit.size, budget, path) ?? hit;
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch {
    return null;
  }
  try {
    const now = fstatSync(fd, { bigint: true });
    if (!now.isFile() || now.size < 64n) return null;
    const size = Number(now.size);
    const magic = readExactly(fd, 4, 0);
    if (!magic || magic.readUInt32BE(0) !== 0x7f454c46) return null;
    const over = charged(m, size, budget, path);
    if (over) return over;
    const all = readExactly(fd, size, 0);
    if (!all) return null;
    const data: FileData = { elf: ElfFile.parse(new Uint8Array(all.buffer, all.byteOffset, all.length), m.path), size };
    remember(fileKey(now), data);
    return data;
  } catch {
    return null;
  } finally {
    closeSync(fd);
  }
}

/** The cache key of a file: its inode, and its size and change time (a file rewritten in place is parsed again). */
function fileKey(st: BigIntStats): string {
  return `${st.dev}/${st.ino}/${st.size}/${st.mtimeNs}`;
}

/**
 * Charge a file of `size` bytes to the action's budget: null when it may
 * be used, else what is known of it (it is too large, or past the total).
 */
function charged(m: MappedObject, size: number, budget: { left: number }, path: string): OversizedObject | null {
  const over = size > MAX_OBJECT_FILE ? 'file' : size > budget.left ? 'total' : null;
  if (over) {
    const id = readFileBuildId(path);
    return { path: m.path, size, buildId: id ? fromHex(id) : null, over };
  }
  budget.left -= size;
  return null;
}

/**
 * Every ELF object mapped in `pid`, in map order (the executable first,
 * then libraries roughly in load order), reading at most `maxBytes` of
 * them in all. Unreadable or malformed objects are skipped: they cannot be
 * patched, and must not stop work on others.
 */
export function loadObjects(pid: number, maxBytes = MAX_OBJECT_BYTES_PER_ACTION, snap?: MapsSnapshot): ProcessObjects {
  const out: ProcessObjects = { objects: [], oversized: [] };
  const budget = { left: maxBytes };
  trimCache();
  for (const m of readObjects(pid, snap)) {
    const f = fileData(m, budget);
    if (!f) continue; // not a usable ELF object
    if (!('elf' in f)) {
      out.oversized.push(f);
      continue;
    }
    try {
      out.objects.push(new ProcessObject(m, f));
    } catch {
      /* not a usable ELF object */
    }
  }
  return out;
}

/** EFBIG for a payload whose base is a mapped object that was not read, saying which bound kept it out. */
export function unreadBase(o: OversizedObject, pid: number): never {
  if (o.over === 'file') {
    fail('EFBIG', `the payload's base ${o.path} is ${o.size} bytes, more than hotstack reads of a mapped object (${MAX_OBJECT_FILE}); it cannot be patched`);
  }
  fail('EFBIG', `the payload's base ${o.path} (${o.size} bytes) was not read: with it, the files process ${pid} maps add up to more than hotstack reads in one action (${MAX_OBJECT_BYTES_PER_ACTION} bytes); it cannot be patched`);
}

/** What lookups missed for the per-action total ("" when nothing): for "unknown symbol" messages. */
export function unreadForTotal(objs: ProcessObjects): string {
  const skipped = objs.oversized.filter((o) => o.over === 'total');
  if (!skipped.length) return '';
  return `; ${skipped.length} mapped file(s) were not read, past the ${MAX_OBJECT_BYTES_PER_ACTION} bytes hotstack reads in one action: ${skipped.map((o) => o.path).join(', ')}`;
}

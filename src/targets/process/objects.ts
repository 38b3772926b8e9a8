/**
 * The ELF objects mapped in a process, as base objects payloads can patch
 * and as sources of dynamic symbols (libc and friends). Each object is
 * read through /proc/PID/map_files, so the mapped inode is used even when
 * the file on disk was replaced or deleted.
 */
import { closeSync, constants, fstatSync, openSync, readSync, statSync } from 'node:fs';
import { ElfFile, findBuildId, NT_GNU_BUILD_ID, parseNotes, PT_NOTE, SymbolIndex, type IndexedSymbol } from '../../elf/index.js';
import type { BaseObject, BaseSymbol } from '../../core/target.js';
import { readObjects, type MappedObject } from './maps.js';
import { baseSymbols } from '../../elf/debugfile.js';
import { BaseAnalysis, type FunctionReport } from '../../analysis/index.js';

const PAGE_MASK = ~0xfffn;

/** An ELF object mapped in the process. */
export class ProcessObject implements BaseObject {
  readonly path: string;
  readonly buildId: Uint8Array | null;
  readonly bias: bigint;
  /** Run-time range of its mappings. */
  readonly range: { start: bigint; end: bigint };
  private readonly elf: ElfFile;
  private index: SymbolIndex | undefined;
  private dynamic: SymbolIndex | undefined;
  private debug: ElfFile | undefined;

  constructor(m: MappedObject, elf: ElfFile) {
    this.path = m.deleted ? `${m.path} (deleted)` : m.path;
    this.elf = elf;
    this.buildId = findBuildId(elf);
    this.bias = loadBias(m, elf);
    this.range = { start: m.mappings[0]!.start, end: m.mappings[m.mappings.length - 1]!.end };
  }

  /**
   * `.symtab`, else (stripped) that of its debug file found by the object's
   * own build-id (ROOT/.build-id/xx/rest.debug), else `.dynsym`. By
   * build-id, not path: the mapped file may have been replaced or deleted.
   */
  private symbols(): SymbolIndex {
    if (!this.index) {
      const found = baseSymbols(this.elf, undefined);
      this.index = new SymbolIndex(found.symbols);
      this.debug = found.debug?.elf;
    }
    return this.index;
  }

  analyze(name: string): FunctionReport | undefined {
    this.symbols();
    return BaseAnalysis.of(this.elf, { debug: this.debug, path: this.path }).report(name);
  }

  lookup(name: string): BaseSymbol | undefined {
    const s = this.symbols().lookup(name);
    return s ? { name: s.name, addr: s.value + this.bias, size: s.size, isFunc: s.isFunc } : undefined;
  }

  hasGlobal(name: string): boolean {
    return this.symbols().hasGlobal(name);
  }

  /** The object file's own bytes at run-time address `addr` (undefined outside its segments). */
  fileBytes(addr: bigint, len: number): Uint8Array | undefined {
    try {
      return this.elf.readVirtual(addr - this.bias, len);
    } catch {
      return undefined;
    }
  }

  /** An exported dynamic symbol (default version), link-time value. */
  dynamicSymbol(name: string): IndexedSymbol | undefined {
    return (this.dynamic ??= SymbolIndex.dynamicOf(this.elf)).lookup(name);
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
/** Most program headers and largest note segment looked at in an oversized file. */
const MAX_PHNUM = 1024;
const MAX_NOTE = 64 * 1024;

/** A mapped ELF file too large to read. */
export interface OversizedObject {
  path: string;
  size: number;
  buildId: Uint8Array | null;
}

function preadExact(fd: number, len: number, pos: number): Buffer | null {
  const b = Buffer.alloc(len);
  let done = 0;
  while (done < len) {
    const n = readSync(fd, b, done, len - done, pos + done);
    if (n === 0) return null;
    done += n;
  }
  return b;
}

/** The build-id from the PT_NOTE segments, reading only headers and notes (bounded). */
function buildIdFromHeaders(fd: number, size: number): Uint8Array | null {
  const h = preadExact(fd, 64, 0);
  if (!h || h[4] !== 2 || h[5] !== 1) return null;
  const phoff = Number(h.readBigUInt64LE(32));
  const phentsize = h.readUInt16LE(54);
  const phnum = Math.min(h.readUInt16LE(56), MAX_PHNUM);
  if (phentsize < 56 || phoff + phnum * phentsize > size) return null;
  const ph = preadExact(fd, phnum * phentsize, phoff);
  if (!ph) return null;
  for (let i = 0; i < phnum; i++) {
    const o = i * phentsize;
    if (ph.readUInt32LE(o) !== PT_NOTE) continue;
    const off = Number(ph.readBigUInt64LE(o + 8));
    const filesz = Number(ph.readBigUInt64LE(o + 32));
    if (filesz > MAX_NOTE || off + filesz > size) continue;
    const blob = preadExact(fd, filesz, off);
    if (!blob) continue;
    try {
      const n = parseNotes(new Uint8Array(blob), off).find((x) => x.type === NT_GNU_BUILD_ID && x.name === 'GNU' && x.desc.length > 0);
      if (n) return n.desc;
    } catch {
      /* malformed notes: no build-id from this segment */
    }
  }
  return null;
}

/**
 * A mapped file's bytes, when it is a regular ELF file of a readable size.
 * The process chose what to map, and hotstack runs as root: a device or a
 * FIFO is never read (O_NONBLOCK, fstat before reading), a file that is
 * not ELF costs four bytes, a huge one only its headers.
 */
function readObjectFile(path: string): Uint8Array | OversizedObject | null {
  let fd: number;
  try {
    // stat first: opening a device can act on it (a tape rewinds); only regular files are opened.
    if (!statSync(path).isFile()) return null;
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch {
    return null;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.size < 64) return null;
    const magic = preadExact(fd, 4, 0);
    if (!magic || magic.readUInt32BE(0) !== 0x7f454c46) return null;
    if (st.size > MAX_OBJECT_FILE) return { path, size: st.size, buildId: buildIdFromHeaders(fd, st.size) };
    const all = preadExact(fd, st.size, 0);
    return all ? new Uint8Array(all.buffer, all.byteOffset, all.length) : null;
  } catch {
    return null;
  } finally {
    closeSync(fd);
  }
}

/** The objects of a process: the usable ones, and those too large to read. */
export interface ProcessObjects {
  objects: ProcessObject[];
  oversized: OversizedObject[];
}

/**
 * Every ELF object mapped in `pid`, in map order (the executable first,
 * then libraries roughly in load order). Unreadable or malformed objects
 * are skipped: they cannot be patched, and must not stop work on others.
 */
export function loadObjects(pid: number): ProcessObjects {
  const out: ProcessObjects = { objects: [], oversized: [] };
  for (const m of readObjects(pid)) {
    const got = readObjectFile(m.mapFilesPath);
    if (!got) continue;
    if (!(got instanceof Uint8Array)) {
      out.oversized.push({ ...got, path: m.path });
      continue;
    }
    try {
      out.objects.push(new ProcessObject(m, ElfFile.parse(got, m.path)));
    } catch {
      /* not a usable ELF object */
    }
  }
  return out;
}

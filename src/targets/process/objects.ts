/**
 * The ELF objects mapped in a process, as base objects payloads can patch
 * and as sources of dynamic symbols (libc and friends). Each object is
 * read through /proc/PID/map_files, so the mapped inode is used even when
 * the file on disk was replaced or deleted.
 */
import { closeSync, constants, fstatSync, openSync, readFileSync, readSync } from 'node:fs';
import { ElfFile, findBuildId, SymbolIndex, type IndexedSymbol } from '../../elf/index.js';
import type { BaseObject, BaseSymbol } from '../../core/target.js';
import { readObjects, type MappedObject } from './maps.js';
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
  index?: SymbolIndex;
  dynamic?: SymbolIndex;
  debug?: ElfFile;
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

/**
 * The parsed ELF file a mapping shows, from the cache when the same inode
 * (unchanged) was parsed before; undefined for what is not a regular ELF
 * file (a device, a data file, a file that vanished).
 */
function fileData(m: MappedObject): FileData | undefined {
  let fd: number | undefined;
  try {
    fd = openSync(m.mapFilesPath, constants.O_RDONLY | constants.O_NONBLOCK); // never wait on a FIFO: refused below
    const st = fstatSync(fd, { bigint: true });
    if (!st.isFile()) return undefined;
    const key = `${st.dev}/${st.ino}/${st.size}/${st.mtimeNs}`;
    const hit = files.get(key);
    if (hit) return hit;
    const b = Buffer.alloc(4);
    if (readSync(fd, b, 0, 4, 0) !== 4 || b.readUInt32BE(0) !== 0x7f454c46) return undefined;
    const data: FileData = { elf: ElfFile.parse(readFileSync(fd), m.path) };
    if (files.size >= MAX_CACHED_FILES) files.delete(files.keys().next().value!);
    files.set(key, data);
    return data;
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * Every ELF object mapped in `pid`, in map order (the executable first,
 * then libraries roughly in load order). Unreadable or malformed objects
 * are skipped: they cannot be patched, and must not stop work on others.
 */
export function loadObjects(pid: number): ProcessObject[] {
  const out: ProcessObject[] = [];
  for (const m of readObjects(pid)) {
    const f = fileData(m);
    if (!f) continue; // not a usable ELF object
    try {
      out.push(new ProcessObject(m, f));
    } catch {
      /* not a usable ELF object */
    }
  }
  return out;
}

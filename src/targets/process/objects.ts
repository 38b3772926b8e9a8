/**
 * The ELF objects mapped in a process, as base objects payloads can patch
 * and as sources of dynamic symbols (libc and friends). Each object is
 * read through /proc/PID/map_files, so the mapped inode is used even when
 * the file on disk was replaced or deleted.
 */
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import { ElfFile, findBuildId, SymbolIndex, type IndexedSymbol } from '../../elf/index.js';
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

function isElf(path: string): boolean {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const b = Buffer.alloc(4);
    return readSync(fd, b, 0, 4, 0) === 4 && b.readUInt32BE(0) === 0x7f454c46;
  } catch {
    return false;
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
    if (!isElf(m.mapFilesPath)) continue;
    try {
      out.push(new ProcessObject(m, ElfFile.parse(readFileSync(m.mapFilesPath), m.path)));
    } catch {
      /* not a usable ELF object */
    }
  }
  return out;
}

/**
 * The offline image target: the base is an ELF executable file (Xen's
 * xen-syms or any program). A dry run: reads come from the file, writes
 * stay in memory, payloads are placed just past the image's highest
 * loaded address (so rel32 reaches them), and hooks cannot run. Symbols
 * of other objects come from the libraries the image needs, found as
 * ld.so would (src/libs) and placed far away, where a process has them.
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { fail, HotstackError, toHotstackError } from '../../errors.js';
import { ElfFile, findBuildId, SymbolIndex, bytesEqual, ET_EXEC, ET_DYN, SHT_NOTE, parseNotes, type Section } from '../../elf/index.js';
import type { AllocRequest, BaseObject, BaseSymbol, ExternalSymbol, HookResult, Quiesced, StateStore, Target } from '../../core/target.js';
import type { EngineState } from '../../core/state.js';
import { ImageMemory } from './memory.js';
import { LibraryClosure, type LibraryOptions, type LoadedLibrary } from '../../libs/closure.js';
import { checkLibraryOptions } from '../../libs/options.js';
import { baseSymbols } from '../../elf/debugfile.js';
import { BaseAnalysis, type FunctionReport } from '../../analysis/index.js';

const PAGE = 4096n;
/** Where a process's mmap area, and so its libraries, typically start (below the x86-64 user stack). */
const LIBRARY_AREA = 0x7f0000000000n;
/** Libraries stay at least this far past the image: beyond rel32 reach, as in a real process. */
const LIBRARY_GAP = 4n * 1024n * 1024n * 1024n;
/** How many library names an "unknown symbol" message lists. */
const NAMES_SHOWN = 4;

/**
 * Xen's own image (xen-syms): its entry symbol `start_xen`, or a "Xen"
 * ELF note. Its loader builds no veneers, so hotstack only reports.
 */
export function isXenImage(elf: ElfFile, index: SymbolIndex): boolean {
  if (index.hasGlobal('start_xen')) return true;
  return elf.sections.some((s) => s.type === SHT_NOTE && s.size > 0n && s.size < 1n << 20n && noteOwners(elf, s).includes('Xen'));
}

function noteOwners(elf: ElfFile, s: Section): string[] {
  try {
    return parseNotes(elf.data(s)).map((n) => n.name);
  } catch {
    return [];
  }
}

/** A base object read from an ELF file (bias 0: link-time addresses are the addresses). */
export class ElfBase implements BaseObject {
  readonly path: string;
  readonly buildId: Uint8Array | null;
  readonly bias: bigint;
  /** Xen's own image: hazards are reported, outcomes stay Xen's (its loader builds no veneers). */
  readonly reportOnly: boolean;
  private readonly index: SymbolIndex;
  private readonly elf: ElfFile;
  private readonly debug: ElfFile | undefined;

  constructor(path: string, elf: ElfFile, bias = 0n, index?: SymbolIndex, debug?: ElfFile) {
    this.path = path;
    this.elf = elf;
    this.debug = debug;
    this.buildId = findBuildId(elf);
    this.bias = bias;
    this.index = index ?? SymbolIndex.fromElf(elf);
    this.reportOnly = isXenImage(elf, this.index);
  }

  analyze(name: string): FunctionReport | undefined {
    return BaseAnalysis.of(this.elf, { debug: this.debug, path: this.path }).report(name);
  }

  lookup(name: string): BaseSymbol | undefined {
    const s = this.index.lookup(name);
    return s ? { name: s.name, addr: s.value + this.bias, size: s.size, isFunc: s.isFunc } : undefined;
  }

  hasGlobal(name: string): boolean {
    return this.index.hasGlobal(name);
  }

  ifuncsAt(addr: bigint): string[] {
    return this.index.ifuncsAt(addr - this.bias).map((s) => s.name);
  }
}

class MemoryStore implements StateStore {
  private state: EngineState | null = null;
  load(): EngineState | null {
    return this.state;
  }
  save(s: EngineState): void {
    this.state = s;
  }
}

export class ImageTarget implements Target {
  readonly kind = 'image' as const;
  readonly canRunHooks = false;
  readonly defaultTimeoutMs = 30;
  readonly description: string;
  readonly store: StateStore = new MemoryStore();
  readonly base: ElfBase;
  private readonly mem: ImageMemory;
  private next: bigint;
  private readonly libs: LibraryClosure;

  constructor(path: string, elf: ElfFile, index?: SymbolIndex, libs: LibraryOptions = {}, debug?: ElfFile) {
    if (elf.header.type !== ET_EXEC && elf.header.type !== ET_DYN) {
      fail('EINVAL', `${path} is not an executable (ELF type ${elf.header.type}); --image takes a linked ELF such as xen-syms`);
    }
    const loads = elf.loads();
    if (!loads.length) fail('EINVAL', `${path} has no loadable segments`);
    this.description = `image ${path}`;
    this.base = new ElfBase(path, elf, 0n, index, debug);
    this.mem = new ImageMemory(elf);
    const top = loads.reduce((m, s) => (s.vaddr + s.memsz > m ? s.vaddr + s.memsz : m), 0n);
    this.next = ((top + PAGE - 1n) / PAGE) * PAGE + PAGE; // one guard page after the image
    const far = this.next + LIBRARY_GAP;
    this.libs = new LibraryClosure({ path, elf }, libs, far > LIBRARY_AREA ? far : LIBRARY_AREA);
  }

  /**
   * Open an ELF file as an offline target. Any problem becomes a HotstackError naming the file.
   * `debugFile`: the separate debug file of a stripped image (else found by build-id / .gnu_debuglink).
   * `libPaths` (searched first) and `sysroot` (the target system's `/`): where the libraries it
   * needs are, read only once a payload needs a symbol from them.
   */
  static open(path: string, opts: { debugFile?: string; libPaths?: string[]; sysroot?: string } = {}): ImageTarget {
    const libs = checkLibraryOptions(opts);
    try {
      const elf = ElfFile.parse(readFileSync(path), `image ${path}`);
      const linked = elf.header.type === ET_EXEC || elf.header.type === ET_DYN;
      const syms = linked ? baseSymbols(elf, path, opts) : undefined;
      return new ImageTarget(path, elf, syms && new SymbolIndex(syms.symbols), libs, syms?.debug?.elf);
    } catch (e) {
      const err = toHotstackError(e);
      // A bad --debug-file is not a bad image: its message already names it.
      if (opts.debugFile !== undefined && err.message.startsWith(`--debug-file ${opts.debugFile}`)) throw err;
      throw new HotstackError(err.errno, `cannot use ${path} as the base image: ${err.message.replace(`image ${path}: `, '')}`, err.offset);
    }
  }

  findBase(buildId: Uint8Array): BaseObject | undefined {
    return this.base.buildId && bytesEqual(this.base.buildId, buildId) ? this.base : undefined;
  }

  bases(): BaseObject[] {
    return [this.base];
  }

  lookupExternal(name: string): ExternalSymbol | undefined {
    const d = this.libs.lookup(name);
    if (!d) return undefined;
    return d.ifunc ? { addr: d.addr, object: d.object, ifuncResolver: true } : { addr: d.addr, object: d.object };
  }

  externalScope(): string {
    let names: string[];
    try {
      names = this.libs.libraries().map((l) => basename(l.path));
    } catch {
      return `the libraries ${this.base.path} needs`; // their failure was reported already
    }
    if (!names.length) return `a library (${this.base.path} needs none)`;
    const more = names.length > NAMES_SHOWN ? ` and ${names.length - NAMES_SHOWN} more` : '';
    return `the libraries ${this.base.path} needs (${names.slice(0, NAMES_SHOWN).join(', ')}${more})`;
  }

  /** The libraries the image needs, in ld.so's load order, at their made-up addresses (loads them). */
  libraries(): LoadedLibrary[] {
    return this.libs.libraries();
  }

  read(addr: bigint, len: number): Uint8Array {
    return this.mem.read(addr, len);
  }

  write(addr: bigint, data: Uint8Array): void {
    this.mem.write(addr, data);
  }

  allocate(reqs: AllocRequest[]): bigint[] {
    return reqs.map(({ size }) => {
      const addr = this.next;
      const rounded = ((BigInt(size) + PAGE - 1n) / PAGE) * PAGE;
      this.mem.map(addr, Number(rounded));
      this.next = addr + rounded;
      return addr;
    });
  }

  free(addr: bigint, size: number): void {
    this.mem.unmap(addr, size);
  }

  quiesce<T>(_busy: unknown, _timeoutMs: number, fn: (q: Quiesced) => T): T {
    return fn({ tries: 1, callHook: () => null });
  }

  callHook(): HookResult {
    return null;
  }
}

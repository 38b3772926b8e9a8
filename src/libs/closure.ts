/**
 * The libraries an object needs, as ld.so would load them, and symbol
 * lookup over them offline. Load order is breadth-first over DT_NEEDED
 * (the base, its needed in order, then theirs), each object once; lookup
 * goes through that order and the first definition wins, weak or not, as
 * in ld.so's global scope. Nothing is read until the first lookup: a
 * payload that needs nothing from a library must not fail because one is
 * missing.
 *
 * Each library gets a made-up load address, page-aligned and far (beyond
 * 2 GiB) from the base, as in a real process where libc is mapped far
 * from the program: calls to it go through the payload's veneers.
 */
import { dirname } from 'node:path';
import { ElfFile, readDynamic, SymbolIndex, alignUpBig, type DynamicInfo } from '../elf/index.js';
import { fail, HotstackError, toHotstackError } from '../errors.js';
import { LdCache } from './ldcache.js';
import { realpathIn, underRoot } from './rootfs.js';
import { searchLibrary, type Requester, type SearchOptions } from './search.js';

const PAGE = 4096n;
/** Biggest alignment honoured when placing a library (larger p_align values are rounded down to this). */
const MAX_ALIGN = 2n * 1024n * 1024n;

export interface LibraryOptions {
  /** Directories searched before anything else (`--lib-path`). */
  libPaths?: string[];
  /** Root of the target system's files (`--sysroot`); absolute. */
  sysroot?: string;
}

/** A library of the closure, placed at its made-up address. */
export interface LoadedLibrary {
  /** Host path it was found at (what ldd would print). */
  readonly path: string;
  /** The file actually read, every symlink resolved (inside the sysroot). */
  readonly realPath: string;
  /** Added to its link-time addresses. */
  readonly bias: bigint;
  /** The object whose DT_NEEDED brought it in. */
  readonly neededBy: string;
}

/** Where an external symbol was found. */
export interface ExternalDefinition {
  addr: bigint;
  /** Path of the defining library. */
  object: string;
  /** STT_GNU_IFUNC: `addr` is the resolver, which cannot run offline. */
  ifunc: boolean;
}

interface Node extends Requester, LoadedLibrary {
  elf: ElfFile;
  symbols: SymbolIndex | undefined;
}

/** The libraries of one base object, loaded on first use. */
export class LibraryClosure {
  private order: Node[] | undefined;
  private failure: HotstackError | undefined;
  private cache: LdCache | undefined;
  private next: bigint;
  private readonly root: string;

  /**
   * @param base the base object (its path as given, and its ELF)
   * @param loadAt the first address libraries may be placed at
   */
  constructor(private readonly base: { path: string; elf: ElfFile }, private readonly opts: LibraryOptions, loadAt: bigint) {
    this.root = opts.sysroot ?? '/';
    this.next = loadAt;
  }

  /** The libraries in load order (the base excluded). Loads them: ENOENT when one cannot be found. */
  libraries(): LoadedLibrary[] {
    return this.load().slice(1).map((l) => ({ path: l.path, realPath: l.realPath, bias: l.bias, neededBy: l.neededBy }));
  }

  /** The first definition of `name` among the libraries, in load order. */
  lookup(name: string): ExternalDefinition | undefined {
    for (const lib of this.load().slice(1)) {
      const s = (lib.symbols ??= dynamicSymbols(lib)).lookup(name);
      if (s && s.global) return { addr: s.value + lib.bias, object: lib.path, ifunc: s.isIfunc };
    }
    return undefined;
  }

  private load(): Node[] {
    if (this.order) return this.order;
    if (this.failure) throw this.failure;
    try {
      this.order = this.loadAll();
      return this.order;
    } catch (e) {
      this.failure = toHotstackError(e);
      throw this.failure;
    }
  }

  private loadAll(): Node[] {
    const base = this.base;
    const real = realpathIn('/', base.path) ?? base.path;
    const main: Node = {
      path: base.path, realPath: real, origin: dirname(real), bias: 0n, neededBy: '',
      dynamic: dynamicOf(base.elf, `base ${base.path}`), loader: null, elf: base.elf, symbols: undefined,
    };
    const order: Node[] = [main];
    const byName = new Map<string, Node>();
    const byReal = new Map<string, Node>([[real, main]]);
    if (main.dynamic.soname) byName.set(main.dynamic.soname, main);
    const search: SearchOptions = { libPaths: this.opts.libPaths ?? [], root: this.root, cache: () => this.ldCache() };
    for (let i = 0; i < order.length; i++) {
      const req = order[i]!;
      for (const name of req.dynamic.needed) {
        if (!name || byName.has(name)) continue;
        const r = searchLibrary(name, req, main, search);
        if (!r.found) {
          fail('ENOENT', `cannot find library ${name}, needed by ${req.path}; searched: ${r.searched.join(', ')}${r.skipped.length ? `; refused: ${r.skipped.join(', ')}` : ''}. Give the directory holding it with --lib-path DIR${this.opts.sysroot ? '' : ', or the target system\'s files with --sysroot DIR'}`);
        }
        let lib = byReal.get(r.found.realPath);
        if (!lib) {
          const elf = r.found.elf;
          lib = {
            path: r.found.path, realPath: r.found.realPath, origin: dirname(r.found.path), bias: this.place(elf, r.found.path),
            neededBy: req.path, dynamic: dynamicOf(elf, `library ${r.found.path}`), loader: req, elf, symbols: undefined,
          };
          byReal.set(lib.realPath, lib);
          order.push(lib);
        }
        byName.set(name, lib);
        if (lib.dynamic.soname) byName.set(lib.dynamic.soname, lib);
      }
    }
    return order;
  }

  private ldCache(): LdCache {
    return (this.cache ??= LdCache.load(underRoot(this.root, '/etc/ld.so.cache')));
  }

  /** A made-up load bias: the library's pages at the next free, aligned address. */
  private place(elf: ElfFile, path: string): bigint {
    const loads = elf.loads();
    if (!loads.length) return fail('EINVAL', `library ${path} has no loadable segments`);
    let align = loads.reduce((m, s) => (s.align > m ? s.align : m), PAGE);
    if (align > MAX_ALIGN || (align & (align - 1n)) !== 0n) align = MAX_ALIGN;
    const low = loads.reduce((m, s) => (s.vaddr < m ? s.vaddr : m), loads[0]!.vaddr) & ~(PAGE - 1n);
    const high = loads.reduce((m, s) => (s.vaddr + s.memsz > m ? s.vaddr + s.memsz : m), 0n);
    const at = alignUpBig(this.next, align);
    const span = alignUpBig(high - low, PAGE);
    if (at + span >= 1n << 64n) fail('ENOMEM', `no room in the address space to place library ${path} offline`);
    this.next = at + span + PAGE;
    return at - low;
  }
}

function dynamicOf(elf: ElfFile, what: string): DynamicInfo {
  try {
    return readDynamic(elf);
  } catch (e) {
    const err = toHotstackError(e);
    throw new HotstackError(err.errno, `${what}: ${err.message}`, err.offset);
  }
}

function dynamicSymbols(lib: Node): SymbolIndex {
  try {
    return SymbolIndex.dynamicOf(lib.elf);
  } catch (e) {
    const err = toHotstackError(e);
    throw new HotstackError(err.errno, `library ${lib.path}: ${err.message}`, err.offset);
  }
}

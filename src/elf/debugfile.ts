/**
 * Separate debug files, and the symbols of a base that may be stripped.
 *
 * A stripped object keeps only `.dynsym`: its exported functions can be
 * patched, its static functions cannot be found. Distributions ship the
 * missing `.symtab` (and DWARF) in a separate debug file made with
 * `objcopy --only-keep-debug`, found by build-id
 * (`/usr/lib/debug/.build-id/xx/rest.debug`) or by the base's
 * `.gnu_debuglink`. A debug file's symbol values are the same link-time
 * addresses as the base's, so its `.symtab` stands in for the missing one.
 *
 * A debug file is accepted only when its build-id note equals the base's,
 * and only its symbols (and DWARF) are used, never its bytes: its code
 * sections are SHT_NOBITS (absent), and the code that is patched is the
 * base's own.
 *
 * hotstack runs as root, and wrong symbol values would make it write jumps
 * in the wrong place, so the files found automatically must be as trusted
 * as the base: regular files, owned by root or by the user running
 * hotstack, writable by nobody else, in a directory others cannot replace
 * them in; symbolic links are followed only when owned by root or that
 * user (as the kernel's fs.protected_symlinks does in sticky directories).
 */
import { closeSync, constants as FS, fstatSync, lstatSync, openSync, readSync, realpathSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fail, HotstackError, toHotstackError } from '../errors.js';
import { bytesEqual, toHex } from './bytes.js';
import { SHT_DYNSYM, SHT_SYMTAB } from './constants.js';
import { ElfFile, type Section } from './file.js';
import { findBuildId } from './notes.js';
import { readSymbols, type ElfSymbol } from './symbols.js';
import { defaultVersionSymbols } from './symindex.js';

/** Environment variable overriding the debug directory (default /usr/lib/debug), e.g. for tests or a sysroot. */
export const DEBUG_ROOT_ENV = 'HOTSTACK_DEBUG_ROOT';
export const DEFAULT_DEBUG_ROOT = '/usr/lib/debug';
/** Largest debug file read (the whole file is read into memory). */
export const MAX_DEBUG_FILE_SIZE = 2 * 1024 * 1024 * 1024;

export interface DebugFileOptions {
  /** An explicit debug file (`--debug-file`): must match the base, EINVAL otherwise. */
  debugFile?: string;
  /** Debug directory; default `$HOTSTACK_DEBUG_ROOT`, else /usr/lib/debug. */
  root?: string;
  /**
   * Also follow `.gnu_debuglink` next to the base (default true). Off for
   * objects of a process, whose path may name a file replaced since.
   */
  debuglink?: boolean;
}

/** A debug file that belongs to a base. Use its symbols and DWARF only: its code sections hold no bytes. */
export interface DebugFile {
  elf: ElfFile;
  /** The file read (symbolic links resolved). */
  path: string;
}

/** Where a base's symbol table came from. */
export type SymbolSource = 'symtab' | 'debug' | 'dynsym' | 'none';

export interface BaseSymbols {
  symbols: ElfSymbol[];
  source: SymbolSource;
  /** The debug file the symbols came from (source 'debug'), or the explicit one checked. */
  debug: DebugFile | undefined;
}

/** The debug directory in effect. */
export function debugRoot(opts: DebugFileOptions = {}): string {
  return opts.root ?? (process.env[DEBUG_ROOT_ENV] || DEFAULT_DEBUG_ROOT);
}

/** The object's `.symtab` when it has one with contents (a debug file's may be all it has). */
function symtabOf(elf: ElfFile): Section | undefined {
  return elf.sections.find((s) => s.type === SHT_SYMTAB && s.size > 0n);
}

/** `/ROOT/.build-id/xx/rest.debug` for a build-id, as gdb and debuginfod lay them out. */
export function buildIdDebugPath(buildId: Uint8Array, root: string): string | undefined {
  if (buildId.length < 2) return undefined;
  const hex = toHex(buildId);
  return join(root, '.build-id', hex.slice(0, 2), `${hex.slice(2)}.debug`);
}

/** The file name in `.gnu_debuglink` (name, NUL, padding, CRC32); undefined when absent or unusable. */
export function debuglinkName(elf: ElfFile): string | undefined {
  const sec = elf.section('.gnu_debuglink');
  if (!sec || !elf.inFile(sec) || sec.size > 4096n) return undefined;
  const data = elf.data(sec);
  const nul = data.indexOf(0);
  if (nul <= 0) return undefined;
  const name = Buffer.from(data.subarray(0, nul)).toString('latin1');
  // A plain file name only: the link must not lead out of the directories searched.
  if (name.includes('/') || name === '.' || name === '..') return undefined;
  return name;
}

const euid = (): number => process.geteuid?.() ?? 0;
const trustedOwner = (uid: number): boolean => uid === 0 || uid === euid();

/** A directory others cannot add or replace files in (or sticky, where they cannot replace ours). */
function safeDirectory(dir: string): boolean {
  try {
    const st = statSync(dir);
    return st.isDirectory() && trustedOwner(st.uid) && ((st.mode & 0o022) === 0 || (st.mode & 0o1000) !== 0);
  } catch {
    return false;
  }
}

/**
 * Read a candidate debug file with the checks of the module comment.
 * `explicit`: the user named it, so problems are errors (naming the
 * option) and ownership is the user's choice; else any problem skips it.
 */
function readCandidate(path: string, explicit: boolean): { bytes: Uint8Array; real: string } | undefined {
  const what = `--debug-file ${path}`;
  const refuse = (errno: 'EACCES' | 'EINVAL' | 'ENOENT', msg: string): undefined => {
    if (explicit) fail(errno, `${what}: ${msg}`);
    return undefined;
  };
  let real = path;
  let fd: number | undefined;
  try {
    let lst;
    try {
      lst = lstatSync(path);
    } catch (e) {
      if (!explicit) return undefined;
      const err = toHotstackError(e);
      return err.errno === 'ENOENT' ? fail('ENOENT', `${what} does not exist`) : fail(err.errno, `${what}: ${err.message}`);
    }
    if (lst.isSymbolicLink()) {
      if (!trustedOwner(lst.uid)) {
        return refuse('EACCES', `is a symbolic link owned by uid ${lst.uid}, not by root or you; give the file it points to`);
      }
      if (!explicit && !safeDirectory(dirname(path))) return undefined;
      real = realpathSync(path);
    }
    // O_NOFOLLOW: what was checked is what is opened; O_NONBLOCK: a FIFO cannot hang the open.
    fd = openSync(real, FS.O_RDONLY | FS.O_NOFOLLOW | FS.O_NONBLOCK);
    const st = fstatSync(fd);
    if (!st.isFile()) return refuse('EINVAL', 'is not a regular file; give the debug file (objcopy --only-keep-debug output)');
    if (st.size > MAX_DEBUG_FILE_SIZE) return refuse('EINVAL', `is ${st.size} bytes; at most ${MAX_DEBUG_FILE_SIZE} (2 GiB) are read`);
    if (!explicit && (!trustedOwner(st.uid) || (st.mode & 0o022) !== 0 || !safeDirectory(dirname(real)))) return undefined;
    const bytes = new Uint8Array(st.size);
    let off = 0;
    while (off < bytes.length) {
      const n = readSync(fd, bytes, off, bytes.length - off, off);
      if (n === 0) break;
      off += n;
    }
    return { bytes: off === bytes.length ? bytes : bytes.subarray(0, off), real };
  } catch (e) {
    if (e instanceof HotstackError) throw e;
    const err = toHotstackError(e);
    return explicit ? fail(err.errno, `${what}: ${err.message}`) : undefined;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** Parse a candidate and compare build-ids; an explicit mismatch is EINVAL naming both. */
function accept(path: string, explicit: boolean, baseId: Uint8Array | null, basePath: string): DebugFile | undefined {
  const got = readCandidate(path, explicit);
  if (!got) return undefined;
  let elf: ElfFile;
  try {
    elf = ElfFile.parse(got.bytes, `debug file ${path}`);
  } catch (e) {
    if (!explicit) return undefined;
    const err = toHotstackError(e);
    return fail('EINVAL', `--debug-file ${path} is not a usable ELF file: ${err.message.replace(`debug file ${path}: `, '')}`);
  }
  const id = findBuildId(elf);
  if (!baseId) {
    return explicit ? fail('EINVAL', `--debug-file ${path}: the base ${basePath} has no build-id, so the debug file cannot be matched to it`) : undefined;
  }
  if (!id || !bytesEqual(id, baseId)) {
    if (!explicit) return undefined;
    return fail('EINVAL', `--debug-file ${path} has build-id ${id ? toHex(id) : '(none)'}, but the base ${basePath} has build-id ${toHex(baseId)}: it belongs to another build (use the debug file made from this very binary)`);
  }
  return { elf, path: got.real };
}

/**
 * The debug file of `elf` (read from `path`; undefined for an object of a
 * process): `opts.debugFile` when given (checked: a file of another build
 * is EINVAL naming both build-ids), else the first of
 * ROOT/.build-id/xx/rest.debug, then with `.gnu_debuglink` NAME:
 * DIR/NAME, DIR/.debug/NAME, ROOT/DIR/NAME (DIR: the base's directory)
 * whose build-id equals the base's. Automatic candidates that are missing,
 * untrusted, malformed or of another build are skipped silently.
 */
export function findDebugFile(elf: ElfFile, path: string | undefined, opts: DebugFileOptions = {}): DebugFile | undefined {
  const baseId = findBuildId(elf);
  const basePath = path ?? 'object';
  if (opts.debugFile !== undefined) return accept(opts.debugFile, true, baseId, basePath);
  if (!baseId) return undefined;
  const root = debugRoot(opts);
  const candidates: string[] = [];
  const byId = buildIdDebugPath(baseId, root);
  if (byId) candidates.push(byId);
  const link = opts.debuglink === false || path === undefined ? undefined : debuglinkName(elf);
  let self: string | undefined;
  if (link && path !== undefined) {
    try {
      self = realpathSync(path);
    } catch {
      self = resolve(path);
    }
    const dir = dirname(self);
    candidates.push(join(dir, link), join(dir, '.debug', link), join(root, dir, link));
  }
  for (const c of candidates) {
    if (self !== undefined && resolve(c) === self) continue;
    const d = accept(c, false, baseId, basePath);
    if (d) return d;
  }
  return undefined;
}

/**
 * The symbols to resolve names against in a base: its own `.symtab`;
 * when stripped, the `.symtab` of its debug file (findDebugFile); else
 * `.dynsym` (exported symbols only). An explicit `opts.debugFile` is
 * always checked against the base, even when the base keeps its own table.
 */
export function baseSymbols(elf: ElfFile, path: string | undefined, opts: DebugFileOptions = {}): BaseSymbols {
  const explicit = opts.debugFile !== undefined ? findDebugFile(elf, path, opts) : undefined;
  const own = symtabOf(elf);
  if (own) return { symbols: readSymbols(elf, own), source: 'symtab', debug: explicit };
  const debug = explicit ?? findDebugFile(elf, path, opts);
  const dtab = debug ? symtabOf(debug.elf) : undefined;
  if (debug && dtab) {
    try {
      return { symbols: readSymbols(debug.elf, dtab), source: 'debug', debug };
    } catch (e) {
      const err = toHotstackError(e);
      if (explicit) fail(err.errno, `--debug-file ${opts.debugFile}: its symbol table is unusable: ${err.message}`);
      /* a broken automatic candidate: fall back to the exported symbols */
    }
  }
  const dyn = elf.sections.find((s) => s.type === SHT_DYNSYM);
  return dyn ? { symbols: defaultVersionSymbols(elf, dyn), source: 'dynsym', debug } : { symbols: [], source: 'none', debug };
}

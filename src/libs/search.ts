/**
 * Finding a DT_NEEDED library the way ld.so does (ld.so(8), "search
 * order"), offline:
 *
 *   0. `--lib-path` directories (ours: the user knows best);
 *   a name containing '/' is a path and nothing is searched;
 *   1. DT_RPATH of the requesting object, then of the object that loaded
 *      it, and on up to the base, skipping any object with DT_RUNPATH
 *      (ld.so ignores DT_RPATH there), all only when the requesting object
 *      has no DT_RUNPATH; then DT_RPATH of the base;
 *   2. (LD_LIBRARY_PATH: not used, it belongs to a process environment);
 *   3. DT_RUNPATH of the requesting object;
 *   4. the ld.so.cache;
 *   5. the default directories;
 *   (4 and 5 skipped for an object linked with -z nodeflib).
 *
 * $ORIGIN, $LIB and $PLATFORM are expanded. Under `--sysroot` every
 * absolute directory, cache path and symlink is taken inside it.
 * Candidates that are not ELF64 x86-64 shared objects are skipped, as
 * ld.so skips them, and remembered for the error message.
 */
import { ElfFile, EM_X86_64, ET_DYN, readHeader, ByteView, DF_1_NODEFLIB, type DynamicInfo } from '../elf/index.js';
import { toHotstackError } from '../errors.js';
import { withRegularFile } from './file.js';
import type { LdCache } from './ldcache.js';
import { realpathIn, underRoot } from './rootfs.js';

/** Where ld.so looks last (glibc's system directories on x86-64, Debian and Fedora layouts). */
export const DEFAULT_DIRS = ['/lib/x86_64-linux-gnu', '/usr/lib/x86_64-linux-gnu', '/lib64', '/usr/lib64', '/lib', '/usr/lib'];
/** $LIB: glibc expands it per distribution; the multiarch directory is the common x86-64 answer. */
const LIB = 'lib/x86_64-linux-gnu';
const PLATFORM = 'x86_64';
/** No shared library is this large; a bigger "library" is refused before it is read. */
export const MAX_LIBRARY_SIZE = 1024 * 1024 * 1024;

/** An object that asks for libraries. */
export interface Requester {
  /** Host path, for messages. */
  readonly path: string;
  /** Host directory $ORIGIN stands for. */
  readonly origin: string;
  readonly dynamic: DynamicInfo;
  /** The object whose DT_NEEDED brought this one in (null for the base). */
  readonly loader: Requester | null;
}

export interface SearchOptions {
  /** `--lib-path` directories (host paths), searched first. */
  libPaths: string[];
  /** `/` of the target system: the sysroot, or '/'. */
  root: string;
  /** The ld.so.cache, read on first use. */
  cache(): LdCache;
}

/** A library found: where (host path as found, for $ORIGIN and messages), its real path, its ELF. */
export interface FoundLibrary {
  path: string;
  realPath: string;
  elf: ElfFile;
}

export interface SearchResult {
  found: FoundLibrary | undefined;
  /** What was looked at, in order, with where each came from: for the error message. */
  searched: string[];
  /** Files that exist but were refused, with why. */
  skipped: string[];
}

/** Expand $ORIGIN, $LIB, $PLATFORM (and the ${...} forms) in one path element. */
export function expandTokens(s: string, origin: string): string {
  return s.replace(/\$(?:\{(ORIGIN|LIB|PLATFORM)\}|(ORIGIN|LIB|PLATFORM)(?![A-Za-z0-9_]))/g, (_m, a: string | undefined, b: string | undefined) => {
    const t = a ?? b;
    return t === 'ORIGIN' ? origin : t === 'LIB' ? LIB : PLATFORM;
  });
}

/**
 * One colon-separated path list as host directories. $ORIGIN makes a path
 * that is already a host path; any other absolute path is the target
 * system's, so it goes under the root.
 */
export function pathList(list: string, origin: string, root: string): string[] {
  const out: string[] = [];
  for (const el of list.split(':')) {
    // An empty element means "the current directory" of a process we do not have.
    if (!el) continue;
    if (/^\$(\{ORIGIN\}|ORIGIN(?![A-Za-z0-9_]))/.test(el)) out.push(expandTokens(el, origin));
    else {
      const e = expandTokens(el, origin);
      out.push(e.startsWith('/') ? underRoot(root, e) : e);
    }
  }
  return out;
}

/** Why a candidate's header rules it out (null: an ELF64 x86-64 shared object). */
function incompatible(head: Uint8Array): string | null {
  let h;
  try {
    h = readHeader(new ByteView(head, 'ELF header'));
  } catch (e) {
    return toHotstackError(e).message;
  }
  if (h.machine !== EM_X86_64) return `ELF machine ${h.machine}, not x86-64`;
  if (h.type !== ET_DYN) return `ELF type ${h.type}, not a shared object`;
  return null;
}

/**
 * Try one candidate file. Returns the library, or null when there is no
 * such file; records a refused file in `skipped`.
 */
function tryCandidate(path: string, root: string, skipped: string[]): FoundLibrary | null {
  const realPath = realpathIn(root, path);
  if (!realPath) return null;
  try {
    return withRegularFile(realPath, MAX_LIBRARY_SIZE, (f) => {
      const why = incompatible(f.read(0, 64));
      if (why) {
        skipped.push(`${path} (${why})`);
        return null;
      }
      const elf = ElfFile.parse(f.read(0, f.size), `library ${path}`);
      return { path, realPath, elf };
    });
  } catch (e) {
    skipped.push(`${path} (${toHotstackError(e).message.replace(`library ${path}: `, '')})`);
    return null;
  }
}

/** The RPATH chain of step 1: the requester and its loaders, then the base. */
function rpathDirs(req: Requester, main: Requester, root: string): { dirs: string[]; why: string }[] {
  if (req.dynamic.runpath !== undefined) return [];
  const out: { dirs: string[]; why: string }[] = [];
  let sawMain = false;
  for (let l: Requester | null = req; l; l = l.loader) {
    if (l.dynamic.rpath === undefined || l.dynamic.runpath !== undefined) continue;
    out.push({ dirs: pathList(l.dynamic.rpath, l.origin, root), why: `DT_RPATH of ${l.path}` });
    if (l === main) sawMain = true;
  }
  if (!sawMain && main.dynamic.rpath !== undefined && main.dynamic.runpath === undefined) {
    out.push({ dirs: pathList(main.dynamic.rpath, main.origin, root), why: `DT_RPATH of ${main.path}` });
  }
  return out;
}

/** Find library `name` needed by `req` (the base is `main`). */
export function searchLibrary(name: string, req: Requester, main: Requester, opts: SearchOptions): SearchResult {
  const searched: string[] = [];
  const skipped: string[] = [];
  const done = (found: FoundLibrary | null): SearchResult => ({ found: found ?? undefined, searched, skipped });

  if (name.includes('/')) {
    const e = expandTokens(name, req.origin);
    const path = e.startsWith('/') && !name.startsWith('$') ? underRoot(opts.root, e) : e;
    searched.push(path);
    return done(tryCandidate(path, opts.root, skipped));
  }

  const groups: { dirs: string[]; why: string }[] = [];
  if (opts.libPaths.length) groups.push({ dirs: opts.libPaths, why: '--lib-path' });
  groups.push(...rpathDirs(req, main, opts.root));
  if (req.dynamic.runpath !== undefined) {
    groups.push({ dirs: pathList(req.dynamic.runpath, req.origin, opts.root), why: `DT_RUNPATH of ${req.path}` });
  }
  const tried = new Set<string>();
  const inDirs = (g: { dirs: string[]; why: string }): FoundLibrary | null => {
    for (const d of g.dirs) {
      const path = `${d.replace(/\/+$/, '')}/${name}`;
      if (tried.has(path)) continue;
      tried.add(path);
      searched.push(`${d} (${g.why})`);
      const f = tryCandidate(path, opts.root, skipped);
      if (f) return f;
    }
    return null;
  };
  for (const g of groups) {
    const f = inDirs(g);
    if (f) return done(f);
  }
  if ((req.dynamic.flags1 & DF_1_NODEFLIB) !== 0) {
    searched.push(`(not the ld.so.cache nor the default directories: ${req.path} is linked with -z nodeflib)`);
    return done(null);
  }
  const cache = opts.cache();
  const cachePath = underRoot(opts.root, '/etc/ld.so.cache');
  const hit = cache.get(name);
  searched.push(`${cachePath}${cache.note ? ` (${cache.note})` : hit ? ` (entry ${hit})` : ' (no entry)'}`);
  // Entries are absolute on any sane system; a relative one would be taken from our cwd.
  if (hit && hit.startsWith('/')) {
    const f = tryCandidate(underRoot(opts.root, hit), opts.root, skipped);
    if (f) return done(f);
  }
  return done(inDirs({ dirs: DEFAULT_DIRS.map((d) => underRoot(opts.root, d)), why: 'default' }));
}

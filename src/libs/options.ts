/**
 * `--lib-path` and `--sysroot`, checked up front: a mistyped directory is
 * an error naming the option, not a library silently not found later.
 */
import { realpathSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { fail } from '../errors.js';
import type { LibraryOptions } from './closure.js';

function directory(dir: string, option: string, cwd: string): string {
  const abs = resolve(cwd, dir);
  let ok = false;
  try {
    ok = statSync(abs).isDirectory();
  } catch {
    fail('ENOENT', `${option} ${dir}: no such directory`);
  }
  if (!ok) fail('ENOENT', `${option} ${dir} is not a directory`);
  return abs;
}

/**
 * Absolute, checked library options. The sysroot is fully resolved (it is
 * the `/` every other path is taken under); `--lib-path` directories are
 * host directories, kept as given (made absolute).
 */
export function checkLibraryOptions(opts: LibraryOptions, cwd = process.cwd()): LibraryOptions {
  const out: LibraryOptions = { libPaths: (opts.libPaths ?? []).map((d) => directory(d, '--lib-path', cwd)) };
  if (opts.sysroot !== undefined) out.sysroot = realpathSync(directory(opts.sysroot, '--sysroot', cwd));
  return out;
}

/**
 * Path resolution inside a root directory, like a chroot: `--sysroot DIR`
 * stands for `/` of the target system, so a symlink to `/usr/lib` found
 * inside it means DIR/usr/lib, never the host's /usr/lib, and `..` stops
 * at DIR. Without a sysroot the root is `/` and this is plain realpath.
 */
import { lstatSync, readlinkSync } from 'node:fs';
import { resolve } from 'node:path';

/** ld.so and the kernel give up after this many symlinks (ELOOP). */
const MAX_LINKS = 40;

/** The host path of `inside` (an absolute path on the target system), without resolving anything. */
export function underRoot(root: string, inside: string): string {
  if (root === '/') return inside;
  return inside.startsWith('/') ? root + inside : `${root}/${inside}`;
}

/** Whether a host path lies under `root` (lexically). */
export function isUnderRoot(root: string, hostPath: string): boolean {
  return root === '/' || hostPath === root || hostPath.startsWith(root + '/');
}

/**
 * The real host path of `hostPath`, every symlink resolved, or null when
 * a component does not exist, is not a directory, or the links loop. A
 * path under `root` is resolved as the target system would see it:
 * absolute symlinks are re-rooted and `..` never climbs above `root`.
 */
export function realpathIn(root: string, hostPath: string): string | null {
  if (root !== '/' && isUnderRoot(root, hostPath)) return resolveFrom(root, hostPath.slice(root.length));
  return resolveFrom('/', hostPath.startsWith('/') ? hostPath : `${process.cwd()}/${hostPath}`);
}

function resolveFrom(root: string, inside: string): string | null {
  const pending = inside.split('/').filter((p) => p !== '');
  const done: string[] = [];
  let links = 0;
  while (pending.length) {
    const part = pending.shift()!;
    if (part === '.') continue;
    if (part === '..') {
      done.pop();
      continue;
    }
    const here = underRoot(root, '/' + [...done, part].join('/'));
    let isLink: boolean;
    try {
      isLink = lstatSync(here).isSymbolicLink();
    } catch {
      return null;
    }
    if (!isLink) {
      done.push(part);
      continue;
    }
    if (++links > MAX_LINKS) return null;
    let target: string;
    try {
      target = readlinkSync(here);
    } catch {
      return null;
    }
    if (target.startsWith('/')) done.length = 0;
    pending.unshift(...target.split('/').filter((p) => p !== ''));
  }
  return root === '/' ? '/' + done.join('/') : resolve(root, ...done);
}

/**
 * Where the hotstack package is installed: found from this module's own
 * place, which is dist/src/ for the compiled modules and dist/bundle/ for
 * the bundles bin/hotstack loads (see package.json's bundle script), so
 * files of the package (package.json, include/) are never reached by a
 * fixed number of `..`.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let root: string | null | undefined;

/** The package's directory (the first above this module with hotstack's package.json), or null when there is none. */
export function packageRoot(): string | null {
  if (root !== undefined) return root;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const file = join(dir, 'package.json');
    if (existsSync(file)) {
      try {
        if ((JSON.parse(readFileSync(file, 'utf8')) as { name?: unknown }).name === 'hotstack') return (root = dir);
      } catch {
        /* not ours: look further up */
      }
    }
    const up = dirname(dir);
    if (up === dir) return (root = null);
    dir = up;
  }
}

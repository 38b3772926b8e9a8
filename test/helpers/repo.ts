/**
 * Where the repository is, found once by walking up from this module (so
 * it works from test/ and from dist/test/): its root, test/fixtures and the
 * CLI. Every test helper and test file takes its paths from here.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

function findRepoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'test', 'fixtures', 'livepatch.h'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find the repository (package.json and test/fixtures/livepatch.h) above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}

/** The repository's root directory. */
export const REPO_ROOT = findRepoRoot();
/** test/fixtures of the repository (holds livepatch.h, base/, payloads/). */
export const FIXTURES_DIR = join(REPO_ROOT, 'test', 'fixtures');
/** bin/hotstack of this checkout. */
export const HOTSTACK_BIN = join(REPO_ROOT, 'bin', 'hotstack');

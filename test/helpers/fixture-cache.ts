/**
 * The fixture cache: every base and payload of the recipes built once, in
 * a directory keyed by a hash of what they depend on, shared by the test
 * files (and processes) that run meanwhile.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FIXTURES_DIR } from './repo.js';
import { freshDir, run } from './binutils.js';
import { BASE_SOURCE, buildBase, buildPayload, PAYLOAD_DIR, PAYLOADS, VARIANTS } from './recipes.js';

/** The recipe modules: a changed recipe is a new fixture set. */
const RECIPE_FILES = ['./recipes.js', './binutils.js'].map((m) => fileURLToPath(new URL(m, import.meta.url)));

/** Hash of everything a fixture build depends on: sources, the recipes, tool versions. */
function fixturesHash(): string {
  const h = createHash('sha256');
  const files = [join(FIXTURES_DIR, 'livepatch.h'), BASE_SOURCE,
    ...readdirSync(PAYLOAD_DIR).filter((f) => f.endsWith('.c') || f.endsWith('.h')).sort().map((f) => join(PAYLOAD_DIR, f)),
    ...RECIPE_FILES];
  for (const f of files) h.update(basename(f)).update('\0').update(readFileSync(f)).update('\0');
  for (const tool of ['gcc', 'ld', 'objcopy']) h.update(run(tool, ['--version']).split('\n')[0]!);
  return h.digest('hex').slice(0, 16);
}

function buildInto(root: string): Record<string, string> {
  const files: Record<string, string> = {};
  for (const v of VARIANTS) {
    const dir = join(root, v.dir);
    const base = buildBase({ outDir: dir, cfProtection: v.cfProtection, pie: v.pie });
    files[v.prefix + 'base'] = base;
    const built: Record<string, string> = {};
    for (const p of PAYLOADS) {
      built[p.name] = buildPayload({ ...p.spec(base, built), name: p.name, base, cfProtection: v.cfProtection }, dir);
      files[v.prefix + p.name] = built[p.name]!;
    }
    for (const f of readdirSync(dir)) if (f.endsWith('.build')) rmSync(join(dir, f), { recursive: true });
  }
  return files;
}

const MANIFEST = 'manifest.json';
const cache = new Map<string, Record<string, string>>();

function readManifest(root: string): Record<string, string> | undefined {
  const path = join(root, MANIFEST);
  if (!existsSync(path)) return undefined;
  const rel = JSON.parse(readFileSync(path, 'utf8')) as Record<string, string>;
  const abs = Object.fromEntries(Object.entries(rel).map(([k, v]) => [k, join(root, v)]));
  return Object.values(abs).every((f) => existsSync(f)) ? abs : undefined;
}

/**
 * Builds every base and payload once and returns their paths by key
 * (`base`, `hello`, ..., `cet/base`, `cet/hello`, ..., `nopie/...`).
 *
 * Without `outDir` the set lands in `os.tmpdir()/hotstack-fixtures-<hash>`,
 * reused by later processes while the sources and tools are unchanged.  It
 * is built in a private directory and renamed into place, so test files
 * running in parallel never see a half-built set.  With `outDir` it is
 * built right there.  Either way it is built at most once per process.
 */
export function buildAll(outDir?: string): Record<string, string> {
  const root = resolve(outDir ?? join(tmpdir(), `hotstack-fixtures-${fixturesHash()}`));
  const hit = cache.get(root);
  if (hit) return hit;
  let files: Record<string, string>;
  if (outDir !== undefined) {
    files = buildInto(root);
    writeFileSync(join(root, MANIFEST), JSON.stringify(Object.fromEntries(Object.entries(files).map(([k, v]) => [k, relative(root, v)])), null, 1));
  } else {
    files = readManifest(root) ?? (() => {
      const scratch = freshDir(root + '.tmp-');
      try {
        const built = buildInto(scratch);
        writeFileSync(join(scratch, MANIFEST), JSON.stringify(Object.fromEntries(Object.entries(built).map(([k, v]) => [k, relative(scratch, v)])), null, 1));
        if (!readManifest(root)) {
          rmSync(root, { recursive: true, force: true }); // a stale, incomplete set
          try {
            renameSync(scratch, root);
          } catch (e) {
            const code = (e as NodeJS.ErrnoException).code;
            if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e; // else: another process won the race
          }
        }
      } finally {
        rmSync(scratch, { recursive: true, force: true });
      }
      const m = readManifest(root);
      if (!m) throw new Error(`fixture set in ${root} is incomplete after building it`);
      return m;
    })();
  }
  cache.set(root, files);
  return files;
}


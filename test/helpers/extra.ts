/**
 * Extra fixtures some tests need on top of buildAll()'s set: payloads from
 * test/fixtures/extra (cumulative payloads with chosen expectations, a
 * second exporter of a symbol) and a base linked without a build-id.
 * Built with the same recipe (toolchain.ts buildPayload), cached in
 * os.tmpdir() by a hash of everything that goes into them.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { buildPayload, FIXTURES_DIR, run, type PayloadSpec, type Variant } from './toolchain.js';

export const EXTRA_DIR = join(FIXTURES_DIR, 'extra');

function hashOf(parts: (string | Buffer)[]): string {
  const h = createHash('sha256');
  for (const p of parts) h.update(p).update('\0');
  return h.digest('hex').slice(0, 16);
}

/** Builds (or reuses) `<name>.livepatch` from `spec`; sources are taken from test/fixtures/extra. */
export function buildExtraPayload(spec: PayloadSpec): string {
  const sources = spec.sources.map((s) => (s.startsWith('/') ? s : join(EXTRA_DIR, s)));
  const key = hashOf([
    JSON.stringify({ ...spec, sources: sources.map((s) => basename(s)) }),
    ...sources.map((s) => readFileSync(s)),
    readFileSync(join(FIXTURES_DIR, 'livepatch.h')),
    readFileSync(spec.base),
    spec.depends ? readFileSync(spec.depends) : '',
  ]);
  const dir = join(tmpdir(), `hotstack-extra-${key}`);
  const out = join(dir, `${spec.name}.livepatch`);
  if (existsSync(out)) return out;
  const scratch = `${dir}.tmp-${randomBytes(6).toString('hex')}`;
  mkdirSync(scratch, { recursive: true });
  try {
    const built = buildPayload({ ...spec, sources }, scratch);
    mkdirSync(dir, { recursive: true });
    renameSync(built, out);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  return out;
}

/**
 * The base program of a variant, linked with `--build-id=none`: an image
 * against which no payload can be checked (ENODATA).
 */
export function buildBaseWithoutBuildId(v: Variant): string {
  const src = join(FIXTURES_DIR, 'base', 'base.c');
  const flags = [
    '-O2', '-Wall', '-Wextra', v.cfProtection ? '-fcf-protection=full' : '-fcf-protection=none',
    ...(v.pie ? ['-fPIE', '-pie'] : ['-fno-pie', '-no-pie']), '-Wl,--build-id=none',
  ];
  const dir = join(tmpdir(), `hotstack-noid-${hashOf([readFileSync(src), flags.join(' ')])}`);
  const out = join(dir, 'base-noid');
  if (existsSync(out)) return out;
  mkdirSync(dir, { recursive: true });
  const tmp = `${out}.tmp-${randomBytes(6).toString('hex')}`;
  run('gcc', [...flags, '-o', tmp, 'base.c'], { cwd: join(FIXTURES_DIR, 'base') });
  renameSync(tmp, out);
  return out;
}

/** Hex list for a C initializer: `0x1,0x2,...`. */
export function cBytes(b: Uint8Array): string {
  return [...b].map((x) => '0x' + x.toString(16)).join(',');
}

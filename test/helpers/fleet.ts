/**
 * The fleet fixture (test/fixtures/fleet) for test/live-fleet.test.ts and
 * the fleet bench: the program and its payload, built with the stock
 * toolchain (the toolchain helpers' recipe). Imports nothing of hotstack.
 */
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { FIXTURES_DIR, buildPayload, codeSizes, run } from './toolchain.js';

export const FLEET_DIR = join(FIXTURES_DIR, 'fleet');

export interface FleetFixtures {
  /** The program (PIE, build-id unique to `tag`). */
  exe: string;
  /** fleet_fix.livepatch: fleet_answer() -> 2. */
  fix: string;
}

/**
 * Builds the fleet program and its payload into `outDir`. `tag` goes into
 * the binary, so builds with different tags have different build-ids and a
 * `--all` of one never selects processes of another.
 */
export function buildFleet(outDir: string, tag: string): FleetFixtures {
  const dir = resolve(outDir);
  mkdirSync(dir, { recursive: true });
  const exe = join(dir, 'fleet');
  // cwd: the STT_FILE symbol reads "fleet.c".
  run('gcc', [
    '-O2', '-Wall', '-Wextra', '-pthread', '-fcf-protection=none', '-fPIE', '-pie',
    `-DFLEET_TAG="${tag.replace(/[^A-Za-z0-9_.-]/g, '_')}"`, '-Wl,--build-id=sha1', '-o', exe, 'fleet.c',
  ], { cwd: FLEET_DIR });
  const fix = buildPayload({
    name: 'fleet_fix', sources: [join(FLEET_DIR, 'fleet_fix.c')], base: exe,
    sizes: codeSizes('fleet_fix_answer', 'fleet_answer'),
  }, dir);
  run('rm', ['-rf', join(dir, 'fleet_fix.build')]);
  return { exe, fix };
}

/**
 * The structural fuzzer (test/fuzz/run.ts, `npm run fuzz`) as part of the
 * suite: a few thousand field-wise mutations of the Xen-style fixtures, a
 * `hotstack build` payload and signed copies, with a fixed seed, each
 * ending in success or a HotstackError within its time limit; and the
 * runner's own guards, so a hang or a heap exhaustion is reported as a
 * failing case instead of stalling or killing the run.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { prepareFixtures, runFuzz, type FuzzFixtures, type FuzzSummary } from './fuzz/run.js';

const SEED = 20250611;
let fx: FuzzFixtures;
before(() => {
  fx = prepareFixtures();
});
after(() => fx?.cleanup());

test(`5000 cases, seed ${SEED} (npm run fuzz, under its memory limit): all end in success or a HotstackError, in well under a minute`, () => {
  const run = fileURLToPath(new URL('./fuzz/run.js', import.meta.url));
  const t = Date.now();
  const r = spawnSync(process.execPath, [run, '--cases', '5000', '--seed', String(SEED), '--json'], { encoding: 'utf8', timeout: 120_000, maxBuffer: 16 << 20 });
  assert.equal(r.error, undefined, `${r.error}`);
  const s = JSON.parse(r.stdout) as FuzzSummary;
  const report = s.failures.map((f) => `case ${f.i}: ${f.desc}\n  ${f.message}`).join('\n');
  assert.deepEqual(s.failures, [], `seed ${SEED}:\n${report}`);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(s.uploaded + s.refused, 5000);
  assert.ok(s.uploaded > 300 && s.refused > 300 && s.applied > 300, `both outcomes exercised: ${JSON.stringify(s)}`);
  assert.ok(Object.keys(s.errnos).length >= 4, `several rules refused inputs: ${JSON.stringify(s.errnos)}`);
  assert.ok(Date.now() - t < 60_000, `took ${Date.now() - t} ms`);
});

test('the runner reports a case that hangs or exhausts the heap, and goes on with the next ones', async () => {
  const s = await runFuzz({
    base: fx.base, payloads: fx.payloads, publicKeyPem: fx.publicKeyPem, seed: 1, cases: 40,
    perCaseMs: 1500, heapMb: 96, sabotage: { hang: 5, exhaust: 20 },
  });
  assert.deepEqual(s.failures.map((f) => f.i), [5, 20], JSON.stringify(s.failures));
  assert.match(s.failures[0]!.message, /still running after 1500 ms/);
  assert.match(s.failures[1]!.message, /worker died/);
  assert.equal(s.uploaded + s.refused, 38, 'every other case ran');
});

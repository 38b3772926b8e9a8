/**
 * The structural fuzzer: `npm run fuzz -- --cases N [--seed S] [--case I]`.
 *
 * Mutates real payloads field by field (mutate.ts) -- the Xen-style test
 * fixtures, a payload made by `hotstack build`, and signed copies of both --
 * and runs each input through inspect, signature verification and an
 * offline upload/apply/revert/unload in a worker thread (worker.ts). Every
 * input must end in success or a HotstackError, within a per-case time
 * limit (the worker is terminated and replaced when a case overruns) and
 * within memory (the worker's heap is limited; the whole process runs
 * under `ulimit -v`, so a huge ArrayBuffer fails instead of swapping).
 *
 * Exit status 0 when every case passed; the report names each failing
 * case's seed, index, payload and mutations, and `--case I` replays one.
 */
import { spawnSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { buildPayload as hotstackBuild } from '../../src/builder/build.js';
import { readPayloadFile } from '../../src/payload/file.js';
import { keyIdOf, type PrivateKeyInfo } from '../../src/trust/keys.js';
import { signEmbedded } from '../../src/trust/signature.js';
import { buildAll, FIXTURES_DIR } from '../helpers/toolchain.js';
import type { WorkerData, WorkerMessage } from './worker.js';

export interface FuzzOptions {
  base: string;
  payloads: string[];
  publicKeyPem: string;
  seed: number;
  cases: number;
  /** First case index (default 0): `--case I` runs [I, I+1). */
  from?: number;
  /** A case running longer than this fails (default 10 s). */
  perCaseMs?: number;
  /** Heap limit of the worker (default 512 MiB). */
  heapMb?: number;
  onProgress?: (done: number) => void;
  /** Only for testing the runner itself (worker.ts WorkerData.sabotage). */
  sabotage?: WorkerData['sabotage'];
}

export interface FuzzFailure {
  i: number;
  desc: string;
  message: string;
}

export interface FuzzSummary {
  seed: number;
  cases: number;
  uploaded: number;
  refused: number;
  applied: number;
  /** How many times each errno refused an upload. */
  errnos: Record<string, number>;
  failures: FuzzFailure[];
  slowest: { i: number; ms: number; desc: string };
  ms: number;
}

/** Run cases [from, from+cases) of `seed`. */
export async function runFuzz(o: FuzzOptions): Promise<FuzzSummary> {
  const t0 = Date.now();
  const end = (o.from ?? 0) + o.cases;
  const perCaseMs = o.perCaseMs ?? 10_000;
  const s: FuzzSummary = { seed: o.seed, cases: o.cases, uploaded: 0, refused: 0, applied: 0, errnos: {}, failures: [], slowest: { i: -1, ms: 0, desc: '' }, ms: 0 };
  let next = o.from ?? 0;
  let done = 0;
  while (next < end) {
    next = await new Promise<number>((resolve) => {
      const data: WorkerData = { base: o.base, payloads: o.payloads, publicKeyPem: o.publicKeyPem, seed: o.seed, from: next, to: end, sabotage: o.sabotage };
      const w = new Worker(new URL('./worker.js', import.meta.url), {
        workerData: data, resourceLimits: { maxOldGenerationSizeMb: o.heapMb ?? 512, maxYoungGenerationSizeMb: 64 }, stdout: true, stderr: true,
      });
      let current: { i: number; desc: string; at: number } | undefined;
      let settled = false;
      const finish = (n: number): void => {
        if (settled) return;
        settled = true;
        clearInterval(watchdog);
        void w.terminate();
        resolve(n);
      };
      const watchdog = setInterval(() => {
        if (current && Date.now() - current.at > perCaseMs) {
          s.failures.push({ i: current.i, desc: current.desc, message: `still running after ${perCaseMs} ms (the worker was terminated)` });
          finish(current.i + 1);
        }
      }, 50);
      w.on('message', (m: WorkerMessage) => {
        if (m.type === 'start') {
          current = { i: m.i, desc: m.desc, at: Date.now() };
          return;
        }
        const desc = current?.desc ?? '';
        current = undefined;
        done++;
        if (o.onProgress && done % 500 === 0) o.onProgress(done);
        if (m.type === 'fail') {
          s.failures.push({ i: m.i, desc: m.desc, message: m.message });
          return;
        }
        if (m.outcome === 'uploaded') s.uploaded++;
        else {
          s.refused++;
          if (m.errno) s.errnos[m.errno] = (s.errnos[m.errno] ?? 0) + 1;
        }
        if (m.applied) s.applied++;
        if (m.ms >= s.slowest.ms) s.slowest = { i: m.i, ms: m.ms, desc };
      });
      w.on('error', (e) => {
        // A worker that ran out of heap, or threw outside a case.
        const at = current ?? { i: next, desc: '(worker start)', at: 0 };
        s.failures.push({ i: at.i, desc: at.desc, message: `the worker died: ${(e as Error).message}` });
        finish(at.i + 1);
      });
      w.on('exit', () => finish(current ? current.i + 1 : end));
    });
  }
  s.ms = Date.now() - t0;
  return s;
}

export interface FuzzFixtures {
  base: string;
  payloads: string[];
  publicKeyPem: string;
  /** Removes what was built here (the shared test fixtures stay). */
  cleanup(): void;
}

/**
 * The inputs: Xen-style fixtures (test/helpers/toolchain.ts), a payload
 * built by `hotstack build` (test/fixtures/build/p1.c), and signed copies
 * of one of each (so signature notes get mutated too).
 */
export function prepareFixtures(): FuzzFixtures {
  const files = buildAll();
  const work = mkdtempSync(join(tmpdir(), 'hotstack-fuzz-'));
  try {
    const built = join(work, 'p1.livepatch');
    hotstackBuild({ base: files.base!, out: built, sources: [join(FIXTURES_DIR, 'build', 'p1.c')], cflags: ['-DP1_ANSWER="fuzz"'], expect: true, cwd: work });
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    const keyIdBytes = keyIdOf(publicKey);
    const key: PrivateKeyInfo = { name: 'fuzz', path: '', key: privateKey, publicKey, keyIdBytes, keyId: Buffer.from(keyIdBytes).toString('hex') };
    const signed = (src: string, name: string): string => {
      const out = join(work, name);
      writeFileSync(out, signEmbedded(readPayloadFile(src), key));
      return out;
    };
    const payloads = [
      ...['hello', 'nop', 'prepost', 'nofunc', 'twofunc', 'replace', 'expect', 'export'].map((k) => files[k]!),
      built, signed(files.hello!, 'hello.signed.livepatch'), signed(built, 'p1.signed.livepatch'),
    ];
    return {
      base: files.base!, payloads, publicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }) as string,
      cleanup: () => rmSync(work, { recursive: true, force: true }),
    };
  } catch (e) {
    rmSync(work, { recursive: true, force: true });
    throw e;
  }
}

/** Virtual memory limit of the fuzzing process (KiB), applied by re-running itself under `ulimit -v`. */
const MEM_LIMIT_KB = 4_000_000;

function usage(): never {
  process.stderr.write('usage: npm run fuzz -- [--cases N] [--seed S] [--case I] [--timeout-ms MS] [--json]\n');
  process.exit(2);
}

async function cli(argv: string[]): Promise<number> {
  const opt = new Map<string, string>();
  for (let k = 0; k < argv.length; k++) {
    const a = argv[k]!;
    if (a === '--json') opt.set('json', '1');
    else if (['--cases', '--seed', '--case', '--timeout-ms'].includes(a) && /^\d+$/.test(argv[k + 1] ?? '')) opt.set(a.slice(2), argv[++k]!);
    else usage();
  }
  const seed = opt.has('seed') ? Number(opt.get('seed')) : Date.now() % 2 ** 31;
  const one = opt.has('case') ? Number(opt.get('case')) : undefined;
  const cases = one !== undefined ? 1 : Number(opt.get('cases') ?? 1000);
  const fx = prepareFixtures();
  try {
    const r = await runFuzz({
      base: fx.base, payloads: fx.payloads, publicKeyPem: fx.publicKeyPem, seed, cases, from: one,
      perCaseMs: opt.has('timeout-ms') ? Number(opt.get('timeout-ms')) : undefined,
      onProgress: opt.has('json') || !process.stderr.isTTY ? undefined : (d) => process.stderr.write(`\r${d}/${cases} cases`),
    });
    if (opt.has('json')) process.stdout.write(JSON.stringify(r) + '\n');
    else {
      if (process.stderr.isTTY && cases >= 500) process.stderr.write('\n');
      process.stdout.write(`fuzz: seed ${r.seed}, ${r.cases} cases in ${(r.ms / 1000).toFixed(1)} s: ${r.uploaded} uploaded (${r.applied} applied), ${r.refused} refused, slowest case ${r.slowest.i} (${r.slowest.ms} ms)\n`);
      process.stdout.write(`refusals: ${Object.entries(r.errnos).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(', ')}\n`);
      if (one !== undefined) process.stdout.write(`case ${one}: ${r.slowest.desc || r.failures[0]?.desc}\n`);
      for (const f of r.failures) process.stdout.write(`FAILED case ${f.i} (seed ${r.seed}; replay: npm run fuzz -- --seed ${r.seed} --case ${f.i}): ${f.desc}\n  ${f.message}\n`);
      if (!r.failures.length) process.stdout.write('every case ended in success or a HotstackError\n');
    }
    return r.failures.length ? 1 : 0;
  } finally {
    fx.cleanup();
  }
}

const self = fileURLToPath(import.meta.url);
if (process.argv[1] && pathToFileURL(process.argv[1]).href === import.meta.url) {
  if (process.env.HOTSTACK_FUZZ_LIMITED !== '1') {
    // Re-run under a virtual memory limit: ArrayBuffers live outside the worker's heap limit.
    // --disable-wasm-trap-handler: iced-x86's WebAssembly guard regions do not fit under the limit (src/analysis/iced.ts).
    const r = spawnSync('/bin/sh', ['-c', `ulimit -v ${MEM_LIMIT_KB} && exec "$0" "$@"`, process.execPath, '--disable-wasm-trap-handler', self, ...process.argv.slice(2)], {
      stdio: 'inherit', env: { ...process.env, HOTSTACK_FUZZ_LIMITED: '1' },
    });
    process.exit(r.status ?? 1);
  }
  process.exit(await cli(process.argv.slice(2)));
}

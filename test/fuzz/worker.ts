/**
 * The fuzzer's worker thread (run.ts starts it, with a heap limit, and
 * replaces it when a case overruns its time or memory). For each case it
 * runs, in process, what a user's file goes through:
 *  - inspectPayload: returns or throws a HotstackError;
 *  - verifySignature against a keyring holding the fixtures' signing key:
 *    never throws, and never calls a changed signed payload valid;
 *  - Engine.upload on an offline image: succeeds or throws a HotstackError,
 *    and a failed upload leaves nothing loaded; an uploaded payload is
 *    applied (--nodeps), reverted and unloaded, each step succeeding or
 *    throwing a HotstackError.
 * It posts {start, i} before and {done, i, ...} after each case.
 */
import { createPublicKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { Engine } from '../../src/core/engine.js';
import { HotstackError } from '../../src/errors.js';
import { inspectPayload } from '../../src/payload/inspect.js';
import { ImageTarget } from '../../src/targets/image/index.js';
import { keyIdOf, type Keyring } from '../../src/trust/keys.js';
import { verifySignature } from '../../src/trust/signature.js';
import { PayloadElf } from '../helpers/elfedit.js';
import { applyMutations, caseMutations, describeMutations, fieldsOf } from './mutate.js';

export interface WorkerData {
  base: string;
  payloads: string[];
  /** PEM of the public key the signed fixtures were signed with. */
  publicKeyPem: string;
  seed: number;
  from: number;
  to: number;
  /** Self-test of the runner (fuzz.test.ts): spin forever at case `hang`, fill the heap at case `exhaust`. */
  sabotage?: { hang?: number; exhaust?: number };
}

export type WorkerMessage =
  | { type: 'start'; i: number; desc: string }
  | { type: 'done'; i: number; outcome: 'uploaded' | 'refused'; errno?: string; applied: boolean; ms: number }
  | { type: 'fail'; i: number; desc: string; message: string };

function notTyped(what: string, e: unknown): Error {
  return new Error(`${what} threw ${(e as Error)?.constructor?.name ?? typeof e}, not a HotstackError: ${(e as Error)?.message ?? String(e)}`);
}

function main(job: WorkerData): void {
  const post = (m: WorkerMessage): void => parentPort!.postMessage(m);
  const payloads = job.payloads.map((f) => Buffer.from(readFileSync(f)));
  const fields = payloads.map((b) => fieldsOf(new PayloadElf(b)));
  const pub = createPublicKey(job.publicKeyPem);
  const keyId = Buffer.from(keyIdOf(pub)).toString('hex');
  const ring: Keyring = { dir: '(fuzz)', exists: true, keys: [], find: (id) => (id === keyId ? { name: 'fuzz', path: '', key: pub, keyId } : undefined) };
  let engine = new Engine(ImageTarget.open(job.base));
  for (let i = job.from; i < job.to; i++) {
    const which = i % payloads.length;
    const orig = payloads[which]!;
    const muts = caseMutations(job.seed, i, orig, fields[which]!);
    const desc = `${job.payloads[which]} with ${describeMutations(muts)}`;
    post({ type: 'start', i, desc });
    const t = Date.now();
    if (job.sabotage?.hang === i) for (;;);
    if (job.sabotage?.exhaust === i) {
      const hog: number[][] = [];
      for (;;) hog.push(new Array(1 << 16).fill(i));
    }
    try {
      const bytes = applyMutations(orig, muts);
      try {
        inspectPayload(bytes);
      } catch (e) {
        if (!(e instanceof HotstackError)) throw notTyped('inspectPayload', e);
      }
      let sig;
      try {
        sig = verifySignature(bytes, undefined, () => ring);
      } catch (e) {
        throw notTyped('verifySignature (it must never throw)', e);
      }
      if (sig?.valid && !bytes.equals(orig)) throw new Error('a changed signed payload still verifies');
      let outcome: 'uploaded' | 'refused' = 'uploaded';
      let errno: string | undefined;
      let applied = false;
      try {
        engine.upload('fuzz', bytes);
      } catch (e) {
        if (!(e instanceof HotstackError)) throw notTyped('Engine.upload', e);
        outcome = 'refused';
        errno = e.errno;
        if (engine.list().length) throw new Error(`a failed upload (${e.errno}: ${e.message}) left ${engine.list().length} payload(s) loaded`);
      }
      if (outcome === 'uploaded') {
        try {
          engine.action('fuzz', 'APPLY', { nodeps: true });
          applied = true;
        } catch (e) {
          if (!(e instanceof HotstackError)) throw notTyped('APPLY', e);
        }
        try {
          if (applied) engine.action('fuzz', 'REVERT');
          engine.action('fuzz', 'UNLOAD');
        } catch (e) {
          if (!(e instanceof HotstackError)) throw notTyped('REVERT/UNLOAD', e);
          throw new Error(`revert/unload of an uploaded payload failed: ${e.errno}: ${e.message}`);
        }
      }
      post({ type: 'done', i, outcome, errno, applied, ms: Date.now() - t });
    } catch (e) {
      post({ type: 'fail', i, desc, message: (e as Error)?.message ?? String(e) });
      engine = new Engine(ImageTarget.open(job.base)); // whatever it left behind must not spoil the next cases
    }
  }
}

if (parentPort && workerData) main(workerData as WorkerData);

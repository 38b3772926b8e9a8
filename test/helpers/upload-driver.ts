/**
 * Sandboxed upload of one payload file to a fresh offline image (see
 * sandbox.ts). Job (HOTSTACK_UPLOAD_DRIVER): { base, payload, out }.
 * Result: { ok, errorClass?, errno?, message?, ms }.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { Engine } from '../../src/core/engine.js';
import { HotstackError } from '../../src/errors.js';
import { ImageTarget } from '../../src/targets/image/index.js';

export interface UploadResult { ok: boolean; errorClass?: string; errno?: string; message?: string; ms: number }

const jobFile = process.env.HOTSTACK_UPLOAD_DRIVER;
if (jobFile) {
  const job = JSON.parse(readFileSync(jobFile, 'utf8')) as { base: string; payload: string; out: string };
  const e = new Engine(ImageTarget.open(job.base));
  const t = Date.now();
  let r: UploadResult;
  try {
    e.upload('p', readFileSync(job.payload));
    r = { ok: true, ms: Date.now() - t };
  } catch (err) {
    r = {
      ok: false, errorClass: (err as Error)?.constructor?.name, errno: err instanceof HotstackError ? err.errno : undefined,
      message: (err as Error)?.message, ms: Date.now() - t,
    };
  }
  writeFileSync(job.out, JSON.stringify(r));
}

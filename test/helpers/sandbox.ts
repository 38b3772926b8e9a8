/**
 * Runs a helper script of the tests in a child Node process with a memory
 * limit (ulimit -v) and a timeout, so a payload that makes the engine
 * allocate without bound fails the test instead of exhausting the machine.
 * The script reads its job from a JSON file named by an environment
 * variable and writes its result as JSON to `job.out`.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface SandboxResult<R> {
  /** The script's result, when it got to write one. */
  result: R | undefined;
  status: number | null;
  signal: string | null;
  timedOut: boolean;
  stderr: string;
  stdout: string;
  /** Contents of `job.progress` if the script wrote one (what it was doing when it died). */
  progress: string | undefined;
}

/** Virtual memory limit for sandboxed scripts (KiB): generous for Node, far below the machine. */
export const SANDBOX_MEM_KB = 2_000_000;

export function sandbox<J extends object, R>(script: string, envVar: string, job: J, opts: { timeoutMs?: number; memKb?: number } = {}): SandboxResult<R> {
  const dir = mkdtempSync(join(tmpdir(), 'hotstack-sandbox-'));
  try {
    const out = join(dir, 'out.json');
    const progress = join(dir, 'progress.txt');
    const jobFile = join(dir, 'job.json');
    writeFileSync(jobFile, JSON.stringify({ ...job, out, progress }));
    const path = fileURLToPath(new URL(`./${script}`, import.meta.url));
    // iced-x86's WebAssembly reserves guard regions that a virtual memory limit forbids (src/analysis/iced.ts).
    const r = spawnSync('/bin/sh', ['-c', `ulimit -v ${opts.memKb ?? SANDBOX_MEM_KB} && exec "$0" "$@"`, process.execPath, '--disable-wasm-trap-handler', path], {
      env: { ...process.env, [envVar]: jobFile }, encoding: 'utf8', timeout: opts.timeoutMs ?? 120_000, maxBuffer: 64 << 20, killSignal: 'SIGKILL',
    });
    const timedOut = (r.error as NodeJS.ErrnoException | undefined)?.code === 'ETIMEDOUT';
    if (r.error && !timedOut) throw r.error;
    return {
      result: existsSync(out) ? JSON.parse(readFileSync(out, 'utf8')) as R : undefined,
      status: r.status, signal: r.signal, timedOut, stderr: r.stderr ?? '', stdout: r.stdout ?? '',
      progress: existsSync(progress) ? readFileSync(progress, 'utf8') : undefined,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** One line saying how a sandboxed run ended, for assertion messages. */
export function describeEnd(r: SandboxResult<unknown>): string {
  const how = r.timedOut ? 'timed out' : r.signal ? `died of ${r.signal}` : `exited ${r.status}`;
  const err = r.stderr.trim().split('\n').slice(-3).join(' | ');
  return `${how}${r.progress ? `; last step: ${r.progress}` : ''}${err ? `; stderr: ${err}` : ''}`;
}

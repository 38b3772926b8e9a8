/**
 * Shared helpers for the engine tests on an offline image: an engine
 * session over one base with byte-level views of the patch sites, errno
 * assertions, and a runner for the real `bin/hotstack` command line.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HOTSTACK_BIN, REPO_ROOT } from './repo.js';
import { Engine, type ActionOptions, type ActionOutcome } from '../../src/core/engine.js';
import type { PayloadRecord } from '../../src/core/state.js';
import { ERRNO, HotstackError, type ErrnoName } from '../../src/errors.js';
import { ImageTarget } from '../../src/targets/image/index.js';
import { textReporter, type Reporter } from '../../src/cli/report.js';
import { functionBytes, symbolInfo } from './toolchain.js';

export const ROOT = REPO_ROOT;
export const HOTSTACK = HOTSTACK_BIN;

export const ENDBR64 = Buffer.from([0xf3, 0x0f, 0x1e, 0xfa]);

/**
 * Asserts that `fn` throws a HotstackError with `errno` (and the matching
 * negative code), optionally with a message matching `re`. Returns it.
 */
export function throwsErrno(fn: () => unknown, errno: ErrnoName, re?: RegExp, what = ''): HotstackError {
  let err: unknown;
  let threw = false;
  try {
    fn();
  } catch (e) {
    threw = true;
    err = e;
  }
  const ctx = what ? `${what}: ` : '';
  assert.ok(threw, `${ctx}expected ${errno}, but it succeeded`);
  assert.ok(err instanceof HotstackError, `${ctx}expected a HotstackError ${errno}, got ${(err as Error)?.constructor?.name}: ${(err as Error)?.stack ?? String(err)}`);
  assert.equal(err.errno, errno, `${ctx}errno (message: ${err.message})`);
  assert.equal(err.code, -ERRNO[errno], `${ctx}code`);
  if (re) assert.match(err.message, re, `${ctx}message`);
  return err;
}

/** `e9 rel32` from `site` to `to`, asserting the displacement fits. */
export function jmp(site: bigint, to: bigint): Buffer {
  const rel = to - (site + 5n);
  assert.ok(rel >= -0x80000000n && rel <= 0x7fffffffn, `jump from 0x${site.toString(16)} to 0x${to.toString(16)} does not fit rel32`);
  const b = Buffer.alloc(5);
  b[0] = 0xe9;
  b.writeInt32LE(Number(rel), 1);
  return b;
}

export const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

/** An engine on a fresh offline image of `base`, with views of its patch sites. */
export class Session {
  readonly target: ImageTarget;
  readonly engine: Engine;
  /** 4 when the base's functions start with endbr64 (CET), else 0. */
  readonly off: number;

  constructor(readonly base: string, private readonly file: (key: string) => string) {
    this.target = ImageTarget.open(base);
    this.engine = new Engine(this.target);
    this.off = functionBytes(base, 'extra_version', 4).equals(ENDBR64) ? 4 : 0;
  }

  path(key: string): string {
    return this.file(key);
  }

  upload(key: string, name = key): PayloadRecord {
    return this.engine.upload(name, readFileSync(this.file(key)));
  }

  apply(name: string, opts: ActionOptions = {}): ActionOutcome {
    return this.engine.action(name, 'APPLY', opts);
  }

  revert(name: string): ActionOutcome {
    return this.engine.action(name, 'REVERT');
  }

  replace(name: string): ActionOutcome {
    return this.engine.action(name, 'REPLACE');
  }

  unload(name: string): ActionOutcome {
    return this.engine.action(name, 'UNLOAD');
  }

  /** Like xen-livepatch `load`: upload, apply, unload again if the apply fails. */
  load(key: string, opts: ActionOptions = {}): ActionOutcome {
    this.upload(key);
    try {
      return this.apply(key, opts);
    } catch (e) {
      this.unload(key);
      throw e;
    }
  }

  /** Run-time address of a base symbol (an offline image has bias 0). */
  addr(sym: string): bigint {
    return symbolInfo(this.base, sym).address;
  }

  read(addr: bigint, len: number): Buffer {
    return Buffer.from(this.target.read(addr, len));
  }

  /** Where a jump goes in `sym`: after its endbr64 on CET. */
  site(sym: string): bigint {
    return this.addr(sym) + BigInt(this.off);
  }

  /** The first `len` bytes of `sym` in the image memory. */
  head(sym: string, len = 16): Buffer {
    return this.read(this.addr(sym), len);
  }

  /** The first `len` bytes of `sym` as in the base file. */
  original(sym: string, len = 16): Buffer {
    return functionBytes(this.base, sym, len);
  }

  names(): string[] {
    return this.engine.list().map((p) => p.name);
  }

  stack(): string[] {
    return this.engine.list().filter((p) => p.state === 'APPLIED').map((p) => p.name);
  }

  rec(name: string): PayloadRecord {
    const p = this.engine.find(name);
    assert.ok(p, `payload ${name} is loaded`);
    return p;
  }

  /** new_addr of payload `name`'s record for `func` (default: its only record). */
  newAddr(name: string, func?: string): bigint {
    const funcs = this.rec(name).funcs;
    const f = func === undefined ? (funcs.length === 1 ? funcs[0] : undefined) : funcs.find((x) => x.name === func);
    assert.ok(f, `${name} has ${func === undefined ? 'exactly one function record' : `a record for ${func}`} (has ${funcs.map((x) => x.name)})`);
    return f.newAddr;
  }

  /** Asserts `sym` holds an intact endbr64 (CET) and then a jump to `to`, the rest untouched. */
  assertJump(sym: string, to: bigint, what = ''): void {
    const h = this.head(sym, 16);
    const orig = this.original(sym, 16);
    if (this.off) assert.deepEqual(h.subarray(0, 4), ENDBR64, `${what}: endbr64 of ${sym} intact`);
    assert.equal(hex(h.subarray(this.off, this.off + 5)), hex(jmp(this.site(sym), to)), `${what}: jump at ${sym}+${this.off} to 0x${to.toString(16)}`);
    assert.equal(hex(h.subarray(this.off + 5)), hex(orig.subarray(this.off + 5)), `${what}: bytes after the jump in ${sym} untouched`);
  }

  assertOriginal(sym: string, what = ''): void {
    assert.equal(hex(this.head(sym, 16)), hex(this.original(sym, 16)), `${what}: ${sym} holds its original bytes`);
  }

  /** Snapshot of the first 32 bytes of both patchable functions. */
  snapshot(): string {
    return ['extra_version', 'minor_version'].map((s) => hex(this.head(s, 32))).join('/');
  }

  /** NUL-terminated string at `addr` (at most 128 bytes). */
  cstring(addr: bigint): string {
    const out: number[] = [];
    for (let i = 0n; i < 128n; i++) {
      const c = this.read(addr + i, 1)[0]!;
      if (c === 0) return Buffer.from(out).toString('latin1');
      out.push(c);
    }
    throw new Error(`no NUL within 128 bytes at 0x${addr.toString(16)}`);
  }

  /** Skips an endbr64 at `addr`. */
  private body(addr: bigint): bigint {
    return this.read(addr, 4).equals(ENDBR64) ? addr + 4n : addr;
  }

  /**
   * The string a `return "..."` function returns: its code is
   * `lea disp32(%rip),%rax; ret` (after an endbr64), relocated by the engine.
   */
  returnedString(fn: bigint): string {
    const at = this.body(fn);
    const code = this.read(at, 8);
    assert.equal(hex(code.subarray(0, 3)), '488d05', `code at 0x${at.toString(16)} is lea disp32(%rip),%rax (${hex(code)})`);
    assert.equal(code[7], 0xc3, 'then ret');
    return this.cstring(at + 7n + BigInt(code.readInt32LE(3)));
  }

  /** Target of a `jmp rel32` / `call rel32` at `at`, following a `jmp *0(%rip)` veneer. */
  branchTarget(at: bigint): bigint {
    const code = this.read(at, 5);
    assert.ok(code[0] === 0xe9 || code[0] === 0xe8, `branch at 0x${at.toString(16)}: ${hex(code)}`);
    let to = at + 5n + BigInt(code.readInt32LE(1));
    const v = this.read(to, 6);
    if (hex(v) === 'ff2500000000') to = this.read(to + 6n, 8).readBigUInt64LE(0);
    return to;
  }
}

export interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs bin/hotstack synchronously, from a neutral working directory. */
export function cli(args: string[]): CliResult {
  const r = spawnSync(process.execPath, [HOTSTACK, ...args], { cwd: tmpdir(), encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * Runs the command line's main() once per argument list, all in one
 * child Node process (helpers/cli-driver.ts): same output and status as
 * bin/hotstack, without paying a Node start-up per run.
 */
export function cliMany(runs: string[][]): CliResult[] {
  const dir = mkdtempSync(join(tmpdir(), 'hotstack-cli-'));
  try {
    const job = join(dir, 'job.json');
    const out = join(dir, 'out.json');
    writeFileSync(job, JSON.stringify({ runs, out }));
    const driver = fileURLToPath(new URL('./cli-driver.js', import.meta.url));
    const r = spawnSync(process.execPath, [driver], { cwd: tmpdir(), env: { ...process.env, HOTSTACK_CLI_DRIVER: job }, encoding: 'utf8', maxBuffer: 64 << 20 });
    if (r.error) throw r.error;
    assert.equal(r.status, 0, `cli driver failed: ${r.stderr}`);
    return JSON.parse(readFileSync(out, 'utf8')) as CliResult[];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Runs bin/hotstack asynchronously (to run many at once). */
export function cliAsync(args: string[]): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [HOTSTACK, ...args], { cwd: tmpdir(), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => { stdout += s; });
    child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s; });
    child.once('error', reject);
    child.once('close', (status) => resolve({ status, stdout, stderr }));
  });
}

/** Runs `fn` over `items` with at most `n` running at once. */
export async function pool<T, R>(items: T[], n: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  }));
  return out;
}

/** No JavaScript stack frames in CLI output (a crash, not a clean error). */
export function assertNoStackTrace(r: CliResult, what: string): void {
  const all = r.stdout + '\n' + r.stderr;
  assert.doesNotMatch(all, /^\s+at .+[:(]/m, `${what}: output has a stack trace:\n${all}`);
  assert.doesNotMatch(all, /\b(TypeError|RangeError|ReferenceError|SyntaxError)\b/, `${what}: output names a JS exception:\n${all}`);
  assert.doesNotMatch(all, /internal error/i, `${what}: output reports an internal error:\n${all}`);
}

/** Captures what the lifecycle commands (src/cli/lifecycle.ts) print as text. */
export function captureIo(): { io: Reporter; out: () => string; err: () => string; reset(): void } {
  let o = '';
  let e = '';
  return {
    io: textReporter({ out: (s) => { o += s; }, err: (s) => { e += s; } }),
    out: () => o,
    err: () => e,
    reset: () => { o = ''; e = ''; },
  };
}

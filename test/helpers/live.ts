/**
 * Helpers for the live-process tests: run the real `bin/hotstack` CLI
 * against processes the test started, look at their memory from outside,
 * and build the extra fixtures of test/fixtures/live (a shared-library
 * base, a payload calling libc, a base under a seccomp filter).
 *
 * Nothing here imports hotstack's own code: the CLI is a separate process,
 * exactly as a person would run it.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  chmodSync, chownSync, cpSync, existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, closeSync, openSync, readSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { HOTSTACK_BIN as REPO_HOTSTACK_BIN, REPO_ROOT } from './repo.js';
import {
  FIXTURES_DIR, buildBase, buildPayload, codeSizes, run, startBase, symbolInfo, type BaseProcess,
} from './toolchain.js';
import type { ListEntryJson } from '../../src/cli/json-types.js';

// ---------------------------------------------------------------------------
// Locations

export { REPO_ROOT };
/** The CLI under test; HOTSTACK_TEST_BIN points the tests at another build. */
export const HOTSTACK_BIN = process.env.HOTSTACK_TEST_BIN || REPO_HOTSTACK_BIN;
export const LIVE_FIXTURES_DIR = join(FIXTURES_DIR, 'live');

// ---------------------------------------------------------------------------
// Running the CLI

export interface CliResult {
  /** The command line, for messages. */
  cmd: string;
  status: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  /** Run as this uid/gid (through setpriv), e.g. 65534 for nobody. */
  asUser?: number;
  /** Extra environment. */
  env?: Record<string, string>;
  /** Run this bin/hotstack instead of HOTSTACK_BIN (e.g. a readableCliCopy() for another user). */
  bin?: string;
  timeoutMs?: number;
}

/** A fresh state directory (HOTSTACK_STATE_DIR) for one test file. */
export function freshStateDir(tag: string): string {
  return mkdtempSync(join(tmpdir(), `hotstack-live-${tag}-`));
}

/** True when node failed to load the CLI's modules (a half-written dist/), before hotstack ran at all. */
function notLoaded(stdout: string, stderr: string): boolean {
  return stdout === '' && /^(file:\/\/|node:internal)/.test(stderr)
    && /(SyntaxError: |ERR_MODULE_NOT_FOUND|Cannot find module|ReferenceError: )/.test(stderr);
}

/** The CLI, with one state directory. */
export class Cli {
  constructor(readonly stateDir: string) {}

  /** `hotstack ARGS...` (no --pid added). */
  raw(args: string[], opts: CliOptions = {}): CliResult {
    const argv = [process.execPath, opts.bin ?? HOTSTACK_BIN, ...args];
    const full = opts.asUser !== undefined
      ? ['setpriv', `--reuid=${opts.asUser}`, `--regid=${opts.asUser}`, '--clear-groups', ...argv]
      : argv;
    const once = () => spawnSync(full[0]!, full.slice(1), {
      encoding: 'utf8',
      env: { ...process.env, HOTSTACK_STATE_DIR: this.stateDir, ...opts.env },
      timeout: opts.timeoutMs ?? 60_000,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let r = once();
    // Others rebuild dist/ while these tests run: a CLI that could not even
    // load its modules did nothing, so it is safe to try it again shortly.
    for (let i = 0; i < 10 && !r.error && notLoaded(r.stdout, r.stderr); i++) {
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 500);
      r = once();
    }
    if (r.error) throw r.error;
    return {
      cmd: `hotstack ${args.join(' ')}${opts.asUser !== undefined ? ` (as uid ${opts.asUser})` : ''}`,
      status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr,
    };
  }

  /** `hotstack --pid PID ARGS...` */
  run(pid: number, ...args: string[]): CliResult {
    return this.raw(['--pid', String(pid), ...args]);
  }

  /** `list --json` parsed; fails the test with the output when it is not a JSON array. */
  list(pid: number): ListEntryJson[] {
    const r = this.run(pid, 'list', '--json');
    expectCli(r, { status: 0, stderr: '' });
    try {
      const v = JSON.parse(r.stdout) as unknown;
      assert.ok(Array.isArray(v), 'not an array');
      return v as ListEntryJson[];
    } catch (e) {
      assert.fail(`${r.cmd}: stdout is not a JSON array (${(e as Error).message}):\n${r.stdout}`);
    }
  }

  /** The names and states of `list --json`, as `name:STATE`, in list order. */
  states(pid: number): string[] {
    return this.list(pid).map((p) => `${p.name}:${p.state}`);
  }
}

/** Shows a CLI result in full: what ran, the exit status, both streams. */
export function showResult(r: CliResult): string {
  return `$ ${r.cmd}\nexit ${r.status ?? r.signal}\n--- stdout\n${r.stdout}--- stderr\n${r.stderr}---`;
}

export interface CliExpectation {
  status?: number;
  /** Exact text, or a pattern. */
  stdout?: string | RegExp;
  stderr?: string | RegExp;
}

/** Checks a CLI result; the failure message shows the whole result. */
export function expectCli(r: CliResult, want: CliExpectation, step = ''): void {
  const where = `${step ? step + ': ' : ''}${showResult(r)}`;
  const match = (what: 'stdout' | 'stderr', exp: string | RegExp | undefined) => {
    if (exp === undefined) return;
    if (typeof exp === 'string') assert.equal(r[what], exp, `${what} differs\n${where}`);
    else assert.match(r[what], exp, `${what} does not match ${exp}\n${where}`);
  };
  if (want.status !== undefined) assert.equal(r.status, want.status, `exit status ${r.status ?? r.signal}, expected ${want.status}\n${where}`);
  match('stdout', want.stdout);
  match('stderr', want.stderr);
  // Whatever else happens, the CLI must never print a stack trace.
  assert.doesNotMatch(r.stderr, /\n\s+at .+\(.+:\d+:\d+\)|^\s+at /m, `stack trace printed\n${where}`);
}

/** Regex-quote a string. */
export function quote(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

// ---------------------------------------------------------------------------
// Processes

/** Tracks started processes so an `after` hook can always stop them. */
export class Processes {
  private readonly all: BaseProcess[] = [];

  async start(path: string): Promise<BaseProcess> {
    const p = await startBase(path);
    this.all.push(p);
    return p;
  }

  /** Stops every process started here (quit, else SIGKILL). */
  async stopAll(): Promise<void> {
    await Promise.all(this.all.splice(0).map(async (p) => {
      try {
        await p.stop();
      } catch {
        try { p.child.kill('SIGKILL'); } catch { /* gone */ }
      }
    }));
  }
}

/** A pid that belonged to a process that has exited (and been reaped). */
export function deadPid(): number {
  for (let i = 0; i < 10; i++) {
    const r = spawnSync('true');
    if (r.pid === undefined || r.pid <= 0) throw new Error('cannot run true');
    if (!existsSync(`/proc/${r.pid}`)) return r.pid; // else: reused already, try again
  }
  throw new Error('cannot find a dead pid');
}

/** True when `uid` can be switched to here (we are root and setpriv exists). */
export function canSwitchUser(): boolean {
  if (process.getuid?.() !== 0) return false;
  const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', '0']);
  return r.status === 0;
}

/**
 * The packages the CLI loads at run time: package.json's dependencies and
 * theirs, with the optional ones installed here (koffi's native module is
 * one: @koromix/koffi-linux-x64). node_modules is flat.
 */
function runtimePackages(root: string): string[] {
  const seen = new Set<string>();
  const visit = (pkgJson: string): void => {
    const pkg = JSON.parse(readFileSync(pkgJson, 'utf8')) as { dependencies?: Record<string, string>; optionalDependencies?: Record<string, string> };
    for (const d of [...Object.keys(pkg.dependencies ?? {}), ...Object.keys(pkg.optionalDependencies ?? {})]) {
      const dir = join(root, 'node_modules', d);
      if (seen.has(d) || !existsSync(join(dir, 'package.json'))) continue;
      seen.add(d);
      visit(join(dir, 'package.json'));
    }
  };
  visit(join(root, 'package.json'));
  return [...seen];
}

/** chmod a+rX, everywhere below `path` (the checkout may have been made with umask 077). */
function makeReadable(path: string): void {
  const st = lstatSync(path);
  if (st.isSymbolicLink()) return;
  if (st.isDirectory()) {
    chmodSync(path, (st.mode & 0o7777) | 0o555);
    for (const n of readdirSync(path)) makeReadable(join(path, n));
  } else {
    chmodSync(path, (st.mode & 0o7777) | 0o444 | ((st.mode & 0o100) ? 0o111 : 0));
  }
}

/**
 * A copy of the CLI under test (bin/, dist/src, package.json and the
 * packages it loads) in a fresh directory every user can read, for
 * running it as another user (`asUser` with `bin`): the checkout itself
 * may lie below a directory only its owner can enter (/root/...), where
 * nobody could even load the CLI. Remove `dir` when done.
 */
export function readableCliCopy(): { dir: string; bin: string } {
  const root = dirname(dirname(realpathSync(HOTSTACK_BIN)));
  const dir = mkdtempSync(join(tmpdir(), 'hotstack-cli-'));
  try {
    cpSync(join(root, 'bin'), join(dir, 'bin'), { recursive: true });
    cpSync(join(root, 'package.json'), join(dir, 'package.json'));
    cpSync(join(root, 'dist', 'src'), join(dir, 'dist', 'src'), { recursive: true });
    for (const p of runtimePackages(root)) {
      cpSync(join(root, 'node_modules', p), join(dir, 'node_modules', p), { recursive: true, dereference: true });
    }
    makeReadable(dir);
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  return { dir, bin: join(dir, 'bin', basename(HOTSTACK_BIN)) };
}

/** A state directory the given uid may write (for running the CLI as that user). */
export function stateDirFor(uid: number, tag: string): string {
  const dir = freshStateDir(tag);
  chownSync(dir, uid, uid);
  return dir;
}

// ---------------------------------------------------------------------------
// Looking at a process's memory from outside

/**
 * Run-time address of a symbol of an ELF object mapped in `pid`: its
 * link-time value (nm) plus the object's load bias (where the mapping of
 * file offset 0 starts, minus the first PT_LOAD's page address).
 */
export function runtimeAddress(pid: number, object: string, symbol: string): bigint {
  const path = realpathSync(object);
  let start: bigint | undefined;
  for (const line of readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-[0-9a-f]+ \S+ ([0-9a-f]+) \S+ \d+\s+(.*)$/.exec(line);
    if (m && m[3] === path && BigInt('0x' + m[2]) === 0n) { start = BigInt('0x' + m[1]); break; }
  }
  if (start === undefined) throw new Error(`${path} is not mapped at file offset 0 in process ${pid}`);
  let firstVaddr: bigint | undefined;
  for (const line of run('readelf', ['-lW', object]).split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[0] === 'LOAD') { firstVaddr = BigInt(f[2]!); break; }
  }
  if (firstVaddr === undefined) throw new Error(`${object} has no LOAD segment`);
  const bias = start - (firstVaddr & ~0xfffn);
  return symbolInfo(object, symbol).address + bias;
}

/** Bytes of another process's memory through /proc/PID/mem (we are root, or its parent). */
export function readMemory(pid: number, addr: bigint, len: number): Buffer {
  const fd = openSync(`/proc/${pid}/mem`, 'r');
  try {
    const b = Buffer.alloc(len);
    const n = readSync(fd, b, 0, len, addr);
    return b.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}

// ---------------------------------------------------------------------------
// Fixtures of test/fixtures/live

export interface LiveFixtures {
  /** libgreet.so (shared-library base) and the program linked against it. */
  libgreet: string;
  greetMain: string;
  /** Payload patching greet() in libgreet.so. */
  greetPatch: string;
  /** Payload for the plain PIE base calling snprintf, strlen (IFUNC), getpid and base.c#base_helper. */
  libcCalls: string;
  /** The same against the non-PIE base. */
  nopieLibcCalls: string;
  /** base.c under a seccomp filter refusing PROT_EXEC, and hello built for it. */
  seccompBase: string;
  seccompHello: string;
}

/**
 * Builds the live fixtures into `outDir` with the system toolchain.
 * `bases` are the plain PIE and non-PIE bases from buildAll().
 */
export function buildLiveFixtures(outDir: string, bases: { base: string; nopieBase: string }): LiveFixtures {
  rmSync(outDir, { recursive: true, force: true });
  const out = (n: string) => resolve(outDir, n);
  run('mkdir', ['-p', outDir]);
  // cwd = the source directory so the STT_FILE symbol reads "libgreet.c".
  run('gcc', [
    '-O2', '-Wall', '-Wextra', '-fPIC', '-shared', '-fcf-protection=none', '-Wl,--build-id=sha1',
    '-o', out('libgreet.so'), 'libgreet.c',
  ], { cwd: LIVE_FIXTURES_DIR });
  run('gcc', [
    '-O2', '-Wall', '-Wextra', '-fcf-protection=none', '-Wl,--build-id=sha1',
    '-o', out('greet_main'), 'greet_main.c', '-L', outDir, '-lgreet', '-Wl,-rpath,$ORIGIN',
  ], { cwd: LIVE_FIXTURES_DIR });
  const libgreet = out('libgreet.so');
  const greetPatch = buildPayload({
    name: 'greet_patch', sources: [join(LIVE_FIXTURES_DIR, 'greet_patch.c')], base: libgreet,
    sizes: codeSizes('greet_patch_greet', 'greet'),
  }, outDir);
  const libcCalls = buildPayload({
    name: 'libc_calls', sources: [join(LIVE_FIXTURES_DIR, 'libc_calls.c')], base: bases.base,
    sizes: codeSizes('libc_calls_extra_version', 'extra_version'),
  }, outDir);
  const nopieDir = out('nopie');
  run('mkdir', ['-p', nopieDir]);
  const nopieLibcCalls = buildPayload({
    name: 'libc_calls', sources: [join(LIVE_FIXTURES_DIR, 'libc_calls.c')], base: bases.nopieBase,
    sizes: codeSizes('libc_calls_extra_version', 'extra_version'),
  }, nopieDir);
  // The seccomp base includes ../base/base.c, so it serves the same protocol.
  run('gcc', [
    '-O2', '-Wall', '-Wextra', '-fcf-protection=none', '-fPIE', '-pie', '-Wl,--build-id=sha1',
    '-o', out('seccomp_base'), 'seccomp_base.c',
  ], { cwd: LIVE_FIXTURES_DIR });
  const seccompBase = out('seccomp_base');
  const seccompHello = buildPayload({
    name: 'hello', sources: ['hello.c'], base: seccompBase, sizes: codeSizes('hello_extra_version', 'extra_version'),
  }, outDir);
  for (const d of [outDir, nopieDir]) run('sh', ['-c', 'rm -rf -- "$1"/*.build', 'sh', d]);
  return { libgreet, greetMain: out('greet_main'), greetPatch, libcCalls, nopieLibcCalls, seccompBase, seccompHello };
}

/** Re-exported for test files that build their own bases. */
export { buildBase };

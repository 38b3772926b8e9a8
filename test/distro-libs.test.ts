/**
 * Distribution libraries as shipped: Debian's stripped libsqlite3 and libz
 * (`.dynsym` only, no debug file), under the real `sqlite3` shell. Payloads
 * are built against the library files, loaded into the running shell,
 * observed through its `.version` command, reverted and unloaded. Two
 * stacks in one process, on two libraries: `list` says which object each
 * payload patches. `.ci/run` installs sqlite3 when it is missing.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, it } from 'node:test';
import { FIXTURES_DIR, run } from './helpers/toolchain.js';
import { Cli, readMemory, showResult } from './helpers/live.js';
import type { BuildJson, CheckJson } from '../src/cli/json-types.js';

const SRC = join(FIXTURES_DIR, 'distro');
const SQLITE = '/usr/bin/sqlite3';
const hasSqlite = spawnSync(SQLITE, ['-version']).status === 0;
const work = mkdtempSync(join(tmpdir(), 'hotstack-distro-'));
const cli = new Cli(join(work, 'state'));

/** Where the dynamic linker finds `soname` for the sqlite3 shell (ldd), symbolic links resolved. */
function libraryOf(soname: string): string {
  const m = new RegExp(`^\\s*${soname.replace(/\./g, '\\.')} => (\\S+)`, 'm').exec(run('ldd', [SQLITE]));
  if (!m) throw new Error(`${SQLITE} does not link ${soname}`);
  return realpathSync(m[1]!);
}

/** Link-time address of an exported function, from .dynsym (the libraries are stripped). */
function dynamicSymbol(lib: string, name: string): bigint {
  const line = run('nm', ['-D', '--defined-only', lib]).split('\n').find((l) => l.endsWith(` ${name}`));
  if (!line) throw new Error(`${lib} does not export ${name}`);
  return BigInt('0x' + line.split(' ')[0]);
}

/** Run-time address of `addr` in `lib` mapped in `pid`: start of its offset-0 mapping minus the first PT_LOAD page. */
function runtime(pid: number, lib: string, addr: bigint): bigint {
  const maps = run('cat', [`/proc/${pid}/maps`]).split('\n');
  const hit = maps.map((l) => /^([0-9a-f]+)-\S+ \S+ ([0-9a-f]+) \S+ \d+\s+(.*)$/.exec(l)).find((m) => m && m[3] === lib && BigInt('0x' + m[2]) === 0n);
  if (!hit) throw new Error(`${lib} is not mapped in ${pid}`);
  const load = run('readelf', ['-lW', lib]).split('\n').map((l) => l.trim().split(/\s+/)).find((f) => f[0] === 'LOAD');
  return BigInt('0x' + hit[1]) - (BigInt(load![2]!) & ~0xfffn) + addr;
}

/** The sqlite3 shell with pipes: `.version` answers three lines (SQLite, zlib, compiler); the shell flushes after each command. */
class Shell {
  private readonly lines: string[] = [];
  private readonly waiters: ((l: string) => void)[] = [];
  readonly child: ChildProcess;
  constructor() {
    this.child = spawn(SQLITE, ['-batch', ':memory:'], { stdio: ['pipe', 'pipe', 'inherit'] });
    createInterface({ input: this.child.stdout! }).on('line', (l) => {
      const w = this.waiters.shift();
      if (w) w(l);
      else this.lines.push(l);
    });
  }
  get pid(): number {
    return this.child.pid!;
  }
  private next(): Promise<string> {
    if (this.lines.length) return Promise.resolve(this.lines.shift()!);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('sqlite3 did not answer within 10 s')), 10_000);
      this.waiters.push((l) => { clearTimeout(t); resolve(l); });
    });
  }
  /** The SQLite and zlib versions `.version` prints. */
  async version(): Promise<{ sqlite: string; zlib: string }> {
    this.child.stdin!.write('.version\n');
    const first = await this.next();
    const second = await this.next();
    await this.next(); // compiler line
    return { sqlite: first.split(' ')[1]!, zlib: second.replace(/^zlib version /, '') };
  }
  async query(sql: string): Promise<string> {
    this.child.stdin!.write(sql + '\n');
    return this.next();
  }
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const closed = new Promise((r) => this.child.once('close', r));
    this.child.stdin!.end('.quit\n');
    await closed;
  }
}

describe('stripped distribution libraries under the sqlite3 shell', { skip: !hasSqlite && `${SQLITE} is not installed (.ci/run installs it)` }, () => {
  let sqlite: string;
  let zlib: string;
  let shell: Shell;
  const out = (n: string): string => join(work, n);
  before(() => {
    sqlite = libraryOf('libsqlite3.so.0');
    zlib = libraryOf('libz.so.1');
    shell = new Shell();
  });
  after(async () => {
    await shell?.stop();
    rmSync(work, { recursive: true, force: true });
  });

  it('the libraries are stripped: only .dynsym names their functions', () => {
    for (const lib of [sqlite, zlib]) {
      assert.doesNotMatch(run('readelf', ['-SW', lib]), /\.symtab/, `${lib} keeps a .symtab: not the stripped case`);
    }
  });

  it('builds payloads against the library files (one calls libc and the library itself) and checks them offline', () => {
    const b = cli.raw(['build', '--json', '--base', sqlite, '--expect', '-o', out('fix-sqlite.livepatch'), join(SRC, 'fix-sqlite.c')]);
    assert.equal(b.status, 0, showResult(b));
    const built = JSON.parse(b.stdout) as BuildJson;
    assert.deepEqual(built.funcs.map((f) => f.name), ['sqlite3_libversion']);
    assert.ok(built.funcs[0]!.expect, 'the expectation comes from the stripped file');
    assert.ok(!built.hazards.some((h) => h.kind === 'inlined'), 'an exported function is reachable');
    const z = cli.raw(['build', '--base', zlib, '-o', out('fix-zlib.livepatch'), join(SRC, 'fix-zlib.c')]);
    assert.equal(z.status, 0, showResult(z));

    const c = cli.raw(['check', '--json', '--image', sqlite, out('fix-sqlite.livepatch')]);
    assert.equal(c.status, 0, showResult(c));
    const steps = (JSON.parse(c.stdout) as CheckJson).steps;
    const up = steps.find((s) => s.action === 'upload')!;
    const snprintf = up.symbols?.find((s) => s.name === 'snprintf');
    assert.ok(snprintf && /libc\.so/.test(snprintf.object), `snprintf resolved offline from libc: ${JSON.stringify(up.symbols)}`);
  });

  it('loads into the running shell, changes what it prints, reverts to the exact bytes', async () => {
    const before = await shell.version();
    assert.match(before.sqlite, /^3\.\d+\.\d+$/);
    const entry = runtime(shell.pid, sqlite, dynamicSymbol(sqlite, 'sqlite3_libversion'));
    const original = readMemory(shell.pid, entry, 8);
    const number = await shell.query('select sqlite_version();');
    assert.equal(number, before.sqlite, 'the shell works before patching');

    for (const p of ['fix-sqlite', 'fix-zlib']) {
      const r = cli.run(shell.pid, 'load', out(`${p}.livepatch`));
      assert.equal(r.status, 0, showResult(r));
    }
    const patched = await shell.version();
    const [maj, min, rel] = before.sqlite.split('.').map(Number) as [number, number, number];
    assert.equal(patched.sqlite, `${maj * 1_000_000 + min * 1000 + rel}-hotstack`, 'the shell prints the replacement\'s answer');
    assert.equal(patched.zlib, 'patched-zlib');
    assert.equal(await shell.query('select 6*7;'), '42', 'the shell still works');

    const listed = cli.list(shell.pid) as unknown as { name: string; base: { path: string }; state: string }[];
    assert.deepEqual(listed.map((p) => [p.name, p.state]), [['fix-sqlite', 'APPLIED'], ['fix-zlib', 'APPLIED']]);
    assert.ok(listed[0]!.base.path.includes('libsqlite3') && listed[1]!.base.path.includes('libz'), `list names the object each payload patches: ${JSON.stringify(listed)}`);

    for (const p of ['fix-sqlite', 'fix-zlib']) {
      const r = cli.run(shell.pid, 'revert', p);
      assert.equal(r.status, 0, showResult(r));
    }
    assert.deepEqual(await shell.version(), before);
    assert.deepEqual(readMemory(shell.pid, entry, 8), original, 'sqlite3_libversion has its original bytes again');
    for (const p of ['fix-sqlite', 'fix-zlib']) {
      const r = cli.run(shell.pid, 'unload', p);
      assert.equal(r.status, 0, showResult(r));
    }
    assert.deepEqual(cli.list(shell.pid), []);
    assert.equal(await shell.query('select 6*7;'), '42');
  });
});

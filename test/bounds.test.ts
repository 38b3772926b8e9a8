/**
 * Resource bounds (README "Limits"): files that are not payload files
 * (/dev/zero, a FIFO, a 2 GiB sparse file, a directory) are refused before
 * a byte is read, by every command that reads payloads; NOBITS sections
 * declaring gigabytes to terabytes, symbol and relocation counts are
 * refused before anything is allocated; the test switches only work in
 * test mode; --timeout has an upper bound. Each of these hung, crashed or
 * ran for minutes before the bound existed.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ElfFile } from '../src/elf/file.js';
import { HotstackError } from '../src/errors.js';
import { PayloadElf, SHF, SHT } from './helpers/elfedit.js';
import { Cli, HOTSTACK_BIN, Processes, deadPid, expectCli, freshStateDir, type CliResult } from './helpers/live.js';
import { describeEnd, sandbox } from './helpers/sandbox.js';
import type { UploadResult } from './helpers/upload-driver.js';
import { buildAll, FIXTURES_DIR } from './helpers/toolchain.js';
import type { CheckJson } from '../src/cli/json-types.js';

const work = mkdtempSync(join(tmpdir(), 'hotstack-bounds-'));
const stateDir = freshStateDir('bounds');
const cli = new Cli(stateDir);
const procs = new Processes();
let files: Record<string, string> = {};
const env = { HOTSTACK_POLICY: join(work, 'no-policy') };

before(() => {
  files = buildAll();
  const k = spawnSync(process.execPath, [HOTSTACK_BIN, 'keygen', '-o', join(work, 'k')], { encoding: 'utf8' });
  assert.equal(k.status, 0, k.stderr);
});
after(async () => {
  await procs.stopAll();
  rmSync(work, { recursive: true, force: true });
  rmSync(stateDir, { recursive: true, force: true });
});

function hs(args: string[], extra: Record<string, string> = {}, timeoutMs = 20_000): CliResult {
  const t = Date.now();
  const r = cli.raw(args, { env: { ...env, ...extra }, timeoutMs });
  assert.ok(Date.now() - t < timeoutMs, `${r.cmd} took ${Date.now() - t} ms`);
  return r;
}

describe('payload files are checked before they are read', () => {
  const inputs: [string, () => string, RegExp][] = [
    ['/dev/zero', () => '/dev/zero', /is a character device, not a regular file/],
    ['a FIFO (no writer: reading it would block forever)', () => {
      const f = join(work, 'fifo.livepatch');
      spawnSync('mkfifo', [f]);
      return f;
    }, /is a FIFO, not a regular file/],
    ['a 2 GiB sparse file', () => {
      const f = join(work, 'sparse.livepatch');
      writeFileSync(f, '');
      truncateSync(f, 2 ** 31);
      return f;
    }, /is 2147483648 bytes; at most 2097152/],
    ['a directory', () => {
      const d = join(work, 'dir.livepatch');
      mkdirSync(d);
      return d;
    }, /is a directory, not a regular file/],
  ];
  for (const [what, make, why] of inputs) {
    test(`${what}: EINVAL from inspect, check, upload, load, sign and build --depends, at once`, () => {
      const f = make();
      const dead = String(deadPid());
      expectCli(hs(['inspect', f]), { status: 1, stderr: new RegExp(`Error 22: EINVAL: .*${why.source}`) }, 'inspect');
      const c = hs(['check', '--image', files.base!, '--json', f]);
      const j = JSON.parse(c.stdout) as CheckJson;
      assert.equal(j.steps[0]!.errno, 'EINVAL');
      assert.match(j.steps[0]!.message, why);
      // The file is read before the process is looked at: EINVAL, not ESRCH for the dead pid.
      expectCli(hs(['--pid', dead, 'upload', 'x', f]), { status: 1, stdout: `Uploading ${f}... failed\n`, stderr: new RegExp(`^Error 22: EINVAL: .*${why.source}`) }, 'upload');
      expectCli(hs(['--pid', dead, 'load', f]), { status: 1, stderr: new RegExp(`^Error 22: EINVAL: .*${why.source}`) }, 'load');
      expectCli(hs(['sign', '--key', join(work, 'k.key'), '-o', join(work, 'out'), f]), { status: 1, stderr: new RegExp(`Error 22: EINVAL: .*${why.source}`) }, 'sign');
      expectCli(hs(['build', '--base', files.base!, '--depends', f, '-o', join(work, 'out.livepatch'), join(FIXTURES_DIR, 'build', 'nop.c')]), {
        status: 1, stderr: new RegExp(`Error 22: EINVAL: --depends .*${why.source}`),
      }, 'build --depends');
    });
  }
});

describe('NOBITS sections declaring huge sizes are refused before any allocation', () => {
  const GiB = 1n << 30n;
  const cases: { section: string; size: bigint; alloc: boolean }[] = [];
  for (const section of ['.livepatch.funcs', '.livepatch.hooks.load', '.modinfo', '.livepatch.depends', '.note.gnu.build-id']) {
    for (const size of [GiB, 1n << 40n]) cases.push({ section, size, alloc: false });
  }
  cases.push({ section: '.livepatch.funcs', size: 104n * GiB, alloc: true }, { section: '.modinfo', size: GiB, alloc: true });

  test('through Engine.upload (sandboxed: memory limit, timeout) and hotstack inspect: EINVAL naming the section and its header offset', () => {
    const failures: string[] = [];
    for (const c of cases) {
      const p = new PayloadElf(readFileSync(files.hello!));
      const s = p.section(c.section);
      const bytes = p.edit((e) => e.shdr(c.section, 'type', SHT.NOBITS).shdr(c.section, 'size', c.size).shdr(c.section, 'flags', c.alloc ? SHF.ALLOC : 0n));
      const file = join(work, `nobits-${c.section.replace(/\W+/g, '_')}-${c.size}-${c.alloc}.livepatch`);
      writeFileSync(file, bytes);
      const what = `${c.section} ${c.alloc ? 'allocated' : 'non-allocated'} NOBITS of ${c.size} bytes`;
      const want = new RegExp(`section \\[${s.index}\\] ${c.section.replace(/\./g, '\\.')} is a ${c.size}-byte .*larger than 2097152.*0x${s.hdr.toString(16)}`);
      const r = sandbox<object, UploadResult>('upload-driver.js', 'HOTSTACK_UPLOAD_DRIVER', { base: files.base!, payload: file }, { timeoutMs: 30_000 });
      if (!r.result) failures.push(`${what}: upload did not end cleanly: ${describeEnd(r)}`);
      else if (r.result.errno !== 'EINVAL' || !want.test(r.result.message ?? '')) failures.push(`${what}: upload ${r.result.errorClass} ${r.result.errno}: ${r.result.message}`);
      else if (r.result.ms > 2000) failures.push(`${what}: refused only after ${r.result.ms} ms`);
      const i = hs(['inspect', file]);
      if (i.status !== 1 || !want.test(i.stderr)) failures.push(`${what}: inspect exit ${i.status}: ${i.stderr.trim()}`);
    }
    assert.deepEqual(failures, [], failures.join('\n'));
  });

  test('ElfFile.data refuses to make up more than 64 MiB of NOBITS zeros (ENOMEM), for any ELF file', () => {
    const p = new PayloadElf(readFileSync(files.hello!));
    const elf = ElfFile.parse(p.edit((e) => e.shdr('.bss.hello_cnt', 'size', 1n << 40n)));
    const sec = elf.section('.bss.hello_cnt')!;
    assert.throws(() => elf.data(sec), (e: unknown) => e instanceof HotstackError && e.errno === 'ENOMEM' && /\.bss\.hello_cnt.*1099511627776/.test(e.message));
  });

  test('more than 65536 symbols or relocation entries: E2BIG before the tables are parsed', () => {
    const p = new PayloadElf(readFileSync(files.hello!));
    const n = 65537 * 24;
    const at = p.bytes.length + ((8 - (p.bytes.length % 8)) % 8);
    const grow = (sec: string) => p.edit((e) => e.append(Buffer.alloc(at - p.bytes.length + n)).shdr(sec, 'offset', at).shdr(sec, 'size', n));
    const check = (bytes: Buffer, what: RegExp) => {
      const f = join(work, 'count.livepatch');
      writeFileSync(f, bytes);
      expectCli(hs(['inspect', f]), { status: 1, stderr: new RegExp(`Error 7: E2BIG: .*${what.source}`) });
    };
    check(grow('.symtab'), /holds 65537 symbols; at most 65536/);
    check(grow(p.relaFor('.text.hello_hi').name), /more than 65536 entries/);
  });
});

describe('test switches and --timeout', () => {
  test('HOTSTACK_FAULT is ignored unless HOTSTACK_TEST_MODE=1', async () => {
    const b = await procs.start(files.base!);
    const pid = String(b.pid);
    // Not in test mode: the fault switch must not kill a real run halfway.
    expectCli(hs(['--pid', pid, 'load', files.hello!], { HOTSTACK_FAULT: 'after-write:1', HOTSTACK_TEST_DIE_AT: 'call-setregs' }), { status: 0, stdout: /Applying hello\.\.\. completed/ });
    assert.equal(await b.ask('v'), 'Hello World');
    // In test mode it works: the tool dies after its first code write of the revert.
    const r = hs(['--pid', pid, 'revert', 'hello'], { HOTSTACK_FAULT: 'after-write:1', HOTSTACK_TEST_MODE: '1' });
    assert.equal(r.signal, 'SIGKILL', `killed by its own fault switch: ${r.status} ${r.stderr}`);
    // The next command repairs; then the payload can be reverted for real.
    expectCli(hs(['--pid', pid, 'list']), { status: 0 });
    expectCli(hs(['--pid', pid, 'revert', 'hello']), { status: 0 });
    assert.equal(await b.ask('v'), '-unstable');
    await b.stop();
  });

  test('--timeout is bounded: more than 600000 ms is refused with a clear message', () => {
    expectCli(hs(['--pid', '1', 'apply', 'x', '--timeout', '600001']), { status: 1, stderr: /--timeout must be at most 600000 \(10 minutes\)/ });
    expectCli(hs(['--pid', '1', 'apply', 'x', '--timeout', '99999999999999999999']), { status: 1, stderr: /--timeout must be at most 600000/ });
    // The bound itself is accepted (the command then fails for its own reason: no such payload).
    expectCli(hs(['--pid', String(deadPid()), 'apply', 'x', '--timeout', '600000']), { status: 1, stderr: /ESRCH/ });
  });
});

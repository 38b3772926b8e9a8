/**
 * The dynamic linker's lookup order in a live process (its link map, found
 * through the program's DT_DEBUG), with a library preloaded the ordinary
 * way (LD_PRELOAD) that defines rand() and dice() of its own:
 *
 * - a payload's call of rand() is bound to what the program's calls are
 *   (the preloaded one): it was libc's, the lowest mapped, before, which
 *   for an allocator (malloc under a preloaded jemalloc) mixes two heaps;
 * - a patch of libc's rand() would change nothing there (every call goes
 *   to the preloaded one, nothing in libc calls it): refused, EOPNOTSUPP;
 * - a patch of libdice's dice(), which its own dice_sum() calls directly,
 *   still reaches those calls: loaded, with an 'interposed' hazard;
 * - plugins dlopen'd RTLD_LOCAL are outside the global scope: one defining
 *   dice takes nobody's calls; two copies of one build cannot both be
 *   patched by one payload: refused.
 *
 * Plain gcc -O2 programs and libraries, built at test time.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { linkMapOrder } from '../src/targets/process/linkmap.js';
import type { ProcessObject } from '../src/targets/process/objects.js';
import { Cli, expectCli } from './helpers/live.js';
import { startBase, type BaseProcess } from './helpers/launcher.js';
import { FIXTURES_DIR, run } from './helpers/toolchain.js';

const SRC = join(FIXTURES_DIR, 'preload');
const work = mkdtempSync(join(tmpdir(), 'hotstack-lookup-'));
const cli = new Cli(join(work, 'state'));
const out = (f: string): string => join(work, f);
const exe = out('dice');
const fake = out('libfake.so');
const started: BaseProcess[] = [];

/** The program, with libfake.so preloaded or not (startBase with the environment set for the child). */
async function start(preload: boolean): Promise<BaseProcess> {
  const saved = process.env.LD_PRELOAD;
  if (preload) process.env.LD_PRELOAD = fake;
  else delete process.env.LD_PRELOAD;
  try {
    const p = await startBase(exe);
    started.push(p);
    return p;
  } finally {
    if (saved === undefined) delete process.env.LD_PRELOAD;
    else process.env.LD_PRELOAD = saved;
  }
}

/** The libc.so.6 the program runs with (ldd). */
function libc(): string {
  const m = /^\s*libc\.so\.6 => (\S+)/m.exec(run('ldd', [exe]));
  assert.ok(m, 'ldd shows libc.so.6');
  return m[1]!;
}

describe('the dynamic linker\'s lookup order in a live process (LD_PRELOAD)', () => {
  before(() => {
    const pic = ['-O2', '-Wall', '-Wextra', '-fPIC', '-shared', '-Wl,--build-id=sha1'];
    run('gcc', [...pic, '-fno-semantic-interposition', '-o', out('libdice.so'), join(SRC, 'libdice.c')]);
    run('gcc', [...pic, '-o', fake, join(SRC, 'libfake.c')]);
    run('gcc', ['-O2', '-Wall', '-Wextra', '-Wl,--build-id=sha1', '-o', exe, join(SRC, 'dice.c'), `-L${work}`, '-ldice', `-Wl,-rpath,${work}`]);
    expectCli(cli.raw(['build', '--base', exe, '-o', out('fix_roll.livepatch'), join(SRC, 'fix_roll.c')]), { status: 0 });
    expectCli(cli.raw(['build', '--base', libc(), '-o', out('fix_rand.livepatch'), join(SRC, 'fix_rand.c')]), { status: 0 });
    expectCli(cli.raw(['build', '--base', out('libdice.so'), '-o', out('fix_dice.livepatch'), join(SRC, 'fix_dice.c')]), { status: 0 });
  });
  after(async () => {
    await Promise.all(started.map((p) => p.stop()));
    rmSync(work, { recursive: true, force: true });
  });

  it('a payload\'s rand() is the preloaded one, as the program\'s is; libc\'s without the preload', async () => {
    const pre = await start(true);
    assert.equal(await pre.ask('x'), '42 2');
    expectCli(cli.run(pre.pid, 'load', out('fix_roll.livepatch')), { status: 0 });
    assert.equal(await pre.ask('x'), '1042 2', 'rand() of the payload bound to libfake.so');
    assert.deepEqual(cli.states(pre.pid), ['fix_roll:APPLIED']);

    const plain = await start(false);
    const before = Number((await plain.ask('x')).split(' ')[0]);
    assert.ok(before >= 0 && before < 100);
    expectCli(cli.run(plain.pid, 'load', out('fix_roll.livepatch')), { status: 0 });
    const [roll, sum] = (await plain.ask('x')).split(' ').map(Number);
    assert.ok(roll! >= 1000 && roll! < 1100 && roll !== 1042, `libc's rand: ${roll}`);
    assert.equal(sum, 2);
  });

  it('a patch of libc\'s rand() is refused where every call goes to the preloaded one, and loads where none does', async () => {
    const pre = await start(true);
    expectCli(cli.run(pre.pid, 'load', out('fix_rand.livepatch')), {
      status: 1,
      stderr: /EOPNOTSUPP.*function rand: in this process rand is bound to .*libfake\.so, which comes before .*libc\.so\.6 in the dynamic linker's lookup order .*nothing in .*libc\.so\.6 calls it directly, so the patch would change nothing: patch .*libfake\.so's rand instead/,
    });
    assert.deepEqual(cli.states(pre.pid), []);
    assert.equal(await pre.ask('x'), '42 2');

    const plain = await start(false);
    expectCli(cli.run(plain.pid, 'load', out('fix_rand.livepatch')), { status: 0 });
    assert.equal(await plain.ask('x'), '3 2');
  });

  it('a patch of libdice\'s dice() reaches dice_sum\'s direct calls under the preload: loaded, the hazard reported', async () => {
    const pre = await start(true);
    assert.equal(await pre.ask('x'), '42 2');
    expectCli(cli.run(pre.pid, 'load', out('fix_dice.livepatch')), {
      status: 0, stdout: /hazard: dice: interposed: in this process dice is bound to .*libfake\.so, .*; only the 1 direct reference in .*libdice\.so reaches the patch/,
    });
    assert.equal(await pre.ask('x'), '42 10');
  });

  /** A script that execs the plugin loader with `args` (startBase takes a path only). */
  const plugins = (name: string, args: string[]): string => {
    const script = out(name);
    writeFileSync(script, `#!/bin/sh\nexec ${[out('plugins'), ...args].join(' ')}\n`, { mode: 0o755 });
    return script;
  };

  it('plugins dlopened RTLD_LOCAL: one defining dice takes nobody\'s calls, so the patch of the other loads without the hazard', async () => {
    run('gcc', ['-O2', '-Wall', '-Wextra', '-Wl,--build-id=sha1', '-o', out('plugins'), join(SRC, 'plugins.c'), '-ldl']);
    const p = await startBase(plugins('plugins-one', [fake, out('libdice.so')]));
    started.push(p);
    assert.equal(await p.ask('x'), '2');
    const r = cli.run(p.pid, 'load', out('fix_dice.livepatch'));
    expectCli(r, { status: 0 });
    assert.doesNotMatch(r.stdout, /interposed/);
    assert.equal(await p.ask('x'), '10');
  });

  it('two copies of one build mapped: EOPNOTSUPP naming both, nothing loaded (a payload patches one)', async () => {
    const copy = join(work, 'copy');
    mkdirSync(copy, { recursive: true });
    copyFileSync(out('libdice.so'), join(copy, 'libdice.so'));
    const p = await startBase(plugins('plugins-two', [fake, out('libdice.so'), join(copy, 'libdice.so')]));
    started.push(p);
    assert.equal(await p.ask('x'), '2 2');
    expectCli(cli.run(p.pid, 'load', out('fix_dice.livepatch')), {
      status: 1, stderr: /EOPNOTSUPP: 2 objects with build-id [0-9a-f]+ are mapped in process \d+ \(.*libdice\.so, .*libdice\.so\): a payload is linked against one of them and would leave the other running the old code/,
    });
    assert.deepEqual(cli.states(p.pid), []);
    assert.equal(await p.ask('x'), '2 2');
  });

  it('a link map that cannot be read, loops or names nothing known gives no order (address order is kept)', () => {
    const obj = (start: bigint, slot?: bigint): ProcessObject => ({ range: { start, end: start + 0x1000n }, debugSlot: () => slot } as unknown as ProcessObject);
    const exeObj = obj(0x1000n, 0x1100n);
    const lib = obj(0x5000n);
    const words = new Map<bigint, bigint>();
    const read = (addr: bigint, len: number): Uint8Array => {
      const b = Buffer.alloc(len);
      for (let i = 0; i < len; i += 8) {
        const w = words.get(addr + BigInt(i));
        if (w === undefined && i === 0) throw new Error('EFAULT');
        b.writeBigUInt64LE(w ?? 0n, i);
      }
      return b;
    };
    assert.equal(linkMapOrder([exeObj, lib], read), undefined, 'unreadable r_debug slot');
    words.set(0x1100n, 0x9000n); // r_debug
    words.set(0x9008n, 0xa000n); // r_map: lib first, then the program
    words.set(0xa000n, 0n);
    words.set(0xa010n, 0x5010n); words.set(0xa018n, 0xb000n);
    words.set(0xb000n, 0n); words.set(0xb010n, 0x1010n); words.set(0xb018n, 0n);
    assert.deepEqual(linkMapOrder([exeObj, lib], read), [lib, exeObj]);
    words.set(0xb018n, 0xa000n); // a loop back to the first node
    assert.equal(linkMapOrder([exeObj, lib], read), undefined);
    assert.equal(linkMapOrder([obj(0x1000n), lib], read), undefined, 'no object with a DT_DEBUG slot');
    words.set(0xb018n, 0n);
    words.set(0x5100n, 0n);
    assert.deepEqual(linkMapOrder([exeObj, obj(0x5000n, 0x5100n)], read)?.map((o) => o.range.start), [0x5000n, 0x1000n], 'a second DT_DEBUG left 0 (an executable dlopened as a library) is not the program\'s');
  });
});

/**
 * Offline resolution of a payload's symbols in the libraries the base
 * needs (issue 7): `hotstack build` and `hotstack check` resolve printf &
 * co. like ld.so, with --lib-path and --sysroot, and say which library
 * defined each symbol. Fixtures are built here with the real gcc/ld; where
 * the real ld.so can answer the same question (ldd, running the program),
 * its answer is the reference.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  copyFileSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, renameSync, rmSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { HotstackError } from '../src/errors.js';
import { ElfFile, readDynamic } from '../src/elf/index.js';
import { LdCache, parseLdCache, FLAG_X86_64_LIBC6 } from '../src/libs/ldcache.js';
import { realpathIn } from '../src/libs/rootfs.js';
import { ImageTarget } from '../src/targets/image/index.js';
import { HOTSTACK } from './helpers/engine.js';
import { run } from './helpers/toolchain.js';
import type { CheckJson, CheckStepJson } from '../src/cli/json-types.js';

interface Result { status: number | null; stdout: string; stderr: string; cmd: string }

let work = '';

function hotstack(args: string[]): Result {
  const r = spawnSync(process.execPath, [HOTSTACK, ...args], {
    encoding: 'utf8', timeout: 120_000, stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, TMPDIR: join(work, 'tmp'), LD_LIBRARY_PATH: '' },
  });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, cmd: `hotstack ${args.join(' ')}` };
}

function ok(r: Result): Result {
  assert.equal(r.status, 0, `${r.cmd} failed (status ${r.status}):\n${r.stdout}${r.stderr}`);
  assert.ok(!r.stderr.includes('    at '), `${r.cmd} printed a stack trace:\n${r.stderr}`);
  return r;
}

/** `check --json`, parsed, whatever its exit status. */
function check(args: string[]): CheckJson & { status: number | null } {
  const r = hotstack(['check', '--json', ...args]);
  assert.ok(!r.stderr.includes('    at '), `${r.cmd} printed a stack trace:\n${r.stderr}`);
  return { ...(JSON.parse(r.stdout) as CheckJson), status: r.status };
}

function uploadStep(rep: CheckJson): CheckStepJson {
  const s = rep.steps.find((x) => x.action === 'upload');
  assert.ok(s, `no upload step in ${JSON.stringify(rep)}`);
  return s;
}

/** name -> defining object of the upload step, asserting the whole check passed. */
function resolvedBy(rep: CheckJson & { status: number | null }): Map<string, string> {
  assert.equal(rep.status, 0, JSON.stringify(rep.steps));
  return new Map(uploadStep(rep).symbols!.map((x) => [x.name, x.object]));
}

function gcc(args: string[], cwd: string): void {
  run('gcc', ['-O1', '-fcf-protection=none', ...args], { cwd });
}

function write(dir: string, name: string, text: string): string {
  mkdirSync(dir, { recursive: true });
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

/** Build a payload with `hotstack build` (extra hotstack options before -o). */
function build(base: string, src: string, out: string, extra: string[] = []): string {
  ok(hotstack(['build', '--base', base, ...extra, '-o', out, src, '--', '-U_FORTIFY_SOURCE']));
  return out;
}

/** Defined dynamic symbols of a library by plain name: value and nm type letter ('i' = IFUNC); default versions only. */
function dynamicDefs(lib: string): Map<string, { value: bigint; type: string; versioned: string }> {
  const out = new Map<string, { value: bigint; type: string; versioned: string }>();
  for (const line of run('nm', ['-D', '--defined-only', lib]).split('\n')) {
    const m = /^([0-9a-f]+) (\w) (\S+)$/.exec(line.trim());
    if (!m) continue;
    const full = m[3]!;
    if (/@[^@]/.test(full) && !full.includes('@@')) continue; // a hidden (non-default) version
    out.set(full.split('@')[0]!, { value: BigInt('0x' + m[1]), type: m[2]!, versioned: full });
  }
  return out;
}

/** Every defined dynamic symbol with its full versioned name (foo@V1, foo@@V2). */
function versionedDefs(lib: string): Map<string, bigint> {
  const out = new Map<string, bigint>();
  for (const line of run('nm', ['-D', '--defined-only', lib]).split('\n')) {
    const m = /^([0-9a-f]+) \w (\S+)$/.exec(line.trim());
    if (m) out.set(m[2]!, BigInt('0x' + m[1]));
  }
  return out;
}

function hasTool(cmd: string, args: string[]): boolean {
  return spawnSync(cmd, args, { stdio: 'ignore' }).status === 0;
}

/** What the real ld.so loads for `elf`, in its order, as real paths (ldd without linux-vdso). */
function lddRealPaths(elf: string): string[] {
  const out: string[] = [];
  for (const line of run('ldd', [elf]).split('\n')) {
    const m = /^\s*(?:\S+ => )?(\/\S+) \(0x[0-9a-f]+\)$/.exec(line);
    if (m) out.push(realpathSync(m[1]!));
  }
  return out;
}

const PAYLOAD_LIBC = `
#include <hotstack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static int by_value(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }
static int fixed(int x)
{
    char buf[32];
    int v[3] = { x, 2, 1 };
    qsort(v, 3, sizeof v[0], by_value);
    snprintf(buf, sizeof buf, "%d", v[0]);
    return (int)strlen(buf) + x;
}
HOTSTACK_PATCH(FUNC, fixed);
`;

const LIBC_NAMES = ['snprintf', 'strlen', 'qsort'];

describe('offline symbol resolution in the libraries the base needs', () => {
  const haveLdd = hasTool('ldd', ['--version']);

  before(() => {
    work = mkdtempSync(join(tmpdir(), 'hotstack-libs-'));
    mkdirSync(join(work, 'tmp'));
  });
  after(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('(a) an executable: snprintf, strlen and qsort, none imported by the base, resolve in libc.so.6 (build and check)', () => {
    const dir = join(work, 'a');
    write(dir, 'base.c', '#include <stdio.h>\n__attribute__((noinline)) int compute(int x) { return x * 3 + 1; }\nint main(int argc, char **argv) { (void)argv; printf("%d\\n", compute(argc)); return 0; }\n');
    gcc(['-Wl,--build-id', '-o', 'base', 'base.c'], dir);
    const base = join(dir, 'base');
    const imported = run('nm', ['-D', '--undefined-only', base]);
    for (const n of LIBC_NAMES) assert.doesNotMatch(imported, new RegExp(`\\b${n}\\b`), `the base must not import ${n} itself`);

    const payload = build(base, write(dir, 'p.c', PAYLOAD_LIBC.replace('FUNC', 'compute')), join(dir, 'p.livepatch'));
    const rep = check(['--image', base, payload]);
    const by = resolvedBy(rep);
    assert.deepEqual([...by.keys()].sort(), [...LIBC_NAMES].sort(), 'exactly the external symbols are listed');

    // The library is the one the real ld.so loads for this program.
    const t = ImageTarget.open(base);
    const libc = t.libraries().find((l) => basename(l.path) === 'libc.so.6');
    assert.ok(libc, 'libc.so.6 is in the closure');
    if (haveLdd) {
      assert.deepEqual(t.libraries().map((l) => l.realPath), lddRealPaths(base), 'same libraries, same order as ld.so');
    }
    for (const n of LIBC_NAMES) assert.equal(by.get(n), libc.path, `${n} resolved by libc.so.6`);

    // Addresses: libc's own value of each symbol plus the library's (made-up) load bias, far from the base.
    const defs = dynamicDefs(libc.realPath);
    const computeAddr = t.base.lookup('compute')!.addr;
    for (const n of LIBC_NAMES) {
      const got = t.lookupExternal(n);
      const def = defs.get(n);
      assert.ok(got && def, `${n} resolves and libc defines it`);
      assert.equal(got.addr, def.value + libc.bias, `${n}: value of ${def.versioned} + bias`);
      assert.equal(got.object, libc.path);
      assert.equal(!!got.ifuncResolver, def.type === 'i', `${n}: IFUNC flagged exactly when libc's symbol is an IFUNC`);
      const distance = got.addr > computeAddr ? got.addr - computeAddr : computeAddr - got.addr;
      assert.ok(distance > 0x80000000n, `${n} is placed beyond rel32 reach of the base, as in a process`);
    }
    const step = uploadStep(rep);
    for (const s of step.symbols!) assert.equal(!!s.ifuncResolver, defs.get(s.name)!.type === 'i', `--json marks ${s.name}'s IFUNC`);

    // The text output names them too.
    const text = ok(hotstack(['check', '--image', base, payload])).stdout;
    assert.match(text, /from libraries: .*snprintf.*\(libc\.so\.6\)/);
  });

  it('(b) a shared-library base resolves through its own DT_NEEDED', () => {
    const dir = join(work, 'b');
    write(dir, 'lib.c', '__attribute__((noinline)) int lib_compute(int x) { return x * 5 + 2; }\n');
    gcc(['-shared', '-fPIC', '-Wl,--build-id', '-Wl,--no-as-needed', '-o', 'libbase.so', 'lib.c', '-lm'], dir);
    const base = join(dir, 'libbase.so');
    const dyn = readDynamic(ElfFile.parse(readFileSync(base)));
    assert.deepEqual(dyn.needed.sort(), ['libc.so.6', 'libm.so.6'].sort(), 'readDynamic agrees with the link line');
    const payload = build(base, write(dir, 'p.c', PAYLOAD_LIBC.replace('FUNC', 'lib_compute')), join(dir, 'p.livepatch'));
    const by = resolvedBy(check(['--image', base, payload]));
    const libc = ImageTarget.open(base).libraries().find((l) => basename(l.path) === 'libc.so.6')!;
    for (const n of LIBC_NAMES) assert.equal(by.get(n), libc.path, `${n} from libc.so.6`);
    if (haveLdd) assert.deepEqual(ImageTarget.open(base).libraries().map((l) => l.realPath), lddRealPaths(base));
  });

  it('(c) RUNPATH $ORIGIN/lib: a library function the base never calls; a missing library is ENOENT only when needed; --lib-path', () => {
    const dir = join(work, 'c');
    write(dir, 'ours.c', 'int ours_used(int x) { return x + 1; }\nint ours_unused(int x) { return x * 7; }\n');
    mkdirSync(join(dir, 'lib'));
    gcc(['-shared', '-fPIC', '-Wl,-soname,libours.so', '-o', 'lib/libours.so', 'ours.c'], dir);
    write(dir, 'app.c', 'int ours_used(int);\n__attribute__((noinline)) int compute(int x) { return ours_used(x) * 2; }\nint main(int argc, char **argv) { (void)argv; return compute(argc); }\n');
    gcc(['-Wl,--build-id', '-o', 'app', 'app.c', '-Llib', '-Wl,--no-as-needed', '-lours', "-Wl,-rpath,$ORIGIN/lib", '-Wl,--enable-new-dtags'], dir);
    const app = join(dir, 'app');
    assert.equal(readDynamic(ElfFile.parse(readFileSync(app))).runpath, '$ORIGIN/lib');
    assert.doesNotMatch(run('nm', ['-D', '--undefined-only', app]), /ours_unused/);

    const uses = build(app, write(dir, 'uses.c', '#include <hotstack.h>\nint ours_unused(int);\nstatic int fixed(int x) { return ours_unused(x); }\nHOTSTACK_PATCH(compute, fixed);\n'), join(dir, 'uses.livepatch'));
    const plain = build(app, write(dir, 'plain.c', '#include <hotstack.h>\nstatic int fixed(int x) { return x; }\nHOTSTACK_PATCH(compute, fixed);\n'), join(dir, 'plain.livepatch'));
    assert.equal(resolvedBy(check(['--image', app, uses])).get('ours_unused'), join(dir, 'lib', 'libours.so'));
    const t = ImageTarget.open(app);
    const lib = t.libraries()[0]!;
    assert.equal(lib.path, join(dir, 'lib', 'libours.so'), 'the first library loaded is the first DT_NEEDED');
    assert.equal(t.lookupExternal('ours_unused')!.addr, dynamicDefs(lib.realPath).get('ours_unused')!.value + lib.bias);

    // Moved away: the run of the real program and ours fail alike.
    mkdirSync(join(dir, 'moved'));
    renameSync(join(dir, 'lib', 'libours.so'), join(dir, 'moved', 'libours.so'));
    const real = spawnSync(app, [], { encoding: 'utf8', env: { PATH: process.env.PATH ?? '' } });
    assert.match(real.stderr, /libours\.so/, 'ld.so itself cannot start the program');
    const missing = check(['--image', app, uses]);
    assert.equal(missing.status, 1);
    const failed = uploadStep(missing);
    assert.equal(failed.ok, false);
    assert.equal(failed.errno, 'ENOENT');
    assert.match(failed.message, /cannot find library libours\.so, needed by .*\/c\/app/);
    assert.ok(failed.message.includes(`${join(dir, 'lib')} (DT_RUNPATH of`), `names the RUNPATH directory searched: ${failed.message}`);
    assert.match(failed.message, /ld\.so\.cache/);
    assert.match(failed.message, /\/usr\/lib\/x86_64-linux-gnu \(default\)/);
    assert.match(failed.message, /--lib-path/);
    // A payload needing nothing from a library does not care.
    assert.equal(check(['--image', app, plain]).status, 0, 'no external symbol: no library is read');
    // --lib-path finds it.
    assert.equal(resolvedBy(check(['--image', app, '--lib-path', join(dir, 'moved'), uses])).get('ours_unused'), join(dir, 'moved', 'libours.so'));
    // A mistyped --lib-path is an error naming it, not a library silently not found.
    const typo = hotstack(['check', '--image', app, '--lib-path', join(dir, 'nope'), uses]);
    assert.equal(typo.status, 1);
    assert.match(typo.stderr, /ENOENT: --lib-path .*nope: no such directory/);
  });

  it('(d) --sysroot: absolute RUNPATH, ld.so.cache and symlinks taken inside it, never on the host', () => {
    const dir = join(work, 'd');
    const sys = join(dir, 'sysroot');
    write(dir, 'ours.c', 'int ours_used(int x) { return x + 1; }\nint ours_unused(int x) { return x * 7; }\n');
    gcc(['-shared', '-fPIC', '-Wl,-soname,libours.so', '-o', 'libours.so', 'ours.c'], dir);
    write(dir, 'app.c', 'int ours_used(int);\n__attribute__((noinline)) int compute(int x) { return ours_used(x) * 2; }\nint main(int argc, char **argv) { (void)argv; return compute(argc); }\n');
    gcc(['-Wl,--build-id', '-o', 'app', 'app.c', '-L.', '-Wl,--no-as-needed', '-lours', '-Wl,-rpath,/opt/hotstack-app/lib', '-Wl,--enable-new-dtags'], dir);
    const app = join(dir, 'app');

    // SYSROOT/opt/hotstack-app/lib -> /usr/lib/ours (absolute: must mean SYSROOT/usr/lib/ours).
    mkdirSync(join(sys, 'usr', 'lib', 'ours'), { recursive: true });
    copyFileSync(join(dir, 'libours.so'), join(sys, 'usr', 'lib', 'ours', 'libours.so'));
    mkdirSync(join(sys, 'opt', 'hotstack-app'), { recursive: true });
    symlinkSync('/usr/lib/ours', join(sys, 'opt', 'hotstack-app', 'lib'));
    // libc and the dynamic linker, as the host's ld.so finds them, copied into SYSROOT/usr/lib/x86_64-linux-gnu;
    // SYSROOT/lib -> /usr/lib (merged /usr), and a garbage ld.so.cache that must be ignored.
    const multiarch = join(sys, 'usr', 'lib', 'x86_64-linux-gnu');
    mkdirSync(multiarch, { recursive: true });
    const hostLibs = ImageTarget.open(join(work, 'a', 'base')).libraries();
    for (const l of hostLibs) copyFileSync(l.realPath, join(multiarch, basename(l.path)));
    symlinkSync('/usr/lib', join(sys, 'lib'));
    write(join(sys, 'etc'), 'ld.so.cache', 'glibc-ld.so.cache1.1\xff\xff\xff\x7f garbage');

    // Without the sysroot the library cannot be found (no /opt/hotstack-app on this machine)...
    const payloadSrc = write(dir, 'p.c', '#include <hotstack.h>\n#include <unistd.h>\nint ours_unused(int);\nstatic int fixed(int x) { return ours_unused(x) + (int)getpid(); }\nHOTSTACK_PATCH(compute, fixed);\n');
    const out = join(dir, 'p.livepatch');
    const refused = hotstack(['build', '--base', app, '-o', out, payloadSrc]);
    assert.equal(refused.status, 1, refused.stdout + refused.stderr);
    assert.match(refused.stderr, /ENOENT: .*cannot find library libours\.so.*\/opt\/hotstack-app\/lib \(DT_RUNPATH/);
    // ...with it, build's dry run and check resolve both libraries inside the sysroot.
    build(app, payloadSrc, out, ['--sysroot', sys]);
    const by = resolvedBy(check(['--image', app, '--sysroot', sys, out]));
    assert.equal(by.get('ours_unused'), join(sys, 'opt', 'hotstack-app', 'lib', 'libours.so'));
    assert.equal(by.get('getpid'), join(sys, 'lib', 'x86_64-linux-gnu', 'libc.so.6'), 'libc from the default directory /lib/x86_64-linux-gnu of the sysroot');
    const real = realpathSync(sys);
    for (const l of ImageTarget.open(app, { sysroot: sys }).libraries()) {
      assert.ok(l.realPath.startsWith(real + '/'), `${l.path} was read from ${l.realPath}, outside the sysroot`);
    }
  });

  it('(d2) symlinks inside a root: absolute targets re-rooted, .. stops at the root, loops end', () => {
    const root = join(work, 'root');
    mkdirSync(join(root, 'usr', 'lib'), { recursive: true });
    writeFileSync(join(root, 'usr', 'lib', 'f'), '');
    symlinkSync('../../../../../../../usr/lib', join(root, 'up'));
    symlinkSync('/usr/lib/f', join(root, 'abs'));
    symlinkSync('loop2', join(root, 'loop1'));
    symlinkSync('loop1', join(root, 'loop2'));
    const r = realpathSync(root);
    assert.equal(realpathIn(r, `${r}/up/f`), `${r}/usr/lib/f`);
    assert.equal(realpathIn(r, `${r}/abs`), `${r}/usr/lib/f`);
    assert.equal(realpathIn(r, `${r}/loop1`), null);
    assert.equal(realpathIn(r, `${r}/usr/lib/f/x`), null, 'a file is not a directory');
    assert.equal(realpathIn('/', `${r}/abs`), null, 'on the host, /usr/lib/f does not exist');
  });

  it('(e) the ld.so.cache parser agrees with ldconfig -p', (t) => {
    const ldconfig = ['/sbin/ldconfig', '/usr/sbin/ldconfig', 'ldconfig'].find((c) => hasTool(c, ['--version']));
    let bytes: Buffer;
    try {
      bytes = readFileSync('/etc/ld.so.cache');
    } catch {
      t.skip('no /etc/ld.so.cache');
      return;
    }
    if (!ldconfig) {
      t.skip('ldconfig is not installed');
      return;
    }
    const text = run(ldconfig, ['-p']);
    const entries = parseLdCache(bytes);
    const count = /^(\d+) libs found/m.exec(text);
    assert.ok(count, text.slice(0, 200));
    assert.equal(entries.length, Number(count[1]), 'as many entries as ldconfig reports');
    const want = new Map<string, string>();
    for (const line of text.split('\n')) {
      const m = /^\t(\S+) \(([^)]*)\) => (.+)$/.exec(line);
      if (m && m[2]!.startsWith('libc6,x86-64') && !m[2]!.includes('hwcap') && !want.has(m[1]!)) want.set(m[1]!, m[3]!);
    }
    assert.ok(want.has('libc.so.6'), 'ldconfig lists libc.so.6');
    const cache = LdCache.load('/etc/ld.so.cache');
    assert.equal(cache.note, null);
    for (const [name, path] of want) assert.equal(cache.get(name), path, name);
  });

  it('(e2) the old "ld.so-1.7.0" header before the new table, and the old format alone', () => {
    const strings = (list: string[]): { buf: Buffer; at: number[] } => {
      const at: number[] = [];
      let s = '';
      for (const x of list) { at.push(s.length); s += x + '\0'; }
      return { buf: Buffer.from(s, 'latin1'), at };
    };
    // Old part: one (ignored) entry; new part: an x86-64 entry, an i386 one (flags 0x0803), a hwcap duplicate.
    const old = Buffer.alloc(16 + 12);
    old.write('ld.so-1.7.0', 0, 'latin1');
    old.writeUInt32LE(1, 12);
    const newAt = Math.ceil(old.length / 8) * 8;
    const names = ['libx.so.1', '/new/libx.so.1', '/i386/libx.so.1', '/hwcap/libx.so.1'];
    const hdr = Buffer.alloc(48 + 3 * 24);
    hdr.write('glibc-ld.so.cache1.1', 0, 'latin1');
    hdr.writeUInt32LE(3, 20);
    hdr[28] = 2;
    const str = strings(names);
    const off = (i: number): number => hdr.length + str.at[i]!; // relative to the new header
    const entry = (i: number, flags: number, value: number, hwcap: bigint): void => {
      const o = 48 + i * 24;
      hdr.writeInt32LE(flags, o); hdr.writeUInt32LE(off(0), o + 4); hdr.writeUInt32LE(off(value), o + 8); hdr.writeBigUInt64LE(hwcap, o + 16);
    };
    entry(0, FLAG_X86_64_LIBC6, 3, 1n << 62n);
    entry(1, 0x0803, 2, 0n);
    entry(2, FLAG_X86_64_LIBC6, 1, 0n);
    const file = Buffer.concat([old, Buffer.alloc(newAt - old.length), hdr, str.buf]);
    const parsed = parseLdCache(file);
    assert.equal(parsed.length, 3);
    assert.equal(new LdCache(parsed).get('libx.so.1'), '/new/libx.so.1', 'the baseline x86-64 entry wins over hwcap and i386 ones');
    // Old format alone: offsets count from the end of the entry table.
    const o2 = Buffer.alloc(16 + 12);
    o2.write('ld.so-1.7.0', 0, 'latin1');
    o2.writeUInt32LE(1, 12);
    const s2 = strings(['liby.so.2', '/old/liby.so.2']);
    o2.writeInt32LE(FLAG_X86_64_LIBC6, 16); o2.writeUInt32LE(s2.at[0]!, 20); o2.writeUInt32LE(s2.at[1]!, 24);
    assert.equal(new LdCache(parseLdCache(Buffer.concat([o2, s2.buf]))).get('liby.so.2'), '/old/liby.so.2');
  });

  it('(f) a malformed cache (truncated, garbage, lying sizes, a FIFO) is ignored with a note, never a crash', () => {
    let real: Buffer;
    try {
      real = readFileSync('/etc/ld.so.cache');
    } catch {
      real = Buffer.from('glibc-ld.so.cache1.1' + '\0'.repeat(28), 'latin1');
    }
    const bad: Buffer[] = [Buffer.alloc(0), Buffer.from('garbage garbage garbage garbage garbage garbage garbage')];
    for (const n of [1, 11, 19, 20, 30, 47, 48, 49, 100, Math.floor(real.length / 2), real.length - 1]) bad.push(real.subarray(0, Math.max(0, Math.min(n, real.length - 1))));
    const huge = Buffer.from(real);
    if (huge.length >= 24) huge.writeUInt32LE(0xffffffff, 20);
    bad.push(huge);
    const oldHuge = Buffer.alloc(64);
    oldHuge.write('ld.so-1.7.0', 0, 'latin1');
    oldHuge.writeUInt32LE(0x7fffffff, 12);
    bad.push(oldHuge);
    const badOffset = Buffer.from(real);
    if (badOffset.length >= 56) badOffset.writeUInt32LE(0xfffffff0, 52);
    bad.push(badOffset);
    let seed = 7;
    for (let i = 0; i < 40; i++) {
      const b = Buffer.from(real);
      for (let k = 0; k < 8; k++) {
        seed = (seed * 1103515245 + 12345) & 0x7fffffff;
        b[seed % Math.max(1, Math.min(b.length, 4096))] = seed & 0xff;
      }
      bad.push(b);
    }
    const dir = join(work, 'f');
    mkdirSync(dir);
    let refusedCount = 0;
    bad.forEach((b, i) => {
      try {
        parseLdCache(b);
      } catch (e) {
        assert.ok(e instanceof HotstackError, `case ${i}: ${(e as Error)?.stack}`);
        refusedCount++;
      }
      const p = join(dir, `cache${i}`);
      writeFileSync(p, b);
      const c = LdCache.load(p);
      if (c.note !== null) assert.equal(c.size, 0, `case ${i}: an ignored cache has no entries`);
    });
    assert.ok(refusedCount >= 14, `the truncated and garbage caches are refused (${refusedCount})`);
    assert.match(LdCache.load(join(dir, 'cache1')).note ?? '', /ignored .*cache1.*not an ld\.so\.cache/);
    assert.equal(LdCache.load(join(dir, 'absent')).size, 0);
    assert.equal(LdCache.load(join(dir, 'absent')).note, null, 'no cache is normal in a sysroot');
    if (hasTool('mkfifo', [join(dir, 'fifo')])) {
      assert.match(LdCache.load(join(dir, 'fifo')).note ?? '', /not a regular file/, 'a FIFO does not hang the tool');
    }
  });

  it('(g) versioned symbols: of foo@V1, foo@@V2 and foo@V3, the default V2 resolves', () => {
    const dir = join(work, 'g');
    // V3 (not default) comes after V2 in .dynsym: "last one wins" or "first one wins" would both be wrong.
    write(dir, 'ver.c', 'int foo_v1(void) { return 1; }\nint foo_v2(void) { return 2; }\nint foo_v3(void) { return 3; }\n__asm__(".symver foo_v1, foo@V1");\n__asm__(".symver foo_v2, foo@@V2");\n__asm__(".symver foo_v3, foo@V3");\n');
    write(dir, 'ver.map', 'V1 { global: foo; local: *; };\nV2 { global: foo; } V1;\nV3 { global: foo; } V2;\n');
    gcc(['-shared', '-fPIC', '-Wl,--version-script=ver.map', '-Wl,-soname,libver.so', '-o', 'libver.so', 'ver.c'], dir);
    const defs = versionedDefs(join(dir, 'libver.so'));
    assert.ok(defs.has('foo@V1') && defs.has('foo@@V2') && defs.has('foo@V3'), [...defs.keys()].join(' '));
    assert.equal(new Set([defs.get('foo@V1'), defs.get('foo@@V2'), defs.get('foo@V3')]).size, 3);
    write(dir, 'app.c', '__attribute__((noinline)) int compute(int x) { int s = 0; for (int i = 0; i < x; i++) s += i * x; return s; }\nint main(int argc, char **argv) { (void)argv; return compute(argc); }\n');
    gcc(['-Wl,--build-id', '-o', 'app', 'app.c', '-L.', '-Wl,--no-as-needed', '-lver', "-Wl,-rpath,$ORIGIN"], dir);
    const app = join(dir, 'app');
    const payload = build(app, write(dir, 'p.c', '#include <hotstack.h>\nint foo(void);\nstatic int fixed(int x) { return foo() + x; }\nHOTSTACK_PATCH(compute, fixed);\n'), join(dir, 'p.livepatch'));
    assert.equal(resolvedBy(check(['--image', app, payload])).get('foo'), join(dir, 'libver.so'));
    const t = ImageTarget.open(app);
    const lib = t.libraries().find((l) => basename(l.path) === 'libver.so')!;
    assert.equal(t.lookupExternal('foo')!.addr, defs.get('foo@@V2')! + lib.bias, 'the default version');
  });

  it('(i) broken libraries: an incompatible candidate is skipped like ld.so does; a corrupt dynamic section is EINVAL naming it', () => {
    const dir = join(work, 'i');
    mkdirSync(join(dir, 'lib'), { recursive: true });
    write(dir, 'z.c', 'int zed(int x) { return x * 9; }\n');
    gcc(['-shared', '-fPIC', '-Wl,-soname,libZ.so', '-o', 'lib/libZ.so', 'z.c'], dir);
    write(dir, 'm.c', 'int zed(int);\n__attribute__((noinline)) int compute(int x) { int s = 0; for (int i = 0; i < x; i++) s += zed(i); return s; }\nint main(int argc, char **argv) { (void)argv; return compute(argc) > 100; }\n');
    gcc(['-Wl,--build-id', '-o', 'app', 'm.c', '-Llib', '-Wl,--no-as-needed', '-lZ', '-Wl,-rpath,$ORIGIN/lib'], dir);
    const app = join(dir, 'app');
    // --lib-path holds a "libZ.so" that is no x86-64 shared object: skipped, the real one is found after it.
    const decoy = join(dir, 'decoy');
    mkdirSync(decoy);
    const header = Buffer.from(readFileSync(join(dir, 'lib', 'libZ.so')).subarray(0, 64));
    header.writeUInt16LE(3, 18); // EM_386
    writeFileSync(join(decoy, 'libZ.so'), header);
    const t = ImageTarget.open(app, { libPaths: [decoy] });
    assert.equal(t.lookupExternal('zed')!.object, join(dir, 'lib', 'libZ.so'));
    // Without the real one, the refusal is part of the message.
    renameSync(join(dir, 'lib', 'libZ.so'), join(dir, 'libZ.so'));
    assert.throws(() => ImageTarget.open(app, { libPaths: [decoy] }).lookupExternal('zed'), (e: unknown) =>
      e instanceof HotstackError && e.errno === 'ENOENT' && e.message.includes(`refused: ${join(decoy, 'libZ.so')} (ELF machine 3, not x86-64)`));
    // A DT_SONAME pointing outside .dynstr.
    const lib = readFileSync(join(dir, 'libZ.so'));
    const dynamic = /\.dynamic\s+DYNAMIC\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)/.exec(run('readelf', ['-SW', join(dir, 'libZ.so')]));
    assert.ok(dynamic, 'libZ.so has a .dynamic section');
    let patched = false;
    for (let o = parseInt(dynamic[1]!, 16); o < parseInt(dynamic[1]!, 16) + parseInt(dynamic[2]!, 16); o += 16) {
      if (lib.readBigInt64LE(o) === 14n) { lib.writeBigUInt64LE(0xfffffffn, o + 8); patched = true; }
    }
    assert.ok(patched, 'found DT_SONAME');
    writeFileSync(join(dir, 'lib', 'libZ.so'), lib);
    assert.throws(() => ImageTarget.open(app).lookupExternal('zed'), (e: unknown) =>
      e instanceof HotstackError && e.errno === 'EINVAL' && /library .*libZ\.so: dynamic section .*DT_SONAME string offset 268435455 is outside the string table/.test(e.message));
    const r = check(['--image', app, join(work, 'c', 'uses.livepatch')]);
    assert.equal(r.status, 1, 'a payload for another base is refused, but not by a crash');
  });

  it('(h) load order is breadth-first and the first definition wins, weak or not; DT_RPATH of the executable serves its libraries, DT_RUNPATH does not', () => {
    const dir = join(work, 'h');
    mkdirSync(join(dir, 'lib'), { recursive: true });
    write(dir, 'c.c', 'int pick(void) { return 3; }\n');
    write(dir, 'a.c', 'int a(void) { return 1; }\n__attribute__((weak)) int weakpick(void) { return 10; }\n');
    write(dir, 'b.c', 'int b(void) { return 2; }\nint pick(void) { return 2; }\nint weakpick(void) { return 20; }\n');
    gcc(['-shared', '-fPIC', '-Wl,-soname,libC.so', '-o', 'lib/libC.so', 'c.c'], dir);
    // libA needs libC but says nothing about where: only the executable's DT_RPATH can find it.
    gcc(['-shared', '-fPIC', '-Wl,-soname,libA.so', '-o', 'lib/libA.so', 'a.c', '-Llib', '-Wl,--no-as-needed', '-lC'], dir);
    gcc(['-shared', '-fPIC', '-Wl,-soname,libB.so', '-o', 'lib/libB.so', 'b.c'], dir);
    write(dir, 'm.c', 'int a(void); int b(void);\n__attribute__((noinline)) int compute(int x) { return x + a() + b(); }\nint main(int argc, char **argv) { (void)argv; return compute(argc) > 100; }\n');
    const link = (out: string, tags: string): string => {
      gcc(['-Wl,--build-id', '-o', out, 'm.c', '-Llib', '-Wl,--no-as-needed', '-lA', '-lB', "-Wl,-rpath,$ORIGIN/lib", `-Wl,${tags}`, '-Wl,-rpath-link,lib'], dir);
      return join(dir, out);
    };
    const rpath = link('app-rpath', '--disable-new-dtags');
    const runpath = link('app-runpath', '--enable-new-dtags');
    assert.equal(readDynamic(ElfFile.parse(readFileSync(rpath))).rpath, '$ORIGIN/lib');
    const env = { PATH: process.env.PATH ?? '' };
    assert.equal(spawnSync(rpath, [], { env }).status, 0, 'the real ld.so starts the DT_RPATH program');
    assert.notEqual(spawnSync(runpath, [], { env }).status, 0, 'and refuses the DT_RUNPATH one (libC.so not found)');

    const t = ImageTarget.open(rpath);
    const libs = t.libraries();
    const names = libs.map((l) => basename(l.path));
    assert.deepEqual(names.slice(0, 4), ['libA.so', 'libB.so', 'libc.so.6', 'libC.so'], 'breadth-first: the base\'s needed, then theirs');
    if (haveLdd) assert.deepEqual(libs.map((l) => l.realPath), lddRealPaths(rpath), 'the order ld.so uses');
    const at = (n: string): string => libs.find((l) => l.path === t.lookupExternal(n)!.object)!.path;
    assert.equal(basename(at('pick')), 'libB.so', 'libB (loaded before libC) defines pick first');
    assert.equal(basename(at('weakpick')), 'libA.so', 'a weak definition loaded first still wins');
    // Distinct, non-overlapping, page-aligned placements.
    const biases = libs.map((l) => l.bias);
    assert.equal(new Set(biases).size, biases.length);
    for (const b of biases) assert.equal(b % 4096n, 0n);

    assert.throws(() => ImageTarget.open(runpath).lookupExternal('pick'), (e: unknown) =>
      e instanceof HotstackError && e.errno === 'ENOENT' && /cannot find library libC\.so, needed by .*libA\.so/.test(e.message));
    // An unknown symbol's message names where it was looked for, libraries included.
    const out = join(dir, 'p.livepatch');
    const r = hotstack(['build', '--base', rpath, '-o', out, write(dir, 'p.c', '#include <hotstack.h>\nint no_such_thing(void);\nstatic int fixed(int x) { return no_such_thing() + x; }\nHOTSTACK_PATCH(compute, fixed);\n')]);
    assert.equal(r.status, 1, r.stdout + r.stderr);
    assert.match(r.stderr, /ENOENT: .*unknown symbol no_such_thing: not in the base .*app-rpath, nor exported by a loaded payload, nor in the libraries .*app-rpath needs \(libA\.so, libB\.so, libc\.so\.6, libC\.so and \d+ more\)/);
  });
});

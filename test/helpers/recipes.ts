/**
 * The fixture recipes: how the base programs and test payloads are built
 * with the system toolchain (gcc, ld, objcopy, nm), the way Xen's
 * xen/test/livepatch/Makefile builds its test payloads: hand-written
 * `struct livepatch_func` records, sizes measured with `nm -S` and passed
 * back with `-D`, build-id notes spliced in with objcopy, `ld -r
 * --build-id=sha1`. Deliberately uses no hotstack code, so the engine is
 * tested against files it had no hand in.
 */
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import { FIXTURES_DIR } from './repo.js';
import { functionBytes, run, symbolInfo, symbolTable } from './binutils.js';

export const BASE_SOURCE = join(FIXTURES_DIR, 'base', 'base.c');
export const PAYLOAD_DIR = join(FIXTURES_DIR, 'payloads');

// ---------------------------------------------------------------------------
// Building

function cfFlag(cfProtection: boolean | undefined): string {
  // Explicit either way: some distributions' gcc turns it on by default.
  return cfProtection ? '-fcf-protection=full' : '-fcf-protection=none';
}

export interface BaseOptions {
  outDir: string;
  /** `-fcf-protection`: functions start with endbr64, jumps go after it. */
  cfProtection?: boolean;
  /** Position-independent executable (default); false gives bias 0. */
  pie?: boolean;
  /** Output file name, default `base`. */
  name?: string;
}

/**
 * Builds the base program: an ordinary executable with its symbol table
 * and a GNU build-id, which is all an offline image or a live process
 * needs to be a patch target.
 */
export function buildBase(opts: BaseOptions): string {
  mkdirSync(opts.outDir, { recursive: true });
  const out = resolve(opts.outDir, opts.name ?? 'base');
  const pie = opts.pie ?? true;
  run('gcc', [
    '-O2', '-Wall', '-Wextra', cfFlag(opts.cfProtection),
    ...(pie ? ['-fPIE', '-pie'] : ['-fno-pie', '-no-pie']),
    '-Wl,--build-id=sha1', '-o', out, basename(BASE_SOURCE),
  ], { cwd: dirname(BASE_SOURCE) }); // cwd: the STT_FILE symbol must read "base.c"
  return out;
}

/** Where a -D size comes from: a symbol of the payload's objects or of the base. */
export type SizeSource = { new: string } | { old: string };

/** The usual pair of Xen's config.h: NEW_CODE_SZ and OLD_CODE_SZ. */
export function codeSizes(newFunc: string, oldFunc: string): Record<string, SizeSource> {
  return { NEW_CODE_SZ: { new: newFunc }, OLD_CODE_SZ: { old: oldFunc } };
}

export interface PayloadSpec {
  /** Output is `<outDir>/<name>.livepatch`, so `load FILE` names it `name`. */
  name: string;
  /** C sources; relative paths are taken from test/fixtures/payloads. */
  sources: string[];
  /** The base ELF: source of old sizes and of `.livepatch.xen_depends`. */
  base: string;
  /** ELF whose build-id goes in `.livepatch.depends`; default the base. */
  depends?: string;
  /** Leave `.livepatch.xen_depends` out (negative fixture). */
  noXenDepends?: boolean;
  /** Extra `-D` macros. */
  defines?: Record<string, string>;
  /** Size macros measured with nm and passed with `-D` (Xen's config.h). */
  sizes?: Record<string, SizeSource>;
  /** Build the payload code with `-fcf-protection` (to match a CET base). */
  cfProtection?: boolean;
}

/** Like Xen: a build-id note of `from` turned into an object whose only section is `section`. */
function noteObject(from: string, section: string, out: string): string {
  const bin = out + '.bin';
  run('objcopy', ['-O', 'binary', '--only-section=.note.gnu.build-id', from, bin]);
  if (readFileSync(bin).length === 0) throw new Error(`${from} has no .note.gnu.build-id (link it with --build-id)`);
  // -S: without it objcopy adds _binary_<path>_start/_end/_size symbols,
  // which every payload would export under the same names (EEXIST).
  run('objcopy', [
    '-I', 'binary', '-O', 'elf64-x86-64', '-B', 'i386:x86-64',
    `--rename-section=.data=${section},alloc,load,readonly,data,contents`, '-S', bin, out,
  ]);
  return out;
}

/**
 * Builds one payload the way Xen's test Makefile does: compile, measure the
 * sizes with nm, recompile with them as -D, splice the build-id notes in,
 * `ld -r --build-id=sha1`.  The first compile is only measured; the second
 * must give the same code sizes, or the measurement was meaningless.
 */
export function buildPayload(spec: PayloadSpec, outDir: string): string {
  const work = resolve(outDir, spec.name + '.build');
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  const sources = spec.sources.map((s) => (isAbsolute(s) ? s : join(PAYLOAD_DIR, s)));
  const sizes = Object.entries(spec.sizes ?? {});

  const compile = (values: Record<string, number>): string[] => sources.map((src, i) => {
    const obj = join(work, `${i}-${basename(src).replace(/\.c$/, '')}.o`);
    const defs = [
      ...Object.entries(spec.defines ?? {}).map(([k, v]) => `-D${k}=${v}`),
      ...Object.entries(values).map(([k, v]) => `-D${k}=0x${v.toString(16)}`),
    ];
    run('gcc', [
      '-O2', '-fPIC', '-ffunction-sections', '-fdata-sections', '-fno-asynchronous-unwind-tables',
      cfFlag(spec.cfProtection), '-Wall', '-Wextra', '-I', FIXTURES_DIR, ...defs, '-c', src, '-o', obj,
    ]);
    return obj;
  });
  const measure = (objs: string[]): Record<string, number> => Object.fromEntries(sizes.map(([macro, src]) => {
    if ('old' in src) return [macro, symbolInfo(spec.base, src.old).size];
    const found = objs.filter((o) => symbolTable(o).has(src.new));
    if (found.length !== 1) throw new Error(`${spec.name}: ${src.new} defined in ${found.length} objects`);
    return [macro, symbolInfo(found[0]!, src.new).size];
  }));

  const placeholders = Object.fromEntries(sizes.map(([macro]) => [macro, 0]));
  const measured = measure(compile(placeholders));
  for (const [macro, v] of Object.entries(measured)) {
    if (v === 0) throw new Error(`${spec.name}: ${macro} measured as 0 (nm reported no size)`);
  }
  const objs = compile(measured);
  const again = measure(objs);
  for (const [macro, v] of Object.entries(again)) {
    if (v !== measured[macro]) throw new Error(`${spec.name}: ${macro} changed from ${measured[macro]} to ${v} when recompiled`);
  }

  objs.push(noteObject(spec.depends ?? spec.base, '.livepatch.depends', join(work, 'depends.o')));
  if (!spec.noXenDepends) {
    objs.push(noteObject(spec.base, '.livepatch.xen_depends', join(work, 'xen_depends.o')));
  }
  const out = resolve(outDir, spec.name + '.livepatch');
  // -z noexecstack: the note objects have no .note.GNU-stack, which ld
  // would otherwise read as "needs an executable stack" (and warn).
  run('ld', ['-r', '--build-id=sha1', '-z', 'noexecstack', '-o', out, ...objs]);
  return out;
}

// ---------------------------------------------------------------------------
// The fixture set

/** How the bases of one fixture variant are built; payloads are built against it. */
export interface Variant { dir: string; prefix: string; cfProtection: boolean; pie: boolean }

/**
 * Every fixture set is built against three bases, because the patching rules
 * differ with them: a plain PIE (keys without prefix), a PIE built with
 * -fcf-protection (endbr64: jumps go 4 bytes in, old_size >= 9; keys
 * `cet/...`), and a non-PIE executable (load bias 0; keys `nopie/...`).
 */
export const VARIANTS: readonly Variant[] = [
  { dir: 'default', prefix: '', cfProtection: false, pie: true },
  { dir: 'cet', prefix: 'cet/', cfProtection: true, pie: true },
  { dir: 'nopie', prefix: 'nopie/', cfProtection: false, pie: false },
];

/** Number of bytes of extra_version the `expect` fixture carries (Xen: 8). */
export const EXPECT_LEN = 8;

/**
 * The payload fixtures, in build order (a payload's `depends` is built
 * before it).  `outcome` is what the spec says happens; it is documentation
 * for the tests that use them, not something the builder checks.
 */
export const PAYLOADS: readonly {
  name: string; outcome: string;
  spec(base: string, built: Record<string, string>): Omit<PayloadSpec, 'name' | 'base' | 'cfProtection'>;
}[] = [
  { name: 'hello', outcome: 'applies; "Hello World"; hooks: base_hook_state 101 after apply, 112 after revert; .bss: no re-apply after revert (EINVAL)',
    spec: () => ({ sources: ['hello.c'], sizes: codeSizes('hello_extra_version', 'extra_version') }) },
  { name: 'bye', outcome: 'applies on top of hello only; "Bye World!"; on the bare base EINVAL (unless --nodeps)',
    spec: (_b, built) => ({ sources: ['bye.c'], depends: built.hello, sizes: codeSizes('bye_extra_version', 'extra_version') }) },
  { name: 'replace', outcome: 'old_addr 0 (by name); used with REPLACE; "Hello Again World!"',
    spec: () => ({ sources: ['replace.c'], sizes: codeSizes('replace_extra_version', 'extra_version') }) },
  { name: 'nop', outcome: 'NOPs the leading jmp of minor_version: answers 43; no writable data, re-apply after revert allowed',
    spec: (base) => ({ sources: ['nop.c'], defines: { NOP_SIZE: String(nopSize(base)) }, sizes: { OLD_CODE_SZ: { old: 'minor_version' } } }) },
  { name: 'no_base_id', outcome: 'no .livepatch.xen_depends: upload EINVAL',
    spec: () => ({ sources: ['no_base_id.c'], noXenDepends: true, sizes: codeSizes('no_base_id_extra_version', 'extra_version') }) },
  { name: 'expect', outcome: `expects the real first ${EXPECT_LEN} bytes of extra_version: applies; "Expected World"`,
    spec: (base) => ({
      sources: ['expect.c'], sizes: codeSizes('expect_extra_version', 'extra_version'),
      defines: { EXPECT_LEN: String(EXPECT_LEN), EXPECT_BYTES: [...functionBytes(base, 'extra_version', EXPECT_LEN)].map((x) => '0x' + x.toString(16)).join(',') },
    }) },
  { name: 'expect_fail', outcome: 'wrong expected bytes: apply EINVAL, nothing changes',
    spec: () => ({ sources: ['expect_fail.c'], sizes: codeSizes('expect_fail_extra_version', 'extra_version') }) },
  { name: 'prepost', outcome: 'pre/post hooks; base_hook_state 1100 applied, first revert vetoed -EBUSY (1110), second reverts (1121); REPLACE while loaded EOPNOTSUPP',
    spec: () => ({ sources: ['prepost.c'], sizes: codeSizes('prepost_extra_version', 'extra_version') }) },
  { name: 'prepost_fail', outcome: 'pre-apply hook returns -EINVAL: apply fails, nothing patched; base_hook_state 1 (-1 if another hook ran)',
    spec: () => ({ sources: ['prepost_fail.c'], sizes: codeSizes('prepost_fail_extra_version', 'extra_version') }) },
  { name: 'action', outcome: 'apply/revert action hooks replace the built-in ones: "-unstable" stays; base_hook_state 10 applied, 11 reverted',
    spec: () => ({ sources: ['action.c'], sizes: codeSizes('action_extra_version', 'extra_version') }) },
  { name: 'nofunc', outcome: 'hooks only, no .livepatch.funcs: valid; base_hook_state 2100 applied, 2110 reverted',
    spec: () => ({ sources: ['nofunc.c'] }) },
  { name: 'twofunc', outcome: 'two records: "Two World" and minor 2, all or nothing',
    spec: () => ({
      sources: ['twofunc.c'],
      sizes: {
        NEW_EXTRA_SZ: { new: 'twofunc_extra_version' }, OLD_EXTRA_SZ: { old: 'extra_version' },
        NEW_MINOR_SZ: { new: 'twofunc_minor_version' }, OLD_MINOR_SZ: { old: 'minor_version' },
      },
    }) },
  { name: 'helper', outcome: 'calls the base static "base.c#base_helper": applies; minor answers 1006',
    spec: () => ({ sources: ['helper.c'], sizes: codeSizes('helper_minor_version', 'minor_version') }) },
  { name: 'export', outcome: 'exports export_shared_greeting; minor answers 7',
    spec: () => ({ sources: ['export.c'], sizes: codeSizes('export_minor_version', 'minor_version') }) },
  { name: 'import', outcome: 'uses export\'s symbol, stacks on export: "Shared World"; without export loaded upload ENOENT',
    spec: (_b, built) => ({ sources: ['import.c'], depends: built.export, sizes: codeSizes('import_extra_version', 'extra_version') }) },
  { name: 'dup_global', outcome: 'defines base_counter, a base global: upload EEXIST',
    spec: () => ({ sources: ['dup_global.c'], sizes: codeSizes('dup_global_minor_version', 'minor_version') }) },
  { name: 'old_size_small', outcome: 'old_size 4: upload EINVAL',
    spec: () => ({ sources: ['old_size_small.c'], sizes: { NEW_CODE_SZ: { new: 'old_size_small_extra_version' } } }) },
  { name: 'nop_too_big', outcome: 'NOP new_size 32: upload EOPNOTSUPP',
    spec: () => ({ sources: ['nop_too_big.c'], sizes: { OLD_CODE_SZ: { old: 'minor_version' } } }) },
  { name: 'bad_version', outcome: 'version 1: upload EOPNOTSUPP',
    spec: () => ({ sources: ['bad_version.c'], sizes: codeSizes('bad_version_extra_version', 'extra_version') }) },
  { name: 'old_size_zero', outcome: 'old_size 0: upload EINVAL',
    spec: () => ({ sources: ['old_size_zero.c'], sizes: { NEW_CODE_SZ: { new: 'old_size_zero_extra_version' } } }) },
  { name: 'unknown_func', outcome: 'old_addr 0 and name "no_such_function": upload ENOENT',
    spec: () => ({ sources: ['unknown_func.c'], sizes: { NEW_CODE_SZ: { new: 'unknown_func_extra_version' } } }) },
];

const ENDBR64 = Buffer.from([0xf3, 0x0f, 0x1e, 0xfa]);

/**
 * NOP length for the nop fixture: the leading short jump of minor_version
 * (2 bytes), counted from the function start, so after an endbr64 it is 6.
 * Checked against the actual bytes so a changed base cannot go unnoticed.
 */
export function nopSize(base: string): number {
  const head = functionBytes(base, 'minor_version', 6);
  const off = head.subarray(0, 4).equals(ENDBR64) ? 4 : 0;
  if (head[off] !== 0xeb) throw new Error(`minor_version of ${base} does not start with a short jmp: ${head.toString('hex')}`);
  return off + 2;
}


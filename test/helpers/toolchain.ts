/**
 * Builds hotstack's test fixtures with the system toolchain (gcc, ld,
 * objcopy, nm, readelf), the way Xen's xen/test/livepatch/Makefile builds
 * its test payloads: hand-written `struct livepatch_func` records, sizes
 * measured with `nm -S` and passed back with `-D`, build-id notes spliced in
 * with objcopy, `ld -r --build-id=sha1`.  Deliberately uses no hotstack code,
 * so the engine is tested against files it had no hand in.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

// ---------------------------------------------------------------------------
// Locations and command running

/** Walks up from this module so it works from test/ and from dist/test/. */
function findFixturesDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, 'test', 'fixtures');
    if (existsSync(join(candidate, 'livepatch.h'))) return candidate;
    const up = dirname(dir);
    if (up === dir) throw new Error('toolchain: cannot find test/fixtures/livepatch.h above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}

/** test/fixtures of the repository (holds livepatch.h, base/, payloads/). */
export const FIXTURES_DIR = findFixturesDir();
const BASE_SOURCE = join(FIXTURES_DIR, 'base', 'base.c');
const PAYLOAD_DIR = join(FIXTURES_DIR, 'payloads');

/**
 * Runs a tool and returns its stdout.  A failure becomes an Error carrying
 * the full command line and the tool's stderr, since a bare "exit code 1"
 * from gcc or objcopy is useless in a test log.
 */
export function run(cmd: string, args: string[], opts: { cwd?: string } = {}): string {
  try {
    return execFileSync(cmd, args, {
      cwd: opts.cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20,
    });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { status?: number | null; signal?: string | null; stderr?: string; stdout?: string };
    const line = [cmd, ...args].join(' ');
    const why = err.code === 'ENOENT' ? `${cmd} not found`
      : err.status != null ? `exit status ${err.status}` : `signal ${err.signal ?? '?'}`;
    const out = [err.stderr, err.stdout].filter((s) => s && s.trim()).join('\n').trim();
    throw new Error(`command failed (${why}): ${line}${out ? '\n' + out : ''}`);
  }
}

// ---------------------------------------------------------------------------
// ELF inspection (through binutils)

export interface SymbolInfo { address: bigint; size: number; type: string }

const symbolTables = new Map<string, Map<string, SymbolInfo[]>>();

/** Defined symbols by name (`nm --defined-only -S`), read once per file version: nm is slow. */
function symbolTable(elf: string): Map<string, SymbolInfo[]> {
  const st = statSync(elf);
  const key = `${resolve(elf)}\0${st.ino}\0${st.mtimeMs}\0${st.size}`;
  let table = symbolTables.get(key);
  if (table) return table;
  table = new Map();
  for (const line of run('nm', ['--defined-only', '-S', elf]).split('\n')) {
    const f = line.trim().split(/\s+/);
    const [addr, size, type, name] = f.length === 4 ? f : f.length === 3 ? [f[0], '0', f[1], f[2]] : [];
    if (name === undefined) continue;
    const list = table.get(name) ?? [];
    list.push({ address: BigInt('0x' + addr), size: parseInt(size!, 16), type: type! });
    table.set(name, list);
  }
  symbolTables.set(key, table);
  return table;
}

/**
 * Finds a defined symbol with `nm -S`, the way Xen's Makefile measures
 * OLD_CODE_SZ/NEW_CODE_SZ.  Several definitions of one name (statics of
 * different files) are an error rather than a guess.
 */
export function symbolInfo(elf: string, name: string): SymbolInfo {
  const hits = symbolTable(elf).get(name) ?? [];
  if (hits.length !== 1) throw new Error(`symbol ${name}: ${hits.length} definitions in ${elf}`);
  return hits[0]!;
}

/**
 * File offset of a symbol's first byte in an executable, mapped through
 * the LOAD program headers of `readelf -lW` (symbols hold link-time
 * addresses).  `count` bytes from there must be in the file.
 */
export function fileOffset(elf: string, name: string, count = 1): number {
  const sym = symbolInfo(elf, name);
  for (const line of run('readelf', ['-lW', elf]).split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[0] !== 'LOAD') continue;
    const offset = BigInt(f[1]!), vaddr = BigInt(f[2]!), filesz = BigInt(f[4]!);
    if (sym.address >= vaddr && sym.address + BigInt(count) <= vaddr + filesz) return Number(offset + sym.address - vaddr);
  }
  throw new Error(`${name} (0x${sym.address.toString(16)}) is in no LOAD segment of ${elf}`);
}

/**
 * The first `count` bytes of a function as stored in an executable, so the
 * expectation fixture can carry the real old code.
 */
export function functionBytes(elf: string, name: string, count: number): Buffer {
  const at = fileOffset(elf, name, count);
  return readFileSync(elf).subarray(at, at + count);
}

export interface SectionInfo {
  index: number; name: string; type: string; address: bigint; offset: number;
  size: number; entsize: number; flags: string; align: number;
}

/** Section headers as `readelf -SW` shows them (flags as letters: W A X ...). */
export function listSections(elf: string): SectionInfo[] {
  const out: SectionInfo[] = [];
  const re = /^\s*\[\s*(\d+)\]\s+(\S*)\s+([A-Z_0-9]+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([A-Za-z]*)\s+\d+\s+\d+\s+(\d+)\s*$/;
  for (const line of run('readelf', ['-SW', elf]).split('\n')) {
    const m = re.exec(line);
    if (!m || m[1] === '0') continue;
    out.push({
      index: Number(m[1]), name: m[2]!, type: m[3]!, address: BigInt('0x' + m[4]),
      offset: parseInt(m[5]!, 16), size: parseInt(m[6]!, 16), entsize: parseInt(m[7]!, 16),
      flags: m[8]!, align: Number(m[9]),
    });
  }
  return out;
}

/** Raw contents of one section (objcopy --dump-section); throws if absent. */
export function readSection(elf: string, section: string): Buffer {
  const dir = freshDir(join(tmpdir(), 'hotstack-section-'));
  try {
    const bin = join(dir, 'section.bin');
    run('objcopy', ['--dump-section', `${section}=${bin}`, elf, join(dir, 'scratch')]);
    return readFileSync(bin);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The build-id (hex) held in a build-id note section: the file's own
 * `.note.gnu.build-id` by default, or `.livepatch.depends` /
 * `.livepatch.xen_depends` of a payload.  Checks the note is a GNU
 * build-id note (namesz 4 "GNU", type 3) so a malformed fixture is caught here.
 */
export function readBuildId(elf: string, section = '.note.gnu.build-id'): string {
  const b = readSection(elf, section);
  if (b.length < 12) throw new Error(`${elf}: ${section} is ${b.length} bytes, too short for a note`);
  const namesz = b.readUInt32LE(0), descsz = b.readUInt32LE(4), type = b.readUInt32LE(8);
  const descAt = 12 + ((namesz + 3) & ~3);
  if (namesz !== 4 || b.toString('latin1', 12, 16) !== 'GNU\0' || type !== 3 || descsz === 0
      || descAt + descsz > b.length) {
    throw new Error(`${elf}: ${section} is not a GNU build-id note (namesz ${namesz}, descsz ${descsz}, type ${type})`);
  }
  return b.subarray(descAt, descAt + descsz).toString('hex');
}

// ---------------------------------------------------------------------------
// Building

function freshDir(prefix: string): string {
  const dir = prefix + randomBytes(6).toString('hex');
  mkdirSync(dir, { recursive: true });
  return dir;
}

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

/** Hash of everything a fixture build depends on: sources, this recipe, tool versions. */
function fixturesHash(): string {
  const h = createHash('sha256');
  const files = [join(FIXTURES_DIR, 'livepatch.h'), BASE_SOURCE,
    ...readdirSync(PAYLOAD_DIR).filter((f) => f.endsWith('.c') || f.endsWith('.h')).sort().map((f) => join(PAYLOAD_DIR, f)),
    fileURLToPath(import.meta.url)];
  for (const f of files) h.update(basename(f)).update('\0').update(readFileSync(f)).update('\0');
  for (const tool of ['gcc', 'ld', 'objcopy']) h.update(run(tool, ['--version']).split('\n')[0]!);
  return h.digest('hex').slice(0, 16);
}

function buildInto(root: string): Record<string, string> {
  const files: Record<string, string> = {};
  for (const v of VARIANTS) {
    const dir = join(root, v.dir);
    const base = buildBase({ outDir: dir, cfProtection: v.cfProtection, pie: v.pie });
    files[v.prefix + 'base'] = base;
    const built: Record<string, string> = {};
    for (const p of PAYLOADS) {
      built[p.name] = buildPayload({ ...p.spec(base, built), name: p.name, base, cfProtection: v.cfProtection }, dir);
      files[v.prefix + p.name] = built[p.name]!;
    }
    for (const f of readdirSync(dir)) if (f.endsWith('.build')) rmSync(join(dir, f), { recursive: true });
  }
  return files;
}

const MANIFEST = 'manifest.json';
const cache = new Map<string, Record<string, string>>();

function readManifest(root: string): Record<string, string> | undefined {
  const path = join(root, MANIFEST);
  if (!existsSync(path)) return undefined;
  const rel = JSON.parse(readFileSync(path, 'utf8')) as Record<string, string>;
  const abs = Object.fromEntries(Object.entries(rel).map(([k, v]) => [k, join(root, v)]));
  return Object.values(abs).every((f) => existsSync(f)) ? abs : undefined;
}

/**
 * Builds every base and payload once and returns their paths by key
 * (`base`, `hello`, ..., `cet/base`, `cet/hello`, ..., `nopie/...`).
 *
 * Without `outDir` the set lands in `os.tmpdir()/hotstack-fixtures-<hash>`,
 * reused by later processes while the sources and tools are unchanged.  It
 * is built in a private directory and renamed into place, so test files
 * running in parallel never see a half-built set.  With `outDir` it is
 * built right there.  Either way it is built at most once per process.
 */
export function buildAll(outDir?: string): Record<string, string> {
  const root = resolve(outDir ?? join(tmpdir(), `hotstack-fixtures-${fixturesHash()}`));
  const hit = cache.get(root);
  if (hit) return hit;
  let files: Record<string, string>;
  if (outDir !== undefined) {
    files = buildInto(root);
    writeFileSync(join(root, MANIFEST), JSON.stringify(Object.fromEntries(Object.entries(files).map(([k, v]) => [k, relative(root, v)])), null, 1));
  } else {
    files = readManifest(root) ?? (() => {
      const scratch = freshDir(root + '.tmp-');
      try {
        const built = buildInto(scratch);
        writeFileSync(join(scratch, MANIFEST), JSON.stringify(Object.fromEntries(Object.entries(built).map(([k, v]) => [k, relative(scratch, v)])), null, 1));
        if (!readManifest(root)) {
          rmSync(root, { recursive: true, force: true }); // a stale, incomplete set
          try {
            renameSync(scratch, root);
          } catch (e) {
            const code = (e as NodeJS.ErrnoException).code;
            if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e; // else: another process won the race
          }
        }
      } finally {
        rmSync(scratch, { recursive: true, force: true });
      }
      const m = readManifest(root);
      if (!m) throw new Error(`fixture set in ${root} is incomplete after building it`);
      return m;
    })();
  }
  cache.set(root, files);
  return files;
}

// ---------------------------------------------------------------------------
// Running the base

export interface BaseProcess {
  pid: number;
  child: ChildProcess;
  /** Sends one command line and resolves with the answer line. */
  ask(cmd: string, timeoutMs?: number): Promise<string>;
  /** Asks the base to quit (`q`), kills it if it does not; idempotent. */
  stop(): Promise<void>;
}

/**
 * Starts the base program and waits for its "ready" line, so a test that
 * then attaches to it finds it idle in its main loop (blocked in read).
 * Answers are matched to questions in order; a question that timed out
 * swallows its late answer so later questions stay aligned.
 */
export async function startBase(path: string, readyTimeoutMs = 10_000): Promise<BaseProcess> {
  const child = spawn(path, [], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (s: string) => { stderr += s; });
  child.stdin!.on('error', () => { /* EPIPE once it exited: reported through 'exit' */ });
  type Waiter = { resolve(line: string): void; reject(e: Error): void; done: boolean };
  const waiters: Waiter[] = [];
  const lines: string[] = [];
  let exited: string | undefined;
  const exitPromise = new Promise<void>((res) => child.once('close', () => res()));

  createInterface({ input: child.stdout! }).on('line', (line) => {
    const w = waiters.shift();
    if (!w) lines.push(line);
    else if (!w.done) { w.done = true; w.resolve(line); }
  });
  const fail = (why: string) => {
    exited = `${path} (pid ${child.pid}) ${why}${stderr.trim() ? '; stderr: ' + stderr.trim() : ''}`;
    for (const w of waiters.splice(0)) if (!w.done) { w.done = true; w.reject(new Error(exited)); }
  };
  child.once('error', (e) => fail(`failed to start: ${e.message}`));
  child.once('exit', (code, signal) => fail(`exited (${signal ?? `status ${code}`})`));

  const nextLine = (timeoutMs: number, what: string): Promise<string> => {
    if (lines.length) return Promise.resolve(lines.shift()!);
    if (exited) return Promise.reject(new Error(exited));
    return new Promise<string>((resolveLine, reject) => {
      const w: Waiter = { done: false, resolve: resolveLine, reject };
      const timer = setTimeout(() => {
        if (!w.done) { w.done = true; reject(new Error(`${path} (pid ${child.pid}): no answer to ${what} within ${timeoutMs} ms`)); }
      }, timeoutMs);
      w.resolve = (l) => { clearTimeout(timer); resolveLine(l); };
      w.reject = (e) => { clearTimeout(timer); reject(e); };
      waiters.push(w);
    });
  };

  const ready = await nextLine(readyTimeoutMs, 'startup').catch((e: Error) => { child.kill('SIGKILL'); throw e; });
  if (ready !== 'ready') {
    child.kill('SIGKILL');
    throw new Error(`${path}: expected "ready", got ${JSON.stringify(ready)}`);
  }
  return {
    pid: child.pid!,
    child,
    ask(cmd, timeoutMs = 10_000) {
      if (exited) return Promise.reject(new Error(exited));
      const answer = nextLine(timeoutMs, JSON.stringify(cmd));
      child.stdin!.write(cmd + '\n');
      return answer;
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return exitPromise;
      child.stdin!.end('q\n');
      const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
      await exitPromise;
      clearTimeout(timer);
    },
  };
}

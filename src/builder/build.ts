/**
 * `hotstack build`: C replacement functions -> a stacked payload.
 *
 *   1. compile each source (-fPIC, one section per function, hotstack.h);
 *   2. `ld -r` them together; read the HOTSTACK_PATCH / HOTSTACK_NOP records;
 *      fill in new_size, old_size (the base's symbol size) and, with
 *      --expect, the expectation (the old function's first bytes) straight
 *      into the record bytes;
 *   3. functions already patched lower in the stack get no expectation
 *      (they hold a jump at run time); `.modinfo` records
 *      `hotstack.patched=` for the whole chain, so the next build knows;
 *   4. notes: `.livepatch.xen_depends` (the base), `.livepatch.depends`
 *      (the --depends payload, or the base), `.modinfo`;
 *   5. drop local symbols (they would be exported: EEXIST on the next
 *      payload of the chain), `ld -r --build-id=sha1`;
 *   6. dry-run it on the base image (with the --depends payload under it);
 *      only then rename it into place.
 */
import { copyFileSync, existsSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { Engine } from '../core/engine.js';
import { fail, HotstackError, isErrnoName, toHotstackError } from '../errors.js';
import {
  ElfFile, ET_DYN, ET_EXEC, findBuildId, SHF_EXECINSTR, SHN_UNDEF, SHT_NOBITS, STB_GLOBAL, STB_LOCAL, STT_FUNC, SymbolIndex, toHex,
  type IndexedSymbol,
} from '../elf/index.js';
import { renderPayload, type InspectedPayload } from '../payload/inspect.js';
import { parsePayload, type Payload } from '../payload/parse.js';
import { readPayloadFile } from '../payload/file.js';
import { MAX_OPAQUE, SEC } from '../payload/sections.js';
import { checkPayloadName } from '../payload/name.js';
import { checkNopBeyondEndbr, checkNopSize, jumpRoom } from '../payload/patch-size.js';
import { arch } from '../arch/index.js';
import { ImageTarget, isXenImage } from '../targets/image/index.js';
import { BaseAnalysis, type Hazard } from '../analysis/index.js';
import type { PayloadRecord } from '../core/state.js';
import type { LibraryOptions } from '../libs/closure.js';
import { checkLibraryOptions } from '../libs/options.js';
import { baseSymbols, type SymbolSource } from '../elf/debugfile.js';
import { runCheck } from '../check/dry-run.js';
import { nameFromFile } from '../payload/name.js';
import { buildIdNote, modinfoBytes, sectionObject } from './object.js';
import { fillRecords, readDeclared, type DeclaredFunc, type RecordFill } from './records.js';
import { payloadCflags, runTool, splitCommand } from './tools.js';

/** `.modinfo` keys hotstack writes itself. */
export const META_NAME = 'hotstack.name';
export const META_PATCHED = 'hotstack.patched';
const RESERVED_PREFIX = 'hotstack.';

export interface BuildOptions {
  /** The base ELF (executable or shared object) the payload patches. */
  base: string;
  /** The payload this one stacks on; absent: the base. */
  depends?: string;
  /** Payload name for metadata (default: OUT's base name without extension). */
  name?: string;
  /** `KEY=VALUE` strings for `.modinfo`. */
  meta?: string[];
  /** Give each function an expectation (its current first bytes). */
  expect?: boolean;
  /** C compiler command (default `$CC`, else gcc). */
  cc?: string;
  /** Output payload file. */
  out: string;
  sources: string[];
  /** Relocatable objects linked in as they are, after the compiled sources (`hotstack diff` hands its extracted code here). */
  objects?: string[];
  /** Extra compiler flags (after `--`). */
  cflags?: string[];
  /** Last transformation of the checked payload bytes before OUT is written (build --sign). */
  finish?: (bytes: Uint8Array) => Uint8Array;
  /** Directory relative paths are taken from and the compiler runs in (default: process cwd). */
  cwd?: string;
  /** Separate debug file of a stripped base (`--debug-file`): its `.symtab` names the static functions. */
  debugFile?: string;
  /** Where the base's libraries are, for the dry run: `--lib-path` directories (searched first), `--sysroot`. */
  libPaths?: string[];
  sysroot?: string;
}

export interface BuiltFunc {
  name: string;
  kind: 'jump' | 'nop';
  oldSize: number;
  /** Jump: size of the replacement; NOP: bytes NOPed. */
  newSize: number;
  /** The replacement function (jump). */
  newFunction: string | null;
  /** The old function starts with endbr64 (the jump goes after it). */
  endbr64: boolean;
  expect: { len: number; bytes: string } | null;
  /** Why there is no expectation (null when there is one). */
  noExpectation: string | null;
}

/** A function entered through a preserving veneer once loaded, and the registers it keeps. */
export interface BuildVeneer {
  function: string;
  registers: string[];
}

export interface BuildCheckStep {
  name: string;
  file: string;
  action: 'upload' | 'apply';
  nodeps: boolean;
  ok: boolean;
  message: string;
}

export interface BuildReport {
  output: string;
  name: string;
  buildId: string;
  base: { path: string; buildId: string };
  depends: { buildId: string; kind: 'base' | 'payload'; path: string; name: string | null };
  funcs: BuiltFunc[];
  hooks: { kind: string; count: number }[];
  metadata: string[];
  /** Every function patched by this payload and the payloads below it. */
  patched: string[];
  checks: BuildCheckStep[];
  /** Compiler hazards of the functions this payload patches (analysis of the base). */
  hazards: Hazard[];
  /** Functions that will be entered through a preserving veneer when loaded into a process. */
  veneers: BuildVeneer[];
  /** What the compiler printed (warnings) on success. */
  compilerOutput: string;
}

/** Validate `KEY=VALUE` (EINVAL otherwise). */
export function parseMeta(s: string): { key: string; value: string } {
  if (s.includes('\0')) fail('EINVAL', `--meta ${JSON.stringify(s)}: contains a NUL byte`);
  const eq = s.indexOf('=');
  if (eq <= 0) fail('EINVAL', `--meta ${JSON.stringify(s)}: expected KEY=VALUE`);
  const key = s.slice(0, eq);
  if (/\s/.test(key)) fail('EINVAL', `--meta ${JSON.stringify(s)}: the key contains white space`);
  if (key.startsWith(RESERVED_PREFIX)) fail('EINVAL', `--meta ${JSON.stringify(s)}: keys starting with "${RESERVED_PREFIX}" are written by hotstack build itself`);
  return { key, value: s.slice(eq + 1) };
}

/** A payload an option names (--depends): bounded and regular files only, like every payload read. */
function readInputPayload(path: string, what: string): Uint8Array {
  try {
    return readPayloadFile(path);
  } catch (e) {
    const err = toHotstackError(e);
    throw new HotstackError(err.errno, `${what} ${path}: ${err.message}`);
  }
}

/** Read a file an option names; a failure names the option and the file. */
function readInput(path: string, what: string): Uint8Array {
  try {
    if (statSync(path).isDirectory()) fail('EINVAL', `${what} ${path} is a directory`);
    return readFileSync(path);
  } catch (e) {
    const err = toHotstackError(e);
    throw new HotstackError(err.errno, err.message.startsWith(what) ? err.message : `${what} ${path}: ${err.message}`);
  }
}

export interface BaseInfo {
  /** As the user gave it (messages). */
  path: string;
  /** Absolute. */
  file: string;
  elf: ElfFile;
  buildId: Uint8Array;
  index: SymbolIndex;
  /** Local symbols by plain name -> FILE#NAME candidates (for messages). */
  locals: Map<string, string[]>;
  /** Where the symbols came from: a stripped base without a debug file has only `.dynsym`. */
  symbolSource: SymbolSource;
  /** The debug file used or checked (absolute), passed on to the dry run. */
  debugFile: string | undefined;
  /** Its ELF (symbols and DWARF for the analysis). */
  debugElf: ElfFile | undefined;
  /** Xen's own image: hazards reported, never refused. */
  reportOnly: boolean;
}

/** Open the base named by --base: its ELF, build-id and symbols (from its debug file when stripped). */
export function openBase(file: string, path: string, debugFile: string | undefined): BaseInfo {
  const bytes = readInput(file, 'base');
  let elf: ElfFile;
  try {
    elf = ElfFile.parse(bytes, `base ${path}`);
  } catch (e) {
    const err = toHotstackError(e);
    throw new HotstackError(err.errno, `base ${path}: ${err.message}`);
  }
  if (elf.header.type !== ET_EXEC && elf.header.type !== ET_DYN) {
    fail('EINVAL', `base ${path} is not an executable or shared object (ELF type ${elf.header.type}); --base takes the linked program the payload patches`);
  }
  const buildId = findBuildId(elf);
  if (!buildId) fail('ENODATA', `base ${path} has no build-id, so no payload can name it: link it with -Wl,--build-id (gcc) or --build-id (ld)`);
  // A stripped base has only .dynsym: its debug file (--debug-file, build-id directory, .gnu_debuglink) supplies .symtab.
  const { symbols: syms, source, debug } = baseSymbols(elf, file, { debugFile });
  const locals = new Map<string, string[]>();
  for (const s of syms) {
    if (s.bind !== STB_LOCAL || !s.name || s.shndx === 0) continue;
    const l = locals.get(s.name) ?? [];
    l.push(s.file !== undefined ? `${s.file}#${s.name}` : s.name);
    locals.set(s.name, l);
  }
  const index = new SymbolIndex(syms);
  return { path, file, elf, buildId, index, locals, symbolSource: source, debugFile: debug?.path, debugElf: debug?.elf, reportOnly: isXenImage(elf, index) };
}

export interface DependsInfo {
  /** As the user gave it (messages). */
  path: string;
  /** Absolute. */
  file: string;
  info: InspectedPayload;
  name: string;
  /** Functions patched by it and everything below it. */
  patched: string[];
  /** Functions its own records patch. */
  own: Set<string>;
  /** Functions it brings (global, not replacements): a payload above patches them by name, resolved at load. */
  functions: Map<string, PayloadFunction>;
}

/** A function a payload brings, as a payload above it sees it. */
export interface PayloadFunction {
  size: bigint;
  /** Its first bytes (up to 4, for the landing pad). */
  head: Uint8Array;
}

/**
 * The functions `p` exports that a payload above may patch: what upload
 * exports of it (named symbols of its loaded sections, less the records'
 * replacements), kept to global code with a size.
 */
function payloadFunctions(p: Payload): Map<string, PayloadFunction> {
  const replacements = new Set(p.funcs().flatMap((f) => (f.newRel ? [f.newRel.sym] : [])));
  const out = new Map<string, PayloadFunction>();
  for (const s of p.symbols) {
    if (s.index === 0 || s.type !== STT_FUNC || s.bind !== STB_GLOBAL || !s.name || s.size === 0n || replacements.has(s.index)) continue;
    const sec = p.elf.sections[s.shndx];
    if (!sec || s.shndx === SHN_UNDEF || sec.type === SHT_NOBITS || (sec.flags & SHF_EXECINSTR) === 0n) continue;
    const data = p.elf.data(sec);
    const at = Number(s.value);
    if (at + Number(s.size) > data.length) continue;
    out.set(s.name, { size: s.size, head: data.subarray(at, at + Math.min(4, Number(s.size))) });
  }
  return out;
}

/** Open the --depends payload and check it was built for `base`. */
export function openDepends(file: string, path: string, base: BaseInfo): DependsInfo {
  const bytes = readInputPayload(file, '--depends');
  let info: InspectedPayload;
  let parsed: Payload;
  try {
    parsed = parsePayload(bytes);
    info = renderPayload(parsed);
  } catch (e) {
    const err = toHotstackError(e);
    throw new HotstackError('EINVAL', `--depends ${path} is not a payload: ${err.errno}: ${err.message}`);
  }
  const baseHex = toHex(base.buildId);
  if (info.baseBuildId === null) fail('EINVAL', `--depends ${path} is not a payload: it has no ${SEC.xenDepends} (the base build-id)`);
  if (info.baseBuildId !== baseHex) {
    fail('EINVAL', `--depends ${path} was built for base build-id ${info.baseBuildId}, not for ${base.path} (build-id ${baseHex})`);
  }
  const meta = (k: string): string | undefined => info.metadata.find((m) => m.startsWith(k + '='))?.slice(k.length + 1);
  const own = new Set(info.funcs.map((f) => f.name));
  const recorded = meta(META_PATCHED);
  const patched = recorded !== undefined ? recorded.split(',').filter(Boolean) : [...own];
  for (const f of own) if (!patched.includes(f)) patched.push(f);
  return { path, file, info, name: meta(META_NAME) ?? nameFromFile(path), patched, own, functions: payloadFunctions(parsed) };
}

/** The old function: in the base, else brought by the --depends payload (`payload` names it then). */
interface OldFunction {
  size: bigint;
  endbr64: boolean;
  /** Its address in the base (base functions only). */
  sym?: IndexedSymbol;
  payload?: string;
}

/** Old function facts from the base, or from the payload below for a function it brought, with the errors a user can act on. */
function oldFunction(base: BaseInfo, f: DeclaredFunc, dep: DependsInfo | undefined): OldFunction {
  const sym = base.index.lookup(f.name);
  const brought = !sym && !f.hasOldAddr ? dep?.functions.get(f.name) : undefined;
  if (brought) return { size: brought.size, endbr64: arch.patchOffset(brought.head) > 0, payload: dep!.name };
  if (!sym) {
    const cands = base.locals.get(f.name.includes('#') ? f.name.slice(f.name.indexOf('#') + 1) : f.name) ?? [];
    const hint = cands.length > 1
      ? `; several static functions have that name (${cands.join(', ')}): name one as FILE#NAME`
      : cands.length === 1 && cands[0] !== f.name ? `; did you mean ${cands[0]}?` : '';
    const stripped = base.symbolSource === 'dynsym' || base.symbolSource === 'none';
    const list = stripped
      ? `; the base is stripped (no .symtab), so only its exported functions are known (list them with: nm -D --defined-only ${base.path}); static functions need its debug file: give --debug-file FILE (from objcopy --only-keep-debug) or install its debug package (/usr/lib/debug/.build-id/)`
      : ` (list its functions with: nm --defined-only ${base.path})`;
    fail('ENOENT', `function ${f.name} is not a symbol of the base ${base.path}${hint}${list}`);
  }
  if (sym.size === 0n) fail('EINVAL', `${f.name} in the base ${base.path} has no size in its symbol table, so it cannot be patched safely`);
  if (sym.size > 0xffffffffn) fail('EINVAL', `${f.name} in the base ${base.path} is ${sym.size} bytes, too large for old_size`);
  let head: Uint8Array;
  try {
    head = base.elf.readVirtual(sym.value, Math.min(4, Number(sym.size)));
  } catch (e) {
    const err = toHotstackError(e);
    throw new HotstackError(err.errno, `${f.name} in the base ${base.path}: ${err.message}`);
  }
  const endbr64 = arch.patchOffset(head) > 0;
  return { sym, size: sym.size, endbr64 };
}

/** The size rules of payload-format.md, checked here to name the function and what it needs. */
function checkSizes(base: BaseInfo, f: DeclaredFunc, oldSize: number, endbr64: boolean): void {
  const keep = endbr64 ? arch.landingPad.length : 0;
  if (f.kind === 'jump') {
    if (oldSize < jumpRoom(keep)) {
      fail('EINVAL', `function ${f.name} of ${base.path} is ${oldSize} bytes, too small to take a jump: a jump needs ${jumpRoom(0)} bytes, ${jumpRoom(arch.landingPad.length)} when the function starts with ${arch.landingPad.name}${endbr64 ? ' (it does)' : ''}`);
    }
    return;
  }
  const what = `HOTSTACK_NOP(${f.name}, ${f.newSize})`;
  // Build-only: a record NOPing nothing is legal in a payload, but never what the author meant.
  if (f.newSize === 0) fail('EINVAL', `${what} NOPs nothing`);
  checkNopSize(f.newSize, oldSize, what);
  checkNopBeyondEndbr(f.newSize, keep, what);
}

/** The extensions gcc compiles as C++. */
const CXX_SOURCE = /\.(cc|cp|cxx|cpp|CPP|c\+\+|C)$/;

/** A compiled object per source (in `work`), and what the compiler said. */
function compile(opts: BuildOptions, cwd: string, work: string): { objects: string[]; output: string } {
  const cc = splitCommand(opts.cc ?? process.env.CC, 'gcc');
  const flags = payloadCflags(opts.cflags ?? []);
  const objects: string[] = [];
  let output = '';
  let gnu: boolean | undefined;
  /**
   * C++ sources: no exceptions (a payload's unwind tables are not registered, so no exception
   * can pass through or be caught in its code: a `throw` or `try` fails the build instead of
   * the process; it also leaves out the DW.ref personality word the program defines too). g++
   * makes the static data of inline and template code STB_GNU_UNIQUE, which marks the object
   * ELFOSABI_GNU, refused by the payload rules (OS ABI none or FreeBSD, as Xen's): plain weak
   * symbols instead. clang makes none, and rejects that flag. The user's flags come after.
   */
  const cxxFlags = (src: string): string[] => {
    if (!CXX_SOURCE.test(src)) return [];
    gnu ??= !/clang/i.test(runTool([...cc, '--version'], `asking ${cc.join(' ')} its version`).stdout);
    return gnu ? ['-fno-exceptions', '-fno-gnu-unique'] : ['-fno-exceptions'];
  };
  opts.sources.forEach((src, i) => {
    const obj = join(work, `${i}-${basename(src).replace(/\.[^.]*$/, '')}.o`);
    const r = runTool([...cc, '-c', ...cxxFlags(src), ...flags, src, '-o', obj], `compiling ${src}`, { cwd });
    output += r.stderr;
    objects.push(obj);
  });
  return { objects, output };
}

/**
 * The dry run: with --depends, upload and apply (nodeps) the payload below,
 * then upload and apply the new one; else `hotstack check --image BASE NEW`.
 */
function dryRun(base: BaseInfo, file: string, name: string, dep: DependsInfo | undefined, libs: LibraryOptions): DryRun {
  if (!dep) {
    const r = runCheck({ image: base.file, files: [file], debugFile: base.debugFile, ...libs });
    const steps = r.steps.map((s) => {
      const step: BuildCheckStep = { name, file: 'the new payload', action: s.action === 'apply' ? 'apply' : 'upload', nodeps: false, ok: s.ok, message: s.message };
      if (!s.ok) throw new HotstackError(isErrnoName(s.errno) ? s.errno : 'EINVAL', `check against ${base.path} failed: ${s.action} ${name}: ${s.message}`);
      return step;
    });
    const up = r.steps.find((s) => s.action === 'upload');
    return { steps, hazards: up?.hazards ?? [], veneers: (up?.veneers ?? []).map((v) => ({ function: v.function, registers: v.registers })) };
  }
  const engine = new Engine(ImageTarget.open(base.file, { debugFile: base.debugFile, ...libs }));
  const steps: BuildCheckStep[] = [];
  const step = (n: string, f: string, action: 'upload' | 'apply', nodeps: boolean, fn: () => void): void => {
    try {
      fn();
      steps.push({ name: n, file: f, action, nodeps, ok: true, message: action === 'upload' ? 'uploaded' : 'applied' });
    } catch (e) {
      const err = toHotstackError(e);
      throw new HotstackError(err.errno, `check against ${base.path} failed: ${action}${nodeps ? ' --nodeps' : ''} ${n} (${f}): ${err.message}`);
    }
  };
  const depName = dep.name;
  const newName = name === depName ? `${name}.new` : name;
  step(depName, dep.path, 'upload', false, () => void engine.upload(depName, readPayloadFile(dep.file)));
  step(depName, dep.path, 'apply', true, () => void engine.action(depName, 'APPLY', { nodeps: true }));
  let rec: PayloadRecord | undefined;
  step(newName, 'the new payload', 'upload', false, () => void (rec = engine.upload(newName, readFileSync(file))));
  step(newName, 'the new payload', 'apply', false, () => void engine.action(newName, 'APPLY'));
  const veneers = (rec?.funcs ?? []).filter((f) => f.veneer).map((f) => ({ function: f.name, registers: f.veneer!.registers }));
  return { steps, hazards: rec?.hazards ?? [], veneers };
}

interface DryRun {
  steps: BuildCheckStep[];
  hazards: Hazard[];
  veneers: BuildVeneer[];
}

/**
 * A jump to a function nothing reaches changes nothing: gcc inlined it
 * everywhere (keeping the symbol) or it is unused. Refused here, where the
 * payload is made; `check` and `apply` only report it. Xen's own image is
 * exempt: its outcomes stay Xen's.
 */
function refuseUnreached(base: BaseInfo, funcs: { name: string; kind: 'jump' | 'nop' }[]): void {
  if (base.reportOnly) return;
  const jumps = funcs.filter((f) => f.kind === 'jump');
  if (!jumps.length) return;
  let analysis: BaseAnalysis;
  try {
    analysis = BaseAnalysis.of(base.elf, { debug: base.debugElf, path: base.path });
  } catch {
    return; // not analysable (another architecture): the dry run reports it
  }
  for (const f of jumps) {
    const r = analysis.report(f.name);
    if (!r || !r.noCallers) continue;
    const why = r.hazards.find((h) => h.kind === 'inlined')?.detail ?? `nothing calls, jumps to or takes the address of ${f.name}`;
    fail('EINVAL', `HOTSTACK_PATCH(${f.name}): ${why}`);
  }
}

/** Build a payload. Throws HotstackError; OUT is written only when everything succeeded. */
export function buildPayload(opts: BuildOptions): BuildReport {
  const cwd = opts.cwd ?? process.cwd();
  const out = resolve(cwd, opts.out);
  const name = opts.name ?? nameFromFile(out);
  checkPayloadName(name, ' (give --name)');
  const meta = (opts.meta ?? []).map(parseMeta);
  if (!opts.sources.length && !opts.objects?.length) fail('EINVAL', 'no source files given');
  for (const src of opts.sources) {
    let ok = false;
    try {
      ok = statSync(resolve(cwd, src)).isFile();
    } catch {
      fail('ENOENT', `source file ${src} does not exist`);
    }
    if (!ok) fail('EINVAL', `source ${src} is not a regular file`);
  }
  try {
    if (!statSync(dirname(out)).isDirectory()) fail('ENOENT', `output directory ${dirname(out)} is not a directory`);
  } catch (e) {
    if (e instanceof HotstackError) throw e;
    fail('ENOENT', `output directory ${dirname(out)} does not exist`);
  }
  if (existsSync(out) && statSync(out).isDirectory()) fail('EINVAL', `-o ${opts.out} is a directory; give the payload file to write`);
  for (const [what, p] of [['--base', opts.base], ['--depends', opts.depends], ...opts.sources.map((x) => ['source', x])] as [string, string | undefined][]) {
    if (p !== undefined && resolve(cwd, p) === out) fail('EINVAL', `-o ${opts.out} is also the ${what}; write the payload somewhere else`);
  }

  // Checked before compiling: a mistyped directory should not cost a build.
  const libs = checkLibraryOptions({ libPaths: opts.libPaths, sysroot: opts.sysroot }, cwd);
  const base = openBase(resolve(cwd, opts.base), opts.base, opts.debugFile !== undefined ? resolve(cwd, opts.debugFile) : undefined);
  const dep = opts.depends !== undefined ? openDepends(resolve(cwd, opts.depends), opts.depends, base) : undefined;
  const baseHex = toHex(base.buildId);

  const work = mkdtempSync(join(tmpdir(), 'hotstack-build-'));
  try {
    // 1. Compile, 2. link the sources into one object.
    const { objects, output: compilerOutput } = compile(opts, cwd, work);
    objects.push(...(opts.objects ?? []));
    const combined = join(work, 'combined.o');
    runTool(['ld', '-r', '-o', combined, ...objects], 'linking the sources (ld -r)');
    const bytes = new Uint8Array(readFileSync(combined));
    const declared = readDeclared(ElfFile.parse(bytes, 'linked sources'));
    if (!declared.funcs.length && !declared.hooks.length) {
      fail('EINVAL', 'nothing to patch: the sources declare no HOTSTACK_PATCH, HOTSTACK_NOP or hook (include <hotstack.h> and declare what the payload does)');
    }

    // 2-3. Sizes and expectations.
    const below = new Set(dep?.patched ?? []);
    const funcs: BuiltFunc[] = [];
    const fills: RecordFill[] = [];
    for (const f of declared.funcs) {
      const old = oldFunction(base, f, dep);
      const { sym, endbr64 } = old;
      const oldSize = Number(old.size);
      checkSizes(base, f, oldSize, endbr64);
      if (f.kind === 'nop' && below.has(f.name)) {
        // At run time the function starts with a lower payload's jump: NOPs would cut into it.
        fail('EINVAL', `HOTSTACK_NOP(${f.name}, ${f.newSize}): ${f.name} is already patched lower in the stack (by ${dep!.own.has(f.name) ? dep!.name : `a payload below ${dep!.name}`}), so its first bytes are a jump, not the code the NOPs were meant for; replace it with HOTSTACK_PATCH instead`);
      }
      let expect: Uint8Array | null = null;
      let noExpectation: string | null = null;
      if (!opts.expect) noExpectation = 'no expectation (--expect not given)';
      else if (f.hasOldAddr) noExpectation = 'no expectation: the record gives its own old_addr';
      else if (old.payload !== undefined) noExpectation = `no expectation: ${f.name} comes with ${old.payload}, found by name when loaded`;
      else if (below.has(f.name)) {
        const by = dep!.own.has(f.name) ? dep!.name : `a payload below ${dep!.name}`;
        noExpectation = `no expectation, already patched by ${by}`;
      } else expect = base.elf.readVirtual(sym!.value, Math.min(oldSize, MAX_OPAQUE));
      fills.push({ fileOffset: f.fileOffset, newSize: f.newSize, oldSize, expect });
      funcs.push({
        name: f.name, kind: f.kind, oldSize, newSize: f.newSize, newFunction: f.newFunction, endbr64,
        expect: expect ? { len: expect.length, bytes: toHex(expect) } : null, noExpectation,
      });
    }
    refuseUnreached(base, funcs);
    fillRecords(bytes, fills);
    writeFileSync(combined, bytes);

    // 4. Notes and metadata.
    const patched = [...(dep?.patched ?? [])];
    for (const f of funcs) if (!patched.includes(f.name)) patched.push(f.name);
    const metadata = [`${META_NAME}=${name}`, ...(patched.length ? [`${META_PATCHED}=${patched.join(',')}`] : []), ...meta.map((m) => `${m.key}=${m.value}`)];
    const dependsId = dep ? Buffer.from(dep.info.buildId, 'hex') : base.buildId;
    const xenDependsObj = join(work, 'xen_depends.o');
    const dependsObj = join(work, 'depends.o');
    const modinfoObj = join(work, 'modinfo.o');
    writeFileSync(xenDependsObj, sectionObject(SEC.xenDepends, buildIdNote(base.buildId), 4));
    writeFileSync(dependsObj, sectionObject(SEC.depends, buildIdNote(dependsId), 4));
    writeFileSync(modinfoObj, sectionObject(SEC.modinfo, modinfoBytes(metadata), 1));

    // 5. No local symbols (static helpers, records) in the exported table, then the final link.
    const stripped = join(work, 'stripped.o');
    runTool(['objcopy', '--discard-all', combined, stripped], 'dropping local symbols (objcopy --discard-all)');
    const linked = join(work, `${name.replace(/[^A-Za-z0-9_.-]/g, '_')}.livepatch`);
    runTool(['ld', '-r', '--build-id=sha1', '-z', 'noexecstack', '-o', linked, stripped, dependsObj, xenDependsObj, modinfoObj], 'linking the payload (ld -r --build-id)');
    let built: InspectedPayload;
    try {
      built = renderPayload(parsePayload(readFileSync(linked)));
    } catch (e) {
      const err = toHotstackError(e);
      throw new HotstackError(err.errno, `the linked payload is not valid: ${err.message}`);
    }

    // 6. Dry run, then into place.
    const { steps: checks, hazards, veneers } = dryRun(base, linked, name, dep, libs);
    // Last step (build --sign): the signature covers the final bytes; OUT is still untouched if it fails.
    if (opts.finish) writeFileSync(linked, opts.finish(readPayloadFile(linked)));
    const tmp = `${out}.tmp-${process.pid}`;
    try {
      copyFileSync(linked, tmp);
      renameSync(tmp, out);
    } catch (e) {
      try {
        unlinkSync(tmp);
      } catch {
        /* not created */
      }
      const err = toHotstackError(e);
      throw new HotstackError(err.errno, `writing ${opts.out}: ${err.message}`);
    }
    return {
      output: opts.out,
      name,
      buildId: built.buildId,
      base: { path: opts.base, buildId: baseHex },
      depends: dep
        ? { buildId: dep.info.buildId, kind: 'payload', path: dep.path, name: dep.name }
        : { buildId: baseHex, kind: 'base', path: opts.base, name: null },
      funcs,
      hooks: declared.hooks,
      metadata: built.metadata,
      patched,
      checks,
      hazards,
      veneers,
      compilerOutput,
    };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

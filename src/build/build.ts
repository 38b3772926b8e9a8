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
import { ERRNO, fail, HotstackError, toHotstackError, type ErrnoName } from '../errors.js';
import {
  ElfFile, ET_DYN, ET_EXEC, findBuildId, readSymbols, STB_LOCAL, SHT_SYMTAB, SHT_DYNSYM, SymbolIndex, toHex, type IndexedSymbol,
} from '../elf/index.js';
import { inspectPayload, type InspectedPayload } from '../payload/inspect.js';
import { MAX_NAME, MAX_OPAQUE, SEC } from '../payload/sections.js';
import { ImageTarget } from '../targets/image/index.js';
import { runCheck } from '../cli/check.js';
import { nameFromFile } from '../cli/format.js';
import { buildIdNote, modinfoBytes, sectionObject } from './object.js';
import { fillRecords, readDeclared, type DeclaredFunc, type RecordFill } from './records.js';
import { payloadCflags, runTool, splitCommand } from './tools.js';

/** `.modinfo` keys hotstack writes itself. */
export const META_NAME = 'hotstack.name';
export const META_PATCHED = 'hotstack.patched';
const RESERVED_PREFIX = 'hotstack.';

const ENDBR64 = [0xf3, 0x0f, 0x1e, 0xfa];
const JMP_LEN = 5;

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
  /** Extra compiler flags (after `--`). */
  cflags?: string[];
  /** Directory relative paths are taken from and the compiler runs in (default: process cwd). */
  cwd?: string;
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

function errnoNamed(e: string | null): ErrnoName {
  return e !== null && e in ERRNO ? (e as ErrnoName) : 'EINVAL';
}

function checkPayloadName(name: string): void {
  if (!name) fail('EINVAL', 'payload name is empty (give --name)');
  if (name.includes('\0')) fail('EINVAL', 'payload name contains a NUL byte');
  if (Buffer.byteLength(name) > MAX_NAME) fail('EINVAL', `payload name ${name} is ${Buffer.byteLength(name)} bytes; at most ${MAX_NAME}`);
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

interface BaseInfo {
  /** As the user gave it (messages). */
  path: string;
  /** Absolute. */
  file: string;
  elf: ElfFile;
  buildId: Uint8Array;
  index: SymbolIndex;
  /** Local symbols by plain name -> FILE#NAME candidates (for messages). */
  locals: Map<string, string[]>;
}

function openBase(file: string, path: string): BaseInfo {
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
  const tab = elf.sections.find((s) => s.type === SHT_SYMTAB) ?? elf.sections.find((s) => s.type === SHT_DYNSYM);
  const syms = tab ? readSymbols(elf, tab) : [];
  const locals = new Map<string, string[]>();
  for (const s of syms) {
    if (s.bind !== STB_LOCAL || !s.name || s.shndx === 0) continue;
    const l = locals.get(s.name) ?? [];
    l.push(s.file !== undefined ? `${s.file}#${s.name}` : s.name);
    locals.set(s.name, l);
  }
  return { path, file, elf, buildId, index: new SymbolIndex(syms), locals };
}

interface DependsInfo {
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
}

function openDepends(file: string, path: string, base: BaseInfo): DependsInfo {
  const bytes = readInput(file, '--depends');
  let info: InspectedPayload;
  try {
    info = inspectPayload(bytes);
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
  return { path, file, info, name: meta(META_NAME) ?? nameFromFile(path), patched, own };
}

/** Old function facts from the base, with the errors a user can act on. */
function oldFunction(base: BaseInfo, f: DeclaredFunc): { sym: IndexedSymbol; endbr64: boolean } {
  const sym = base.index.lookup(f.name);
  if (!sym) {
    const cands = base.locals.get(f.name.includes('#') ? f.name.slice(f.name.indexOf('#') + 1) : f.name) ?? [];
    const hint = cands.length > 1
      ? `; several static functions have that name (${cands.join(', ')}): name one as FILE#NAME`
      : cands.length === 1 && cands[0] !== f.name ? `; did you mean ${cands[0]}?` : '';
    fail('ENOENT', `function ${f.name} is not a symbol of the base ${base.path}${hint} (list its functions with: nm --defined-only ${base.path})`);
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
  const endbr64 = head.length === 4 && ENDBR64.every((b, i) => head[i] === b);
  return { sym, endbr64 };
}

/** The size rules of payload-format.md, checked here to name the function and what it needs. */
function checkSizes(base: BaseInfo, f: DeclaredFunc, oldSize: number, endbr64: boolean): void {
  if (f.kind === 'jump') {
    const need = JMP_LEN + (endbr64 ? 4 : 0);
    if (oldSize < need) {
      fail('EINVAL', `function ${f.name} of ${base.path} is ${oldSize} bytes, too small to take a jump: a jump needs 5 bytes, 9 when the function starts with endbr64${endbr64 ? ' (it does)' : ''}`);
    }
    return;
  }
  if (f.newSize > MAX_OPAQUE) fail('EOPNOTSUPP', `HOTSTACK_NOP(${f.name}, ${f.newSize}): at most ${MAX_OPAQUE} bytes can be NOPed`);
  if (f.newSize === 0) fail('EINVAL', `HOTSTACK_NOP(${f.name}, 0) NOPs nothing`);
  if (f.newSize > oldSize) fail('EINVAL', `HOTSTACK_NOP(${f.name}, ${f.newSize}): the function is only ${oldSize} bytes`);
  if (endbr64 && f.newSize <= 4) {
    fail('EINVAL', `HOTSTACK_NOP(${f.name}, ${f.newSize}): ${f.name} starts with endbr64 (4 bytes, kept); the count includes them, so it must be more than 4`);
  }
}

/** A compiled object per source (in `work`), and what the compiler said. */
function compile(opts: BuildOptions, cwd: string, work: string): { objects: string[]; output: string } {
  const cc = splitCommand(opts.cc ?? process.env.CC, 'gcc');
  const flags = payloadCflags(opts.cflags ?? []);
  const objects: string[] = [];
  let output = '';
  opts.sources.forEach((src, i) => {
    const obj = join(work, `${i}-${basename(src).replace(/\.[^.]*$/, '')}.o`);
    const r = runTool([...cc, '-c', ...flags, src, '-o', obj], `compiling ${src}`, { cwd });
    output += r.stderr;
    objects.push(obj);
  });
  return { objects, output };
}

/**
 * The dry run: with --depends, upload and apply (nodeps) the payload below,
 * then upload and apply the new one; else `hotstack check --image BASE NEW`.
 */
function dryRun(base: BaseInfo, file: string, name: string, dep: DependsInfo | undefined): BuildCheckStep[] {
  if (!dep) {
    const r = runCheck({ image: base.file, files: [file] });
    return r.steps.map((s) => {
      const step: BuildCheckStep = { name, file: 'the new payload', action: s.action === 'apply' ? 'apply' : 'upload', nodeps: false, ok: s.ok, message: s.message };
      if (!s.ok) throw new HotstackError(errnoNamed(s.errno), `check against ${base.path} failed: ${s.action} ${name}: ${s.message}`);
      return step;
    });
  }
  const engine = new Engine(ImageTarget.open(base.file));
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
  step(depName, dep.path, 'upload', false, () => void engine.upload(depName, readFileSync(dep.file)));
  step(depName, dep.path, 'apply', true, () => void engine.action(depName, 'APPLY', { nodeps: true }));
  step(newName, 'the new payload', 'upload', false, () => void engine.upload(newName, readFileSync(file)));
  step(newName, 'the new payload', 'apply', false, () => void engine.action(newName, 'APPLY'));
  return steps;
}

/** Build a payload. Throws HotstackError; OUT is written only when everything succeeded. */
export function buildPayload(opts: BuildOptions): BuildReport {
  const cwd = opts.cwd ?? process.cwd();
  const out = resolve(cwd, opts.out);
  const name = opts.name ?? nameFromFile(out);
  checkPayloadName(name);
  const meta = (opts.meta ?? []).map(parseMeta);
  if (!opts.sources.length) fail('EINVAL', 'no source files given');
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

  const base = openBase(resolve(cwd, opts.base), opts.base);
  const dep = opts.depends !== undefined ? openDepends(resolve(cwd, opts.depends), opts.depends, base) : undefined;
  const baseHex = toHex(base.buildId);

  const work = mkdtempSync(join(tmpdir(), 'hotstack-build-'));
  try {
    // 1. Compile, 2. link the sources into one object.
    const { objects, output: compilerOutput } = compile(opts, cwd, work);
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
      const { sym, endbr64 } = oldFunction(base, f);
      const oldSize = Number(sym.size);
      checkSizes(base, f, oldSize, endbr64);
      if (f.kind === 'nop' && below.has(f.name)) {
        // At run time the function starts with a lower payload's jump: NOPs would cut into it.
        fail('EINVAL', `HOTSTACK_NOP(${f.name}, ${f.newSize}): ${f.name} is already patched lower in the stack (by ${dep!.own.has(f.name) ? dep!.name : `a payload below ${dep!.name}`}), so its first bytes are a jump, not the code the NOPs were meant for; replace it with HOTSTACK_PATCH instead`);
      }
      let expect: Uint8Array | null = null;
      let noExpectation: string | null = null;
      if (!opts.expect) noExpectation = 'no expectation (--expect not given)';
      else if (f.hasOldAddr) noExpectation = 'no expectation: the record gives its own old_addr';
      else if (below.has(f.name)) {
        const by = dep!.own.has(f.name) ? dep!.name : `a payload below ${dep!.name}`;
        noExpectation = `no expectation, already patched by ${by}`;
      } else expect = base.elf.readVirtual(sym.value, Math.min(oldSize, MAX_OPAQUE));
      fills.push({ fileOffset: f.fileOffset, newSize: f.newSize, oldSize, expect });
      funcs.push({
        name: f.name, kind: f.kind, oldSize, newSize: f.newSize, newFunction: f.newFunction, endbr64,
        expect: expect ? { len: expect.length, bytes: toHex(expect) } : null, noExpectation,
      });
    }
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
      built = inspectPayload(readFileSync(linked));
    } catch (e) {
      const err = toHotstackError(e);
      throw new HotstackError(err.errno, `the linked payload is not valid: ${err.message}`);
    }

    // 6. Dry run, then into place.
    const checks = dryRun(base, linked, name, dep);
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
      compilerOutput,
    };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/**
 * Upload: validate an untrusted payload, place it in the target, resolve
 * and relocate it, and check every rule of payload-format.md, in the order
 * of actions.md. Returns the new CHECKED record; on any failure the memory
 * it took is freed and nothing is left behind.
 */
import { fail } from '../errors.js';
import {
  alignUp, cString, parseBuildIdNote, SHF_ALLOC, SHF_MERGE, SHF_WRITE, SHN_UNDEF, toHex, type Section,
} from '../elf/index.js';
import { checkPayloadElf, type CheckedElf } from '../payload/elf-checks.js';
import { decodeFuncs, FUNC_OFFSETS } from '../payload/funcs.js';
import {
  FUNC_SIZE, HOOK_SECTIONS, PATCHING_SECTIONS, SEC, SPECIAL_SECTIONS, type HookName,
} from '../payload/sections.js';
import { isLoaded, link, type Linked, type LinkedRegion } from './linker.js';
import { checkXenOnlySections } from '../payload/structure.js';
import * as rules from './rules.js';
import type { ExportedSymbol, FuncRecord, HookAddrs, PayloadRecord, RegionRecord } from './state.js';
import type { BaseObject, Target } from './target.js';
import { HOOK_ARG_SIZE } from './hookarg.js';
import { assessFunctions, type VeneerNeed } from './safety.js';
import { encodePreservingVeneer } from '../arch/x86_64/preserve.js';
import { fitsI32 } from '../arch/x86_64/insn.js';

/** What upload needs from the engine. */
export interface UploadContext {
  target: Target;
  /** Exported symbol of a loaded payload. */
  exportedSymbol(name: string): bigint | undefined;
  /** Loaded payload with this build-id (hex), if any. */
  payloadWithBuildId(hex: string): PayloadRecord | undefined;
  /** Journal each allocation so a killed tool can free it later. */
  onAlloc(r: RegionRecord): void;
  seq: number;
}

const MAX_FUNC_NAME = 128;

/** The note in a build-id section: present once, non-empty, valid (EINVAL otherwise). */
function noteOf(c: CheckedElf, name: string, what: string): Uint8Array {
  const secs = c.elf.sectionsNamed(name);
  if (secs.length === 0) fail('EINVAL', `${name} is missing: the payload has no ${what}`);
  if (secs.length > 1) fail('EINVAL', `${name} appears ${secs.length} times`);
  const s = secs[0]!;
  if (s.size === 0n) fail('EINVAL', `${name} is empty: the payload has no ${what}`);
  return parseBuildIdNote(c.elf.data(s), name, Number(s.offset));
}

/** Pick the base object named by .livepatch.xen_depends (EINVAL / ENODATA). */
export function findBase(target: Target, c: CheckedElf): BaseObject {
  const want = noteOf(c, SEC.xenDepends, "base build-id (the base image's build-id it was built against)");
  const base = target.findBase(want);
  if (base) return base;
  const bases = target.bases();
  if (target.kind === 'image' && bases.every((b) => !b.buildId)) {
    fail('ENODATA', `the base image ${bases[0]?.path ?? ''} has no build-id, so no payload can be checked against it`);
  }
  const have = bases.filter((b) => b.buildId).map((b) => `${b.path} ${toHex(b.buildId!)}`);
  return fail('EINVAL', `payload was built for base build-id ${toHex(want)}, which matches no ${target.kind === 'image' ? 'image' : 'object loaded in the process'} (${have.length ? have.join(', ') : 'none has a build-id'})`);
}

/** Upload pipeline. */
export function upload(ctx: UploadContext, name: string, bytes: Uint8Array): PayloadRecord {
  rules.checkSize(bytes.length);
  const c = checkPayloadElf(bytes);
  const base = findBase(ctx.target, c);
  const hookSecs = presentHooks(c);
  const wantHookArg = Object.keys(hookSecs).length > 0;
  const allocated: LinkedRegion[] = [];
  try {
    const linked = link(c, {
      target: ctx.target,
      base,
      exports: (n) => ctx.exportedSymbol(n),
      reserveRw: wantHookArg ? HOOK_ARG_SIZE : 0,
      onAlloc: (r) => {
        allocated.push(r);
        ctx.onAlloc({ addr: r.addr, size: r.size, perm: r.perm });
      },
    });
    const rec = describe(ctx, c, linked, base, name, hookSecs);
    const plan = assessFunctions(base, rec.funcs);
    rec.hazards = plan.hazards;
    const veneers = placeVeneers(ctx.target, base, plan.veneers, (r) => {
      allocated.push(r);
      ctx.onAlloc({ addr: r.addr, size: r.size, perm: r.perm });
    });
    if (veneers) rec.regions.push({ addr: veneers.addr, size: veneers.size, perm: veneers.perm });
    for (const r of [...linked.regions, ...(veneers ? [veneers] : [])]) ctx.target.write(r.addr, r.bytes);
    return rec;
  } catch (e) {
    for (const r of allocated) {
      try {
        ctx.target.free(r.addr, r.size);
      } catch {
        /* the original error matters more */
      }
    }
    throw e;
  }
}

function presentHooks(c: CheckedElf): Partial<Record<HookName, Section>> {
  const out: Partial<Record<HookName, Section>> = {};
  for (const [k, h] of Object.entries(HOOK_SECTIONS)) {
    const s = c.elf.section(h.name);
    if (s) out[k as HookName] = s;
  }
  return out;
}

/** Everything after relocation: notes, patching sections, funcs, hooks, metadata, symbols. */
function describe(ctx: UploadContext, c: CheckedElf, linked: Linked, base: BaseObject, name: string, hookSecs: Partial<Record<HookName, Section>>): PayloadRecord {
  // Special sections: present once and non-empty (their notes are parsed below).
  for (const n of SPECIAL_SECTIONS) noteOf(c, n, n === SEC.buildId ? 'own build-id (link with ld --build-id)' : n === SEC.depends ? 'dependency build-id' : 'base build-id');
  checkPatchingSections(c);
  const funcs = checkFuncs(ctx, c, linked, base);
  const hooks = readHooks(linked, hookSecs);
  const buildId = toHex(noteOf(c, SEC.buildId, 'own build-id'));
  const dup = ctx.payloadWithBuildId(buildId);
  if (dup) fail('EEXIST', `this payload (build-id ${buildId}) is already loaded as ${dup.name}`);
  const depends = toHex(noteOf(c, SEC.depends, 'dependency build-id'));
  checkXenOnlySections(c);
  const metadata = readModinfo(c);
  const symbols = exportedSymbols(ctx, c, linked, base, funcs);
  const funcsSec = c.elf.section(SEC.funcs);
  return {
    name,
    state: 'CHECKED',
    rc: 0,
    reverted: false,
    safeToReapply: safeToReapply(c),
    buildId,
    depends,
    baseBuildId: toHex(base.buildId!),
    basePath: base.path,
    metadata,
    regions: linked.regions.map((r) => ({ addr: r.addr, size: r.size, perm: r.perm })),
    funcs,
    hooks,
    symbols,
    externals: linked.externals,
    hookArg: linked.reserved,
    funcsAddr: funcsSec ? linked.sectionAddr[funcsSec.index] ?? 0n : 0n,
    text: linked.text,
    uploadSeq: ctx.seq,
  };
}

function checkPatchingSections(c: CheckedElf): void {
  let found = 0;
  for (const n of PATCHING_SECTIONS) {
    const secs = c.elf.sectionsNamed(n);
    if (secs.length === 0) continue;
    if (secs.length > 1) fail('EINVAL', `${n} appears ${secs.length} times`);
    if (secs[0]!.size === 0n) fail('EINVAL', `${n} is empty`, secs[0]!.headerOffset);
    found++;
  }
  if (!found) fail('EINVAL', 'nothing to patch: the payload has neither .livepatch.funcs nor any .livepatch.hooks.* section');
}

/** Per-function checks, in the spec's order; returns the engine's records. */
function checkFuncs(ctx: UploadContext, c: CheckedElf, linked: Linked, base: BaseObject): FuncRecord[] {
  const sec = c.elf.section(SEC.funcs);
  if (!sec) return [];
  if (sec.size % BigInt(FUNC_SIZE) !== 0n) fail('EINVAL', `.livepatch.funcs is ${sec.size} bytes, not a multiple of ${FUNC_SIZE}`, sec.headerOffset);
  const bytes = linked.sectionBytes[sec.index];
  if (!bytes) fail('EINVAL', '.livepatch.funcs is not an allocated section');
  const relocated = linked.relocated.get(sec.index) ?? new Set<number>();
  const out: FuncRecord[] = [];
  for (const f of decodeFuncs(bytes)) {
    const fname = funcName(ctx, linked, f.namePtr, f.index);
    rules.checkVersion(f, fname);
    rules.checkOldSize(f, fname);
    let oldAddr = f.oldAddr;
    if (oldAddr === 0n) {
      oldAddr = resolveOld(ctx, base, fname);
    } else if (!relocated.has(f.index * FUNC_SIZE + FUNC_OFFSETS.oldAddr)) {
      // A literal old_addr is a link-time address of the base: add the load bias.
      oldAddr += base.bias;
    }
    const code = ctx.target.read(oldAddr, 4);
    const patchOffset = rules.checkPatchSize({ newAddr: f.newAddr, newSize: f.newSize, oldSize: f.oldSize }, code, fname);
    rules.checkDistance({ oldAddr, newAddr: f.newAddr }, fname);
    out.push({
      name: fname,
      oldAddr,
      newAddr: f.newAddr,
      oldSize: f.oldSize,
      newSize: f.newSize,
      patchOffset,
      expect: { enabled: f.expect.enabled, len: f.expect.len, rsv: f.expect.rsv, data: toHex(f.expect.data) },
      undo: '',
      applied: false,
    });
  }
  return out;
}

function resolveOld(ctx: UploadContext, base: BaseObject, fname: string): bigint {
  const s = base.lookup(fname);
  if (s) return s.addr;
  const p = ctx.exportedSymbol(fname);
  if (p !== undefined) return p;
  return fail('ENOENT', `function to patch ${fname} is not a symbol of the base ${base.path} nor of a loaded payload`);
}

/** The function name a record points at (in payload memory, else target memory). */
function funcName(ctx: UploadContext, linked: Linked, ptr: bigint, index: number): string {
  if (ptr === 0n) return `funcs[${index}]`;
  let bytes = linked.readLocalUpTo(ptr, MAX_FUNC_NAME);
  if (!bytes) {
    try {
      bytes = ctx.target.read(ptr, MAX_FUNC_NAME);
    } catch {
      fail('EINVAL', `funcs[${index}]: name pointer 0x${ptr.toString(16)} points outside the payload`);
    }
  }
  const end = bytes.indexOf(0);
  if (end < 0) fail('EINVAL', `funcs[${index}]: name is not NUL-terminated within ${MAX_FUNC_NAME} bytes`);
  return Buffer.from(bytes.subarray(0, end)).toString('latin1');
}

/** Hook sections: multi-hook sizes a multiple of 8, single hooks exactly 8 (EINVAL). */
function readHooks(linked: Linked, secs: Partial<Record<HookName, Section>>): HookAddrs {
  const hooks: HookAddrs = { load: [], unload: [] };
  for (const [k, s] of Object.entries(secs) as [HookName, Section][]) {
    const def = HOOK_SECTIONS[k];
    if (s.size % 8n !== 0n) fail('EINVAL', `${def.name} is ${s.size} bytes, not a multiple of 8`, s.headerOffset);
    if (!def.multi && s.size !== 8n) fail('EINVAL', `${def.name} must hold exactly one pointer (8 bytes), not ${s.size}`, s.headerOffset);
    const b = linked.sectionBytes[s.index];
    if (!b) fail('EINVAL', `${def.name} is not an allocated section`, s.headerOffset);
    const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    const ptrs: bigint[] = [];
    for (let o = 0; o < b.length; o += 8) ptrs.push(dv.getBigUint64(o, true));
    if (k === 'load' || k === 'unload') hooks[k] = ptrs;
    else hooks[k] = ptrs[0]!;
  }
  return hooks;
}

/** .modinfo: NUL-terminated key=value strings; the last byte must be NUL. */
function readModinfo(c: CheckedElf): string[] {
  const s = c.elf.section(SEC.modinfo);
  if (!s || s.size === 0n) return [];
  const d = c.elf.data(s);
  if (d[d.length - 1] !== 0) fail('EINVAL', '.modinfo does not end with a NUL byte', Number(s.offset) + d.length - 1);
  const out: string[] = [];
  let o = 0;
  while (o < d.length) {
    const str = cString(d, o, '.modinfo');
    if (str.length) out.push(str);
    o += str.length + 1;
  }
  return out;
}

/** No loaded writable section other than .livepatch.funcs (Xen's safe_to_reapply). */
function safeToReapply(c: CheckedElf): boolean {
  const rw = c.elf.sections.filter((s) => s.index !== 0 && isLoaded(s) && (s.flags & SHF_WRITE) !== 0n);
  return rw.length === 0 || (rw.length === 1 && rw[0]!.name === SEC.funcs);
}

/** The exported symbol table, with the EEXIST rule for new symbols. */
function exportedSymbols(ctx: UploadContext, c: CheckedElf, linked: Linked, base: BaseObject, funcs: FuncRecord[]): ExportedSymbol[] {
  const overriding = new Set(funcs.map((f) => f.newAddr));
  const out: ExportedSymbol[] = [];
  const shnum = c.elf.sections.length;
  for (let i = 1; i < c.symbols.length; i++) {
    const s = c.symbols[i]!;
    if (s.shndx === SHN_UNDEF || s.shndx >= shnum) continue;
    const sec = c.elf.sections[s.shndx]!;
    if ((sec.flags & SHF_ALLOC) === 0n) continue;
    if (s.name === '') continue;
    if ((sec.flags & SHF_MERGE) !== 0n && s.name.startsWith('.L')) continue;
    const addr = linked.symbolValue[i]!;
    if (overriding.has(addr)) continue;
    if (base.hasGlobal(s.name)) fail('EEXIST', `symbol ${s.name} of the payload is already a global symbol of the base ${base.path}`);
    if (ctx.exportedSymbol(s.name) !== undefined) fail('EEXIST', `symbol ${s.name} of the payload is already exported by a loaded payload`);
    out.push({ name: s.name, addr, size: s.size });
  }
  return out;
}

const PAGE = 4096;
const VENEER_ALIGN = 16;

/**
 * Lay out, allocate and fill one RX region holding the preserving veneers
 * of `needs`, near the base, and point each function's record at its
 * veneer. Returns the region (to be written with the payload), or null.
 */
function placeVeneers(target: Target, base: BaseObject, needs: VeneerNeed[], onAlloc: (r: LinkedRegion) => void): LinkedRegion | null {
  if (!needs.length) return null;
  // A veneer's length does not depend on where it is placed (rel32 call).
  const lengths = needs.map((n) => encodePreservingVeneer(0n, 0n, n.registers).length);
  const offsets: number[] = [];
  let size = 0;
  for (const len of lengths) {
    offsets.push(size);
    size = alignUp(size + len, VENEER_ALIGN);
  }
  const rounded = alignUp(size, PAGE);
  const addr = target.allocate(rounded, 'rx', base);
  const region: LinkedRegion = { perm: 'rx', addr, size: rounded, bytes: new Uint8Array(rounded) };
  onAlloc(region);
  needs.forEach((n, i) => {
    const at = addr + BigInt(offsets[i]!);
    const f = n.func;
    if (!fitsI32(BigInt.asIntN(64, f.newAddr - (at + 5n))) || !fitsI32(BigInt.asIntN(64, at - f.oldAddr))) {
      fail('EOVERFLOW', `function ${f.name}: its preserving veneer at 0x${at.toString(16)} is out of rel32 reach of the function or of its replacement`);
    }
    const code = encodePreservingVeneer(at, f.newAddr, n.registers);
    region.bytes.set(code, offsets[i]!);
    f.veneer = { addr: at, size: code.length, registers: n.registers.map((r) => (r.width > 16 ? `${r.width === 32 ? 'y' : 'z'}${r.name.slice(1)}` : r.name)) };
  });
  return region;
}

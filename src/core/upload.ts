/**
 * Upload: place a payload in the target, resolve and relocate it, and
 * check the rules that need a base, in the order of actions.md. The
 * target-free rules are the payload's parse stages (payload/parse.ts),
 * pulled here just where Xen checks them. Returns the new CHECKED record;
 * on any failure the memory it took is freed and nothing is left behind.
 */
import { fail } from '../errors.js';
import { alignUp, SHF_ALLOC, SHF_MERGE, SHN_UNDEF, toHex } from '../elf/index.js';
import { decodeFuncs, FUNC_OFFSETS } from '../payload/funcs.js';
import { Payload, type PayloadFunc, type PayloadHook } from '../payload/parse.js';
import { FUNC_SIZE, HOOK_NAMES, HOOK_SECTIONS } from '../payload/sections.js';
import { link, type Linked, type LinkedRegion } from './linker.js';
import * as rules from './rules.js';
import type { ExportedSymbol, FuncRecord, HookAddrs, PayloadRecord, RegionRecord } from './state.js';
import type { BaseObject, Target } from './target.js';
import { HOOK_ARG_SIZE } from './hookarg.js';
import { assessFunctions, type VeneerNeed } from './safety.js';
import { arch } from '../arch/index.js';

/** What upload needs from the engine. */
export interface UploadContext {
  target: Target;
  /** Exported symbol of a loaded payload. */
  exportedSymbol(name: string): bigint | undefined;
  /** Loaded payload with this build-id (hex), if any. */
  payloadWithBuildId(hex: string): PayloadRecord | undefined;
  /** Journal allocations (one call per allocation batch) so a killed tool can free them later. */
  onAlloc(r: RegionRecord[]): void;
  seq: number;
}

/** Largest function name read for a record, with its NUL (Xen: KSYM_NAME_LEN). */
const MAX_FUNC_NAME = 128;

/** Pick the base object named by .livepatch.xen_depends (EINVAL / ENODATA). */
export function findBase(target: Target, p: Payload): BaseObject {
  const want = p.baseBuildId().bytes;
  const base = target.findBase(want);
  if (base) return base;
  const bases = target.bases();
  if (target.kind === 'image' && bases.every((b) => !b.buildId)) {
    fail('ENODATA', `the base image ${bases[0]?.path ?? ''} has no build-id, so no payload can be checked against it`);
  }
  const have = bases.filter((b) => b.buildId).map((b) => `${b.path} ${toHex(b.buildId!)}`);
  return fail('EINVAL', `payload was built for base build-id ${toHex(want)}, which matches no ${target.kind === 'image' ? 'image' : 'object loaded in the process'} (${have.length ? have.join(', ') : 'none has a build-id'})`);
}

/**
 * The last payload parsed, by the identity of its bytes: a fleet uploads
 * one file's bytes (one array, never written) into every process, and its
 * ELF checks and decoded stages (Payload memoises each, and nothing of the
 * link writes into them) were a tenth of a process's CPU. A stage that
 * failed is not memoised, so each process still gets its own error.
 */
let lastParsed: { bytes: Uint8Array; payload: Payload } | null = null;

function parsed(bytes: Uint8Array): Payload {
  if (lastParsed?.bytes !== bytes) lastParsed = { bytes, payload: new Payload(bytes) };
  return lastParsed.payload;
}

/** Upload pipeline: `bytes` are untrusted; the payload's parse stages run in Xen's order between the base steps. */
export function upload(ctx: UploadContext, name: string, bytes: Uint8Array): PayloadRecord {
  const p = parsed(bytes);
  const base = findBase(ctx.target, p);
  // Whether any hook section exists decides the layout (the hook argument); its rules come later.
  const wantHookArg = HOOK_NAMES.some((k) => p.elf.section(HOOK_SECTIONS[k].name));
  // One stop of a live target for everything below (its memory, IFUNC resolvers, veneers): one each otherwise.
  const place = (): PayloadRecord => placeAndCheck(ctx, p, base, name, wantHookArg);
  return ctx.target.batch ? ctx.target.batch(place) : place();
}

/** Allocate, link, check and write the payload; on failure free what it took. */
function placeAndCheck(ctx: UploadContext, p: Payload, base: BaseObject, name: string, wantHookArg: boolean): PayloadRecord {
  const allocated: LinkedRegion[] = [];
  try {
    const linked = link(p, {
      target: ctx.target,
      base,
      exports: (n) => ctx.exportedSymbol(n),
      reserveRw: wantHookArg ? HOOK_ARG_SIZE : 0,
      onAlloc: (rs) => {
        allocated.push(...rs);
        ctx.onAlloc(rs.map((r) => ({ addr: r.addr, size: r.size, perm: r.perm })));
      },
    });
    const rec = checkedRecord(ctx, p, linked, base, name);
    const plan = assessFunctions(base, rec.funcs);
    rec.hazards = plan.hazards;
    const veneers = placeVeneers(ctx.target, base, plan.veneers, (r) => {
      allocated.push(r);
      ctx.onAlloc([{ addr: r.addr, size: r.size, perm: r.perm }]);
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

/** Everything after relocation, in Xen's order: notes, patching sections, funcs, hooks, EEXIST, metadata, symbols. */
function checkedRecord(ctx: UploadContext, p: Payload, linked: Linked, base: BaseObject, name: string): PayloadRecord {
  const { buildId, depends } = p.notes();
  const funcs = checkFuncs(ctx, p, linked, base);
  const hooks = readHooks(linked, p.hooks());
  const dup = ctx.payloadWithBuildId(buildId.hex);
  if (dup) fail('EEXIST', `this payload (build-id ${buildId.hex}) is already loaded as ${dup.name}`);
  const metadata = p.metadata();
  const symbols = exportedSymbols(ctx, p, linked, base, funcs);
  const funcsSec = p.funcsSection();
  return {
    name,
    state: 'CHECKED',
    rc: 0,
    reverted: false,
    safeToReapply: p.safeToReapply(),
    buildId: buildId.hex,
    depends: depends.hex,
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

/** Per-function rules that need the base, after each record's target-free ones; returns the engine's records. */
function checkFuncs(ctx: UploadContext, p: Payload, linked: Linked, base: BaseObject): FuncRecord[] {
  const parsed = p.funcs();
  const sec = p.funcsSection();
  if (!sec) return [];
  // The relocated records: new_addr and old_addr hold their run-time values here.
  const relocatedRecords = decodeFuncs(linked.sectionBytes[sec.index]!);
  const relocated = linked.relocated.get(sec.index) ?? new Set<number>();
  return parsed.map((raw: PayloadFunc): FuncRecord => {
    const f = relocatedRecords[raw.index]!;
    const fname = funcName(ctx, linked, f.namePtr, f.index);
    let oldAddr = f.oldAddr;
    if (oldAddr === 0n) {
      oldAddr = resolveOld(ctx, base, fname);
    } else if (!relocated.has(f.index * FUNC_SIZE + FUNC_OFFSETS.oldAddr)) {
      // A literal old_addr is a link-time address of the base: add the load bias.
      oldAddr += base.bias;
    }
    rules.checkNotIfunc(base, oldAddr, fname);
    const code = ctx.target.read(oldAddr, 4);
    const patchOffset = rules.checkPatchSize({ isNop: raw.isNop, newSize: f.newSize, oldSize: f.oldSize }, code, fname);
    rules.checkDistance({ oldAddr, newAddr: f.newAddr }, fname);
    return {
      name: fname,
      oldAddr,
      newAddr: f.newAddr,
      oldSize: f.oldSize,
      newSize: f.newSize,
      patchOffset,
      expect: { enabled: f.expect.enabled, len: f.expect.len, rsv: f.expect.rsv, data: toHex(f.expect.data) },
      undo: '',
      applied: false,
    };
  });
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

/** The hooks' run-time addresses, from the relocated sections (their size rules ran when parsed). */
function readHooks(linked: Linked, parsed: PayloadHook[]): HookAddrs {
  const hooks: HookAddrs = { load: [], unload: [] };
  for (const h of parsed) {
    const b = linked.sectionBytes[h.section.index]!;
    const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    const ptrs: bigint[] = [];
    for (let o = 0; o < b.length; o += 8) ptrs.push(dv.getBigUint64(o, true));
    if (h.kind === 'load' || h.kind === 'unload') hooks[h.kind] = ptrs;
    else hooks[h.kind] = ptrs[0]!;
  }
  return hooks;
}

/** The exported symbol table, with the EEXIST rule for new symbols. */
function exportedSymbols(ctx: UploadContext, p: Payload, linked: Linked, base: BaseObject, funcs: FuncRecord[]): ExportedSymbol[] {
  const overriding = new Set(funcs.map((f) => f.newAddr));
  const out: ExportedSymbol[] = [];
  const shnum = p.elf.sections.length;
  for (let i = 1; i < p.symbols.length; i++) {
    const s = p.symbols[i]!;
    if (s.shndx === SHN_UNDEF || s.shndx >= shnum) continue;
    const sec = p.elf.sections[s.shndx]!;
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
  const lengths = needs.map((n) => arch.encodePreservingVeneer(0n, 0n, n.registers).length);
  const offsets: number[] = [];
  let size = 0;
  for (const len of lengths) {
    offsets.push(size);
    size = alignUp(size + len, VENEER_ALIGN);
  }
  const rounded = alignUp(size, PAGE);
  const [addr] = target.allocate([{ size: rounded, perm: 'rx' }], base) as [bigint];
  const region: LinkedRegion = { perm: 'rx', addr, size: rounded, bytes: new Uint8Array(rounded) };
  onAlloc(region);
  needs.forEach((n, i) => {
    const at = addr + BigInt(offsets[i]!);
    const f = n.func;
    if (!arch.branchReaches(BigInt.asIntN(64, f.newAddr - (at + BigInt(arch.jumpLen)))) || !arch.branchReaches(BigInt.asIntN(64, at - f.oldAddr))) {
      fail('EOVERFLOW', `function ${f.name}: its preserving veneer at 0x${at.toString(16)} is out of rel32 reach of the function or of its replacement`);
    }
    const code = arch.encodePreservingVeneer(at, f.newAddr, n.registers);
    region.bytes.set(code, offsets[i]!);
    f.veneer = { addr: at, size: code.length, registers: n.registers.map(arch.keptName) };
  });
  return region;
}

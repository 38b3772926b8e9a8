/**
 * What the loader does about compiler hazards of the functions a payload
 * patches (spec/real-programs.md). The base object supplies the analysis;
 * this module decides, per function:
 *
 *   - callers rely on caller-saved registers (-fipa-ra): enter the
 *     replacement through a preserving veneer that keeps exactly those;
 *   - that cannot be done safely (stack arguments, unknown stack use, a
 *     register a veneer cannot keep): refuse, naming the function;
 *   - other code branches into the bytes the patch writes (a second
 *     entry point): refuse, it would run half an instruction;
 *   - nothing reaches the function, clones, aliases, entries past the
 *     patched bytes: report.
 *
 * On a report-only base (Xen's own image: its loader builds no veneers)
 * every hazard is reported and nothing is refused, so outcomes stay Xen's.
 */
import { fail, toHotstackError } from '../errors.js';
import { arch, type KeptRegister } from '../arch/index.js';
import type { FunctionReport, Hazard, InteriorEntry } from '../analysis/types.js';
import { patchLength } from './patching.js';
import type { FuncRecord, PayloadRecord } from './state.js';
import type { BaseObject } from './target.js';

/** A function that will be entered through a preserving veneer. */
export interface VeneerNeed {
  func: FuncRecord;
  registers: KeptRegister[];
}

export interface SafetyPlan {
  hazards: Hazard[];
  veneers: VeneerNeed[];
}

/**
 * The analysis of `f`, when the base can analyse it and the report is
 * about the same address; a base whose code cannot be analysed gives a
 * hazard instead (the patch goes on as it would without analysis).
 */
function reportFor(base: BaseObject, f: FuncRecord, hazards: Hazard[]): FunctionReport | undefined {
  if (!base.analyze) return undefined;
  let r: FunctionReport | undefined;
  try {
    r = base.analyze(f.name);
  } catch (e) {
    const err = toHotstackError(e);
    hazards.push({ function: f.name, kind: 'unanalysable', detail: `${base.path} could not be analysed: ${err.errno}: ${err.message}` });
    return undefined;
  }
  return r && r.addr + base.bias === f.oldAddr ? r : undefined;
}

function regList(regs: KeptRegister[]): string {
  return regs.map((r) => r.name).join(', ');
}

/**
 * Assess every jump-patched function of a payload. Throws EOPNOTSUPP for a
 * function whose callers rely on registers when no veneer can keep them.
 */
export function assessFunctions(base: BaseObject, funcs: FuncRecord[]): SafetyPlan {
  const hazards: Hazard[] = [];
  const veneers: VeneerNeed[] = [];
  for (const f of funcs) {
    const r = reportFor(base, f, hazards);
    checkInterposed(base, f, r, hazards);
    if (!r) continue;
    hazards.push(...r.hazards.map((h) => ({ ...h, function: f.name })));
    if (!base.reportOnly) refuseMidPatchEntry(f, r);
    // NOP patches change bytes in place: callers see the same function.
    if (f.newAddr === 0n || !r.reliedRegisters.length || base.reportOnly) continue;
    const registers = r.reliedRegisters.map((x) => ({ name: x.name, width: x.width }));
    const odd = registers.filter((x) => !arch.canKeep(x.name));
    const why = odd.length
      ? `they rely on ${regList(odd)}, which a veneer cannot keep`
      : r.stackArguments === true
        ? 'it takes arguments on the stack, which a veneer (a call in between) would shift'
        : r.stackArguments === 'unknown'
          ? 'its use of the stack could not be analysed, so a veneer (a call in between) might shift its arguments'
          : null;
    if (why) {
      fail('EOPNOTSUPP', `function ${f.name}: its callers keep values in ${regList(registers)} across the call (gcc -fipa-ra), which a replacement may clobber, and no preserving veneer can be used: ${why}; patch its callers as well (build the payload from a source patch) or rebuild the program with -flive-patching=inline-clone`);
    }
    veneers.push({ func: f, registers });
  }
  return { hazards, veneers };
}

/**
 * In a live process, another object first in the lookup order that defines
 * `f`'s name takes every call through the PLT (an LD_PRELOAD library, the
 * program itself). Code of the base that reaches `f` directly (a call, a
 * jump, its address taken) still gets the patch: a hazard. Without such
 * code the patch would change nothing: EOPNOTSUPP.
 */
function checkInterposed(base: BaseObject, f: FuncRecord, r: FunctionReport | undefined, hazards: Hazard[]): void {
  const by = base.interposer?.(f.name);
  if (by === undefined) return;
  const direct = r?.callers.filter((c) => c.kind === 'call' || c.kind === 'jmp' || c.kind === 'address' || c.kind === 'data') ?? [];
  const bound = `in this process ${f.name} is bound to ${by}, which comes before ${base.path} in the dynamic linker's lookup order (LD_PRELOAD, or the program defines it): calls through the PLT go there`;
  if (r && !direct.length) {
    fail('EOPNOTSUPP', `function ${f.name}: ${bound}, and nothing in ${base.path} calls it directly, so the patch would change nothing: patch ${by}'s ${f.name} instead`);
  }
  hazards.push({
    function: f.name, kind: 'interposed',
    detail: `${bound}; only ${r ? `the ${direct.length} direct reference${direct.length === 1 ? ' in ' + base.path + ' reaches' : 's in ' + base.path + ' reach'}` : `${base.path}'s own direct calls reach`} the patch`,
  });
}

/**
 * The first branch that would land inside the bytes the patch of `f`
 * writes (past their first byte): another function's, or `f`'s own when
 * other code enters `f` past its start (then a path into `f` survives the
 * patch and may loop back into them).
 */
export function midPatchEntry(f: FuncRecord, entries: InteriorEntry[]): InteriorEntry | undefined {
  const from = f.patchOffset;
  const to = from + patchLength(f);
  const inside = (e: InteriorEntry): boolean => e.offset > from && e.offset < to;
  // Bytes no symbol or unwind entry covers may be data the sweep decoded: reported, not acted on.
  const foreign = entries.filter((e) => !e.own && e.inCode);
  return foreign.find(inside) ?? (foreign.length ? entries.find((e) => e.own && inside(e)) : undefined);
}

/** EOPNOTSUPP when a branch lands inside the patch of `f` (see midPatchEntry). */
function refuseMidPatchEntry(f: FuncRecord, r: FunctionReport): void {
  const e = midPatchEntry(f, r.interiorEntries);
  if (!e) return;
  const writes = f.newAddr !== 0n ? `the ${patchLength(f)}-byte jump` : `the ${patchLength(f)} bytes of NOPs`;
  const why = e.own ? `, and other code enters ${f.name} past its start, so that branch can still run` : '';
  fail(
    'EOPNOTSUPP',
    `function ${f.name}: ${e.kind === 'call' ? 'a call' : 'a jump'} at 0x${e.at.toString(16)}${e.in ? ` in ${e.in}` : ''} lands ${e.offset} bytes into it, inside ${writes} a patch writes at offset ${f.patchOffset}${why}: ` +
      'it would run half an instruction (a second entry point, as hand-written assembly has); patch the functions that branch there instead, or the callers of this one',
  );
}

/** The functions of `p` entered through a preserving veneer, and the registers each keeps (reports, list --json). */
export function veneersOf(p: PayloadRecord): { function: string; registers: string[]; address: string }[] {
  return p.funcs.filter((f) => f.veneer).map((f) => ({ function: f.name, registers: f.veneer!.registers, address: `0x${f.veneer!.addr.toString(16)}` }));
}

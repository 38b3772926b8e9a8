/**
 * One small check per rule of actions.md and payload-format.md, each
 * throwing a HotstackError with the rule's errno. The engine calls them in
 * Xen's order.
 */
import { fail } from '../errors.js';
import { bytesEqual, fromHex, toHex } from '../elf/bytes.js';
import { arch } from '../arch/index.js';
import { MAX_OPAQUE } from '../payload/sections.js';
import { checkJumpRoom, checkNopBeyondEndbr } from '../payload/patch-size.js';
import type { FuncRecord, PayloadRecord, PayloadStateName } from './state.js';
import type { BaseObject } from './target.js';

/** Upload: no other loaded payload has this name (EEXIST). */
export function checkUniqueName(name: string, existing: PayloadRecord | undefined): void {
  if (existing) fail('EEXIST', `a payload named ${name} is already loaded (${existing.state})`);
}

/**
 * The patch size rules that need the old function's first bytes (`code`,
 * for an endbr64 the patch keeps): the NOPs must reach past it, a jump
 * must fit after it. Returns the patch offset (4 after endbr64). The
 * target-free NOP rules ran when the payload was parsed.
 */
export function checkPatchSize(f: { isNop: boolean; newSize: number; oldSize: number }, code: Uint8Array, name: string): number {
  const off = arch.patchOffset(code);
  if (f.isNop) checkNopBeyondEndbr(f.newSize, off, `function ${name}`);
  else checkJumpRoom(f.oldSize, off, `function ${name}`);
  return off;
}

/**
 * The function to patch is not an IFUNC (STT_GNU_IFUNC) of the base
 * (EOPNOTSUPP): its code is the resolver, which ran when the program was
 * linked and chose an implementation per CPU. Callers already bound jump
 * to that implementation, so a patched resolver changes nothing they run
 * (found on glibc's strlen: the load completed, strlen kept its answers),
 * and a call bound lazily later would take the replacement's result for
 * an address.
 */
export function checkNotIfunc(base: BaseObject, oldAddr: bigint, name: string): void {
  const ifuncs = base.ifuncsAt?.(oldAddr) ?? [];
  if (!ifuncs.length) return;
  const what = ifuncs.includes(name) ? `${name} is an IFUNC` : `${name} is the resolver of the IFUNC ${ifuncs[0]}`;
  fail(
    'EOPNOTSUPP',
    `function ${name}: ${what} of ${base.path} (the resolver picked an implementation when the program started; the calls already bound would not change): ` +
      'patch the implementations it can select instead (local symbols such as glibc\'s __strlen_avx2 and __strlen_evex, in the object\'s .symtab or debug file)',
  );
}

/** A jump's rel32 reaches the replacement (EOVERFLOW). */
export function checkDistance(f: { oldAddr: bigint; newAddr: bigint }, name: string): void {
  if (f.newAddr === 0n) return;
  const d = BigInt.asIntN(64, f.oldAddr - f.newAddr);
  if (!arch.branchReaches(d)) {
    fail('EOVERFLOW', `function ${name}: replacement at 0x${f.newAddr.toString(16)} is too far from 0x${f.oldAddr.toString(16)} for a rel32 jump`);
  }
}

/** APPLY rule 1: a reverted payload with writable data must be re-uploaded. */
export function checkReapply(p: PayloadRecord): void {
  if (p.reverted && !p.safeToReapply) {
    fail('EINVAL', `${p.name} was reverted and has writable data (.data/.bss) that is no longer pristine: unload and upload it again`);
  }
}

/** APPLY rule 2: depends on the top of the applied stack (or on the base when empty). */
export function checkDependsOnTop(p: PayloadRecord, top: PayloadRecord | undefined, loaded: PayloadRecord[] = []): void {
  const want = top ? top.buildId : p.baseBuildId;
  if (p.depends !== want) {
    const against = top ? `the top of the applied stack, ${top.name} (build-id ${top.buildId})` : `the base ${p.basePath} (build-id ${p.baseBuildId}), as nothing is applied`;
    const dep = loaded.find((x) => x.buildId === p.depends);
    const hint = dep
      ? dep.state === 'APPLIED' ? ` (it stacks on ${dep.name}: revert what is above ${dep.name} first, or use --nodeps)` : ` (it stacks on ${dep.name}: apply ${dep.name} first, or use --nodeps)`
      : p.depends === p.baseBuildId ? ' (it stacks on the bare base: revert the applied stack first, or use REPLACE for a cumulative payload)' : ' (the payload it stacks on is not loaded; or use --nodeps)';
    fail('EINVAL', `${p.name} depends on build-id ${p.depends}, but it was checked against ${against}${hint}`);
  }
}

/** REPLACE: a cumulative payload must stand on the bare base. */
export function checkDependsOnBase(p: PayloadRecord): void {
  if (p.depends !== p.baseBuildId) {
    fail('EINVAL', `${p.name} depends on build-id ${p.depends}, not on the base ${p.basePath} (build-id ${p.baseBuildId}): REPLACE needs a cumulative payload built on the base`);
  }
}

/** REVERT: only the top of the stack. */
export function checkIsTop(p: PayloadRecord, top: PayloadRecord | undefined): void {
  if (top && top.name !== p.name) fail('EBUSY', `${p.name} is not the top of the applied stack: revert ${top.name} first`);
}

/** Wrong state: the action does not apply in this state. */
export function checkState(p: PayloadRecord, allowed: PayloadStateName, verb: string): void {
  if (p.state !== allowed) fail('EINVAL', `${p.name} is ${p.state}; ${verb} needs ${allowed}`);
}

export function hasVetoingHooks(p: PayloadRecord): boolean {
  return p.hooks.preapply !== undefined || p.hooks.postapply !== undefined || p.hooks.prerevert !== undefined || p.hooks.postrevert !== undefined;
}

/**
 * The old-code check of one function against `live` (the bytes at
 * old_addr). Xen's order: EFAULT, EOVERFLOW, EINVAL (reserved), ERANGE,
 * EINVAL (mismatch).
 */
export function checkExpectation(f: FuncRecord, live: (addr: bigint, len: number) => Uint8Array): void {
  const e = f.expect;
  if (!e.enabled) return;
  if (f.oldAddr === 0n) fail('EFAULT', `function ${f.name}: expectation enabled but old_addr is 0`);
  if (e.len > MAX_OPAQUE) fail('EOVERFLOW', `function ${f.name}: expectation length ${e.len} is more than ${MAX_OPAQUE}`);
  if (e.rsv !== 0) fail('EINVAL', `function ${f.name}: expectation reserved bits are set (${e.rsv})`);
  if (f.oldSize < e.len) fail('ERANGE', `function ${f.name}: expectation of ${e.len} bytes is longer than the function (${f.oldSize})`);
  const want = fromHex(e.data).subarray(0, e.len);
  const got = live(f.oldAddr, e.len);
  if (!bytesEqual(want, got)) {
    fail('EINVAL', `function ${f.name}: expected code ${toHex(want)} at 0x${f.oldAddr.toString(16)}, found ${toHex(got)}`);
  }
}

/**
 * The one place that picks the instruction set, as Xen picks its asm/
 * headers at build time: everything outside src/arch uses `arch` and the
 * types re-exported here, never an implementation directly.
 */
import type { Arch } from './arch.js';
import { x86_64 } from './x86_64/index.js';
import type { Regs } from './x86_64/regs.js';

export type { Arch, BatchCall, BatchStub, KeptRegister, PatchArch, ProcessAbi, RelocKind, Stub } from './arch.js';
export type { Regs, RegName } from './x86_64/regs.js';

/** The instruction set of the processes and images hotstack patches. */
export const arch: Arch<Regs> = x86_64;


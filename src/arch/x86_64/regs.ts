/** x86-64 general registers as ptrace (PTRACE_GETREGS) lays them out. */

/** `struct user_regs_struct`, field order as the kernel lays it out. */
export const REG_NAMES = [
  'r15', 'r14', 'r13', 'r12', 'rbp', 'rbx', 'r11', 'r10', 'r9', 'r8',
  'rax', 'rcx', 'rdx', 'rsi', 'rdi', 'orig_rax', 'rip', 'cs', 'eflags',
  'rsp', 'ss', 'fs_base', 'gs_base', 'ds', 'es', 'fs', 'gs',
] as const;

export type RegName = (typeof REG_NAMES)[number];

/** General registers of a thread, as unsigned 64-bit values. */
export type Regs = Record<RegName, bigint>;

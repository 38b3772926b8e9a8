/**
 * The low-level process layer: ptrace, address space, memory, stopping the
 * world, remote system calls and function calls, and the per-process lock.
 * The process Target is built on top of these.
 */
export * as ptrace from './ptrace.js';
export type { Regs, RegName, WaitStatus } from './ptrace.js';
export {
  parseMaps,
  readMaps,
  isFileBacked,
  groupObjects,
  readObjects,
  findFreeGaps,
  findFreeGapsFor,
  readBrk,
  PAGE,
  type MapEntry,
  type MappedObject,
  type GapOptions,
} from './maps.js';
export { ProcessMemory, readMemory } from './memory.js';
export {
  StoppedProcess,
  StoppedThread,
  leaderLeftEarly,
  type OwedSignal,
  type ThreadState,
} from './threads.js';
export {
  PROT_READ,
  PROT_WRITE,
  PROT_EXEC,
  MAP_PRIVATE,
  MAP_ANONYMOUS,
  MAP_FIXED_NOREPLACE,
  remoteSyscall,
  remoteSyscalls,
  remoteMmap,
  remoteMunmap,
  remoteMprotect,
  type SyscallResult,
} from './remote/syscalls.js';
export { remoteCall, type CallResult } from './remote/calls.js';
export { findSyscallInsn, useRuntimePage, RUNTIME_PAGE_SIZE } from './remote/runtime.js';
export {
  readProcFile,
  procBase,
  readStackLimit,
  listTids,
  threadSchedState,
  processStartTime,
} from './procfs.js';
export {
  processIdentity,
  stateDir,
  lockProcess,
  ProcessLock,
  type ProcessIdentity,
} from './lock.js';

/** Names of the sections that carry meaning in a payload (payload-format.md). */
export const SEC = {
  buildId: '.note.gnu.build-id',
  depends: '.livepatch.depends',
  xenDepends: '.livepatch.xen_depends',
  funcs: '.livepatch.funcs',
  modinfo: '.modinfo',
} as const;

/** Hook sections: multi (arrays of pointers) and single (exactly one pointer). */
export const HOOK_SECTIONS = {
  load: { name: '.livepatch.hooks.load', multi: true },
  unload: { name: '.livepatch.hooks.unload', multi: true },
  preapply: { name: '.livepatch.hooks.preapply', multi: false },
  apply: { name: '.livepatch.hooks.apply', multi: false },
  postapply: { name: '.livepatch.hooks.postapply', multi: false },
  prerevert: { name: '.livepatch.hooks.prerevert', multi: false },
  revert: { name: '.livepatch.hooks.revert', multi: false },
  postrevert: { name: '.livepatch.hooks.postrevert', multi: false },
} as const;

/** The hooks a payload can have: the one type every layer uses. */
export type HookName = keyof typeof HOOK_SECTIONS;

/** The hooks whose section is an array of pointers (the others hold exactly one). */
export type MultiHook = { [K in HookName]: (typeof HOOK_SECTIONS)[K]['multi'] extends true ? K : never }[HookName];

/** Every hook, in section order. */
export const HOOK_NAMES = Object.keys(HOOK_SECTIONS) as HookName[];

/** The patching sections: at least one must be present ("nothing to patch"). */
export const PATCHING_SECTIONS: string[] = [SEC.funcs, ...Object.values(HOOK_SECTIONS).map((h) => h.name)];

/**
 * Xen-only hypervisor tables: accepted and size-checked (element size, or
 * 0 when any size is fine). They have no meaning for a process target.
 */
export const XEN_ONLY_SECTIONS: Record<string, number> = {
  '.altinstructions': 14,
  '.altinstr_replacement': 0,
  '.alt_call_sites': 4,
  '.ex_table': 8,
  '.fixup': 0,
  ...Object.fromEntries(Array.from({ length: 4 }, (_, i) => [`.bug_frames.${i}`, 8])),
};

/** Size of struct livepatch_func. */
export const FUNC_SIZE = 104;
/** Largest NOP patch / expectation (the opaque area is 31 bytes). */
export const MAX_OPAQUE = 31;
export const PAYLOAD_VERSION = 2;
/** Largest upload (Xen: LIVEPATCH_MAX_SIZE). */
export const MAX_PAYLOAD_SIZE = 2 * 1024 * 1024;
/** Largest writable NOBITS section. */
export const MAX_BSS = 2 * 1024 * 1024;
/** Name length limit, without the NUL (XEN_LIVEPATCH_NAME_SIZE 128). */
export const MAX_NAME = 127;
/**
 * Most symbols and relocation entries a payload may have. A 2 MiB file
 * cannot hold more than 87381 24-byte entries anyway; the explicit bounds
 * are checked from the section headers, before a table is parsed.
 */
export const MAX_SYMBOLS = 65536;
export const MAX_RELOCATIONS = 65536;

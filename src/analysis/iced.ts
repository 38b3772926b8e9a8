/**
 * iced-x86, loaded on first use. Its WebAssembly module reserves a large
 * range of address space when it is instantiated, which fails under a
 * virtual memory limit (`ulimit -v`): commands that never analyse code
 * must not pay for it or fail because of it. Modules that keep iced's
 * enum values in constants register an initialiser here; BaseAnalysis
 * loads iced before anything else runs.
 */
import { createRequire } from 'node:module';
import { fail } from '../errors.js';

export type Iced = typeof import('iced-x86');

let lib: Iced | undefined;
const inits: ((i: Iced) => void)[] = [];

/** Run `f` with iced once it is loaded (now, if it already is). */
export function onIced(f: (i: Iced) => void): void {
  inits.push(f);
  if (lib) f(lib);
}

/** Load iced-x86 (once) and run the registered initialisers. ENOMEM when its WebAssembly cannot be instantiated. */
export function loadIced(): Iced {
  if (lib) return lib;
  let l: Iced;
  try {
    l = createRequire(import.meta.url)('iced-x86') as Iced;
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    fail('ENOMEM', `the x86-64 decoder (iced-x86, WebAssembly) cannot be loaded: ${why}; under a virtual memory limit (ulimit -v) run node with --disable-wasm-trap-handler`);
  }
  lib = l;
  for (const f of inits) f(l);
  return l;
}

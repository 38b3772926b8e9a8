/**
 * One command's session on a live process: lock it, open the engine (which
 * repairs an action a killed tool left half-done), run, release.
 */
import { Engine } from '../../core/engine.js';
import type { StatFacts } from './procfs.js';
import { ProcessTarget } from './target.js';

/** Run `fn` with an engine on process `pid` (`known`: its stat facts, just read); the process is always released. */
export function openProcessEngine<T>(pid: number, fn: (e: Engine) => T, known?: StatFacts): T {
  const target = ProcessTarget.open(pid, undefined, known);
  try {
    const r = fn(new Engine(target));
    target.flushState();
    return r;
  } finally {
    target.close();
  }
}

/** Placeholder until the process target lands. */
import { fail } from '../../errors.js';
import type { Engine } from '../../core/engine.js';
export function openProcessEngine(_pid: number, _fn: (e: Engine) => number): number {
  return fail('ENOSYS', 'live process targets are not available yet');
}

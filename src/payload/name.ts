/** Payload names: the rule (actions.md upload) and the name a file gets, shared by the engine, the CLI and `hotstack build`. */
import { fail } from '../errors.js';
import { MAX_NAME } from './sections.js';

/** Payload names: 1..127 bytes, no NUL (EINVAL). `hint` says how to choose another. */
export function checkPayloadName(name: string, hint = ''): void {
  if (name.length === 0) fail('EINVAL', `payload name is empty${hint}`);
  if (Buffer.byteLength(name) > MAX_NAME) fail('EINVAL', `payload name ${name} is ${Buffer.byteLength(name)} bytes; at most ${MAX_NAME}${hint}`);
  if (name.includes('\0')) fail('EINVAL', `payload name contains a NUL byte${hint}`);
}

/** The payload name `load`, `check` and `build` use for a file: its base name without the last extension. */
export function nameFromFile(file: string): string {
  const base = file.split('/').pop() ?? file;
  const dot = base.lastIndexOf('.');
  return dot > 0 ? base.slice(0, dot) : base;
}

/** The payload name rule (actions.md upload), shared by the engine and `hotstack build`. */
import { fail } from '../errors.js';
import { MAX_NAME } from './sections.js';

/** Payload names: 1..127 bytes, no NUL (EINVAL). `hint` says how to choose another. */
export function checkPayloadName(name: string, hint = ''): void {
  if (name.length === 0) fail('EINVAL', `payload name is empty${hint}`);
  if (Buffer.byteLength(name) > MAX_NAME) fail('EINVAL', `payload name ${name} is ${Buffer.byteLength(name)} bytes; at most ${MAX_NAME}${hint}`);
  if (name.includes('\0')) fail('EINVAL', `payload name contains a NUL byte${hint}`);
}

/**
 * The size rules of a patch (payload-format.md), shared by the upload
 * (from the record and the old function's first bytes) and `hotstack
 * build` (before it writes the record), so both refuse the same patches.
 */
import { fail } from '../errors.js';
import { arch } from '../arch/index.js';
import { MAX_OPAQUE } from './sections.js';

/**
 * A NOP patch of `newSize` bytes over a function of `oldSize` bytes: at
 * most 31 bytes (EOPNOTSUPP), no larger than the function (EINVAL). `what`
 * names the patch; `offset` is the record's new_size field.
 */
export function checkNopSize(newSize: number, oldSize: number, what: string, offset?: number): void {
  if (newSize > MAX_OPAQUE) fail('EOPNOTSUPP', `${what}: NOP patch of ${newSize} bytes; at most ${MAX_OPAQUE}`, offset);
  if (oldSize < newSize) fail('EINVAL', `${what}: NOP patch of ${newSize} bytes is larger than the function (old_size ${oldSize})`, offset);
}

/**
 * The NOPs start after a function's endbr64 (`endbrLen` 4, else 0): a NOP
 * patch no longer than it would change nothing (EINVAL). Needs the old
 * function's first bytes, so it runs once the function is found.
 */
export function checkNopBeyondEndbr(newSize: number, endbrLen: number, what: string): void {
  if (endbrLen && newSize <= endbrLen) {
    fail('EINVAL', `${what} starts with endbr64: a NOP patch of ${newSize} bytes would only cover it (NOP more than ${endbrLen} bytes)`);
  }
}

/** The bytes a jump patch needs: the jump, after a kept endbr64 (`endbrLen` 0 or 4). */
export function jumpRoom(endbrLen: number): number {
  return arch.jumpLen + endbrLen;
}

/** A jump must fit in the function, after a kept endbr64 (EINVAL). */
export function checkJumpRoom(oldSize: number, endbrLen: number, what: string): void {
  const needed = jumpRoom(endbrLen);
  if (oldSize < needed) {
    fail('EINVAL', `${what}: old_size ${oldSize} is too small for a ${arch.jumpLen}-byte jump${endbrLen ? ` after its ${arch.landingPad.name}` : ''} (needs at least ${needed})`);
  }
}

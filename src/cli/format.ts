/** Output formatting shared by the commands: errors, exit codes, the list table. */
import { ERRNO, errnoName, HotstackError, knownErrno, STRERROR } from '../errors.js';
import type { PayloadRecord } from '../core/state.js';
import type { ListEntryJson } from './json-types.js';
import { basename } from 'node:path';

/** Exit status for an error: 2 when worth retrying (EAGAIN, EBUSY), else 1. */
export function exitCodeFor(e: HotstackError): number {
  return e.errno === 'EBUSY' || e.errno === 'EAGAIN' ? 2 : 1;
}

/** `Error 22: EINVAL: message` as xen-livepatch prints it (positive errno). */
export function errorLine(e: HotstackError): string {
  return `Error ${ERRNO[e.errno]}: ${e.errno}: ${e.message}`;
}

/** Errno name and text for a (negative) rc, for the list's `(errno, message)`. */
export function rcText(rc: number): string {
  const name = knownErrno(rc);
  return name ? `${name}, ${STRERROR[name]}` : `${-rc}, unknown error`;
}

/** The errno name of a (negative) rc, null for 0: list --json's `errno`. */
export function errnoOf(rc: number): string | null {
  return rc === 0 ? null : errnoName(rc);
}

/**
 * The xen-livepatch list table, plus a last column: the base object's
 * file name, so a process with stacks on several objects (the program,
 * its libraries) reads clearly. xen-livepatch's columns keep their layout;
 * metadata is padded so the base column lines up (except on rows with a
 * non-zero rc, whose status cell is longer, unpadded as in xen-livepatch).
 */
export function listTable(list: PayloadRecord[]): string {
  if (!list.length) return 'Nothing to list\n';
  const meta = list.map((p) => p.metadata.join(';'));
  const w = Math.max(13, ...meta.map((m) => m.length));
  let out = ` ID                                     | status     | ${'metadata'.padEnd(w)} | base\n`;
  out += `----------------------------------------+------------+${'-'.repeat(w + 2)}+---------------\n`;
  list.forEach((p, i) => {
    // As xen-livepatch: the state, the rc when non-zero, then "    | " and the metadata.
    out += `${p.name.padEnd(40)}| ${p.state}${p.rc ? ` (${rcText(p.rc)})` : ''}    | ${meta[i]!.padEnd(w)} | ${basename(p.basePath)}\n`;
  });
  return out;
}

/** list --json entry. */
export function listJson(p: PayloadRecord): ListEntryJson {
  return {
    name: p.name,
    state: p.state,
    rc: p.rc,
    errno: errnoOf(p.rc),
    buildId: p.buildId,
    depends: p.depends,
    base: { path: p.basePath, buildId: p.baseBuildId },
    metadata: p.metadata,
    veneers: veneersOf(p),
    hazards: p.hazards ?? [],
    // Only signed payloads have the key: unsigned entries keep their former shape.
    ...(p.signature ? { signature: p.signature } : {}),
  };
}

import { veneersOf } from '../core/safety.js';

export { veneersOf };

export { nameFromFile } from '../payload/name.js';

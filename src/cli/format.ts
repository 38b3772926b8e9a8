/** Output formatting shared by the commands: errors, exit codes, the list table. */
import { ERRNO, HotstackError, STRERROR, type ErrnoName } from '../errors.js';
import type { PayloadRecord } from '../core/state.js';

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
  const name = (Object.keys(ERRNO) as ErrnoName[]).find((k) => ERRNO[k] === -rc);
  return name ? `${name}, ${STRERROR[name]}` : `${-rc}, unknown error`;
}

export function errnoOf(rc: number): string | null {
  if (rc === 0) return null;
  const name = (Object.keys(ERRNO) as ErrnoName[]).find((k) => ERRNO[k] === -rc);
  return name ?? `E${-rc}`;
}

/** The xen-livepatch list table. */
export function listTable(list: PayloadRecord[]): string {
  if (!list.length) return 'Nothing to list\n';
  let out = ' ID                                     | status     | metadata\n';
  out += '----------------------------------------+------------+---------------\n';
  for (const p of list) {
    // As xen-livepatch: the state, the rc when non-zero, then "    | " and the metadata.
    out += `${p.name.padEnd(40)}| ${p.state}${p.rc ? ` (${rcText(p.rc)})` : ''}    | ${p.metadata.join(';')}\n`;
  }
  return out;
}

/** list --json entry. */
export function listJson(p: PayloadRecord): Record<string, unknown> {
  return {
    name: p.name,
    state: p.state,
    rc: p.rc,
    errno: errnoOf(p.rc),
    buildId: p.buildId,
    depends: p.depends,
    base: { path: p.basePath, buildId: p.baseBuildId },
    metadata: p.metadata,
  };
}

/** The payload name `load` and `check` use: base name without its last extension. */
export function nameFromFile(file: string): string {
  const base = file.split('/').pop() ?? file;
  const dot = base.lastIndexOf('.');
  return dot > 0 ? base.slice(0, dot) : base;
}

/**
 * Typed errors. Every problem a user can cause (bad payload, bad image,
 * bad arguments, a process that went away) becomes a HotstackError with a
 * Linux errno name, so the CLI can print `Error 22: EINVAL: ...` and exit
 * cleanly instead of showing a stack trace.
 */

/** Linux errno values used by Xen's livepatch interface and by hotstack. */
export const ERRNO = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EIO: 5,
  E2BIG: 7,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  EINVAL: 22,
  EFBIG: 27,
  ERANGE: 34,
  ENOSYS: 38,
  ENODATA: 61,
  EOVERFLOW: 75,
  EOPNOTSUPP: 95,
  ETIMEDOUT: 110,
  EKEYREJECTED: 129,
} as const;

export type ErrnoName = keyof typeof ERRNO;

const BY_NUMBER = new Map<number, ErrnoName>(
  Object.entries(ERRNO).map(([k, v]) => [v, k as ErrnoName]),
);

/** The errno hotstack knows by this (positive or negative) number, if any. */
export function knownErrno(n: number): ErrnoName | undefined {
  return BY_NUMBER.get(Math.abs(n));
}

/** The errno name for a (positive or negative) number, or `E<n>` if unknown. */
export function errnoName(n: number): string {
  return knownErrno(n) ?? `E${Math.abs(n)}`;
}

/** Whether a string (a Node error code, a report's errno) names an errno hotstack knows. */
export function isErrnoName(s: unknown): s is ErrnoName {
  return typeof s === 'string' && Object.hasOwn(ERRNO, s);
}

/** Short strerror-style text, as xen-livepatch prints next to the number. */
export const STRERROR: Record<ErrnoName, string> = {
  EPERM: 'Operation not permitted',
  ENOENT: 'No such file or directory',
  ESRCH: 'No such process',
  EIO: 'Input/output error',
  E2BIG: 'Argument list too long',
  EAGAIN: 'Resource temporarily unavailable',
  ENOMEM: 'Cannot allocate memory',
  EACCES: 'Permission denied',
  EFAULT: 'Bad address',
  EBUSY: 'Device or resource busy',
  EEXIST: 'File exists',
  EINVAL: 'Invalid argument',
  EFBIG: 'File too large',
  ERANGE: 'Numerical result out of range',
  ENOSYS: 'Function not implemented',
  ENODATA: 'No data available',
  EOVERFLOW: 'Value too large for defined data type',
  EOPNOTSUPP: 'Operation not supported',
  ETIMEDOUT: 'Connection timed out',
  EKEYREJECTED: 'Key was rejected by service',
};

/** An error a user can act on: errno name, negative code, message, and where (file offset) when known. */
export class HotstackError extends Error {
  readonly errno: ErrnoName;
  /** Byte offset in the input file the problem was found at, if any. */
  readonly offset: number | undefined;

  constructor(errno: ErrnoName, message: string, offset?: number) {
    super(message);
    this.name = 'HotstackError';
    this.errno = errno;
    this.offset = offset;
  }

  /** Negative errno, as Xen reports rc. */
  get code(): number {
    return -ERRNO[this.errno];
  }
}

/** Throw a HotstackError. */
export function fail(errno: ErrnoName, message: string, offset?: number): never {
  throw new HotstackError(errno, message, offset);
}

/** True for our typed errors. */
export function isHotstackError(e: unknown): e is HotstackError {
  return e instanceof HotstackError;
}

/**
 * Normalise anything thrown into a HotstackError. Node system errors keep
 * their errno name; anything else is an internal bug, reported as EIO with
 * its message so it still never prints a raw stack trace.
 */
export function toHotstackError(e: unknown): HotstackError {
  if (e instanceof HotstackError) return e;
  const err = e as NodeJS.ErrnoException;
  if (err && isErrnoName(err.code)) {
    // Node prefixes "ENOENT: "; the errno name is printed separately.
    return new HotstackError(err.code, err.message.replace(/^E[A-Z0-9]+: /, ''));
  }
  const msg = err && typeof err.message === 'string' ? err.message : String(e);
  return new HotstackError('EIO', `internal error: ${msg}`);
}

/**
 * Bounds-checked little-endian reads. Every read of untrusted bytes goes
 * through here so a short or lying file becomes a HotstackError carrying
 * the offset, never a RangeError from deep inside.
 */
import { fail, type ErrnoName } from '../errors.js';

export class ByteView {
  readonly bytes: Uint8Array;
  private readonly dv: DataView;
  /** Errno used when a read falls outside the buffer. */
  private readonly errno: ErrnoName;
  private readonly what: string;

  constructor(bytes: Uint8Array, what = 'file', errno: ErrnoName = 'EINVAL') {
    this.bytes = bytes;
    this.dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.errno = errno;
    this.what = what;
  }

  get length(): number {
    return this.bytes.length;
  }

  /** Throws unless [off, off+len) lies inside the buffer. */
  check(off: number | bigint, len: number | bigint, context: string): number {
    const o = BigInt(off);
    const l = BigInt(len);
    if (o < 0n || l < 0n || o + l > BigInt(this.bytes.length)) {
      fail(
        this.errno,
        `${context}: bytes ${o}..${o + l} lie outside the ${this.what} (${this.bytes.length} bytes)`,
        Number(o <= BigInt(Number.MAX_SAFE_INTEGER) ? o : -1),
      );
    }
    return Number(o);
  }

  u8(off: number, ctx = 'read'): number {
    return this.dv.getUint8(this.check(off, 1, ctx));
  }
  u16(off: number, ctx = 'read'): number {
    return this.dv.getUint16(this.check(off, 2, ctx), true);
  }
  u32(off: number, ctx = 'read'): number {
    return this.dv.getUint32(this.check(off, 4, ctx), true);
  }
  i32(off: number, ctx = 'read'): number {
    return this.dv.getInt32(this.check(off, 4, ctx), true);
  }
  u64(off: number, ctx = 'read'): bigint {
    return this.dv.getBigUint64(this.check(off, 8, ctx), true);
  }
  i64(off: number, ctx = 'read'): bigint {
    return this.dv.getBigInt64(this.check(off, 8, ctx), true);
  }
  /** A sub-array view (no copy). */
  slice(off: number | bigint, len: number | bigint, ctx = 'read'): Uint8Array {
    const o = this.check(off, len, ctx);
    return this.bytes.subarray(o, o + Number(len));
  }
}

/** Hex string of bytes. */
export function toHex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

/** Bytes of a hex string (no validation beyond Buffer's). */
export function fromHex(h: string): Uint8Array {
  return new Uint8Array(Buffer.from(h, 'hex'));
}

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** NUL-terminated string at `off` inside `table`, bounds-checked. */
export function cString(table: Uint8Array, off: number, ctx: string, errno: ErrnoName = 'EINVAL'): string {
  if (off < 0 || off >= table.length) fail(errno, `${ctx}: string offset ${off} is outside its table (${table.length} bytes)`);
  let end = off;
  while (end < table.length && table[end] !== 0) end++;
  if (end >= table.length) fail(errno, `${ctx}: string at offset ${off} is not NUL-terminated`);
  return Buffer.from(table.buffer, table.byteOffset + off, end - off).toString('latin1');
}

/** Round up to a multiple of `align` (align 0 or 1 means no alignment). */
export function alignUp(v: number, align: number): number {
  if (align <= 1) return v;
  return Math.ceil(v / align) * align;
}

export function alignUpBig(v: bigint, align: bigint): bigint {
  if (align <= 1n) return v;
  return ((v + align - 1n) / align) * align;
}

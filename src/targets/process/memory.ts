/**
 * Memory of a live process through /proc/PID/mem. For a tracer (or root) the
 * kernel honours writes even to read-only text (FOLL_FORCE), which is how
 * code gets patched without mprotect dances.
 */
import * as fs from 'node:fs';
import { fail } from '../../errors.js';
import { procBase, processDead } from './procfs.js';
import { pwrite } from './ptrace.js';

function hex(a: bigint): string {
  return '0x' + a.toString(16);
}

/** An open /proc/PID/mem; reuse one for many accesses, close() when done (close is idempotent). */
export class ProcessMemory {
  readonly pid: number;
  private fd: number | null = null;
  /** /proc/PID, when the caller has just seen the leader alive (see procBase). */
  private readonly base: string | undefined;

  /**
   * `leaderAlive`: the caller has just read the leader's state and it is
   * no zombie, so /proc/PID/mem is the one to open (one read of its stat
   * less); else procBase looks when the file is first opened.
   */
  constructor(pid: number, leaderAlive = false) {
    this.pid = pid;
    this.base = leaderAlive ? `/proc/${pid}` : undefined;
  }

  private open(): number {
    if (this.fd !== null) return this.fd;
    try {
      this.fd = fs.openSync(`${this.base ?? procBase(this.pid)}/mem`, 'r+');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ESRCH') fail('ESRCH', `process ${this.pid} exited`);
      if (code === 'EACCES' || code === 'EPERM') {
        fail('EPERM', `not permitted to open /proc/${this.pid}/mem: run as root, or attach as the process's tracer`);
      }
      fail('EIO', `cannot open /proc/${this.pid}/mem: ${(e as Error).message}`);
    }
    return this.fd;
  }

  private gone(): boolean {
    return processDead(this.pid);
  }

  private fault(what: 'read' | 'write', addr: bigint, len: number, why: string): never {
    if (this.gone()) fail('ESRCH', `process ${this.pid} exited`);
    fail('EFAULT', `cannot ${what} ${len} bytes at ${hex(addr)} in process ${this.pid} (${why})`);
  }

  /** Exactly `len` bytes at `addr`, or EFAULT naming the address. */
  read(addr: bigint, len: number): Uint8Array {
    const fd = this.open();
    const buf = Buffer.alloc(len);
    let done = 0;
    while (done < len) {
      let n: number;
      try {
        n = fs.readSync(fd, buf, done, len - done, addr + BigInt(done));
      } catch (e) {
        this.fault('read', addr + BigInt(done), len - done, (e as NodeJS.ErrnoException).code ?? String(e));
      }
      if (n === 0) this.fault('read', addr + BigInt(done), len - done, 'short read');
      done += n;
    }
    return new Uint8Array(buf.buffer, buf.byteOffset, len);
  }

  /** Write all of `data` at `addr` (works on read-only mappings), or EFAULT naming the address. */
  write(addr: bigint, data: Uint8Array): void {
    const fd = this.open();
    let done = 0;
    while (done < data.length) {
      const at = addr + BigInt(done);
      const chunk = data.subarray(done);
      let n: number;
      if (at <= BigInt(Number.MAX_SAFE_INTEGER)) {
        // fs.writeSync silently treats a bigint position as "current offset": only numbers are safe.
        try {
          n = fs.writeSync(fd, chunk, 0, chunk.length, Number(at));
        } catch (e) {
          this.fault('write', at, chunk.length, (e as NodeJS.ErrnoException).code ?? String(e));
        }
      } else {
        const r = pwrite(fd, chunk, at);
        if (typeof r === 'string') this.fault('write', at, chunk.length, r);
        n = r;
      }
      if (n === 0) this.fault('write', at, chunk.length, 'short write');
      done += n;
    }
  }

  readU64(addr: bigint): bigint {
    const b = this.read(addr, 8);
    return new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, true);
  }

  writeU64(addr: bigint, value: bigint): void {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, value), true);
    this.write(addr, b);
  }

  /** Bytes that could be read starting at `addr`, up to `len` (stops at the first unreadable page instead of failing). */
  readPartial(addr: bigint, len: number): Uint8Array {
    const fd = this.open();
    const buf = Buffer.alloc(len);
    let done = 0;
    while (done < len) {
      let n = 0;
      try {
        n = fs.readSync(fd, buf, done, len - done, addr + BigInt(done));
      } catch {
        break;
      }
      if (n === 0) break;
      done += n;
    }
    return new Uint8Array(buf.buffer, buf.byteOffset, done);
  }

  close(): void {
    if (this.fd !== null) {
      try {
        fs.closeSync(this.fd);
      } catch {
        /* already closed */
      }
      this.fd = null;
    }
  }
}

/** One-shot read (opens and closes /proc/PID/mem). */
export function readMemory(pid: number, addr: bigint, len: number): Uint8Array {
  const m = new ProcessMemory(pid);
  try {
    return m.read(addr, len);
  } finally {
    m.close();
  }
}

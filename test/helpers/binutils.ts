/**
 * The system's binutils (nm, readelf, objcopy) as test helpers: run a tool
 * with a useful error, and read symbols, sections and build-ids of ELF
 * files without any hotstack code.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

/**
 * Runs a tool and returns its stdout.  A failure becomes an Error carrying
 * the full command line and the tool's stderr, since a bare "exit code 1"
 * from gcc or objcopy is useless in a test log.
 */
export function run(cmd: string, args: string[], opts: { cwd?: string } = {}): string {
  try {
    return execFileSync(cmd, args, {
      cwd: opts.cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20,
    });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { status?: number | null; signal?: string | null; stderr?: string; stdout?: string };
    const line = [cmd, ...args].join(' ');
    const why = err.code === 'ENOENT' ? `${cmd} not found`
      : err.status != null ? `exit status ${err.status}` : `signal ${err.signal ?? '?'}`;
    const out = [err.stderr, err.stdout].filter((s) => s && s.trim()).join('\n').trim();
    throw new Error(`command failed (${why}): ${line}${out ? '\n' + out : ''}`);
  }
}

// ---------------------------------------------------------------------------
// ELF inspection (through binutils)

export interface SymbolInfo { address: bigint; size: number; type: string }

const symbolTables = new Map<string, Map<string, SymbolInfo[]>>();

/** Defined symbols by name (`nm --defined-only -S`), read once per file version: nm is slow. */
export function symbolTable(elf: string): Map<string, SymbolInfo[]> {
  const st = statSync(elf);
  const key = `${resolve(elf)}\0${st.ino}\0${st.mtimeMs}\0${st.size}`;
  let table = symbolTables.get(key);
  if (table) return table;
  table = new Map();
  for (const line of run('nm', ['--defined-only', '-S', elf]).split('\n')) {
    const f = line.trim().split(/\s+/);
    const [addr, size, type, name] = f.length === 4 ? f : f.length === 3 ? [f[0], '0', f[1], f[2]] : [];
    if (name === undefined) continue;
    const list = table.get(name) ?? [];
    list.push({ address: BigInt('0x' + addr), size: parseInt(size!, 16), type: type! });
    table.set(name, list);
  }
  symbolTables.set(key, table);
  return table;
}

/**
 * Finds a defined symbol with `nm -S`, the way Xen's Makefile measures
 * OLD_CODE_SZ/NEW_CODE_SZ.  Several definitions of one name (statics of
 * different files) are an error rather than a guess.
 */
export function symbolInfo(elf: string, name: string): SymbolInfo {
  const hits = symbolTable(elf).get(name) ?? [];
  if (hits.length !== 1) throw new Error(`symbol ${name}: ${hits.length} definitions in ${elf}`);
  return hits[0]!;
}

/**
 * File offset of a symbol's first byte in an executable, mapped through
 * the LOAD program headers of `readelf -lW` (symbols hold link-time
 * addresses).  `count` bytes from there must be in the file.
 */
export function fileOffset(elf: string, name: string, count = 1): number {
  const sym = symbolInfo(elf, name);
  for (const line of run('readelf', ['-lW', elf]).split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[0] !== 'LOAD') continue;
    const offset = BigInt(f[1]!), vaddr = BigInt(f[2]!), filesz = BigInt(f[4]!);
    if (sym.address >= vaddr && sym.address + BigInt(count) <= vaddr + filesz) return Number(offset + sym.address - vaddr);
  }
  throw new Error(`${name} (0x${sym.address.toString(16)}) is in no LOAD segment of ${elf}`);
}

/**
 * The first `count` bytes of a function as stored in an executable, so the
 * expectation fixture can carry the real old code.
 */
export function functionBytes(elf: string, name: string, count: number): Buffer {
  const at = fileOffset(elf, name, count);
  return readFileSync(elf).subarray(at, at + count);
}

export interface SectionInfo {
  index: number; name: string; type: string; address: bigint; offset: number;
  size: number; entsize: number; flags: string; align: number;
}

/** Section headers as `readelf -SW` shows them (flags as letters: W A X ...). */
export function listSections(elf: string): SectionInfo[] {
  const out: SectionInfo[] = [];
  const re = /^\s*\[\s*(\d+)\]\s+(\S*)\s+([A-Z_0-9]+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([A-Za-z]*)\s+\d+\s+\d+\s+(\d+)\s*$/;
  for (const line of run('readelf', ['-SW', elf]).split('\n')) {
    const m = re.exec(line);
    if (!m || m[1] === '0') continue;
    out.push({
      index: Number(m[1]), name: m[2]!, type: m[3]!, address: BigInt('0x' + m[4]),
      offset: parseInt(m[5]!, 16), size: parseInt(m[6]!, 16), entsize: parseInt(m[7]!, 16),
      flags: m[8]!, align: Number(m[9]),
    });
  }
  return out;
}

/** Raw contents of one section (objcopy --dump-section); throws if absent. */
export function readSection(elf: string, section: string): Buffer {
  const dir = freshDir(join(tmpdir(), 'hotstack-section-'));
  try {
    const bin = join(dir, 'section.bin');
    run('objcopy', ['--dump-section', `${section}=${bin}`, elf, join(dir, 'scratch')]);
    return readFileSync(bin);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The build-id (hex) held in a build-id note section: the file's own
 * `.note.gnu.build-id` by default, or `.livepatch.depends` /
 * `.livepatch.xen_depends` of a payload.  Checks the note is a GNU
 * build-id note (namesz 4 "GNU", type 3) so a malformed fixture is caught here.
 */
export function readBuildId(elf: string, section = '.note.gnu.build-id'): string {
  const b = readSection(elf, section);
  if (b.length < 12) throw new Error(`${elf}: ${section} is ${b.length} bytes, too short for a note`);
  const namesz = b.readUInt32LE(0), descsz = b.readUInt32LE(4), type = b.readUInt32LE(8);
  const descAt = 12 + ((namesz + 3) & ~3);
  if (namesz !== 4 || b.toString('latin1', 12, 16) !== 'GNU\0' || type !== 3 || descsz === 0
      || descAt + descsz > b.length) {
    throw new Error(`${elf}: ${section} is not a GNU build-id note (namesz ${namesz}, descsz ${descsz}, type ${type})`);
  }
  return b.subarray(descAt, descAt + descsz).toString('hex');
}


/** A new, empty directory named PREFIX + random hex. */
export function freshDir(prefix: string): string {
  const dir = prefix + randomBytes(6).toString('hex');
  mkdirSync(dir, { recursive: true });
  return dir;
}

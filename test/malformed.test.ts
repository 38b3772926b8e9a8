/**
 * Malformed payloads (payload-format.md "ELF validation of an uploaded
 * payload", actions.md upload): each file is a valid fixture with one
 * thing broken, and must give its errno through Engine.upload on an image
 * target and through `hotstack inspect` (exit 1, `Error N: ERRNO:` on
 * stderr, no stack trace) -- never a crash.  Then a property test: random
 * corruptions of valid payloads either load or fail with a HotstackError,
 * and a failed upload leaves the image memory and the engine untouched.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Engine } from '../src/core/engine.js';
import { ERRNO, HotstackError, type ErrnoName } from '../src/errors.js';
import { inspectPayload } from '../src/payload/inspect.js';
import type { FuzzResult } from './helpers/fuzz-driver.js';
import { describeEnd, sandbox, SANDBOX_MEM_KB } from './helpers/sandbox.js';
import type { UploadResult } from './helpers/upload-driver.js';
import { ImageTarget } from '../src/targets/image/index.js';
import { EHDR, FUNC, PayloadElf, SHDR, SHDR_SIZE, SHF, SHT, type Editor } from './helpers/elfedit.js';
import { assertNoStackTrace, cliAsync, cliMany, pool, throwsErrno, type CliResult } from './helpers/engine.js';
import { buildAll, run, VARIANTS } from './helpers/toolchain.js';
import type { InspectErrorJson } from '../src/cli/json-types.js';

const MiB2 = 2 * 1024 * 1024;

/** What a case expects: an errno, or success ('ok'). */
type Outcome = ErrnoName | 'ok';

interface Case {
  name: string;
  /** Fixture to break (default hello). */
  fixture?: string;
  bytes(p: PayloadElf): Buffer;
  /** Through Engine.upload. */
  errno: Outcome;
  /**
   * Through `hotstack inspect` (default: same as errno). 'skip' for rules
   * that need a base image (symbol resolution, placement, upload size).
   */
  inspect?: Outcome | 'skip';
  /** The spec rule the case checks, for failure messages. */
  rule: string;
  /** The file offset the error names (asserted when given: the byte to blame). */
  offset?: (p: PayloadElf) => number;
}

const ed = (fn: (e: Editor, p: PayloadElf) => void) => (p: PayloadElf): Buffer => p.edit((e) => fn(e, p));

/** The same payload with its section table moved to the end and padded to `n` entries (SHT_NULL, offset 64). */
function withSectionCount(p: PayloadElf, n: number): Buffer {
  const pad = (8 - (p.bytes.length % 8)) % 8;
  const table = Buffer.alloc(n * SHDR_SIZE);
  p.bytes.copy(table, 0, p.shoff, p.shoff + p.shnum * SHDR_SIZE);
  for (let i = p.shnum; i < n; i++) table.writeBigUInt64LE(64n, i * SHDR_SIZE + SHDR.offset);
  const out = Buffer.concat([p.bytes, Buffer.alloc(pad), table]);
  out.writeBigUInt64LE(BigInt(p.bytes.length + pad), EHDR.shoff);
  out.writeUInt16LE(n, EHDR.shnum);
  return out;
}

const NOTE_SECTIONS = ['.note.gnu.build-id', '.livepatch.depends', '.livepatch.xen_depends'];

function noteCases(): Case[] {
  const out: Case[] = [];
  for (const sec of NOTE_SECTIONS) {
    const at = (p: PayloadElf) => p.section(sec).offset;
    const rule = 'payload-format.md build-id notes: type 3, name "GNU\\0" (namesz 4), non-zero descsz, inside its section (EINVAL)';
    out.push(
      { name: `${sec}: note type 4`, bytes: ed((e, p) => e.u32(at(p) + 8, 4)), errno: 'EINVAL', rule, offset: (p) => at(p) + 8 },
      { name: `${sec}: note name "GNX"`, bytes: ed((e, p) => e.u8(at(p) + 14, 0x58)), errno: 'EINVAL', rule },
      { name: `${sec}: namesz 5`, bytes: ed((e, p) => e.u32(at(p), 5)), errno: 'EINVAL', rule },
      { name: `${sec}: namesz 0xffffffff (overflow)`, bytes: ed((e, p) => e.u32(at(p), 0xffffffff)), errno: 'EINVAL', rule },
      { name: `${sec}: descsz 0xfffffffc (overflow)`, bytes: ed((e, p) => e.u32(at(p) + 4, 0xfffffffc)), errno: 'EINVAL', rule },
      { name: `${sec}: descsz past the section`, bytes: ed((e, p) => e.u32(at(p) + 4, p.section(sec).size)), errno: 'EINVAL', rule },
      { name: `${sec}: empty descriptor (descsz 0)`, bytes: ed((e, p) => e.u32(at(p) + 4, 0)), errno: 'EINVAL', rule, offset: (p) => at(p) + 4 },
      { name: `${sec}: section of 8 bytes (shorter than a note header)`, bytes: ed((e) => e.shdr(sec, 'size', 8)), errno: 'EINVAL', rule },
      { name: `${sec}: empty section`, bytes: ed((e) => e.shdr(sec, 'size', 0)), errno: 'EINVAL', rule: 'actions.md upload: build-id sections present and non-empty (EINVAL)', offset: (p) => p.section(sec).hdr },
      { name: `${sec}: duplicated (.comment renamed to it)`, bytes: ed((e) => e.rename('.comment', sec)), errno: 'EINVAL', rule: 'duplicate special sections (EINVAL)' },
    );
  }
  out.push(
    { name: '.livepatch.xen_depends missing (renamed)', bytes: ed((e) => e.rename('.livepatch.xen_depends', '.comment')), errno: 'EINVAL', rule: 'actions.md upload: .livepatch.xen_depends present (EINVAL)' },
    { name: '.note.gnu.build-id missing (renamed)', bytes: ed((e) => e.rename('.note.gnu.build-id', '.comment')), errno: 'EINVAL', rule: 'actions.md upload: .note.gnu.build-id present (EINVAL)' },
    { name: '.livepatch.depends missing (renamed)', bytes: ed((e) => e.rename('.livepatch.depends', '.comment')), errno: 'EINVAL', rule: 'actions.md upload: .livepatch.depends present (EINVAL)' },
  );
  return out;
}

const CASES: Case[] = [
  // --- size and header ------------------------------------------------
  { name: 'empty file', bytes: () => Buffer.alloc(0), errno: 'EINVAL', rule: 'actions.md upload: size 1..2 MiB (EINVAL)' },
  ...[1, 4, 16, 40, 63].map((n): Case => ({
    name: `truncated to ${n} bytes (shorter than the ELF header)`, bytes: (p) => p.bytes.subarray(0, n), errno: 'EINVAL',
    rule: 'payload-format.md: shorter than the ELF header (EINVAL)',
  })),
  { name: 'truncated in the middle of the section table', bytes: (p) => p.bytes.subarray(0, p.shoff + 5 * SHDR_SIZE + 10), errno: 'EINVAL', rule: 'section table past the end (EINVAL)' },
  { name: 'truncated by one byte (end of the section table)', bytes: (p) => p.bytes.subarray(0, Math.max(p.bytes.length, p.shoff + p.shnum * SHDR_SIZE) - 1), errno: 'EINVAL', rule: 'section table past the end (EINVAL)' },
  { name: 'truncated in the middle of section data', bytes: (p) => p.bytes.subarray(0, p.section('.text.hello_extra_version').offset + 4), errno: 'EINVAL', rule: 'e_shoff past the end / section data outside the file (EINVAL)' },
  { name: 'bad magic', bytes: ed((e) => e.u8(1, 0x46)), errno: 'EINVAL', rule: 'payload-format.md: bad magic (EINVAL)' },
  { name: 'ELFCLASS32', bytes: ed((e) => e.u8(EHDR.class, 1)), errno: 'EOPNOTSUPP', rule: 'not ELFCLASS64 (EOPNOTSUPP)' },
  { name: 'ELFCLASSNONE', bytes: ed((e) => e.u8(EHDR.class, 0)), errno: 'EOPNOTSUPP', rule: 'not ELFCLASS64 (EOPNOTSUPP)' },
  { name: 'big-endian (ELFDATA2MSB)', bytes: ed((e) => e.u8(EHDR.data, 2)), errno: 'EOPNOTSUPP', rule: 'not ELFDATA2LSB (EOPNOTSUPP)' },
  { name: 'EI_VERSION 0', bytes: ed((e) => e.u8(EHDR.identVersion, 0)), errno: 'EOPNOTSUPP', rule: 'not EV_CURRENT (EOPNOTSUPP)' },
  { name: 'e_version 2', bytes: ed((e) => e.u32(EHDR.version, 2)), errno: 'EOPNOTSUPP', rule: 'not EV_CURRENT (EOPNOTSUPP)' },
  { name: 'OSABI 3 (GNU/Linux)', bytes: ed((e) => e.u8(EHDR.osabi, 3)), errno: 'EOPNOTSUPP', rule: 'OSABI none/FreeBSD only (EOPNOTSUPP)' },
  { name: 'OSABI 9 (FreeBSD) is accepted', bytes: ed((e) => e.u8(EHDR.osabi, 9)), errno: 'ok', rule: 'OSABI none/FreeBSD' },
  { name: 'ABI version 1', bytes: ed((e) => e.u8(EHDR.abiversion, 1)), errno: 'EOPNOTSUPP', rule: 'ABI version 0 (EOPNOTSUPP)' },
  { name: 'wrong machine (EM_386)', bytes: ed((e) => e.u16(EHDR.machine, 3)), errno: 'EOPNOTSUPP', rule: 'EM_X86_64 (EOPNOTSUPP)' },
  { name: 'wrong machine (EM_AARCH64)', bytes: ed((e) => e.u16(EHDR.machine, 183)), errno: 'EOPNOTSUPP', rule: 'EM_X86_64 (EOPNOTSUPP)' },
  { name: 'ET_EXEC', bytes: ed((e) => e.u16(EHDR.type, 2)), errno: 'EOPNOTSUPP', rule: 'ET_REL (EOPNOTSUPP)' },
  { name: 'ET_DYN', bytes: ed((e) => e.u16(EHDR.type, 3)), errno: 'EOPNOTSUPP', rule: 'ET_REL (EOPNOTSUPP)' },
  { name: 'e_phnum 1', bytes: ed((e) => e.u16(EHDR.phnum, 1)), errno: 'EOPNOTSUPP', rule: 'no program headers (EOPNOTSUPP)' },
  { name: 'e_shstrndx 0 (undefined)', bytes: ed((e) => e.u16(EHDR.shstrndx, 0)), errno: 'EINVAL', rule: 'e_shstrndx undefined (EINVAL)' },
  { name: 'e_shstrndx == e_shnum', bytes: ed((e, p) => e.u16(EHDR.shstrndx, p.shnum)), errno: 'EINVAL', rule: 'e_shstrndx out of range (EINVAL)' },
  { name: 'e_shstrndx 0xffff', bytes: ed((e) => e.u16(EHDR.shstrndx, 0xffff)), errno: 'EINVAL', rule: 'e_shstrndx out of range (EINVAL)' },
  { name: 'e_shstrndx names a non-STRTAB section', bytes: ed((e, p) => e.u16(EHDR.shstrndx, p.section('.comment').index)), errno: 'EINVAL', rule: '.shstrtab of type SHT_STRTAB (EINVAL)' },
  { name: 'e_shoff past the end', bytes: ed((e, p) => e.u64(EHDR.shoff, p.bytes.length + 64)), errno: 'EINVAL', rule: 'e_shoff past the end (EINVAL)' },
  { name: 'e_shoff 2^63', bytes: ed((e) => e.u64(EHDR.shoff, 1n << 63n)), errno: 'EINVAL', rule: 'e_shoff past the end (EINVAL)' },
  { name: 'e_shoff 2^64-1', bytes: ed((e) => e.u64(EHDR.shoff, (1n << 64n) - 1n)), errno: 'EINVAL', rule: 'e_shoff past the end (EINVAL)' },
  { name: 'e_shentsize 32', bytes: ed((e) => e.u16(EHDR.shentsize, 32)), errno: 'EINVAL', rule: 'e_shentsize too small (EINVAL)' },
  { name: 'e_shentsize 0', bytes: ed((e) => e.u16(EHDR.shentsize, 0)), errno: 'EINVAL', rule: 'e_shentsize too small (EINVAL)' },
  { name: 'e_shnum one too many (table past the end)', bytes: ed((e, p) => e.u16(EHDR.shnum, p.shnum + 1)), errno: 'EINVAL', rule: 'section table past the end (EINVAL)' },
  { name: '1024 sections', bytes: (p) => withSectionCount(p, 1024), errno: 'EOPNOTSUPP', rule: '1024 sections or more (EOPNOTSUPP)' },
  { name: '1023 sections are accepted', bytes: (p) => withSectionCount(p, 1023), errno: 'ok', rule: '1024 sections or more (EOPNOTSUPP): 1023 is fine' },

  // --- sections -------------------------------------------------------
  { name: 'section data offset past the end', bytes: ed((e, p) => e.shdr('.text.hello_extra_version', 'offset', p.bytes.length + 16)), errno: 'EINVAL', rule: 'section data outside the file (Xen: EINVAL)' },
  { name: 'section data size past the end', bytes: ed((e, p) => e.shdr('.text.hello_extra_version', 'size', p.bytes.length)), errno: 'EINVAL', rule: 'section data outside the file (Xen: EINVAL)' },
  { name: 'section size 2^64-1', bytes: ed((e) => e.shdr('.rodata.hello_fname', 'size', (1n << 64n) - 1n)), errno: 'EINVAL', rule: 'section data outside the file (Xen: EINVAL)' },
  { name: 'NOBITS offset past the end is fine', bytes: ed((e, p) => e.shdr('.bss.hello_cnt', 'offset', p.bytes.length + 4096)), errno: 'ok', rule: 'section data outside the file, except NOBITS' },
  { name: 'alignment 3 (not a power of two)', bytes: ed((e) => e.shdr('.text.hello_extra_version', 'addralign', 3)), errno: 'EOPNOTSUPP', rule: 'alignment not a power of two (EOPNOTSUPP)' },
  { name: 'alignment 2^63+1', bytes: ed((e) => e.shdr('.rodata.hello_fname', 'addralign', (1n << 63n) + 1n)), errno: 'EOPNOTSUPP', rule: 'alignment not a power of two (EOPNOTSUPP)' },
  { name: 'writable and executable section', bytes: ed((e) => e.shdr('.text.hello_extra_version', 'flags', SHF.ALLOC | SHF.WRITE | SHF.EXECINSTR)), errno: 'EOPNOTSUPP', rule: 'a section both writable and executable (EOPNOTSUPP)' },
  { name: '.bss of 2 MiB + 1', bytes: ed((e) => e.shdr('.bss.hello_cnt', 'size', MiB2 + 1)), errno: 'EINVAL', rule: 'writable NOBITS larger than 2 MiB (EINVAL)' },
  { name: '.bss of 2^64-1', bytes: ed((e) => e.shdr('.bss.hello_cnt', 'size', (1n << 64n) - 1n)), errno: 'EINVAL', rule: 'writable NOBITS larger than 2 MiB (EINVAL)' },
  { name: '.bss of exactly 2 MiB is fine', bytes: ed((e) => e.shdr('.bss.hello_cnt', 'size', MiB2)), errno: 'ok', rule: 'writable NOBITS larger than 2 MiB (EINVAL): 2 MiB is fine' },

  // --- symbol and string tables ------------------------------------------
  { name: 'no symbol table', bytes: ed((e) => e.shdr('.symtab', 'type', SHT.PROGBITS)), errno: 'EINVAL', rule: 'no SHT_SYMTAB (EINVAL)' },
  { name: 'two symbol tables', bytes: ed((e) => e.shdr('.comment', 'type', SHT.SYMTAB)), errno: 'EOPNOTSUPP', rule: 'several SHT_SYMTAB (EOPNOTSUPP)' },
  { name: 'symtab sh_link out of range', bytes: ed((e, p) => e.shdr('.symtab', 'link', p.shnum + 1)), errno: 'EINVAL', rule: 'symtab valid sh_link (EINVAL)' },
  { name: 'symtab sh_link to a non-STRTAB section', bytes: ed((e, p) => e.shdr('.symtab', 'link', p.section('.comment').index)), errno: 'EINVAL', rule: '.strtab of type SHT_STRTAB (EINVAL)' },
  { name: 'symtab entsize 0', bytes: ed((e) => e.shdr('.symtab', 'entsize', 0)), errno: 'EINVAL', rule: 'symtab valid entsize (EINVAL)' },
  { name: 'symtab entsize 16', bytes: ed((e) => e.shdr('.symtab', 'entsize', 16)), errno: 'EINVAL', rule: 'symtab valid entsize (EINVAL)' },
  { name: 'symtab size not a multiple of entsize', bytes: ed((e, p) => e.shdr('.symtab', 'size', p.symtab.size - 1)), errno: 'EINVAL', rule: 'symtab valid size (EINVAL)' },
  { name: 'symtab size 0', bytes: ed((e) => e.shdr('.symtab', 'size', 0)), errno: 'EINVAL', rule: 'symtab valid size (EINVAL)' },
  { name: '.strtab not NUL-terminated', bytes: ed((e, p) => e.secByte('.strtab', p.section('.strtab').size - 1, 0x78)), errno: 'EINVAL', rule: '.strtab ends with NUL (EINVAL)' },
  { name: '.strtab not starting with NUL', bytes: ed((e) => e.secByte('.strtab', 0, 0x78)), errno: 'EINVAL', rule: '.strtab starts with NUL (EINVAL)' },
  { name: '.strtab of type PROGBITS', bytes: ed((e) => e.shdr('.strtab', 'type', SHT.PROGBITS)), errno: 'EINVAL', rule: '.strtab of type SHT_STRTAB (EINVAL)' },
  { name: '.strtab empty', bytes: ed((e) => e.shdr('.strtab', 'size', 0)), errno: 'EINVAL', rule: '.strtab non-empty (EINVAL)' },
  { name: '.shstrtab not NUL-terminated', bytes: ed((e, p) => e.secByte('.shstrtab', p.section('.shstrtab').size - 1, 0x78)), errno: 'EINVAL', rule: '.shstrtab ends with NUL (EINVAL)' },
  { name: '.shstrtab of type PROGBITS', bytes: ed((e) => e.shdr('.shstrtab', 'type', SHT.PROGBITS)), errno: 'EINVAL', rule: '.shstrtab of type SHT_STRTAB (EINVAL)' },
  { name: 'section name offset past .shstrtab', bytes: ed((e, p) => e.shdr('.text.hello_extra_version', 'name', p.section('.shstrtab').size + 10)), errno: 'EINVAL', rule: 'every name offset inside its table (EINVAL)' },
  { name: 'symbol name offset past .strtab', bytes: ed((e, p) => e.sym('hello_extra_version', 'name', p.section('.strtab').size + 10)), errno: 'EINVAL', rule: 'every name offset inside its table (EINVAL)' },
  { name: 'symbol in SHN_COMMON', bytes: ed((e) => e.sym('hello_extra_version', 'shndx', 0xfff2)), errno: 'EINVAL', rule: 'symbols: SHN_COMMON (EINVAL)', offset: (p) => p.symbol('hello_extra_version').at },
  { name: 'symbol in reserved index 0xff00', bytes: ed((e) => e.sym('hello_extra_version', 'shndx', 0xff00)), errno: 'EOPNOTSUPP', rule: 'symbols: reserved indexes other than SHN_ABS (EOPNOTSUPP)' },
  { name: 'symbol in SHN_XINDEX', bytes: ed((e) => e.sym('hello_extra_version', 'shndx', 0xffff)), errno: 'EOPNOTSUPP', rule: 'symbols: reserved indexes other than SHN_ABS (EOPNOTSUPP)' },
  { name: 'symbol section index out of range', bytes: ed((e, p) => e.sym('hello_extra_version', 'shndx', p.shnum + 3)), errno: 'EINVAL', rule: 'symbols: section index out of range (EINVAL)' },
  { name: 'undefined symbol that resolves nowhere', bytes: ed((e, p) => e.sym('base_hook_state', 'name', p.symbol('hello_unloads').nameOff)), errno: 'ENOENT', inspect: 'skip', rule: 'undefined symbols that resolve nowhere (ENOENT)' },

  // --- relocations (.rela.text.hello_extra_version: one PC32 at offset 3) ---
  ...((): Case[] => {
    const rela = (p: PayloadElf) => p.relaFor('.text.hello_extra_version');
    const first = (p: PayloadElf) => p.relocations(rela(p))[0]!;
    return [
      { name: 'SHT_REL relocation section', bytes: ed((e, p) => e.shdr(rela(p), 'type', SHT.REL)), errno: 'EOPNOTSUPP', rule: 'relocations: SHT_REL (EOPNOTSUPP)', offset: (p) => rela(p).hdr },
      { name: 'relocation sh_link to .strtab', bytes: ed((e, p) => e.shdr(rela(p), 'link', p.section('.strtab').index)), errno: 'EINVAL', rule: 'relocations: wrong sh_link (EINVAL)' },
      { name: 'relocation sh_link out of range', bytes: ed((e, p) => e.shdr(rela(p), 'link', p.shnum + 7)), errno: 'EINVAL', rule: 'relocations: wrong sh_link (EINVAL)' },
      { name: 'relocation entsize 16', bytes: ed((e, p) => e.shdr(rela(p), 'entsize', 16)), errno: 'EINVAL', rule: 'relocations: wrong entsize (EINVAL)', offset: (p) => rela(p).hdr },
      { name: 'relocation section size not a multiple of 24', bytes: ed((e, p) => e.shdr(rela(p), 'size', 20)), errno: 'EINVAL', rule: 'relocations: wrong entsize/size (EINVAL)' },
      { name: 'relocation against symbol 0', bytes: ed((e, p) => e.rela(first(p), { sym: 0 })), errno: 'EOPNOTSUPP', rule: 'relocations: symbol 0 (EOPNOTSUPP)', offset: (p) => first(p).at },
      { name: 'relocation symbol index out of range', bytes: ed((e, p) => e.rela(first(p), { sym: p.symbols.length })), errno: 'EINVAL', rule: 'relocations: symbol out of range (EINVAL)' },
      { name: 'relocation symbol index 0xffffffff', bytes: ed((e, p) => e.rela(first(p), { sym: 0xffffffff })), errno: 'EINVAL', rule: 'relocations: symbol out of range (EINVAL)' },
      { name: 'relocation offset at the end of its section', bytes: ed((e, p) => e.rela(first(p), { offset: BigInt(p.section('.text.hello_extra_version').size) })), errno: 'EINVAL', rule: 'relocations: offset outside the target section (EINVAL)' },
      { name: 'relocation field straddling the end of its section', bytes: ed((e, p) => e.rela(first(p), { offset: BigInt(p.section('.text.hello_extra_version').size - 3) })), errno: 'EINVAL', rule: 'relocations: offset outside the target section (EINVAL)' },
      { name: 'relocation offset 2^63', bytes: ed((e, p) => e.rela(first(p), { offset: 1n << 63n })), errno: 'EINVAL', rule: 'relocations: offset outside the target section (EINVAL)' },
      { name: 'relocation offset 2^64-4 (wraps)', bytes: ed((e, p) => e.rela(first(p), { offset: (1n << 64n) - 4n })), errno: 'EINVAL', rule: 'relocations: offset outside the target section (EINVAL)' },
      { name: 'unsupported relocation type R_X86_64_COPY', bytes: ed((e, p) => e.rela(first(p), { type: 5 })), errno: 'EOPNOTSUPP', rule: 'relocations: unsupported type (EOPNOTSUPP)', offset: (p) => first(p).at },
      { name: 'unsupported relocation type R_X86_64_GOT32', bytes: ed((e, p) => e.rela(first(p), { type: 3 })), errno: 'EOPNOTSUPP', rule: 'relocations: unsupported type (EOPNOTSUPP)' },
      { name: 'unsupported relocation type R_X86_64_TPOFF32', bytes: ed((e, p) => e.rela(first(p), { type: 23 })), errno: 'EOPNOTSUPP', rule: 'relocations: unsupported type (EOPNOTSUPP)' },
      { name: 'unsupported relocation type 0xffff', bytes: ed((e, p) => e.rela(first(p), { type: 0xffff })), errno: 'EOPNOTSUPP', rule: 'relocations: unsupported type (EOPNOTSUPP)' },
      { name: 'PC32 whose value does not fit (addend + 2^40)', bytes: ed((e, p) => e.rela(first(p), { addend: first(p).addend + (1n << 40n) })), errno: 'EOVERFLOW', inspect: 'skip', rule: 'relocations: value that does not fit its field (EOVERFLOW)' },
      { name: 'PC32 whose value does not fit (addend - 2^40)', bytes: ed((e, p) => e.rela(first(p), { addend: first(p).addend - (1n << 40n) })), errno: 'EOVERFLOW', inspect: 'skip', rule: 'relocations: value that does not fit its field (EOVERFLOW)' },
      { name: 'relocations of a non-allocated section are skipped (garbage in them is fine)', bytes: ed((e, p) => { e.shdr(rela(p), 'info', p.section('.comment').index); e.rela(first(p), { sym: 0xffffff, type: 0xffff }); }), errno: 'ok', rule: 'relocation sections that target non-allocated sections are skipped' },
    ];
  })(),

  // --- build-id notes ---------------------------------------------------
  ...noteCases(),

  // --- patching sections ------------------------------------------------
  ...((): Case[] => {
    const fo = (p: PayloadElf) => p.section('.livepatch.funcs').offset;
    return [
      { name: '.livepatch.funcs of 100 bytes (not a multiple of 104)', bytes: ed((e) => e.shdr('.livepatch.funcs', 'size', 100)), errno: 'EINVAL', rule: 'funcs size a multiple of 104 (EINVAL)', offset: (p) => p.section('.livepatch.funcs').hdr },
      { name: '.livepatch.funcs empty', bytes: ed((e) => e.shdr('.livepatch.funcs', 'size', 0)), errno: 'EINVAL', rule: 'every present patching section non-empty (EINVAL)' },
      { name: '.livepatch.funcs duplicated (.comment renamed to it)', bytes: ed((e) => e.rename('.comment', '.livepatch.funcs')), errno: 'EINVAL', rule: 'duplicate special sections (EINVAL)' },
      { name: 'livepatch_func version 1', bytes: ed((e, p) => e.u8(fo(p) + FUNC.version, 1)), errno: 'EOPNOTSUPP', rule: 'version == 2 (EOPNOTSUPP)', offset: (p) => fo(p) + FUNC.version },
      { name: 'livepatch_func version 255', bytes: ed((e, p) => e.u8(fo(p) + FUNC.version, 255)), errno: 'EOPNOTSUPP', rule: 'version == 2 (EOPNOTSUPP)', offset: (p) => fo(p) + FUNC.version },
      { name: 'livepatch_func old_size 0', bytes: ed((e, p) => e.u32(fo(p) + FUNC.oldSize, 0)), errno: 'EINVAL', rule: 'old_size != 0 (EINVAL)', offset: (p) => fo(p) + FUNC.oldSize },
      { name: 'NOP new_size 32', fixture: 'nop', bytes: ed((e, p) => e.u32(fo(p) + FUNC.newSize, 32).u32(fo(p) + FUNC.oldSize, 64)), errno: 'EOPNOTSUPP', rule: 'NOP: new_size <= 31 (EOPNOTSUPP)', offset: (p) => fo(p) + FUNC.newSize },
      { name: 'nothing to patch (the only patching section renamed)', fixture: 'nop', bytes: ed((e) => e.rename('.livepatch.funcs', '.data')), errno: 'EINVAL', rule: 'at least one patching section (EINVAL, "nothing to patch")' },
      { name: '.livepatch.hooks.load of 12 bytes', bytes: ed((e) => e.shdr('.livepatch.hooks.load', 'size', 12)), errno: 'EINVAL', rule: 'hook arrays a multiple of 8 (EINVAL)', offset: (p) => p.relocAt('.livepatch.hooks.load', 8).at }, // its second pointer's relocation now lies outside it, which Xen finds first
      { name: '.livepatch.hooks.unload of 20 bytes', bytes: ed((e) => e.shdr('.livepatch.hooks.unload', 'size', 20)), errno: 'EINVAL', rule: 'hook arrays a multiple of 8 (EINVAL)' },
      { name: '.livepatch.hooks.preapply of 16 bytes', fixture: 'prepost', bytes: ed((e) => e.shdr('.livepatch.hooks.preapply', 'size', 16)), errno: 'EINVAL', rule: 'single hooks exactly one 8-byte pointer (EINVAL)', offset: (p) => p.section('.livepatch.hooks.preapply').hdr },
      { name: '.livepatch.hooks.postrevert of 4 bytes', fixture: 'prepost', bytes: ed((e) => e.shdr('.livepatch.hooks.postrevert', 'size', 4)), errno: 'EINVAL', rule: 'single hooks exactly one 8-byte pointer (EINVAL)' },
      { name: '.livepatch.hooks.apply empty', fixture: 'nofunc', bytes: ed((e) => e.shdr('.livepatch.hooks.apply', 'size', 0)), errno: 'EINVAL', rule: 'every present patching section non-empty (EINVAL)', offset: (p) => p.relocAt('.livepatch.hooks.apply', 0).at }, // its pointer's relocation now lies outside it, which Xen finds first
      { name: '.livepatch.hooks.apply duplicated', fixture: 'nofunc', bytes: ed((e) => e.rename('.livepatch.hooks.revert', '.livepatch.hooks.apply')), errno: 'EINVAL', rule: 'duplicate special sections (EINVAL)' },
      { name: '.altinstructions of 40 bytes (not a multiple of 14)', bytes: ed((e) => e.renameTo('.comment', '.altinstructions')), errno: 'EINVAL', rule: 'Xen-only sections are accepted and size-checked (Xen: EINVAL)', offset: (p) => p.section('.comment').hdr },
      { name: '.ex_table of 40 bytes (5 entries) is accepted', bytes: ed((e) => e.renameTo('.comment', '.ex_table')), errno: 'ok', rule: 'Xen-only sections are accepted and size-checked' },
      { name: '.modinfo not NUL-terminated', bytes: ed((e, p) => e.secByte('.modinfo', p.section('.modinfo').size - 1, 0x78)), errno: 'EINVAL', rule: '.modinfo ends with NUL (EINVAL)', offset: (p) => p.section('.modinfo').offset + p.section('.modinfo').size - 1 },
      { name: 'payload of 2 MiB + 1 bytes', bytes: (p) => Buffer.concat([p.bytes, Buffer.alloc(MiB2 + 1 - p.bytes.length)]), errno: 'EINVAL', inspect: 'skip', rule: 'actions.md upload: size 1..2 MiB (EINVAL)' },
      { name: 'payload of exactly 2 MiB is fine', bytes: (p) => Buffer.concat([p.bytes, Buffer.alloc(MiB2 - p.bytes.length)]), errno: 'ok', inspect: 'skip', rule: 'actions.md upload: size 1..2 MiB' },
    ];
  })(),
];

/** The loaded segments of the base, to compare image memory before and after. */
function loadRanges(base: string): { vaddr: bigint; memsz: number }[] {
  return run('readelf', ['-lW', base]).split('\n').map((l) => l.trim().split(/\s+/)).filter((f) => f[0] === 'LOAD')
    .map((f) => ({ vaddr: BigInt(f[2]!), memsz: Number(BigInt(f[5]!)) }));
}

function memoryOf(t: ImageTarget, ranges: { vaddr: bigint; memsz: number }[]): Buffer {
  return Buffer.concat(ranges.map((r) => Buffer.from(t.read(r.vaddr, r.memsz))));
}

describe('malformed payloads', () => {
  let files: Record<string, string>;
  before(() => {
    files = buildAll();
  });

  it('the case list is sane: every mutation differs from its fixture and names are unique', () => {
    const names = new Set<string>();
    for (const c of CASES) {
      assert.ok(!names.has(c.name), `duplicate case ${c.name}`);
      names.add(c.name);
      const p = new PayloadElf(readFileSync(files[c.fixture ?? 'hello']!));
      assert.ok(!c.bytes(p).equals(p.bytes), `${c.name} changes something`);
    }
  });

  for (const v of VARIANTS) {
    describe(`Engine.upload on the ${v.dir} image`, () => {
      for (const c of CASES) {
        it(`${c.name}: ${c.errno}`, () => {
          const base = files[v.prefix + 'base']!;
          const p = new PayloadElf(readFileSync(files[v.prefix + (c.fixture ?? 'hello')]!));
          const bytes = c.bytes(p);
          const t = ImageTarget.open(base);
          const e = new Engine(t);
          const ranges = loadRanges(base);
          const before = memoryOf(t, ranges);
          if (c.errno === 'ok') {
            e.upload('p', bytes);
            assert.equal(e.get('p').state, 'CHECKED', `${c.rule}`);
          } else {
            const err = throwsErrno(() => e.upload('p', bytes), c.errno, undefined, `${c.name} [${c.rule}]`);
            if (c.offset) assert.equal(err.offset, c.offset(p), `${c.name}: the error's file offset (${err.message})`);
            assert.deepEqual(e.list(), [], 'a failed upload leaves nothing behind');
          }
          assert.ok(memoryOf(t, ranges).equals(before), 'the base\'s memory is unchanged by an upload');
        });
      }
    });
  }

  describe('hotstack inspect', () => {
    let dir: string;
    before(() => {
      dir = mkdtempSync(join(tmpdir(), 'hotstack-malformed-'));
    });
    after(() => rmSync(dir, { recursive: true, force: true }));

    /** Checks one inspect run against the case; returns a failure line or undefined. */
    function judge(c: Case, text: CliResult, json: CliResult | undefined): string | undefined {
      const want = (c.inspect ?? c.errno) as Outcome;
      const where = `${c.name} [${c.rule}]`;
      try {
        assertNoStackTrace(text, where);
        if (json) assertNoStackTrace(json, `${where} --json`);
        if (want === 'ok') {
          assert.equal(text.status, 0, `inspect accepts it; stderr: ${text.stderr}`);
          return undefined;
        }
        assert.equal(text.status, 1, `exit status ${text.status}, want 1 (inspect printed ${text.stdout ? 'a normal report' : 'nothing'}; stderr ${JSON.stringify(text.stderr.trim())})`);
        const m = /Error (\d+): (E[A-Z0-9]+): /.exec(text.stderr);
        assert.ok(m, `"Error N: ERRNO:" on stderr: ${JSON.stringify(text.stderr)}`);
        assert.equal(m[2], want, `errno (stderr: ${text.stderr.trim()})`);
        assert.equal(Number(m[1]), ERRNO[want], 'N is the errno number');
        if (json) {
          assert.equal(json.status, 1, '--json exit 1');
          const lines = json.stdout.trim().split('\n');
          assert.equal(lines.length, 1, '--json prints one JSON object');
          const o = JSON.parse(lines[0]!) as Partial<InspectErrorJson>;
          assert.equal(o.error?.errno, want, '--json error.errno');
          assert.equal(o.error?.code, -ERRNO[want], '--json error.code');
        }
        return undefined;
      } catch (e) {
        return `${where}: ${(e as Error).message.split('\n')[0]}`;
      }
    }

    const files_ = (c: Case, i: number): string => {
      const p = new PayloadElf(readFileSync(files[c.fixture ?? 'hello']!));
      const file = join(dir, `case-${i}.livepatch`);
      writeFileSync(file, c.bytes(p));
      return file;
    };

    it('gives each malformed file its errno (exit 1, "Error N: ERRNO:" on stderr, --json error object), never a crash', () => {
      const cases = CASES.filter((c) => c.inspect !== 'skip');
      const paths = cases.map(files_);
      const runs = paths.flatMap((f) => [['inspect', f], ['inspect', '--json', f]]);
      const res = cliMany(runs);
      const failures = cases.map((c, i) => judge(c, res[2 * i]!, res[2 * i + 1]!)).filter((x): x is string => !!x);
      assert.deepEqual(failures, [], `inspect disagreed on ${failures.length} of ${cases.length} files:\n${failures.join('\n')}`);
    });

    it('bin/hotstack inspect itself (one process per file) on a sample of malformed files', async () => {
      const sample = ['empty file', 'bad magic', 'ELFCLASS32', 'e_shoff past the end', '.livepatch.funcs of 100 bytes (not a multiple of 104)', '.note.gnu.build-id: note type 4', 'relocation entsize 16'];
      const cases = sample.map((n) => {
        const c = CASES.find((x) => x.name === n);
        assert.ok(c, n);
        return c;
      });
      const paths = cases.map((c, i) => files_(c, 1000 + i));
      const res = await pool(paths, 2, (f) => cliAsync(['inspect', f]));
      const failures = cases.map((c, i) => judge(c, res[i]!, undefined)).filter((x): x is string => !!x);
      assert.deepEqual(failures, [], failures.join('\n'));
    });

    it('inspectPayload (the library call) throws HotstackError with the same errnos and file offsets', () => {
      const failures: string[] = [];
      for (const c of CASES.filter((x) => x.inspect !== 'skip')) {
        const want = (c.inspect ?? c.errno) as Outcome;
        const p = new PayloadElf(readFileSync(files[c.fixture ?? 'hello']!));
        try {
          inspectPayload(c.bytes(p));
          if (want !== 'ok') failures.push(`${c.name}: accepted, want ${want} [${c.rule}]`);
        } catch (e) {
          if (!(e instanceof HotstackError)) failures.push(`${c.name}: threw ${(e as Error).constructor.name}: ${(e as Error).message}`);
          else if (e.errno !== want) failures.push(`${c.name}: ${e.errno} (${e.message}), want ${want} [${c.rule}]`);
          else if (c.offset && e.offset !== c.offset(p)) failures.push(`${c.name}: error at file offset ${e.offset}, want ${c.offset(p)} (${e.message})`);
        }
      }
      assert.deepEqual(failures, [], failures.join('\n'));
    });
  });

  describe('the order of the upload checks (actions.md upload: "Then, in this order")', () => {
    const at = (p: PayloadElf) => p.section('.livepatch.funcs').offset;
    const otherHello = () => new PayloadElf(readFileSync(files['cet/hello']!));

    it('ELF validation comes before the base build-id check', () => {
      const e = new Engine(ImageTarget.open(files.base!));
      throwsErrno(() => e.upload('p', otherHello().edit((x) => x.u16(EHDR.phnum, 1))), 'EOPNOTSUPP', undefined, 'e_phnum 1 in a payload for another base');
    });

    it('the base build-id check comes before symbol resolution', () => {
      const e = new Engine(ImageTarget.open(files.base!));
      const p = otherHello();
      const bytes = p.edit((x) => x.sym('base_hook_state', 'name', p.symbol('hello_unloads').nameOff));
      throwsErrno(() => e.upload('p', bytes), 'EINVAL', undefined, 'unresolvable symbol in a payload for another base');
    });

    it('symbol resolution comes before the per-function checks', () => {
      const e = new Engine(ImageTarget.open(files.base!));
      const p = new PayloadElf(readFileSync(files.hello!));
      const bytes = p.edit((x) => x.sym('base_hook_state', 'name', p.symbol('hello_unloads').nameOff).u8(at(p) + FUNC.version, 1));
      throwsErrno(() => e.upload('p', bytes), 'ENOENT', undefined, 'unresolvable symbol and version 1');
    });

    it('one payload\'s bytes uploaded again (a fleet parses them once): every engine gets its record, and a failing stage fails each time', () => {
      const p = new PayloadElf(readFileSync(files.hello!));
      const good = p.bytes;
      const records = [0, 1, 2].map(() => new Engine(ImageTarget.open(files.base!)).upload('hello', good));
      assert.deepEqual(records.map((r) => r.funcs.map((f) => f.name)), [0, 1, 2].map(() => records[0]!.funcs.map((f) => f.name)));
      assert.ok(records[0]!.funcs.length > 0);
      // A stage after the ELF checks fails (unresolvable symbol): not memoised, so the same error every time.
      const bad = p.edit((x) => x.sym('base_hook_state', 'name', p.symbol('hello_unloads').nameOff));
      for (let i = 0; i < 2; i++) throwsErrno(() => new Engine(ImageTarget.open(files.base!)).upload('p', bad), 'ENOENT', undefined, `unresolvable symbol, upload ${i + 1}`);
      // And the good bytes again after the bad ones.
      assert.equal(new Engine(ImageTarget.open(files.base!)).upload('hello', good).name, 'hello');
    });

    it('the per-function checks come before the own build-id check (EEXIST), which comes before .modinfo', () => {
      const e = new Engine(ImageTarget.open(files.base!));
      const p = new PayloadElf(readFileSync(files.hello!));
      e.upload('hello', p.bytes);
      throwsErrno(() => e.upload('p', p.edit((x) => x.u8(at(p) + FUNC.version, 1))), 'EOPNOTSUPP', undefined, 'version 1 with a loaded build-id');
      throwsErrno(() => e.upload('q', p.edit((x) => x.secByte('.modinfo', p.section('.modinfo').size - 1, 0x78))), 'EEXIST', undefined, 'loaded build-id with a bad .modinfo');
      assert.deepEqual(e.list().map((r) => r.name), ['hello']);
    });
  });

  describe('payloads that ask for unbounded memory (sandboxed: ulimit -v, timeout)', () => {
    // payload-format.md: "Every one of these is a clean error, never a crash."
    // Xen refuses any allocated NOBITS over 2 MiB (EINVAL) and fails the
    // allocation of an oversized layout cleanly (ENOMEM); an engine that
    // tries to allocate terabytes has no clean way out.  Run in a child with
    // a memory limit so a failure here cannot take the machine down.
    const huge: Case[] = [
      { name: 'read-only NOBITS of 2^40 bytes', bytes: ed((e) => e.shdr('.bss.hello_cnt', 'flags', SHF.ALLOC).shdr('.bss.hello_cnt', 'size', 1n << 40n)), errno: 'EINVAL', rule: 'never a crash; Xen: allocated NOBITS > 2 MiB is EINVAL' },
      { name: 'section alignment 2^40', bytes: ed((e) => e.shdr('.text.hello_hi', 'addralign', 1n << 40n)), errno: 'ENOMEM', rule: 'never a crash; the layout cannot be allocated (ENOMEM)' },
      { name: 'section alignment 2^63', bytes: ed((e) => e.shdr('.text.hello_hi', 'addralign', 1n << 63n)), errno: 'ENOMEM', rule: 'never a crash; the layout cannot be allocated (ENOMEM)' },
    ];
    let dir: string;
    before(() => {
      dir = mkdtempSync(join(tmpdir(), 'hotstack-huge-'));
    });
    after(() => rmSync(dir, { recursive: true, force: true }));
    for (const c of huge) {
      it(`${c.name}: a clean HotstackError, quickly, within ${SANDBOX_MEM_KB / 1e6} GB`, () => {
        const p = new PayloadElf(readFileSync(files.hello!));
        const file = join(dir, `${c.name.replace(/\W+/g, '_')}.livepatch`);
        writeFileSync(file, c.bytes(p));
        const r = sandbox<object, UploadResult>('upload-driver.js', 'HOTSTACK_UPLOAD_DRIVER', { base: files.base!, payload: file }, { timeoutMs: 60_000 });
        assert.ok(r.result, `the upload did not end cleanly: the process ${describeEnd(r)} [${c.rule}]`);
        assert.equal(r.result.ok, false, `upload accepted it (after ${r.result.ms} ms) [${c.rule}]`);
        assert.equal(r.result.errorClass, 'HotstackError', `threw ${r.result.errorClass}: ${r.result.message} [${c.rule}]`);
        assert.ok(r.result.ms < 10_000, `refused only after ${r.result.ms} ms`);
      });
    }
  });

  describe('property: random corruption never crashes the engine', () => {
    it('300 runs (sandboxed): upload succeeds or throws HotstackError; a failed upload leaves memory and state untouched; apply/revert round-trips', () => {
      const numRuns = process.env.HOTSTACK_FC_RUNS ? Number(process.env.HOTSTACK_FC_RUNS) : 300;
      const seed = process.env.HOTSTACK_FC_SEED ? Number(process.env.HOTSTACK_FC_SEED) : 20240611;
      const payloads = ['hello', 'nop', 'prepost', 'nofunc', 'twofunc', 'replace'].map((k) => files[k]!);
      const r = sandbox<object, FuzzResult>('fuzz-driver.js', 'HOTSTACK_FUZZ_DRIVER', { base: files.base!, payloads, numRuns, seed }, { timeoutMs: 300_000 });
      assert.ok(r.result, `the fuzzing process ${describeEnd(r)} (seed ${seed})`);
      assert.equal(r.result.failed, false, `seed ${seed}: ${r.result.message}\ncounterexample: ${r.result.counterexample}`);
      assert.ok(r.result.refused > 0 && r.result.uploaded > 0, `both outcomes were exercised (${r.result.uploaded} uploaded, ${r.result.refused} refused)`);
      if (process.env.HOTSTACK_FC_RUNS) console.log(`fuzz: ${JSON.stringify(r.result)}`);
    });
  });
});

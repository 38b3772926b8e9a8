/**
 * The dynamic section: what an object needs from the dynamic linker
 * (DT_NEEDED, where to look: DT_RPATH / DT_RUNPATH, its DT_SONAME).
 * Found through SHT_DYNAMIC, else PT_DYNAMIC; strings come from the
 * section's linked .dynstr, else DT_STRTAB/DT_STRSZ mapped through the
 * loadable segments. Everything is bounds-checked: a lying entry is
 * EINVAL with the file offset of the entry.
 */
import { fail } from '../errors.js';
import { cString } from './bytes.js';
import { PT_DYNAMIC, SHT_STRTAB } from './constants.js';
import type { ElfFile } from './file.js';

export const SHT_DYNAMIC = 6;
export const DT_NULL = 0;
export const DT_NEEDED = 1;
export const DT_STRTAB = 5;
export const DT_STRSZ = 10;
export const DT_SONAME = 14;
export const DT_RPATH = 15;
export const DT_RUNPATH = 29;
export const DT_DEBUG = 21;
export const DT_FLAGS_1 = 0x6ffffffb;
/** DT_FLAGS_1: do not search the default library directories (nor the ld.so.cache). */
export const DF_1_NODEFLIB = 0x800;

const DYN_SIZE = 16;
/** A string table larger than this is a lie, whatever the file size (ld.so's are kilobytes). */
const MAX_DYNSTR = 64 * 1024 * 1024;

export interface DynamicInfo {
  /** DT_NEEDED names, in order. */
  needed: string[];
  /** DT_RPATH, colon-separated as stored; undefined when absent. */
  rpath: string | undefined;
  /** DT_RUNPATH, colon-separated as stored; undefined when absent. */
  runpath: string | undefined;
  soname: string | undefined;
  /** DT_FLAGS_1 (0 when absent). */
  flags1: number;
}

interface RawEntry {
  tag: bigint;
  val: bigint;
  /** File offset of the entry, for messages. */
  at: number;
}

/** Where the entries are: the SHT_DYNAMIC section, else the PT_DYNAMIC segment. */
function dynamicRange(elf: ElfFile): { offset: bigint; size: bigint; link: number | undefined; what: string } | undefined {
  const sec = elf.sections.find((s) => s.type === SHT_DYNAMIC);
  if (sec) return { offset: sec.offset, size: sec.size, link: sec.link, what: `dynamic section [${sec.index}]` };
  const seg = elf.segments.find((s) => s.type === PT_DYNAMIC);
  if (seg) return { offset: seg.offset, size: seg.filesz, link: undefined, what: 'PT_DYNAMIC segment' };
  return undefined;
}

function readEntries(elf: ElfFile, offset: bigint, size: bigint, what: string): RawEntry[] {
  const data = elf.view.slice(offset, size, `${what} (${size} bytes at 0x${offset.toString(16)})`);
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const out: RawEntry[] = [];
  // A missing DT_NULL is tolerated: the table simply ends with the section.
  for (let o = 0; o + DYN_SIZE <= data.length; o += DYN_SIZE) {
    const tag = dv.getBigInt64(o, true);
    if (tag === BigInt(DT_NULL)) break;
    out.push({ tag, val: dv.getBigUint64(o + 8, true), at: Number(offset) + o });
  }
  return out;
}

/** The dynamic string table: the section's linked SHT_STRTAB, else DT_STRTAB/DT_STRSZ. */
function stringTable(elf: ElfFile, link: number | undefined, entries: RawEntry[], what: string): Uint8Array | undefined {
  const linked = link !== undefined ? elf.sections[link] : undefined;
  if (linked && linked.index !== 0 && linked.type === SHT_STRTAB && linked.size > 0n) {
    return elf.view.slice(linked.offset, linked.size, `${what}: string table (section [${linked.index}])`);
  }
  const strtab = entries.find((e) => e.tag === BigInt(DT_STRTAB));
  const strsz = entries.find((e) => e.tag === BigInt(DT_STRSZ));
  if (!strtab) return undefined;
  if (!strsz) fail('EINVAL', `${what}: DT_STRTAB without DT_STRSZ`, strtab.at);
  if (strsz.val === 0n || strsz.val > BigInt(Math.min(elf.view.length, MAX_DYNSTR))) {
    fail('EINVAL', `${what}: DT_STRSZ ${strsz.val} is not a plausible string table size for a file of ${elf.view.length} bytes`, strsz.at);
  }
  if (!elf.isMapped(strtab.val, Number(strsz.val))) {
    fail('EINVAL', `${what}: DT_STRTAB 0x${strtab.val.toString(16)} (+${strsz.val}) is not inside a loaded segment`, strtab.at);
  }
  return elf.readVirtual(strtab.val, Number(strsz.val));
}

/**
 * Read an object's dynamic section. An object without one (a static
 * executable, Xen) needs nothing: empty lists. Malformed tables are EINVAL
 * naming the entry's file offset.
 */
export function readDynamic(elf: ElfFile): DynamicInfo {
  const info: DynamicInfo = { needed: [], rpath: undefined, runpath: undefined, soname: undefined, flags1: 0 };
  const range = dynamicRange(elf);
  if (!range) return info;
  const entries = readEntries(elf, range.offset, range.size, range.what);
  const stringTags = [DT_NEEDED, DT_RPATH, DT_RUNPATH, DT_SONAME].map(BigInt);
  const wantsStrings = entries.some((e) => stringTags.includes(e.tag));
  const strings = wantsStrings ? stringTable(elf, range.link, entries, range.what) : undefined;
  const str = (e: RawEntry, name: string): string => {
    if (!strings) return fail('EINVAL', `${range.what}: ${name} entry but no string table (no DT_STRTAB)`, e.at);
    if (e.val >= BigInt(strings.length)) {
      fail('EINVAL', `${range.what}: ${name} string offset ${e.val} is outside the string table (${strings.length} bytes)`, e.at);
    }
    return cString(strings, Number(e.val), `${range.what}: ${name} at file offset 0x${e.at.toString(16)}`);
  };
  for (const e of entries) {
    switch (Number(e.tag)) {
      case DT_NEEDED:
        info.needed.push(str(e, 'DT_NEEDED'));
        break;
      case DT_RPATH:
        info.rpath = str(e, 'DT_RPATH');
        break;
      case DT_RUNPATH:
        info.runpath = str(e, 'DT_RUNPATH');
        break;
      case DT_SONAME:
        info.soname = str(e, 'DT_SONAME');
        break;
      case DT_FLAGS_1:
        info.flags1 = Number(e.val & 0xffffffffn);
        break;
      default:
        break;
    }
  }
  return info;
}

/**
 * Link-time address of the value word of the first `tag` entry of the
 * PT_DYNAMIC segment (where the dynamic linker writes at run time, as it
 * does DT_DEBUG's), or undefined when there is no such entry.
 */
export function dynamicValueAddress(elf: ElfFile, tag: number): bigint | undefined {
  const seg = elf.segments.find((s) => s.type === PT_DYNAMIC);
  if (!seg) return undefined;
  const entries = readEntries(elf, seg.offset, seg.filesz, 'PT_DYNAMIC segment');
  const i = entries.findIndex((e) => e.tag === BigInt(tag));
  return i < 0 ? undefined : seg.vaddr + BigInt(i * DYN_SIZE + 8);
}

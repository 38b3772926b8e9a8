/**
 * The signature note of a payload and the ELF editing that adds it.
 *
 * A signed payload carries one more section, `.note.hotstack.sig`: type
 * SHT_NOTE, not allocated (flags 0), so Xen's loader and hotstack's linker
 * ignore it like any debug section. It holds exactly one ELF note:
 *
 *   namesz 9, descsz 84, type 1 (NT_HOTSTACK_SIGNATURE), name "hotstack\0"
 *   padded to 12, then the descriptor:
 *     u32 LE  format version (1)
 *     16      key id: the first 16 bytes of SHA-256 of the signer's public
 *             key (SubjectPublicKeyInfo DER)
 *     64      Ed25519 signature
 *
 * Adding the section keeps every byte of the payload where it is: the note
 * data, a copy of .shstrtab with the new name appended, and a new section
 * header table are appended at the end of the file, and the ELF header's
 * e_shoff / e_shnum (and e_shentsize, normalised to 64) point at them. The
 * old .shstrtab and section header table stay behind as unreferenced bytes.
 * So the code, the records and the three build-id notes are unchanged, and
 * so is the build-id.
 */
import { fail } from '../errors.js';
import { EHDR_SIZE, ElfFile, SHDR_SIZE, SHF_ALLOC, SHT_NOTE, SHT_STRTAB, type Section } from '../elf/index.js';
import { MAX_PAYLOAD_SIZE } from '../payload/sections.js';

/** Name of the signature section. */
export const SIG_SECTION = '.note.hotstack.sig';
/** Note owner name. */
export const SIG_OWNER = 'hotstack';
/** Note type of a payload signature. */
export const NT_HOTSTACK_SIGNATURE = 1;
/** Version of the descriptor layout (and of the signed message, see signature.ts). */
export const SIG_FORMAT_VERSION = 1;
export const KEY_ID_LEN = 16;
export const SIG_LEN = 64;

const NAME_FIELD = 12; // "hotstack\0" padded to 4
const DESC_LEN = 4 + KEY_ID_LEN + SIG_LEN;
/** Size of the whole note (the section's size). */
export const SIG_NOTE_LEN = 12 + NAME_FIELD + DESC_LEN;
/** Offset of the signature bytes inside the note. */
export const SIG_AT = 12 + NAME_FIELD + 4 + KEY_ID_LEN;
/** Sections a payload may have (elf-checks.ts refuses 1024 or more). */
const MAX_SECTIONS = 1023;

export interface SigNote {
  version: number;
  keyId: Uint8Array;
  sig: Uint8Array;
}

/** The note bytes for a key id and signature (zeros while signing). */
export function encodeSigNote(keyId: Uint8Array, sig: Uint8Array = new Uint8Array(SIG_LEN)): Uint8Array {
  const out = new Uint8Array(SIG_NOTE_LEN);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, SIG_OWNER.length + 1, true);
  dv.setUint32(4, DESC_LEN, true);
  dv.setUint32(8, NT_HOTSTACK_SIGNATURE, true);
  out.set(Buffer.from(SIG_OWNER, 'latin1'), 12);
  dv.setUint32(12 + NAME_FIELD, SIG_FORMAT_VERSION, true);
  out.set(keyId.subarray(0, KEY_ID_LEN), 12 + NAME_FIELD + 4);
  out.set(sig.subarray(0, SIG_LEN), SIG_AT);
  return out;
}

/**
 * Decode a signature note, strictly: exactly one note of exactly this
 * layout, nothing else in the blob. Anything else is EINVAL (a signature
 * this tool cannot have written is not a signature).
 */
export function decodeSigNote(blob: Uint8Array, what: string): SigNote {
  if (blob.length !== SIG_NOTE_LEN) fail('EINVAL', `${what} is ${blob.length} bytes, not a ${SIG_NOTE_LEN}-byte hotstack signature note`);
  const dv = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
  const namesz = dv.getUint32(0, true);
  const descsz = dv.getUint32(4, true);
  const type = dv.getUint32(8, true);
  const name = Buffer.from(blob.buffer, blob.byteOffset + 12, NAME_FIELD);
  const wantName = Buffer.alloc(NAME_FIELD);
  wantName.write(SIG_OWNER, 'latin1');
  if (namesz !== SIG_OWNER.length + 1 || !name.equals(wantName)) fail('EINVAL', `${what}: note owner is not "${SIG_OWNER}"`);
  if (type !== NT_HOTSTACK_SIGNATURE) fail('EINVAL', `${what}: note type ${type} is not ${NT_HOTSTACK_SIGNATURE} (a payload signature)`);
  if (descsz !== DESC_LEN) fail('EINVAL', `${what}: descriptor is ${descsz} bytes, not ${DESC_LEN}`);
  const version = dv.getUint32(12 + NAME_FIELD, true);
  return {
    version,
    keyId: blob.slice(12 + NAME_FIELD + 4, 12 + NAME_FIELD + 4 + KEY_ID_LEN),
    sig: blob.slice(SIG_AT, SIG_AT + SIG_LEN),
  };
}

export interface LocatedSignature {
  section: Section;
  note: SigNote;
  /** File offset of the 64 signature bytes. */
  sigOffset: number;
}

/**
 * The embedded signature of a parsed file: null when there is no section
 * of that name; EINVAL when there are several or it is not a well-formed,
 * non-allocated note inside the file.
 */
export function locateSignature(elf: ElfFile): LocatedSignature | null {
  if (!elf.namesOk) return null;
  const secs = elf.sectionsNamed(SIG_SECTION);
  if (secs.length === 0) return null;
  if (secs.length > 1) fail('EINVAL', `${SIG_SECTION} appears ${secs.length} times`);
  const s = secs[0]!;
  if (s.type !== SHT_NOTE) fail('EINVAL', `${SIG_SECTION} (section [${s.index}]) is of type ${s.type}, not SHT_NOTE`, s.headerOffset);
  if ((s.flags & SHF_ALLOC) !== 0n) fail('EINVAL', `${SIG_SECTION} (section [${s.index}]) is allocated; a signature is never loaded`, s.headerOffset);
  if (s.offset < BigInt(EHDR_SIZE) || !elf.inFile(s)) fail('EINVAL', `${SIG_SECTION} (section [${s.index}]) lies outside the file`, s.headerOffset);
  const note = decodeSigNote(elf.data(s), SIG_SECTION);
  return { section: s, note, sigOffset: Number(s.offset) + SIG_AT };
}

/**
 * Put a signature note into a payload: in place when it already has a
 * well-formed signature section (re-signing), else as a new last section
 * (a malformed signature section that is the last one is replaced).
 * Returns the new bytes and the file offset of the signature bytes.
 */
export function placeSignatureNote(bytes: Uint8Array, note: Uint8Array): { bytes: Uint8Array; sigOffset: number } {
  const elf = ElfFile.parse(bytes, 'payload');
  if (!elf.namesOk) fail('EINVAL', 'the section name table is unusable, so no section can be added');
  const h = elf.header;
  let keep = elf.sections.length;
  const existing = elf.sectionsNamed(SIG_SECTION);
  if (existing.length > 1) fail('EINVAL', `${SIG_SECTION} appears ${existing.length} times; remove them before signing`);
  if (existing.length === 1) {
    let located: LocatedSignature | null = null;
    try {
      located = locateSignature(elf);
    } catch {
      /* malformed: replaced below when possible */
    }
    if (located) {
      const out = bytes.slice();
      out.set(note, Number(located.section.offset));
      return { bytes: out, sigOffset: located.sigOffset };
    }
    const s = existing[0]!;
    if (s.index !== elf.sections.length - 1) {
      fail('EINVAL', `${SIG_SECTION} (section [${s.index}]) is malformed and not the last section, so it cannot be replaced`, s.headerOffset);
    }
    keep--;
  }
  if (keep + 1 > MAX_SECTIONS) fail('EOPNOTSUPP', `the payload has ${keep} sections; a signature section would make more than ${MAX_SECTIONS}`);
  if (h.shstrndx >= keep) fail('EINVAL', `section name table index ${h.shstrndx} is not a section that is kept`);
  const shstr = elf.sections[h.shstrndx]!;
  if (shstr.type !== SHT_STRTAB || !elf.inFile(shstr)) fail('EINVAL', 'the section name table is not a string table inside the file');
  const oldNames = elf.data(shstr);
  const names = new Uint8Array(oldNames.length + SIG_SECTION.length + 1);
  names.set(oldNames);
  names.set(Buffer.from(SIG_SECTION, 'latin1'), oldNames.length);
  const noteOff = align(bytes.length, 8);
  const namesOff = noteOff + note.length;
  const shoff = align(namesOff + names.length, 8);
  const total = shoff + (keep + 1) * SHDR_SIZE;
  if (total > MAX_PAYLOAD_SIZE) fail('EINVAL', `the signed payload would be ${total} bytes; at most ${MAX_PAYLOAD_SIZE} (2 MiB) can be uploaded`);
  const out = new Uint8Array(total);
  out.set(bytes);
  out.set(note, noteOff);
  out.set(names, namesOff);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < keep; i++) {
    const from = Number(h.shoff) + i * h.shentsize;
    out.set(bytes.subarray(from, from + SHDR_SIZE), shoff + i * SHDR_SIZE);
  }
  const shstrHdr = shoff + h.shstrndx * SHDR_SIZE;
  dv.setBigUint64(shstrHdr + 24, BigInt(namesOff), true);
  dv.setBigUint64(shstrHdr + 32, BigInt(names.length), true);
  const sig = shoff + keep * SHDR_SIZE;
  dv.setUint32(sig, oldNames.length, true); // sh_name
  dv.setUint32(sig + 4, SHT_NOTE, true); // sh_type; flags, addr 0: not allocated
  dv.setBigUint64(sig + 24, BigInt(noteOff), true);
  dv.setBigUint64(sig + 32, BigInt(note.length), true);
  dv.setBigUint64(sig + 48, 4n, true); // sh_addralign
  dv.setBigUint64(40, BigInt(shoff), true); // e_shoff
  dv.setUint16(58, SHDR_SIZE, true); // e_shentsize
  dv.setUint16(60, keep + 1, true); // e_shnum
  return { bytes: out, sigOffset: noteOff + SIG_AT };
}

function align(v: number, a: number): number {
  return Math.ceil(v / a) * a;
}

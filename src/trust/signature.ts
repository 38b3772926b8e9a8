/**
 * Payload signatures: signing, and verifying against the keyring.
 *
 * What is signed (Ed25519, one message per form):
 *
 * - embedded (`.note.hotstack.sig`, see elfnote.ts): the bytes
 *   "hotstack-payload-signature-v1\0" followed by the WHOLE signed file with
 *   the 64 signature bytes of the note set to zero. Everything else is
 *   covered as it is in the file: the ELF header, every section and its
 *   header, the three build-id notes, the note's own version and key id,
 *   and any bytes no section claims. The form is canonical because the
 *   signature's location is itself covered (the section header that says
 *   where the note is), so it cannot be moved without breaking it.
 * - detached (`FILE.sig`, the same 108-byte note on its own): the bytes
 *   "hotstack-payload-detached-signature-v1\0" followed by the payload file
 *   exactly as it is. A detached signature is only consulted when the file
 *   has no embedded one.
 *
 * The two domain strings keep a signature of one form from ever being
 * accepted as the other.
 */
import { sign as edSign, verify as edVerify } from 'node:crypto';
import { fail, HotstackError, toHotstackError } from '../errors.js';
import { ElfFile, toHex } from '../elf/index.js';
import { readBoundedFile } from '../payload/file.js';
import {
  decodeSigNote, encodeSigNote, locateSignature, placeSignatureNote, SIG_FORMAT_VERSION, SIG_LEN, SIG_SECTION, type SigNote,
} from './elfnote.js';
import { type Keyring, type PrivateKeyInfo } from './keys.js';

export const EMBEDDED_DOMAIN = 'hotstack-payload-signature-v1\0';
export const DETACHED_DOMAIN = 'hotstack-payload-detached-signature-v1\0';

/** What a payload's signature says, as inspect/check/load report it. */
export interface SignatureInfo {
  /** Hex key id of the signer (null when the signature is too malformed to have one). */
  keyId: string | null;
  /** Name of the keyring file (without .pub) holding that key; null when unknown. */
  key: string | null;
  /** True only when a trusted key verified the signature over these very bytes. */
  valid: boolean;
  /** Signature in FILE.sig rather than in the payload. */
  detached: boolean;
  /** Why it is not valid. */
  reason?: string;
}

function message(domain: string, bytes: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from(domain, 'latin1'), bytes]);
}

/** Sign a payload: the bytes with a `.note.hotstack.sig` section added (or replaced). */
export function signEmbedded(bytes: Uint8Array, key: PrivateKeyInfo): Uint8Array {
  const placed = placeSignatureNote(bytes, encodeSigNote(key.keyIdBytes));
  const sig = edSign(null, message(EMBEDDED_DOMAIN, placed.bytes), key.key);
  placed.bytes.set(sig, placed.sigOffset);
  return placed.bytes;
}

/** A detached signature (the note bytes to write to FILE.sig) of a payload file's bytes. */
export function signDetached(bytes: Uint8Array, key: PrivateKeyInfo): Uint8Array {
  return encodeSigNote(key.keyIdBytes, edSign(null, message(DETACHED_DOMAIN, bytes), key.key));
}

/** Where a payload's signature is, or null when it has none. Malformed signatures throw EINVAL. */
interface Found {
  note: SigNote;
  detached: boolean;
  /** The signed message. */
  message: Buffer;
}

/** Largest FILE.sig read. */
const MAX_SIG_FILE = 4096;

function findSignature(bytes: Uint8Array, path: string | undefined): Found | null {
  let elf: ElfFile | undefined;
  try {
    elf = ElfFile.parse(bytes, 'payload');
  } catch {
    elf = undefined; // not even ELF: no embedded signature; a detached one may still say something
  }
  const located = elf ? locateSignature(elf) : null;
  if (located) {
    const canonical = Buffer.from(bytes);
    canonical.fill(0, located.sigOffset, located.sigOffset + SIG_LEN);
    return { note: located.note, detached: false, message: message(EMBEDDED_DOMAIN, canonical) };
  }
  if (path === undefined) return null;
  let sigBytes: Uint8Array;
  try {
    sigBytes = readBoundedFile(`${path}.sig`, { what: 'detached signature', max: MAX_SIG_FILE });
  } catch (e) {
    const err = toHotstackError(e);
    if (err.errno === 'ENOENT') return null;
    throw err;
  }
  return { note: decodeSigNote(sigBytes, `detached signature ${path}.sig`), detached: true, message: message(DETACHED_DOMAIN, bytes) };
}

/**
 * The signature of a payload (embedded, else `path.sig` when a path is
 * given), checked against the keyring: null when unsigned. Never throws
 * for a bad signature or keyring (that is what `valid` and `reason` say);
 * `keyring` is only called when there is a signature to check.
 */
export function verifySignature(bytes: Uint8Array, path: string | undefined, keyring: () => Keyring): SignatureInfo | null {
  let found: Found | null;
  try {
    found = findSignature(bytes, path);
  } catch (e) {
    const err = toHotstackError(e);
    return { keyId: null, key: null, valid: false, detached: false, reason: `malformed signature: ${err.message}` };
  }
  if (!found) return null;
  const keyId = toHex(found.note.keyId);
  const info: SignatureInfo = { keyId, key: null, valid: false, detached: found.detached };
  if (found.note.version !== SIG_FORMAT_VERSION) {
    return { ...info, reason: `signature format version ${found.note.version} is not supported (this hotstack knows ${SIG_FORMAT_VERSION})` };
  }
  let ring: Keyring;
  try {
    ring = keyring();
  } catch (e) {
    return { ...info, reason: toHotstackError(e).message };
  }
  const k = ring.find(keyId);
  if (!k) {
    return { ...info, reason: `key ${keyId} is not in the keyring ${ring.dir}${ring.exists ? '' : ' (no such directory)'}: add the signer's .pub file there` };
  }
  info.key = k.name;
  let ok = false;
  try {
    ok = edVerify(null, found.message, k.key, Buffer.from(found.note.sig));
  } catch {
    ok = false;
  }
  if (!ok) return { ...info, reason: `the signature by key ${k.name} (${keyId}) does not match the ${found.detached ? 'file' : 'payload'}: it was changed after signing, or signed by another key` };
  info.valid = true;
  return info;
}

/** A payload file read for upload/load/check, with what its signature says. */
export interface LoadedPayload {
  file: string;
  bytes: Uint8Array;
  signature: SignatureInfo | null;
  /** A valid signature was required (and so is present). */
  required: boolean;
}

/** The `signature` of inspect --json and of check's upload steps. */
export function signatureJson(s: SignatureInfo | null): Record<string, unknown> | null {
  if (!s) return null;
  return { keyId: s.keyId, key: s.key, valid: s.valid, detached: s.detached, ...(s.reason ? { reason: s.reason } : {}) };
}

/** One phrase for a signature: "valid, key NAME (ID)", "unsigned", "not valid: why". */
export function signatureText(s: SignatureInfo | null): string {
  if (!s) return 'unsigned';
  if (s.valid) return `valid, key ${s.key} (${s.keyId})${s.detached ? ', detached' : ''}`;
  return `not valid: ${s.reason ?? 'unknown reason'}`;
}

/**
 * The policy rule: with a signature required, unsigned payloads, unknown
 * keys and bad signatures are EKEYREJECTED, naming the file and why.
 */
export function requireValid(s: SignatureInfo | null, file: string): void {
  if (!s) fail('EKEYREJECTED', `${file} is not signed, and a signature is required (--require-signature or the policy file): sign it with hotstack sign --key KEY`);
  if (!s.valid) fail('EKEYREJECTED', `${file}: signature refused: ${s.reason ?? 'not valid'}`);
}

/** Refuse bytes that already carry an embedded signature (for --detached, which would then be ignored). */
export function assertNoEmbedded(bytes: Uint8Array, file: string): void {
  try {
    const elf = ElfFile.parse(bytes, 'payload');
    if (elf.namesOk && elf.sectionsNamed(SIG_SECTION).length) {
      fail('EINVAL', `${file} already carries an embedded signature (${SIG_SECTION}); a detached one would never be consulted: sign without --detached to replace it`);
    }
  } catch (e) {
    if (e instanceof HotstackError && e.errno === 'EINVAL' && e.message.includes(SIG_SECTION)) throw e;
  }
}


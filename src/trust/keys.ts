/**
 * Ed25519 keys for payload signatures (node:crypto, no dependency): key
 * generation, the signer's private key, and the keyring of trusted public
 * keys.
 *
 * The keyring is a directory of `NAME.pub` files (SubjectPublicKeyInfo
 * PEM), `/etc/hotstack/keys` unless `--keyring DIR` or $HOTSTACK_KEYRING
 * says otherwise. hotstack runs as root and the keyring decides what code
 * may enter other processes, so it is only trusted when nobody else could
 * have put a key there: the directory and every key file must not be
 * symbolic links, must be owned by root or by the user running hotstack,
 * and must not be writable by group or others. Anything else refuses the
 * whole keyring (EKEYREJECTED), naming the file and the fix.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import {
  closeSync, constants, existsSync, fchmodSync, fstatSync, fsyncSync, linkSync, lstatSync, openSync, readdirSync, unlinkSync, writeSync,
  type Stats,
} from 'node:fs';
import { basename, join } from 'node:path';
import { fail, HotstackError, toHotstackError } from '../errors.js';
import { fsError, readBoundedFile } from '../payload/file.js';
import { KEY_ID_LEN } from './elfnote.js';

/** Where the keyring is when nothing says otherwise. */
export const DEFAULT_KEYRING = '/etc/hotstack/keys';
/** Largest key file read (a PEM Ed25519 key is about 120 bytes). */
const MAX_KEY_FILE = 16 * 1024;
/** Most keys a keyring may hold. */
const MAX_KEYS = 1024;

export interface PublicKeyInfo {
  /** File name without `.pub`. */
  name: string;
  path: string;
  key: KeyObject;
  /** Hex of the 16-byte key id. */
  keyId: string;
}

export interface PrivateKeyInfo {
  /** File name without `.key`. */
  name: string;
  path: string;
  key: KeyObject;
  publicKey: KeyObject;
  keyIdBytes: Uint8Array;
  keyId: string;
}

/** The key id of a public key: the first 16 bytes of SHA-256 over its SubjectPublicKeyInfo DER. */
export function keyIdOf(pub: KeyObject): Uint8Array {
  const der = pub.export({ type: 'spki', format: 'der' });
  return new Uint8Array(createHash('sha256').update(der).digest().subarray(0, KEY_ID_LEN));
}

/** The keyring directory: an explicit one, else $HOTSTACK_KEYRING, else /etc/hotstack/keys. */
export function keyringDir(explicit?: string): string {
  return explicit ?? (process.env.HOTSTACK_KEYRING || DEFAULT_KEYRING);
}

function euid(): number {
  return process.geteuid?.() ?? -1;
}

/**
 * Ownership and mode rules of a trusted file or directory: owned by root or
 * the current user, not writable by group or others.
 */
export function checkTrustedOwner(st: Stats, what: string, path: string, errno: 'EKEYREJECTED' | 'EPERM' = 'EKEYREJECTED'): void {
  const me = euid();
  if (st.uid !== 0 && st.uid !== me) {
    fail(errno, `${what} ${path} is owned by uid ${st.uid}, neither root nor you (uid ${me}): only its owner's keys could be trusted; chown it`);
  }
  if ((st.mode & 0o022) !== 0) {
    const who = (st.mode & 0o020 ? 'group' : '') + (st.mode & 0o020 && st.mode & 0o002 ? ' and ' : '') + (st.mode & 0o002 ? 'others' : '');
    fail(errno, `${what} ${path} is writable by ${who} (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}): anyone there could add a key; chmod go-w ${path}`);
  }
}

function parsePublicKey(pem: Uint8Array, path: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPublicKey({ key: Buffer.from(pem), format: 'pem' });
  } catch (e) {
    return fail('EKEYREJECTED', `key file ${path} is not a PEM public key (${(e as Error).message}); keyring files are written by hotstack keygen`);
  }
  if (key.asymmetricKeyType !== 'ed25519') fail('EKEYREJECTED', `key file ${path} holds a ${key.asymmetricKeyType} key; payload signatures use Ed25519 (hotstack keygen)`);
  return key;
}

export interface Keyring {
  dir: string;
  /** False when the directory does not exist (an empty keyring). */
  exists: boolean;
  keys: PublicKeyInfo[];
  /** The key with this id (hex), if trusted. */
  find(keyId: string): PublicKeyInfo | undefined;
}

/**
 * Load the keyring in `dir`. The directory is opened once without following
 * a symbolic link, and its key files are opened relative to that open
 * directory (through /proc/self/fd), so what was checked is what is read
 * even if the path is renamed meanwhile. A missing directory is an empty
 * keyring; everything else that is wrong is EKEYREJECTED.
 */
export function loadKeyring(dir: string): Keyring {
  let fd: number;
  try {
    fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return { dir, exists: false, keys: [], find: () => undefined };
    // With O_DIRECTORY, Linux reports a symbolic link as ENOTDIR: lstat tells which.
    let link = code === 'ELOOP';
    try {
      link ||= code === 'ENOTDIR' && lstatSync(dir).isSymbolicLink();
    } catch {
      /* gone meanwhile: reported as not a directory */
    }
    if (link) fail('EKEYREJECTED', `keyring ${dir} is a symbolic link; give the directory itself (--keyring or HOTSTACK_KEYRING)`);
    if (code === 'ENOTDIR') fail('EKEYREJECTED', `keyring ${dir} is not a directory`);
    const err = fsError(e, `cannot open keyring ${dir}`);
    throw new HotstackError('EKEYREJECTED', `${err.message} (${err.errno})`);
  }
  try {
    checkTrustedOwner(fstatSync(fd), 'keyring', dir);
    const via = existsSync(`/proc/self/fd/${fd}`) ? `/proc/self/fd/${fd}` : dir;
    const names = readdirSync(via).filter((n) => n.endsWith('.pub') && n.length > 4).sort();
    if (names.length > MAX_KEYS) fail('EKEYREJECTED', `keyring ${dir} holds ${names.length} keys; at most ${MAX_KEYS}`);
    const keys: PublicKeyInfo[] = [];
    for (const n of names) {
      const path = join(dir, n);
      let pem: Uint8Array;
      try {
        pem = readBoundedFile(join(via, n), { what: 'key file', max: MAX_KEY_FILE, noFollow: true, check: (st) => checkTrustedOwner(st, 'key file', path) });
      } catch (e) {
        const err = toHotstackError(e);
        if (err.errno === 'EKEYREJECTED') throw err;
        throw new HotstackError('EKEYREJECTED', `keyring ${dir} refused: ${err.message.split(via).join(dir)}`);
      }
      const key = parsePublicKey(pem, path);
      keys.push({ name: n.slice(0, -4), path, key, keyId: Buffer.from(keyIdOf(key)).toString('hex') });
    }
    const byId = new Map<string, PublicKeyInfo>();
    for (const k of keys) if (!byId.has(k.keyId)) byId.set(k.keyId, k);
    return { dir, exists: true, keys, find: (id) => byId.get(id) };
  } finally {
    closeSync(fd);
  }
}

/**
 * The signer's private key (PEM PKCS8 Ed25519). Like ssh, a private key
 * readable or writable by group or others is refused (EPERM): it may have
 * been copied or replaced.
 */
export function readPrivateKey(path: string): PrivateKeyInfo {
  const pem = readBoundedFile(path, {
    what: 'private key', max: MAX_KEY_FILE,
    check: (st) => {
      const me = euid();
      if (st.uid !== 0 && st.uid !== me) fail('EPERM', `private key ${path} is owned by uid ${st.uid}, neither root nor you (uid ${me})`);
      if ((st.mode & 0o077) !== 0) fail('EPERM', `private key ${path} is accessible by group or others (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}); chmod 600 ${path}`);
    },
  });
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: Buffer.from(pem), format: 'pem' });
  } catch (e) {
    return fail('EINVAL', `${path} is not a PEM private key (${(e as Error).message}); create one with hotstack keygen -o NAME`);
  }
  if (key.asymmetricKeyType !== 'ed25519') fail('EINVAL', `${path} holds a ${key.asymmetricKeyType} key; payload signatures use Ed25519 (hotstack keygen)`);
  const publicKey = createPublicKey(key);
  const keyIdBytes = keyIdOf(publicKey);
  const base = basename(path);
  return { name: base.endsWith('.key') ? base.slice(0, -4) : base, path, key, publicKey, keyIdBytes, keyId: Buffer.from(keyIdBytes).toString('hex') };
}

/**
 * Write `data` to `path` with `mode`, all or nothing and never over an
 * existing file: a private temporary file is written and synced, then
 * hard-linked to `path` (link fails with EEXIST instead of replacing).
 */
function writeNew(path: string, data: string, mode: number): void {
  const tmp = `${path}.tmp-${process.pid}-${Date.now().toString(36)}`;
  const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode);
  try {
    try {
      fchmodSync(fd, mode); // the umask only ever removes bits; make the mode exact
      const b = Buffer.from(data);
      let off = 0;
      while (off < b.length) off += writeSync(fd, b, off, b.length - off);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    linkSync(tmp, path);
  } finally {
    try {
      unlinkSync(tmp);
    } catch {
      /* already gone */
    }
  }
}

export interface GeneratedKey {
  privatePath: string;
  publicPath: string;
  keyId: string;
}

/**
 * `hotstack keygen -o NAME`: NAME.key (PKCS8 PEM, mode 0600) and NAME.pub
 * (SPKI PEM, mode 0644). Existing files are never overwritten (EEXIST).
 */
export function generateKey(prefix: string): GeneratedKey {
  const privatePath = `${prefix}.key`;
  const publicPath = `${prefix}.pub`;
  for (const p of [privatePath, publicPath]) {
    if (existsSync(p)) fail('EEXIST', `${p} already exists; keygen never overwrites a key (remove it, or choose another -o NAME)`);
  }
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const priv = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
  const pub = publicKey.export({ type: 'spki', format: 'pem' }) as string;
  try {
    writeNew(privatePath, priv, 0o600);
  } catch (e) {
    throw fsError(e, `writing ${privatePath}`);
  }
  try {
    writeNew(publicPath, pub, 0o644);
  } catch (e) {
    try {
      unlinkSync(privatePath); // a key whose public half could not be written is of no use
    } catch {
      /* nothing to undo */
    }
    throw fsError(e, `writing ${publicPath}`);
  }
  return { privatePath, publicPath, keyId: Buffer.from(keyIdOf(publicKey)).toString('hex') };
}

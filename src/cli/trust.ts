/**
 * Signed payloads on the command line: `keygen`, `sign`, the
 * `--require-signature` / `--keyring` options, and the one place payload
 * files are read for upload, load and check (read bounded, signature
 * checked, policy enforced) before anything touches a process or image.
 */
import { closeSync, constants, fsyncSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { Option, type Command } from 'commander';
import { HotstackError, toHotstackError } from '../errors.js';
import { fsError, readPayloadFile } from '../payload/file.js';
import { inspectPayload, type InspectedPayload } from '../payload/inspect.js';
import { generateKey, keyringDir, loadKeyring, readPrivateKey, type Keyring, type PrivateKeyInfo } from '../trust/keys.js';
import { readPolicy, type Policy } from '../trust/policy.js';
import {
  assertNoEmbedded, requireValid, signatureJson as signatureRecord, signDetached, signEmbedded, signatureText, verifySignature, type LoadedPayload, type SignatureInfo,
} from '../trust/signature.js';
import { errorLine, exitCodeFor } from './format.js';
import type { KeygenErrorJson, KeygenJson, SignatureJson, SignErrorJson, SignJson } from './json-types.js';
import { failedStep, reporterFor, type Io, type Reporter } from './report.js';

export type { SignatureInfo };

export interface TrustCliOptions {
  /** --require-signature on the command line (the policy file may require it too). */
  requireSignature?: boolean;
  /** --keyring DIR (else $HOTSTACK_KEYRING, else /etc/hotstack/keys). */
  keyring?: string;
}

export type { LoadedPayload };

/** What a loaded payload's record keeps of its signature (list --json). */
export interface RecordedSignature {
  keyId: string;
  key: string | null;
  valid: boolean;
}

const keyrings = new Map<string, Keyring>();
let cachedPolicy: Policy | undefined;

/** The policy file, read once per run: one `check` of many payloads applies one policy. */
function policy(): Policy {
  cachedPolicy ??= readPolicy();
  return cachedPolicy;
}

/** The keyring, read at most once per run (check reads many payloads). */
function keyringFor(explicit: string | undefined): () => Keyring {
  const dir = keyringDir(explicit);
  return () => {
    let k = keyrings.get(dir);
    if (!k) {
      k = loadKeyring(dir);
      keyrings.set(dir, k);
    }
    return k;
  };
}

/**
 * Read a payload file (bounded, regular files only), check its signature
 * and enforce the policy: with a signature required, unsigned payloads,
 * unknown keys and bad signatures are EKEYREJECTED here, before the caller
 * opens a process or uploads anything.
 */
export function loadPayloadFile(file: string, opts: TrustCliOptions = {}): LoadedPayload {
  const required = !!opts.requireSignature || policy().requireSignature;
  const bytes = readPayloadFile(file);
  const signature = verifySignature(bytes, file, keyringFor(opts.keyring));
  if (required) requireValid(signature, file);
  return { file, bytes, signature, required };
}

/**
 * The line `upload`/`load` print after `Uploading FILE... completed`: only
 * for signed payloads, or when a signature was required, so that the
 * output for unsigned payloads stays exactly xen-livepatch's.
 */
export function signatureLine(p: LoadedPayload | undefined): string {
  if (!p || (!p.signature && !p.required)) return '';
  return `Signature: ${signatureText(p.signature)}\n`;
}

/** What the payload record keeps (undefined for unsigned payloads). */
export function recordedSignature(p: LoadedPayload | undefined): RecordedSignature | undefined {
  const s = p?.signature;
  return s && s.keyId ? { keyId: s.keyId, key: s.key, valid: s.valid } : undefined;
}

/** A signature as --json prints it (inspect, upload and check steps); null when unsigned. */
export function signatureJson(s: SignatureInfo | null): SignatureJson | null {
  return signatureRecord(s) as SignatureJson | null;
}

/**
 * For the live commands: read and check FILE before the process is opened
 * or locked. On failure, reports what `upload` reports for a failed upload
 * and returns the exit status.
 */
export function preloadForLive(file: string, name: string, opts: TrustCliOptions, rep: Reporter): LoadedPayload | number {
  try {
    return loadPayloadFile(file, opts);
  } catch (e) {
    const err = toHotstackError(e);
    rep.out(`Uploading ${file}... `);
    rep.step(failedStep('upload', name, null, err), { out: 'failed\n', err: errorLine(err) + '\n' });
    return rep.end(exitCodeFor(err));
  }
}

/** `--require-signature`, for upload, load and check. */
export function requireSignatureOption(): Option {
  return new Option('--require-signature', 'refuse a payload unless a key of the keyring signed it (EKEYREJECTED); the policy file can require this too');
}

/** The signature of a payload for `inspect` (never enforced there; the keyring is only read for signed files). */
export function inspectSignature(file: string, bytes: Uint8Array, keyring: string | undefined): SignatureInfo | null {
  return verifySignature(bytes, file, keyringFor(keyring));
}

/** Write `data` to `path` all at once: a temporary file in the same directory, synced, renamed over it. */
function writeAtomic(path: string, data: Uint8Array): void {
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o644);
    try {
      let off = 0;
      while (off < data.length) off += writeSync(fd, data, off, data.length - off);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      /* not created */
    }
    throw fsError(e, `writing ${path}`);
  }
}

/** A payload that must be valid before it is signed (its errno, naming the file). */
function inspectToSign(bytes: Uint8Array, file: string): InspectedPayload {
  try {
    return inspectPayload(bytes);
  } catch (e) {
    const err = toHotstackError(e);
    throw new HotstackError(err.errno, `${file} is not a valid payload, so it is not signed: ${err.message}`);
  }
}

export interface SignReport {
  output: string;
  payload: string;
  key: string;
  keyId: string;
  buildId: string;
  detached: boolean;
}

/** Check what was just signed with the signer's own public key: a signature that does not verify is never written. */
function selfCheck(bytes: Uint8Array, path: string | undefined, key: PrivateKeyInfo): void {
  const ring: Keyring = {
    dir: '(the signing key)', exists: true, keys: [],
    find: (id) => (id === key.keyId ? { name: key.name, path: key.path, key: key.publicKey, keyId: key.keyId } : undefined),
  };
  const s = verifySignature(bytes, path, () => ring);
  if (!s?.valid) throw new HotstackError('EIO', `internal error: the new signature does not verify (${signatureText(s)})`);
}

/**
 * `hotstack sign`: embed a signature (or write PAYLOAD.sig with
 * --detached). The payload must be valid; its build-id is unchanged.
 */
export function signFile(payload: string, keyPath: string, output: string | undefined, detached: boolean): SignReport {
  const key = readPrivateKey(keyPath);
  const bytes = readPayloadFile(payload);
  const before = inspectToSign(bytes, payload);
  if (detached) {
    assertNoEmbedded(bytes, payload);
    const out = output ?? `${payload}.sig`;
    const sig = signDetached(bytes, key);
    writeAtomic(out, sig);
    return { output: out, payload, key: key.name, keyId: key.keyId, buildId: before.buildId, detached };
  }
  if (output === undefined) throw new HotstackError('EINVAL', 'give -o OUT, the signed payload to write (it may be PAYLOAD itself), or --detached');
  const signed = signEmbedded(bytes, key);
  const after = inspectToSign(signed, `${payload} (signed)`);
  if (after.buildId !== before.buildId) throw new HotstackError('EIO', `internal error: signing changed the build-id (${before.buildId} -> ${after.buildId})`);
  selfCheck(signed, undefined, key);
  writeAtomic(output, signed);
  return { output, payload, key: key.name, keyId: key.keyId, buildId: after.buildId, detached };
}

/** `build --sign KEY`: read the key before building (a bad key fails first), sign the checked bytes last. */
export function buildSigner(keyPath: string): { key: PrivateKeyInfo; sign: (bytes: Uint8Array) => Uint8Array } {
  const key = readPrivateKey(keyPath);
  return {
    key,
    sign: (bytes) => {
      const signed = signEmbedded(bytes, key);
      selfCheck(signed, undefined, key);
      return signed;
    },
  };
}

const KEYGEN_HELP = `
Writes NAME.key (the private key, PEM PKCS8, mode 0600) and NAME.pub (the
public key, PEM SPKI). Neither may exist already. Keep NAME.key secret; put
NAME.pub in the keyring of the machines that should trust payloads signed
with it (default /etc/hotstack/keys; owned by root, not writable by group
or others).

Example:
  hotstack keygen -o release
  install -m 0644 release.pub /etc/hotstack/keys/
`;

const SIGN_HELP = `
Adds a .note.hotstack.sig section (not loaded; Xen and hotstack's loader
ignore it) holding the signer's key id and an Ed25519 signature over the
whole file; the payload's bytes, notes and build-id are unchanged. Signing
a signed payload replaces its signature. With --detached, the signature is
written to PAYLOAD.sig instead (or -o FILE), and the payload is left alone;
upload/load/check consult FILE.sig next to FILE when FILE has no embedded
signature.

Example:
  hotstack sign --key release.key -o fix1.livepatch fix1.livepatch
  hotstack --pid 1234 load --require-signature fix1.livepatch
`;

/** Register `keygen` and `sign`; a new program (one run of main()) reads the policy and keyrings afresh. */
export function registerTrust(program: Command, setExit: (n: number) => void, io: Io): void {
  keyrings.clear();
  cachedPolicy = undefined;
  program
    .command('keygen')
    .description('create an Ed25519 key pair for signing payloads: NAME.key and NAME.pub')
    .requiredOption('-o, --output <name>', 'NAME: writes NAME.key and NAME.pub')
    .option('--json', 'print one JSON object')
    .addHelpText('after', KEYGEN_HELP)
    .action((o: { output: string; json?: boolean }) => {
      const rep = reporterFor(o.json, io);
      try {
        const k: KeygenJson = generateKey(o.output);
        rep.result(k, (v, out) => out.out(`Private key ${v.privatePath} (keep it secret)\nPublic key  ${v.publicPath} (key id ${v.keyId}): copy it into the keyring\n`));
        setExit(0);
      } catch (e) {
        const err = toHotstackError(e);
        rep.failure(err, {} satisfies Omit<KeygenErrorJson, 'error'>, `hotstack keygen: ${errorLine(err)}\n`);
        setExit(exitCodeFor(err));
      }
    });

  program
    .command('sign')
    .description('sign a payload with a private key (embedded note, or PAYLOAD.sig with --detached)')
    .requiredOption('--key <key>', 'the private key (NAME.key from hotstack keygen)')
    .option('-o, --output <file>', 'the signed payload to write (may be PAYLOAD itself); with --detached, the signature file (default PAYLOAD.sig)')
    .option('--detached', 'write the signature to a separate file and leave the payload unchanged')
    .option('--json', 'print one JSON object')
    .argument('<payload>', 'the payload to sign')
    .addHelpText('after', SIGN_HELP)
    .action((payload: string, o: { key: string; output?: string; detached?: boolean; json?: boolean }) => {
      const rep = reporterFor(o.json, io);
      try {
        rep.result(signFile(payload, o.key, o.output, !!o.detached) satisfies SignJson, (r, out) => out.out(r.detached
          ? `Signed ${payload}: detached signature ${r.output}, key ${r.key} (${r.keyId})\n`
          : `Signed ${payload} -> ${r.output}: key ${r.key} (${r.keyId}), build-id ${r.buildId} (unchanged)\n`));
        setExit(0);
      } catch (e) {
        const err = toHotstackError(e);
        rep.failure(err, { payload } satisfies Omit<SignErrorJson, 'error'>, `hotstack sign: ${errorLine(err)}\n`);
        setExit(exitCodeFor(err));
      }
    });
}

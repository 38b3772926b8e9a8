/**
 * The machine's payload policy: `/etc/hotstack/policy` ($HOTSTACK_POLICY
 * moves it, for tests). One directive per line, `#` starts a comment:
 *
 *   require-signature     every upload, load and check needs a payload
 *                         signed by a key of the keyring (EKEYREJECTED)
 *
 * A missing file is no policy. The file is trusted like the keyring (owner
 * root or the current user, not writable by group or others) and an
 * unknown directive is an error: a policy that cannot be read as written
 * must not silently mean less than it says.
 */
import { fail, toHotstackError } from '../errors.js';
import { readBoundedFile } from '../payload/file.js';
import { checkTrustedOwner } from './keys.js';

export const DEFAULT_POLICY = '/etc/hotstack/policy';
const MAX_POLICY_FILE = 64 * 1024;

export interface Policy {
  path: string;
  /** Whether the file exists. */
  exists: boolean;
  requireSignature: boolean;
}

/** The policy file's path: $HOTSTACK_POLICY, else /etc/hotstack/policy. */
export function policyPath(): string {
  return process.env.HOTSTACK_POLICY || DEFAULT_POLICY;
}

/** Read and parse the policy (EPERM when it cannot be trusted, EINVAL when it cannot be understood). */
export function readPolicy(path = policyPath()): Policy {
  let text: string;
  try {
    text = Buffer.from(readBoundedFile(path, {
      what: 'policy file', max: MAX_POLICY_FILE, allowEmpty: true, check: (st) => checkTrustedOwner(st, 'policy file', path, 'EPERM'),
    })).toString('utf8');
  } catch (e) {
    const err = toHotstackError(e);
    if (err.errno === 'ENOENT') return { path, exists: false, requireSignature: false };
    throw err;
  }
  const policy: Policy = { path, exists: true, requireSignature: false };
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/#.*$/, '').trim();
    if (!line) return;
    if (line === 'require-signature') policy.requireSignature = true;
    else fail('EINVAL', `policy file ${path} line ${i + 1}: unknown directive ${JSON.stringify(line.slice(0, 80))} (known: require-signature)`);
  });
  return policy;
}

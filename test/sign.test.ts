/**
 * Signed payloads (README "Signed payloads"), through bin/hotstack:
 * keygen, sign (embedded and --detached), inspect, the keyring's trust
 * rules, --require-signature and the policy file on check (offline) and
 * load (a real process), tampering of every part of a signed file, and
 * build --sign. Fixtures are the Xen-style payloads built at test time.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, createPublicKey } from 'node:crypto';
import {
  chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { PayloadElf, SHDR } from './helpers/elfedit.js';
import { Cli, Processes, canSwitchUser, expectCli, freshStateDir, HOTSTACK_BIN, quote, type CliResult } from './helpers/live.js';
import { buildAll, FIXTURES_DIR, run } from './helpers/toolchain.js';
import type { ActionJson, CheckJson, InspectJson, KeygenJson } from '../src/cli/json-types.js';

const work = mkdtempSync(join(tmpdir(), 'hotstack-sign-'));
const stateDir = freshStateDir('sign');
const cli = new Cli(stateDir);
const procs = new Processes();
const ring = join(work, 'ring');
/** Never /etc/hotstack: every run names its policy file (absent unless a test writes it). */
const noPolicy = join(work, 'no-policy');
let files: Record<string, string> = {};

after(async () => {
  await procs.stopAll();
  rmSync(work, { recursive: true, force: true });
  rmSync(stateDir, { recursive: true, force: true });
});

/** `hotstack ARGS` with the test keyring and no policy unless `env` says otherwise. */
function hs(args: string[], env: Record<string, string> = {}): CliResult {
  return cli.raw(args, { env: { HOTSTACK_KEYRING: ring, HOTSTACK_POLICY: noPolicy, ...env } });
}

function ok(r: CliResult, step = ''): CliResult {
  expectCli(r, { status: 0 }, step);
  return r;
}

/** Exit 1 and `Error 129: EKEYREJECTED` (or the errno given) on stderr. */
function refused(r: CliResult, errno = 'EKEYREJECTED', msg?: RegExp, step = ''): CliResult {
  expectCli(r, { status: 1, stderr: new RegExp(`Error \\d+: ${errno}: ${msg ? `.*${msg.source}` : ''}`) }, step);
  return r;
}

function inspect(file: string, env: Record<string, string> = {}): InspectJson {
  const r = ok(hs(['inspect', '--json', file], env), `inspect ${file}`);
  return JSON.parse(r.stdout) as InspectJson;
}

function check(payloads: string[], extra: string[] = [], env: Record<string, string> = {}): { r: CliResult; j: CheckJson } {
  const r = hs(['check', '--image', files.base!, '--json', ...extra, ...payloads], env);
  expectCli(r, {}, 'check');
  return { r, j: JSON.parse(r.stdout) as CheckJson };
}

/** The upload step of one payload in check --require-signature: refused with EKEYREJECTED, nothing applied. */
function checkRefused(file: string, why: RegExp, env: Record<string, string> = {}): void {
  const { r, j } = check([file], ['--require-signature'], env);
  assert.equal(r.status, 1, `check exit 1\n${r.stdout}${r.stderr}`);
  assert.equal(j.steps.length, 1, 'only the upload step');
  assert.equal(j.steps[0]!.errno, 'EKEYREJECTED', j.steps[0]!.message);
  assert.match(j.steps[0]!.message, why);
  assert.deepEqual(j.stack, []);
}

const key = (n: string) => join(work, `${n}.key`);
const pub = (n: string) => join(work, `${n}.pub`);
const signedPath = (n: string) => join(work, n);

/** Key id as the README defines it: SHA-256 of the SubjectPublicKeyInfo DER, first 16 bytes. */
function keyIdOfPem(pem: string): string {
  const der = createPublicKey(pem).export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(der).digest().subarray(0, 16).toString('hex');
}

let relId = '';

before(() => {
  files = buildAll();
  mkdirSync(ring, { mode: 0o755 });
  chmodSync(ring, 0o755);
});

describe('keygen', () => {
  test('writes NAME.key (0600, PKCS8) and NAME.pub (SPKI), even under umask 000, and never overwrites', () => {
    // umask 000 would make a careless open() create a world-readable private key.
    const r = spawnSync('/bin/sh', ['-c', 'umask 000; exec "$0" "$@"', process.execPath, HOTSTACK_BIN, 'keygen', '--json', '-o', join(work, 'rel')], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout) as KeygenJson;
    assert.equal(statSync(key('rel')).mode & 0o7777, 0o600, 'private key mode');
    assert.equal(statSync(pub('rel')).mode & 0o7777, 0o644, 'public key mode');
    assert.match(readFileSync(key('rel'), 'utf8'), /^-----BEGIN PRIVATE KEY-----\n/);
    assert.match(readFileSync(pub('rel'), 'utf8'), /^-----BEGIN PUBLIC KEY-----\n/);
    relId = keyIdOfPem(readFileSync(pub('rel'), 'utf8'));
    assert.equal(j.keyId, relId, 'key id = first 16 bytes of SHA-256(SPKI DER)');
    assert.deepEqual(readdirSync(work).filter((f) => f.includes('.tmp-')), [], 'no temporary files left');

    const before = readFileSync(key('rel'));
    refused(hs(['keygen', '-o', join(work, 'rel')]), 'EEXIST', /already exists/);
    assert.ok(readFileSync(key('rel')).equals(before), 'the existing key is untouched');
    ok(hs(['keygen', '-o', join(work, 'other')]));
    ok(hs(['keygen', '-o', join(work, 'stranger')]));
    writeFileSync(join(ring, 'rel.pub'), readFileSync(pub('rel')), { mode: 0o644 });
    writeFileSync(join(ring, 'other.pub'), readFileSync(pub('other')), { mode: 0o644 });
  });
});

describe('sign and inspect', () => {
  test('an embedded signature keeps every payload byte and the build-id; readelf is happy', () => {
    const out = signedPath('hello.livepatch');
    const r = ok(hs(['sign', '--key', key('rel'), '-o', out, files.hello!]));
    assert.match(r.stdout, new RegExp(`key rel \\(${relId}\\)`));
    const a = inspect(files.hello!);
    const b = inspect(out);
    assert.equal(a.signature, null, 'the fixture is unsigned');
    assert.deepEqual(b.signature, { keyId: relId, key: 'rel', valid: true, detached: false });
    for (const k of ['buildId', 'depends', 'baseBuildId', 'funcs', 'sections', 'metadata'] as const) assert.deepEqual(b[k], a[k], `inspect ${k} unchanged`);
    const text = ok(hs(['inspect', out])).stdout;
    assert.match(text, new RegExp(`^  signature:      valid, key rel \\(${relId}\\)$`, 'm'));
    assert.match(ok(hs(['inspect', files.hello!])).stdout, /^ {2}signature: {6}unsigned$/m);

    const orig = readFileSync(files.hello!);
    const signed = readFileSync(out);
    assert.ok(signed.subarray(0, 40).equals(orig.subarray(0, 40)), 'ELF header up to e_shoff unchanged');
    assert.ok(signed.subarray(64, orig.length).equals(orig.subarray(64)), 'every byte after the ELF header unchanged (the section is appended)');
    const re = spawnSync('readelf', ['-SW', out], { encoding: 'utf8' });
    assert.equal(re.status, 0);
    assert.equal(re.stderr, '', 'readelf has no warnings');
    assert.match(re.stdout, /\.note\.hotstack\.sig\s+NOTE\s+0+ [0-9a-f]+ 00006c 00\s+0\s+0\s+4/, 'a non-allocated 108-byte note section');
    assert.match(run('readelf', ['-nW', out]), /\.note\.hotstack\.sig[\s\S]*hotstack\s+0x00000054\s/, 'readelf decodes the note (owner hotstack, 84 bytes)');
  });

  test('re-signing replaces the signature in place; sign refuses invalid payloads and exposed keys', () => {
    const out = signedPath('hello.livepatch');
    const before = readFileSync(out);
    const otherId = keyIdOfPem(readFileSync(pub('other'), 'utf8'));
    ok(hs(['sign', '--key', key('other'), '-o', join(work, 'resigned.livepatch'), out]));
    const after = readFileSync(join(work, 'resigned.livepatch'));
    assert.equal(after.length, before.length, 'same size: the note was rewritten in place');
    assert.equal(new PayloadElf(after).sections.filter((s) => s.name === '.note.hotstack.sig').length, 1);
    assert.deepEqual(inspect(join(work, 'resigned.livepatch')).signature, { keyId: otherId, key: 'other', valid: true, detached: false });

    refused(hs(['sign', '--key', key('rel'), '-o', join(work, 'bad.livepatch'), files.bad_version!]), 'EOPNOTSUPP', /not a valid payload/);
    assert.ok(!existsSync(join(work, 'bad.livepatch')));
    writeFileSync(join(work, 'loose.key'), readFileSync(key('rel')), { mode: 0o644 });
    chmodSync(join(work, 'loose.key'), 0o644);
    refused(hs(['sign', '--key', join(work, 'loose.key'), '-o', join(work, 'x.livepatch'), files.hello!]), 'EPERM', /chmod 600/);
    refused(hs(['sign', '--key', pub('rel'), '-o', join(work, 'x.livepatch'), files.hello!]), 'EPERM');
    assert.ok(!existsSync(join(work, 'x.livepatch')));
  });
});

describe('verification (offline: check)', () => {
  before(() => {
    ok(hs(['sign', '--key', key('rel'), '-o', signedPath('bye.livepatch'), files.bye!]));
    ok(hs(['sign', '--key', key('stranger'), '-o', signedPath('stranger.livepatch'), files.hello!]));
  });

  test('check --require-signature accepts payloads signed by keyring keys and reports each upload\'s signature', () => {
    const { r, j } = check([signedPath('hello.livepatch'), signedPath('bye.livepatch')], ['--require-signature']);
    assert.equal(r.status, 0, r.stdout);
    assert.deepEqual(j.stack, ['hello', 'bye']);
    const up = j.steps.filter((s) => s.action === 'upload');
    assert.deepEqual(up.map((s) => s.signature), [
      { keyId: relId, key: 'rel', valid: true, detached: false }, { keyId: relId, key: 'rel', valid: true, detached: false },
    ]);
    const text = ok(hs(['check', '--image', files.base!, signedPath('hello.livepatch'), files.bye!])).stdout;
    assert.match(text, new RegExp(`upload\\s+hello\\s+ok: uploaded \\(signature: valid, key rel \\(${relId}\\)\\)`));
    assert.match(text, /upload\s+bye\s+ok: uploaded \(signature: unsigned\)/, 'without the policy, unsigned payloads still load');
  });

  test('unsigned payloads are refused with --require-signature and with the policy file', () => {
    checkRefused(files.hello!, /not signed/);
    const policy = join(work, 'policy');
    writeFileSync(policy, '# hotstack policy\n\nrequire-signature   # all payloads\n', { mode: 0o644 });
    checkRefused(files.hello!, /not signed/, { HOTSTACK_POLICY: policy });
    const { r } = check([signedPath('hello.livepatch')], [], { HOTSTACK_POLICY: policy });
    assert.equal(r.status, 0, 'a signed payload passes the policy');
    // A policy that cannot be trusted or understood stops everything (fail closed).
    chmodSync(policy, 0o666);
    const w = hs(['check', '--image', files.base!, '--json', signedPath('hello.livepatch')], { HOTSTACK_POLICY: policy });
    assert.equal(w.status, 1);
    assert.match(w.stdout, /"errno":"EPERM".*writable by group and others/);
    writeFileSync(policy, 'require-signatures\n', { mode: 0o644 });
    chmodSync(policy, 0o644);
    const u = hs(['check', '--image', files.base!, '--json', signedPath('hello.livepatch')], { HOTSTACK_POLICY: policy });
    assert.match(u.stdout, /"errno":"EINVAL".*line 1: unknown directive/);
  });

  test('one flipped byte anywhere (code, a build-id note, the signature, the section header table) is refused', () => {
    const good = readFileSync(signedPath('hello.livepatch'));
    const p = new PayloadElf(good);
    const sig = p.section('.note.hotstack.sig');
    const at = {
      code: p.section('.text.hello_extra_version').offset + 1,
      'build-id note': p.section('.note.gnu.build-id').offset + 16 + 3,
      'xen_depends note': p.section('.livepatch.xen_depends').offset + 20,
      signature: sig.offset + 44 + 10,
      'key id': sig.offset + 28,
      'section header table': p.sections[3]!.hdr + SHDR.addr,
      'old section header table (unreferenced bytes)': Number(readFileSync(files.hello!).readBigUInt64LE(40)) + 64 + SHDR.addr,
    };
    for (const [what, off] of Object.entries(at)) {
      const bad = Buffer.from(good);
      bad[off]! ^= 0x01;
      const f = join(work, `tampered-${what.replace(/\W+/g, '_')}.livepatch`);
      writeFileSync(f, bad);
      checkRefused(f, /signature refused/);
      const r = hs(['inspect', '--json', f]);
      if (r.status === 0) {
        const s = (JSON.parse(r.stdout) as InspectJson).signature;
        assert.equal(s?.valid, false, `${what}: inspect says not valid`);
      }
    }
  });

  test('a key that is not in the keyring is refused, naming the key', () => {
    const strangerId = keyIdOfPem(readFileSync(pub('stranger'), 'utf8'));
    checkRefused(signedPath('stranger.livepatch'), new RegExp(`key ${strangerId} is not in the keyring`));
    assert.deepEqual(inspect(signedPath('stranger.livepatch')).signature?.key, null);
    // --keyring (global option, here after the command) picks another keyring.
    const other = join(work, 'ring2');
    mkdirSync(other, { mode: 0o700 });
    writeFileSync(join(other, 'stranger.pub'), readFileSync(pub('stranger')), { mode: 0o644 });
    const { r } = check([signedPath('stranger.livepatch')], ['--require-signature', '--keyring', other]);
    assert.equal(r.status, 0, r.stdout);
  });

  test('a keyring (or key file) that is a symbolic link, writable by others, or owned by someone else is refused', () => {
    const signed = signedPath('hello.livepatch');
    const bad = join(work, 'badring');
    const reset = () => {
      rmSync(bad, { recursive: true, force: true });
      mkdirSync(bad, { mode: 0o755 });
      chmodSync(bad, 0o755);
      writeFileSync(join(bad, 'rel.pub'), readFileSync(pub('rel')), { mode: 0o644 });
    };
    const expectRefused = (why: RegExp, dir = bad) => {
      checkRefused(signed, why, { HOTSTACK_KEYRING: dir });
      const s = inspect(signed, { HOTSTACK_KEYRING: dir }).signature;
      assert.equal(s?.valid, false, 'inspect reports it, without failing');
      assert.match(s?.reason ?? '', why);
    };
    reset();
    assert.equal(check([signed], ['--require-signature'], { HOTSTACK_KEYRING: bad }).r.status, 0, 'the sound keyring works');
    chmodSync(bad, 0o777);
    expectRefused(/keyring .* is writable by group and others/);
    chmodSync(bad, 0o775);
    expectRefused(/writable by group \(mode 0775\)/);
    reset();
    chmodSync(join(bad, 'rel.pub'), 0o646);
    expectRefused(/key file .*rel\.pub is writable by others/);
    reset();
    rmSync(join(bad, 'rel.pub'));
    symlinkSync(pub('rel'), join(bad, 'rel.pub'));
    expectRefused(/rel\.pub is a symbolic link/);
    reset();
    const link = join(work, 'ringlink');
    symlinkSync(bad, link);
    expectRefused(/ringlink is a symbolic link/, link);
    if (process.getuid?.() === 0) {
      reset();
      chownSync(join(bad, 'rel.pub'), 65534, 65534);
      expectRefused(/owned by uid 65534, neither root nor you/);
      reset();
      chownSync(bad, 65534, 65534);
      expectRefused(/keyring .* owned by uid 65534/);
    }
  });

  test('--detached writes PAYLOAD.sig, used when the payload has no embedded signature', () => {
    const p = join(work, 'det.livepatch');
    writeFileSync(p, readFileSync(files.hello!));
    const r = ok(hs(['sign', '--key', key('rel'), '--detached', p]));
    assert.match(r.stdout, /detached signature .*det\.livepatch\.sig/);
    assert.ok(readFileSync(p).equals(readFileSync(files.hello!)), 'the payload is untouched');
    assert.equal(statSync(`${p}.sig`).size, 108);
    assert.deepEqual(inspect(p).signature, { keyId: relId, key: 'rel', valid: true, detached: true });
    const { r: c, j } = check([p], ['--require-signature']);
    assert.equal(c.status, 0, c.stdout);
    assert.equal(j.steps[0]!.signature?.detached, true);
    // Tampered signature file, then the payload changed under a good one.
    const sig = readFileSync(`${p}.sig`);
    const bad = Buffer.from(sig);
    bad[100]! ^= 0x80;
    writeFileSync(`${p}.sig`, bad);
    checkRefused(p, /does not match/);
    writeFileSync(`${p}.sig`, sig);
    const changed = Buffer.from(readFileSync(files.hello!));
    changed[0x200]! ^= 1;
    writeFileSync(p, changed);
    checkRefused(p, /does not match/);
    rmSync(`${p}.sig`);
    checkRefused(p, /not signed/);
    // An embedded signature wins; a detached one next to it is refused at signing.
    refused(hs(['sign', '--key', key('rel'), '--detached', signedPath('hello.livepatch')]), 'EINVAL', /already carries an embedded signature/);
  });
});

describe('verification (live: load)', () => {
  test('load --require-signature: a signed payload loads and says by which key; refused ones never touch the process', async () => {
    const b = await procs.start(files.base!);
    const signed = signedPath('hello.livepatch');
    assert.equal(await b.ask('v'), '-unstable');
    const ld = hs(['--pid', String(b.pid), 'load', '--require-signature', signed]);
    expectCli(ld, {
      status: 0, stderr: '',
      stdout: `Uploading ${signed}... completed\nSignature: valid, key rel (${relId})\nApplying hello... completed\n`,
    });
    assert.equal(await b.ask('v'), 'Hello World');
    const list = cli.list(b.pid) as unknown as { name: string; signature?: unknown }[];
    assert.deepEqual(list.map((x) => [x.name, x.signature]), [['hello', { keyId: relId, key: 'rel', valid: true }]], 'list --json records the key id');
    ok(hs(['--pid', String(b.pid), 'revert', 'hello']));
    ok(hs(['--pid', String(b.pid), 'unload', 'hello']));

    // Refused: unsigned, unknown key, tampered. Not even the state file is created.
    rmSync(stateDir, { recursive: true, force: true });
    mkdirSync(stateDir);
    for (const [f, why] of [
      [files.hello!, 'is not signed'], [signedPath('stranger.livepatch'), 'is not in the keyring'], [join(work, 'tampered-code.livepatch'), 'does not match'],
    ] as const) {
      expectCli(hs(['--pid', String(b.pid), 'load', '--require-signature', f]), {
        status: 1, stdout: `Uploading ${f}... failed\n`, stderr: new RegExp(`^Error 129: EKEYREJECTED: .*${quote(why)}`),
      }, f);
      const j = hs(['--pid', String(b.pid), 'upload', '--json', '--require-signature', 'x', f]);
      assert.equal(j.status, 1);
      const o = JSON.parse(j.stdout) as ActionJson;
      assert.deepEqual([o.ok, o.steps[0]!.errno, o.steps[0]!.code], [false, 'EKEYREJECTED', -129]);
      assert.deepEqual(readdirSync(stateDir), [], 'the process was never opened (no state written)');
    }
    assert.equal(ok(hs(['--pid', String(b.pid), 'list'])).stdout, 'Nothing to list\n');
    assert.equal(await b.ask('v'), '-unstable');

    // Without the policy, the unsigned Xen-style fixture loads, with exactly xen-livepatch's output.
    expectCli(hs(['--pid', String(b.pid), 'load', files.hello!]), {
      status: 0, stderr: '', stdout: `Uploading ${files.hello}... completed\nApplying hello... completed\n`,
    });
    assert.equal(await b.ask('v'), 'Hello World');
    const l2 = cli.list(b.pid) as unknown as Record<string, unknown>[];
    assert.ok(!('signature' in l2[0]!), 'an unsigned payload has no signature entry');
    // With the policy but signed: fine. The stranger-signed one loads without it, and says why it is not valid.
    ok(hs(['--pid', String(b.pid), 'revert', 'hello']));
    ok(hs(['--pid', String(b.pid), 'unload', 'hello']));
    const st = hs(['--pid', String(b.pid), 'upload', 's', signedPath('stranger.livepatch')]);
    expectCli(st, { status: 0, stdout: /^Uploading .*completed\nSignature: not valid: key [0-9a-f]{32} is not in the keyring/ });
    ok(hs(['--pid', String(b.pid), 'unload', 's']));
    await b.stop();
  });
});

describe('build --sign', () => {
  test('signs as the last step; a refused key leaves no output', () => {
    const out = join(work, 'p1.livepatch');
    const src = join(FIXTURES_DIR, 'build', 'p1.c');
    const r = ok(hs(['build', '--base', files.base!, '--sign', key('rel'), '-o', out, src, '--', '-DP1_ANSWER="-signed"']));
    assert.match(r.stdout, new RegExp(`^  signed    key rel \\(${relId}\\)$`, 'm'));
    const j = inspect(out);
    assert.deepEqual(j.signature, { keyId: relId, key: 'rel', valid: true, detached: false });
    assert.match(r.stdout, new RegExp(`build-id  ${j.buildId}`), 'the build-id printed is the signed file\'s');
    assert.equal(check([out], ['--require-signature']).r.status, 0);
    const bad = join(work, 'p1-bad.livepatch');
    refused(hs(['build', '--base', files.base!, '--sign', join(work, 'loose.key'), '-o', bad, src, '--', '-DP1_ANSWER="x"']), 'EPERM');
    assert.ok(!existsSync(bad));
  });
});

test('as another user, a keyring owned by root is still trusted (owner root or you)', { skip: !canSwitchUser() }, () => {
  const signed = signedPath('hello.livepatch');
  chmodSync(work, 0o755);
  const r = cli.raw(['inspect', '--json', signed], { asUser: 65534, env: { HOTSTACK_KEYRING: ring, HOTSTACK_POLICY: noPolicy } });
  expectCli(r, { status: 0 });
  assert.equal((JSON.parse(r.stdout) as InspectJson).signature?.valid, true);
});

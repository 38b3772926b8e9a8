/**
 * The state files' double buffer (src/targets/process/slots.ts): records
 * alternate between two files written in place; a torn write leaves the
 * previous record readable; planted symlinks and foreign files are refused.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, symlinkSync, truncateSync, writeFileSync, statSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { decodeRecord, encodeRecord, SlotPair } from '../src/targets/process/slots.js';
import { HotstackError } from '../src/errors.js';

const dir = mkdtempSync(join(tmpdir(), 'hotstack-slots-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const pair = (): [string, string] => {
  n++;
  return [join(dir, `s${n}.0`), join(dir, `s${n}.1`)];
};

test('records round-trip; a flipped byte, a cut body or another format is not a record', () => {
  const r = encodeRecord(7, '{"a":"é"}');
  assert.deepEqual(decodeRecord(r), { seq: 7, body: '{"a":"é"}' });
  assert.deepEqual(decodeRecord(Buffer.concat([r, Buffer.from('junk past the end')])), { seq: 7, body: '{"a":"é"}' });
  const flipped = Buffer.from(r);
  flipped[flipped.length - 2] ^= 1;
  assert.equal(decodeRecord(flipped), null);
  assert.equal(decodeRecord(r.subarray(0, r.length - 1)), null);
  assert.equal(decodeRecord(Buffer.from('{"key":"1-2"}')), null);
});

test('writes alternate between the files; the newest record wins, also for a fresh reader', () => {
  const paths = pair();
  const s = new SlotPair(paths);
  assert.deepEqual(s.read(), { body: null, damaged: false });
  s.write('one');
  s.write('two');
  s.write('three');
  s.close();
  assert.match(readFileSync(paths[1], 'latin1'), /three$/);
  assert.match(readFileSync(paths[0], 'latin1'), /two$/);
  const t = new SlotPair(paths);
  assert.deepEqual(t.read(), { body: 'three', damaged: false });
  t.write('four');
  assert.match(readFileSync(paths[0], 'latin1'), /four$/, 'the slot not holding the newest record');
  t.close();
});

test('a write torn by a kill leaves the previous record', () => {
  const paths = pair();
  const s = new SlotPair(paths);
  s.write('old state');
  s.write('new state, cut short');
  s.close();
  truncateSync(paths[0], statSync(paths[0]).size - 5); // seq 2 went to slot 0
  const t = new SlotPair(paths);
  assert.deepEqual(t.read(), { body: 'old state', damaged: true });
  t.write('next');
  t.close();
  assert.deepEqual(new SlotPair(paths).read(), { body: 'next', damaged: false });
});

test('planted files are refused with a clear error, never followed', () => {
  const paths = pair();
  writeFileSync(join(dir, 'victim'), 'keep me');
  symlinkSync(join(dir, 'victim'), paths[0]);
  assert.throws(() => new SlotPair(paths), (e: unknown) => e instanceof HotstackError && e.errno === 'EPERM' && /symbolic link/.test(e.message));
  assert.equal(readFileSync(join(dir, 'victim'), 'utf8'), 'keep me');
  const open = pair();
  writeFileSync(open[1], '');
  chmodSync(open[1], 0o666);
  assert.throws(() => new SlotPair(open), (e: unknown) => e instanceof HotstackError && e.errno === 'EPERM' && /writable only/.test(e.message));
});

/**
 * The copy of the state kept in a process (src/targets/process/mirror.ts),
 * on a memory stand-in: found by its magic in private anonymous read-only
 * mappings only, newest valid slot wins, a slot torn by a killed tool (or
 * claiming more than it holds) is passed over for the previous one.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { findMirrors, fits, initMirror, mirrorSizeFor, writeMirror, type MirrorMemory } from '../src/targets/process/mirror.js';
import type { MapEntry } from '../src/targets/process/maps.js';

const BASE = 0x7f0000000000n;

/** `size` bytes of zeroed memory at BASE. */
function memory(size: number): MirrorMemory & { bytes: Uint8Array } {
  const bytes = new Uint8Array(size);
  return {
    bytes,
    read: (a, len) => bytes.slice(Number(a - BASE), Number(a - BASE) + len),
    write: (a, data) => bytes.set(data, Number(a - BASE)),
  };
}

function mapping(size: number, perms = 'r--p', path = '', inode = 0n): MapEntry {
  return { start: BASE, end: BASE + BigInt(size), perms, offset: 0n, dev: '00:00', inode, path };
}

test('newest valid slot wins; a torn slot falls back to the one before', () => {
  const size = mirrorSizeFor(100);
  const mem = memory(size);
  const m = initMirror(mem, BASE, size);
  assert.deepEqual(findMirrors([mapping(size)], mem).map((x) => [x.seq, x.text]), [[0n, null]], 'a fresh mirror holds nothing yet');
  writeMirror(mem, m, 1n, 'one');
  writeMirror(mem, m, 2n, 'two');
  assert.deepEqual(findMirrors([mapping(size)], mem).map((x) => [x.addr, x.seq, x.text]), [[BASE, 2n, 'two']]);
  writeMirror(mem, m, 3n, 'three');
  // Slot of seq 3 (odd: the second slot) gets a flipped byte of its text, as a write cut short would leave it.
  const slot = 4096 + Math.floor((size - 4096) / 2);
  mem.bytes[slot + 48]! ^= 0xff;
  assert.deepEqual(findMirrors([mapping(size)], mem).map((x) => [x.seq, x.text]), [[2n, 'two']], 'the torn slot is passed over');
  // A length claiming more than the slot holds is not read.
  new DataView(mem.bytes.buffer).setBigUint64(slot + 8, BigInt(size), true);
  assert.deepEqual(findMirrors([mapping(size)], mem).map((x) => x.seq), [2n]);
});

test('only private anonymous read-only memory is searched, and only a size it covers is believed', () => {
  const size = mirrorSizeFor(10);
  const mem = memory(size);
  writeMirror(mem, initMirror(mem, BASE, size), 1n, 'x');
  assert.equal(findMirrors([mapping(size)], mem).length, 1);
  assert.equal(findMirrors([mapping(size, 'rw-p')], mem).length, 0, 'writable memory is not where hotstack keeps it');
  assert.equal(findMirrors([mapping(size, 'r--s')], mem).length, 0, 'shared memory neither');
  assert.equal(findMirrors([mapping(size, 'r--p', '/usr/lib/libc.so.6', 42n)], mem).length, 0, 'a file mapping neither');
  assert.equal(findMirrors([mapping(size - 4096)], mem).length, 0, 'a mapping smaller than the recorded size');
  mem.bytes[0]! ^= 1;
  assert.equal(findMirrors([mapping(size)], mem).length, 0, 'no magic, no mirror');
});

test('sizes: room to grow, and fits() says when a new mirror is needed', () => {
  const size = mirrorSizeFor(1000);
  assert.equal(size % 4096, 0);
  assert.ok(fits(size, 1000) && fits(size, 60 * 1024));
  assert.ok(!fits(size, size));
  const big = mirrorSizeFor(1_000_000);
  assert.ok(fits(big, 1_000_000) && fits(big, 1_999_000), 'twice the text fits');
});

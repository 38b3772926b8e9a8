/**
 * The stack scan of the consistency check finds words by their upper
 * halves (Buffer.indexOf) for speed inside the stop: it must find exactly
 * what the plain word-by-word scan finds.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { returnAddressIn, stackSpan } from '../src/targets/process/consistency.js';

const TWO_32 = 4294967296;

function naive(stack: Uint8Array, lo: number[], hi: number[]): { offset: number; range: number } | null {
  const dv = new DataView(stack.buffer, stack.byteOffset, stack.byteLength);
  for (let o = 0; o + 8 <= stack.length; o += 8) {
    const w = dv.getUint32(o + 4, true) * TWO_32 + dv.getUint32(o, true);
    for (let k = 0; k < lo.length; k++) if (w > lo[k]! && w <= hi[k]!) return { offset: o, range: k };
  }
  return null;
}

/** Addresses near a few typical places (PIE text, libraries, low non-PIE text), so hits and near misses are common. */
const address = fc.oneof(
  fc.integer({ min: 0x555555554000, max: 0x555555564000 }),
  fc.integer({ min: 0x7ffff7d80000, max: 0x7ffff7d90000 }),
  fc.integer({ min: 0x400000, max: 0x410000 }),
  fc.integer({ min: 0xfffff000, max: 0x100001000 }),
  fc.constant(0),
);

test('returnAddressIn finds the first word in a range, as a word-by-word scan does', () => {
  fc.assert(
    fc.property(
      fc.array(address, { maxLength: 300 }),
      fc.array(fc.tuple(address, fc.integer({ min: 1, max: 0x20000 })), { minLength: 1, maxLength: 4 }),
      fc.integer({ min: 0, max: 7 }),
      fc.integer({ min: 0, max: 7 }),
      (words, ranges, shift, tail) => {
        // An unaligned view with a ragged end, as a read of any stack slice may give.
        const raw = Buffer.alloc(shift + words.length * 8 + tail);
        words.forEach((w, i) => {
          raw.writeUInt32LE(w % TWO_32, shift + i * 8);
          raw.writeUInt32LE(Math.floor(w / TWO_32), shift + i * 8 + 4);
        });
        const stack = new Uint8Array(raw.buffer, raw.byteOffset + shift, words.length * 8 + tail);
        const lo = ranges.map(([s]) => s);
        const hi = ranges.map(([s, n]) => s + n);
        assert.deepEqual(returnAddressIn(stack, lo, hi), naive(stack, lo, hi));
      },
    ),
    { numRuns: 3000, seed: 20261207 },
  );
});

test('returnAddressIn: a return address at the end of a range counts, one at its start does not', () => {
  const b = Buffer.alloc(24);
  b.writeBigUInt64LE(0x555555555000n, 0);
  b.writeBigUInt64LE(0x555555556000n, 8);
  const lo = [0x555555555000];
  const hi = [0x555555556000];
  assert.deepEqual(returnAddressIn(b, lo, hi), { offset: 8, range: 0 });
  assert.equal(returnAddressIn(b.subarray(0, 8), lo, hi), null);
});

test('stackSpan: the main thread on its initial stack is scanned up to where that stack started, any other to its mapping\'s end (at most 8 MiB)', () => {
  const m = { start: 0x7ffd5ea93000n, end: 0x7ffd5eab4000n };
  const top = 0x7ffd5eab2ff0n;
  // Frames lie below the start; argv, the environment and the auxiliary vector above it.
  assert.equal(stackSpan(0x7ffd5eab2000n, m, top), 0xff0);
  assert.equal(stackSpan(0x7ffd5eab2000n, m), 0x2000);
  // Not on its initial stack (a coroutine's, a signal stack): the start is not above sp in that mapping.
  assert.equal(stackSpan(0x7ffd5eab3000n, m, top), 0x1000);
  assert.equal(stackSpan(0x10000n, { start: 0x10000n, end: 0x20000n }, top), 0x10000);
  assert.equal(stackSpan(0x10000n, { start: 0x10000n, end: 0x10000000n }), 8 * 1024 * 1024);
});

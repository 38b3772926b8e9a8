/** Unit tests of pure logic: x86-64 encodings, relocation math, plan overlay, state serialization. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { encodeJump, encodeNops, encodeVeneer, isEndbr64 } from '../src/arch/x86_64/insn.js';
import { writeReloc } from '../src/arch/x86_64/relocs.js';
import { Overlay } from '../src/core/patching.js';
import { deserializeState, emptyState, serializeState } from '../src/core/state.js';
import { HotstackError } from '../src/errors.js';
import { parseBuildIdNote } from '../src/elf/notes.js';

test('jump encoding: e9 + rel32 from the end of the jump', () => {
  assert.deepEqual([...encodeJump(0x1000n, 0x2000n)], [0xe9, 0xfb, 0x0f, 0, 0]);
  assert.deepEqual([...encodeJump(0x2000n, 0x1000n)], [0xe9, 0xfb, 0xef, 0xff, 0xff]);
  fc.assert(
    fc.property(fc.bigInt(0x10000n, 0x7fff00000000n), fc.integer({ min: -0x7fff0000, max: 0x7fff0000 }), (from, d) => {
      const to = from + BigInt(d);
      const j = encodeJump(from, to);
      const rel = new DataView(j.buffer).getInt32(1, true);
      return j[0] === 0xe9 && from + 5n + BigInt(rel) === to;
    }),
  );
});

test('NOP sequences: exact length, canonical encodings only', () => {
  const canon = new Set(['90', '6690', '0f1f00', '0f1f4000', '0f1f440000', '660f1f440000', '0f1f8000000000', '0f1f840000000000', '660f1f840000000000']);
  for (let n = 0; n <= 31; n++) {
    const b = encodeNops(n);
    assert.equal(b.length, n);
    // Decompose greedily back into canonical NOPs.
    let hex = Buffer.from(b).toString('hex');
    while (hex.length) {
      const hit = [...canon].sort((a, c) => c.length - a.length).find((c) => hex.startsWith(c));
      assert.ok(hit, `non-canonical NOP bytes in ${n}: ${hex}`);
      hex = hex.slice(hit.length);
    }
  }
});

test('endbr64 detection and veneer layout', () => {
  assert.ok(isEndbr64(Uint8Array.of(0xf3, 0x0f, 0x1e, 0xfa, 0x55)));
  assert.ok(!isEndbr64(Uint8Array.of(0xf3, 0x0f, 0x1e)));
  assert.ok(!isEndbr64(Uint8Array.of(0x55, 0x48, 0x89, 0xe5)));
  const v = encodeVeneer(0x7f0011223344n);
  assert.equal(Buffer.from(v).toString('hex'), 'ff2500000000' + '4433221100' + '7f0000');
});

test('relocation overflow is EOVERFLOW, in-range values are stored', () => {
  const buf = new Uint8Array(8);
  writeReloc(buf, 0, 'pc32', 0x1000n, 0x2000n, 'r');
  assert.equal(new DataView(buf.buffer).getInt32(0, true), -0x1000);
  assert.throws(() => writeReloc(buf, 0, 'pc32', 0x7fff00000000n, 0x1000n, 'r'), (e: unknown) => e instanceof HotstackError && e.errno === 'EOVERFLOW');
  assert.throws(() => writeReloc(buf, 0, 'abs32', 0x100000000n, 0n, 'r'), (e: unknown) => e instanceof HotstackError && e.errno === 'EOVERFLOW');
  assert.throws(() => writeReloc(buf, 0, 'abs32s', 0x80000000n, 0n, 'r'), (e: unknown) => e instanceof HotstackError && e.errno === 'EOVERFLOW');
  writeReloc(buf, 0, 'abs32s', BigInt.asUintN(64, -8n), 0n, 'r');
  assert.equal(new DataView(buf.buffer).getInt32(0, true), -8);
});

test('overlay: later writes win, reads merge partial overlaps', () => {
  const base = new Uint8Array(32).map((_, i) => i);
  const o = new Overlay((a, l) => base.slice(Number(a), Number(a) + l));
  o.write(4n, Uint8Array.of(0xaa, 0xbb));
  o.write(5n, Uint8Array.of(0xcc));
  assert.deepEqual([...o.read(3n, 4)], [3, 0xaa, 0xcc, 6]);
  assert.deepEqual([...base.slice(3, 7)], [3, 4, 5, 6], 'the target is untouched');
});

test('state serialization keeps bigints exact', () => {
  const s = emptyState();
  s.pending = { action: 'apply', payload: 'p', writes: [{ addr: 0xffff82d040123456n, before: 'aa', after: 'bb' }], regions: [] };
  const back = deserializeState(serializeState(s));
  assert.equal(back.pending!.writes[0]!.addr, 0xffff82d040123456n);
  assert.throws(() => deserializeState('{"version":2}'));
});

test('build-id notes: type, name, size and bounds rules', () => {
  const note = (namesz: number, descsz: number, type: number, name = 'GNU\0', desc = 20): Uint8Array => {
    const b = Buffer.alloc(12 + 4 + desc);
    b.writeUInt32LE(namesz, 0);
    b.writeUInt32LE(descsz, 4);
    b.writeUInt32LE(type, 8);
    b.write(name, 12, 'latin1');
    return b;
  };
  assert.equal(parseBuildIdNote(note(4, 20, 3), 'n').length, 20);
  const bad = (b: Uint8Array): void => assert.throws(() => parseBuildIdNote(b, 'n'), (e: unknown) => e instanceof HotstackError && e.errno === 'EINVAL');
  bad(note(4, 20, 1));
  bad(note(4, 0, 3));
  bad(note(5, 20, 3));
  bad(note(4, 21, 3));
  bad(note(4, 0xffffffff, 3));
  bad(note(4, 20, 3, 'GNX\0'));
  bad(new Uint8Array(12));
});

/**
 * The pure pieces of the diff: gcc's suffixes, which strings a payload
 * keeps, which files a patch touches.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isSpecialStatic, symbolKey } from '../src/diff/object.js';
import { touchedFiles } from '../src/diff/source.js';
import { trimStrings } from '../src/diff/strings.js';
import { HotstackError } from '../src/errors.js';

describe('diff: names', () => {
  it('drops gcc numeric suffixes and keeps the kind of clone', () => {
    assert.equal(symbolKey('f.isra.3'), 'f.isra');
    assert.equal(symbolKey('f.constprop.0.isra.1'), 'f.constprop.isra');
    assert.equal(symbolKey('count.12'), 'count');
    assert.equal(symbolKey('f.part.0.cold'), 'f.part.cold');
    assert.equal(symbolKey('v2.0'), 'v2');
    assert.ok(isSpecialStatic('.LC7') && isSpecialStatic('__func__.2') && isSpecialStatic('CSWTCH.6'));
    assert.ok(!isSpecialStatic('count.1'));
  });
});

describe('diff: string literals kept', () => {
  const pool = (...s: string[]): Uint8Array => new Uint8Array(Buffer.from(s.map((x) => x + '\0').join(''), 'latin1'));
  const at = (data: Uint8Array, off: bigint): string => {
    const n = Number(off);
    return Buffer.from(data.subarray(n, data.indexOf(0, n))).toString('latin1');
  };

  it('keeps each used string whole and maps every way of pointing at it', () => {
    const strings = ['x'.repeat(40), 'first used', 'y'.repeat(40), 'z'.repeat(30), 'second used', 'w'.repeat(50)];
    const data = pool(...strings);
    const first = data.indexOf(0x66); // 'f'
    const second = Buffer.from(data).indexOf('second used');
    // lea (addend -4), cmpb $imm8 (-5), cmpl $imm32 (-8), an absolute pointer (0).
    const refs = [BigInt(first - 4), BigInt(first - 5), BigInt(second - 8), BigInt(second)];
    const t = trimStrings(data, 1, refs);
    const kept = Buffer.from(t.data).toString('latin1');
    assert.ok(!kept.includes('yyy') && !kept.includes('www'), `strings nobody points at are left out: ${JSON.stringify(kept)}`);
    assert.equal(at(t.data, t.map(BigInt(first - 4))! + 4n), 'first used');
    assert.equal(at(t.data, t.map(BigInt(first - 5))! + 5n), 'first used');
    assert.equal(at(t.data, t.map(BigInt(second - 8))! + 8n), 'second used');
    assert.equal(at(t.data, t.map(BigInt(second))!), 'second used');
  });

  it('keeps the alignment of .rodata.str1.8 and points before the first string', () => {
    const data = new Uint8Array(64);
    Buffer.from('aligned\0').copy(Buffer.from(data.buffer), 0);
    Buffer.from('eight\0').copy(Buffer.from(data.buffer), 48);
    const t = trimStrings(data, 8, [-4n, 44n]);
    assert.equal(Number(t.map(-4n)! + 4n) % 8, 0);
    assert.equal(at(t.data, t.map(-4n)! + 4n), 'aligned');
    assert.equal(Number(t.map(44n)! + 4n) % 8, 0);
    assert.equal(at(t.data, t.map(44n)! + 4n), 'eight');
  });
});

describe('diff: files a patch touches', () => {
  it('reads unified diffs as patch -p1 does, and refuses what is not one', () => {
    const p = '--- a/src/x.c\t2020\n+++ b/src/x.c\t2020\n@@ -1 +1 @@\n-a\n+b\n--- /dev/null\n+++ b/new.c\n@@ -0,0 +1 @@\n+c\n--- a/gone.c\n+++ /dev/null\n';
    assert.deepEqual(touchedFiles(p, 'p.patch'), [{ path: 'src/x.c', added: false }, { path: 'new.c', added: true }]);
    assert.throws(() => touchedFiles('just text\n', 'q.patch'), (e: unknown) => e instanceof HotstackError && /q\.patch is not a unified diff/.test(e.message));
    assert.throws(() => touchedFiles('+++ b/../../etc/passwd\n', 'r.patch'), (e: unknown) => e instanceof HotstackError && /outside the source tree/.test(e.message));
  });
});

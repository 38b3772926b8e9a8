/**
 * The bounded build-id reader behind `--all` (src/targets/process/
 * buildid.ts): it reads files of other processes as root, so anything that
 * is not a sound ELF file (a device, a FIFO, a directory, truncated or
 * lying headers) must answer null at once, never hang, throw or read a
 * size it has not checked.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BuildIdCache, readFileBuildId } from '../src/targets/process/buildid.js';
import { buildFleet } from './helpers/fleet.js';
import { readBuildId } from './helpers/toolchain.js';

const work = mkdtempSync(join(tmpdir(), 'hotstack-buildid-'));
after(() => rmSync(work, { recursive: true, force: true }));
const fx = buildFleet(join(work, 'build'), `buildid-${process.pid}`);
const id = readBuildId(fx.exe);

/** A copy of the fleet program with `edit` applied to its bytes. */
function variant(name: string, edit: (b: Buffer) => Buffer): string {
  const out = join(work, name);
  writeFileSync(out, edit(readFileSync(fx.exe)));
  return out;
}

/** Offsets of the PT_NOTE program headers. */
function noteHeaders(b: Buffer): number[] {
  const phoff = Number(b.readBigUInt64LE(32));
  const out: number[] = [];
  for (let i = 0; i < b.readUInt16LE(56); i++) if (b.readUInt32LE(phoff + i * 56) === 4) out.push(phoff + i * 56);
  return out;
}

test('the build-id of an ELF program, as readelf has it', () => {
  assert.match(id, /^[0-9a-f]{40}$/);
  assert.equal(readFileBuildId(fx.exe), id);
});

test('not a regular ELF file: null at once (device, FIFO, directory), undefined when it cannot be opened', () => {
  assert.equal(readFileBuildId('/dev/zero'), null);
  const fifo = join(work, 'fifo');
  assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
  assert.equal(readFileBuildId(fifo), null, 'a FIFO without a writer must not block');
  mkdirSync(join(work, 'dir'));
  assert.equal(readFileBuildId(join(work, 'dir')), null);
  assert.equal(readFileBuildId(join(work, 'nosuch')), undefined);
  assert.equal(readFileBuildId(variant('empty', () => Buffer.alloc(0))), null);
  assert.equal(readFileBuildId(variant('text', () => Buffer.from('#!/bin/sh\necho not elf\n'.repeat(10)))), null);
});

test('lying headers: truncated, too many program headers, notes out of the file or too big', () => {
  assert.equal(readFileBuildId(variant('trunc64', (b) => b.subarray(0, 64))), null, 'program headers beyond the end');
  assert.equal(readFileBuildId(variant('phnum', (b) => { b.writeUInt16LE(0xffff, 56); return b; })), null);
  assert.equal(readFileBuildId(variant('phentsize', (b) => { b.writeUInt16LE(32, 54); return b; })), null);
  assert.equal(readFileBuildId(variant('phoff', (b) => { b.writeBigUInt64LE(1n << 62n, 32); return b; })), null);
  assert.equal(readFileBuildId(variant('elf32', (b) => { b[4] = 1; return b; })), null);
  const huge = variant('notesize', (b) => { for (const o of noteHeaders(b)) b.writeBigUInt64LE(1n << 40n, o + 32); return b; });
  assert.equal(readFileBuildId(huge), null, 'a 1 TiB note segment is not read');
  const outside = variant('noteoff', (b) => { for (const o of noteHeaders(b)) b.writeBigUInt64LE(BigInt(b.length), o + 8); return b; });
  assert.equal(readFileBuildId(outside), null);
  // One sound note segment among broken ones still gives the build-id.
  const one = variant('onegood', (b) => {
    const hs = noteHeaders(b);
    const good = hs.find((o) => {
      const off = Number(b.readBigUInt64LE(o + 8));
      const size = Number(b.readBigUInt64LE(o + 32));
      return b.subarray(off, off + size).includes(Buffer.from(id, 'hex'));
    })!;
    for (const o of hs) if (o !== good) b.writeBigUInt64LE(1n << 40n, o + 32);
    return b;
  });
  assert.equal(readFileBuildId(one), id);
});

test('the cache reads each file once, by device and inode, and does not keep a file it could not open', () => {
  const c = new BuildIdCache();
  assert.equal(c.get('fd:01', 42n, fx.exe), id);
  assert.equal(c.get('fd:01', 42n, '/nonexistent'), id, 'answered from the cache');
  assert.equal(c.reads, 1);
  assert.equal(c.get('fd:01', 43n, join(work, 'gone')), null);
  const copy = join(work, 'gone');
  copyFileSync(fx.exe, copy);
  assert.equal(c.get('fd:01', 43n, copy), id, 'a failed open is tried again');
  assert.equal(c.reads, 3);
});

/**
 * The property test of malformed.test.ts, run sandboxed (sandbox.ts):
 * random corruptions of valid payloads (bit flips, truncations, and
 * interesting values written over header, section-header, symbol,
 * relocation, livepatch_func and note fields).  For each:
 *  - inspectPayload returns or throws a HotstackError;
 *  - Engine.upload succeeds or throws a HotstackError, and a failed upload
 *    leaves nothing loaded and the base's memory unchanged;
 *  - an uploaded one is applied (NODEPS): success or HotstackError, a failed
 *    apply changes no memory, apply + revert restores the memory exactly,
 *    and it unloads.
 * Job (HOTSTACK_FUZZ_DRIVER): { base, payloads: string[], numRuns, seed, out, progress }.
 * Before each case the mutation is written to `progress`, so a crash of
 * the whole process still names the input that caused it.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import fc from 'fast-check';
import { Engine } from '../../src/core/engine.js';
import { ERRNO, HotstackError } from '../../src/errors.js';
import { inspectPayload } from '../../src/payload/inspect.js';
import { ImageTarget } from '../../src/targets/image/index.js';
import { EHDR, FUNC, PayloadElf, RELA, SHDR, SHT, SYM, SYM_SIZE } from './elfedit.js';
import { run } from './toolchain.js';

export interface FuzzJob { base: string; payloads: string[]; numRuns: number; seed: number; out: string; progress: string }
export interface FuzzResult { failed: boolean; message?: string; counterexample?: string; numRuns: number; seed: number; uploaded: number; refused: number; applied: number }

type Width = 1 | 2 | 4 | 8;
type Mutation =
  | { kind: 'flip'; pos: number; bit: number }
  | { kind: 'truncate'; len: number }
  | { kind: 'write'; off: number; width: Width; value: bigint };

const NOTE_SECTIONS = ['.note.gnu.build-id', '.livepatch.depends', '.livepatch.xen_depends'];

/** Offsets and widths of the fields worth corrupting in a payload. */
function fieldsOf(p: PayloadElf): { off: number; width: Width }[] {
  const out: { off: number; width: Width }[] = [];
  const ehdr: [number, Width][] = [
    [EHDR.class, 1], [EHDR.data, 1], [EHDR.identVersion, 1], [EHDR.osabi, 1], [EHDR.abiversion, 1], [EHDR.type, 2],
    [EHDR.machine, 2], [EHDR.version, 4], [EHDR.phoff, 8], [EHDR.shoff, 8], [EHDR.phnum, 2], [EHDR.shentsize, 2],
    [EHDR.shnum, 2], [EHDR.shstrndx, 2],
  ];
  for (const [off, width] of ehdr) out.push({ off, width });
  const shdr: [number, Width][] = [
    [SHDR.name, 4], [SHDR.type, 4], [SHDR.flags, 8], [SHDR.offset, 8], [SHDR.size, 8], [SHDR.link, 4], [SHDR.info, 4],
    [SHDR.addralign, 8], [SHDR.entsize, 8],
  ];
  for (const s of p.sections) for (const [f, w] of shdr) out.push({ off: s.hdr + f, width: w });
  for (let i = 0; i < p.symtab.size / SYM_SIZE; i++) {
    const at = p.symtab.offset + i * SYM_SIZE;
    out.push({ off: at + SYM.name, width: 4 }, { off: at + SYM.info, width: 1 }, { off: at + SYM.shndx, width: 2 }, { off: at + SYM.value, width: 8 });
  }
  for (const r of p.sections.filter((s) => s.type === SHT.RELA)) {
    for (let o = 0; o < r.size; o += 24) {
      out.push({ off: r.offset + o + RELA.offset, width: 8 }, { off: r.offset + o + RELA.info, width: 4 },
        { off: r.offset + o + RELA.info + 4, width: 4 }, { off: r.offset + o + RELA.addend, width: 8 });
    }
  }
  const fs = p.sections.find((s) => s.name === '.livepatch.funcs');
  if (fs) {
    for (let o = 0; o < fs.size; o += FUNC.size) {
      for (const [f, w] of [[FUNC.newSize, 4], [FUNC.oldSize, 4], [FUNC.version, 1], [FUNC.expectFlags, 1], [FUNC.oldAddr, 8], [FUNC.newAddr, 8]] as const) {
        out.push({ off: fs.offset + o + f, width: w });
      }
    }
  }
  for (const n of NOTE_SECTIONS) {
    const s = p.sections.find((x) => x.name === n);
    if (s) out.push({ off: s.offset, width: 4 }, { off: s.offset + 4, width: 4 }, { off: s.offset + 8, width: 4 });
  }
  return out;
}

const INTERESTING = [
  0n, 1n, 2n, 3n, 4n, 7n, 8n, 9n, 16n, 24n, 31n, 32n, 64n, 104n, 0xffn, 0x100n, 0xff00n, 0xfff1n, 0xfff2n, 0xffffn,
  0x200000n, 0x200001n, 0x7fffffffn, 0x80000000n, 0xffffffffn, 1n << 32n, 1n << 40n, 1n << 63n, (1n << 64n) - 1n, (1n << 64n) - 24n,
];

function valueArb(width: Width): fc.Arbitrary<bigint> {
  const max = (1n << BigInt(8 * width)) - 1n;
  return fc.oneof(fc.constantFrom(...INTERESTING).map((v) => v & max), fc.bigInt({ min: 0n, max }));
}

function mutate(b: Buffer, m: Mutation): Buffer {
  if (m.kind === 'truncate') return b.subarray(0, Math.min(m.len, b.length));
  const out = Buffer.from(b);
  if (m.kind === 'flip') {
    if (m.pos < out.length) out[m.pos]! ^= 1 << m.bit;
    return out;
  }
  if (m.off + m.width > out.length) return out;
  switch (m.width) {
    case 1: out.writeUInt8(Number(m.value), m.off); break;
    case 2: out.writeUInt16LE(Number(m.value), m.off); break;
    case 4: out.writeUInt32LE(Number(m.value), m.off); break;
    case 8: out.writeBigUInt64LE(m.value, m.off); break;
  }
  return out;
}

const show = (x: unknown): string => JSON.stringify(x, (_k, v) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v));

function loadRanges(base: string): { vaddr: bigint; memsz: number }[] {
  return run('readelf', ['-lW', base]).split('\n').map((l) => l.trim().split(/\s+/)).filter((f) => f[0] === 'LOAD')
    .map((f) => ({ vaddr: BigInt(f[2]!), memsz: Number(BigInt(f[5]!)) }));
}

export function fuzz(job: FuzzJob): FuzzResult {
  const payloads = job.payloads.map((f) => new PayloadElf(readFileSync(f)));
  const fields = payloads.map(fieldsOf);
  const t = ImageTarget.open(job.base);
  const e = new Engine(t);
  const ranges = loadRanges(job.base);
  const memory = (): Buffer => Buffer.concat(ranges.map((r) => Buffer.from(t.read(r.vaddr, r.memsz))));
  const pristine = memory();
  const stats = { uploaded: 0, refused: 0, applied: 0 };
  const mutation = (i: number): fc.Arbitrary<Mutation> => {
    const len = payloads[i]!.bytes.length;
    const fld = fields[i]!;
    return fc.oneof(
      { weight: 3, arbitrary: fc.record({ kind: fc.constant('flip' as const), pos: fc.nat(len - 1), bit: fc.nat(7) }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('truncate' as const), len: fc.nat(len - 1) }) },
      {
        weight: 6,
        arbitrary: fc.nat(fld.length - 1).chain((k) => {
          const f = fld[k]!;
          return valueArb(f.width).map((value): Mutation => ({ kind: 'write', off: f.off, width: f.width, value }));
        }),
      },
    );
  };
  const arb = fc.nat(payloads.length - 1).chain((i) => fc.tuple(fc.constant(i), fc.array(mutation(i), { minLength: 1, maxLength: 3 })));
  const notHotstack = (what: string, err: unknown): Error =>
    new Error(`${what} threw ${(err as Error)?.constructor?.name}, not a HotstackError: ${(err as Error)?.stack ?? String(err)}`);

  const details = fc.check(
    fc.property(arb, ([i, muts]) => {
      writeFileSync(job.progress, `${job.payloads[i]} with ${show(muts)}`);
      const bytes = muts.reduce(mutate, payloads[i]!.bytes);
      try {
        inspectPayload(bytes);
      } catch (err) {
        if (!(err instanceof HotstackError)) throw notHotstack('inspectPayload', err);
      }
      let name: string;
      try {
        name = e.upload('fuzz', bytes).name;
      } catch (err) {
        if (!(err instanceof HotstackError)) throw notHotstack('Engine.upload', err);
        stats.refused++;
        assert.ok(err.errno in ERRNO, `known errno ${err.errno}`);
        assert.deepEqual(e.list(), [], `a failed upload (${err.errno}: ${err.message}) leaves nothing loaded`);
        assert.ok(memory().equals(pristine), `a failed upload (${err.errno}: ${err.message}) leaves the base memory unchanged`);
        return;
      }
      stats.uploaded++;
      assert.ok(memory().equals(pristine), 'a successful upload does not touch the base memory');
      let applied = false;
      try {
        e.action(name, 'APPLY', { nodeps: true });
        applied = true;
        stats.applied++;
      } catch (err) {
        if (!(err instanceof HotstackError)) throw notHotstack('APPLY', err);
        assert.equal(e.get(name).state, 'CHECKED', 'a failed apply leaves CHECKED');
        assert.ok(memory().equals(pristine), `a failed apply (${err.errno}: ${err.message}) leaves the base memory unchanged`);
      }
      if (applied) {
        e.action(name, 'REVERT');
        assert.ok(memory().equals(pristine), 'apply + revert restores the base memory exactly');
      }
      e.action(name, 'UNLOAD');
      assert.deepEqual(e.list(), [], 'unload leaves nothing');
    }),
    { numRuns: job.numRuns, seed: job.seed },
  );
  const ce = details.counterexample as [number, Mutation[]] | null;
  return {
    failed: details.failed,
    message: details.failed ? String((details.errorInstance as Error)?.message ?? details.errorInstance) : undefined,
    counterexample: ce ? `${job.payloads[ce[0]]} with ${show(ce[1])}` : undefined,
    numRuns: job.numRuns, seed: job.seed, ...stats,
  };
}

const jobFile = process.env.HOTSTACK_FUZZ_DRIVER;
if (jobFile) {
  const job = JSON.parse(readFileSync(jobFile, 'utf8')) as FuzzJob;
  writeFileSync(job.out, JSON.stringify(fuzz(job)));
}

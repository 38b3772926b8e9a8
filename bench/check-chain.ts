/**
 * Benchmark: `check` of a chain of generated payloads on an offline image.
 * One payload is compiled with the stock toolchain; the chain is made by
 * rewriting its two build-id notes (own id, and the id it depends on), so
 * generating 1000 payloads costs milliseconds, not 1000 compiler runs.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ElfFile } from '../src/elf/index.js';
import { runCheck } from '../src/cli/check.js';
import { buildBase, buildPayload, codeSizes, readBuildId, run } from '../test/helpers/toolchain.js';

export interface ChainRow {
  n: number;
  ms: number;
  usPerPayload: number;
}

function noteDescOffset(elf: ElfFile, section: string): number {
  const s = elf.section(section);
  if (!s) throw new Error(`template lacks ${section}`);
  return Number(s.offset) + 16; // 12-byte header + "GNU\0"
}

/** Write `n` chained payloads into `dir`, bottom first. */
export function makeChain(template: Uint8Array, baseId: string, n: number, dir: string): string[] {
  const elf = ElfFile.parse(template);
  const own = noteDescOffset(elf, '.note.gnu.build-id');
  const dep = noteDescOffset(elf, '.livepatch.depends');
  const files: string[] = [];
  let prev = Buffer.from(baseId, 'hex');
  for (let i = 0; i < n; i++) {
    const id = createHash('sha1').update(`chain-${i}`).digest();
    const bytes = Buffer.from(template);
    id.copy(bytes, own);
    prev.copy(bytes, dep);
    const f = join(dir, `chain${String(i).padStart(4, '0')}.livepatch`);
    writeFileSync(f, bytes);
    files.push(f);
    prev = id;
  }
  return files;
}

export function benchCheckChain(workDir: string, sizes = [100, 200, 400, 600, 800, 1000]): ChainRow[] {
  mkdirSync(workDir, { recursive: true });
  const base = buildBase({ outDir: workDir, name: 'bench-base' });
  const raw = buildPayload(
    { name: 'chain-template', sources: [resolve('bench/fixtures/chain.c')], base, sizes: codeSizes('chain_extra_version', 'extra_version') },
    workDir,
  );
  run('objcopy', ['--strip-unneeded', raw]);
  const template = readFileSync(raw);
  const max = Math.max(...sizes);
  const chainDir = join(workDir, 'chain');
  mkdirSync(chainDir, { recursive: true });
  const files = makeChain(template, readBuildId(base), max, chainDir);
  // Warm up the JIT and the page cache on the whole chain once, so the
  // smaller runs are not charged for compilation.
  runCheck({ image: base, files });
  const rows: ChainRow[] = [];
  for (const n of sizes) {
    // Median of three runs: one slow run (GC, another process) should not bend the curve.
    const times: number[] = [];
    for (let k = 0; k < 3; k++) {
      const t0 = process.hrtime.bigint();
      const r = runCheck({ image: base, files: files.slice(0, n) });
      times.push(Number(process.hrtime.bigint() - t0) / 1e6);
      if (r.stack.length !== n) throw new Error(`chain of ${n}: only ${r.stack.length} applied: ${JSON.stringify(r.steps.find((s) => !s.ok))}`);
    }
    const ms = times.sort((a, b) => a - b)[1]!;
    rows.push({ n, ms, usPerPayload: (ms * 1000) / n });
  }
  return rows;
}

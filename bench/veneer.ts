/**
 * The cost of entering a replacement through a preserving veneer, against
 * a replacement entered by the jump alone, in one live process
 * (bench/fixtures/veneer.c, compiled gcc -O2 as people compile programs).
 * plain() gets no veneer (nothing relies on its registers); kept() gets
 * one (its caller keeps values in caller-saved registers across the
 * call). Both are timed unpatched and patched, alternating, in the same
 * process: the figure to compare across machines is the ratio.
 */
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { buildPayload } from '../src/builder/build.js';
import { openProcessEngine } from '../src/targets/process/session.js';
import { machineNote, median, startStress } from '../test/helpers/stress.js';
import { run } from '../test/helpers/toolchain.js';

export interface VeneerBenchResult {
  machine: string;
  calls: number;
  samples: number;
  /** Registers the veneer of kept() keeps. */
  keeps: string[];
  /** Medians, ns per call. */
  plain: { unpatchedNs: number; patchedNs: number };
  kept: { unpatchedNs: number; veneeredNs: number };
  /** Extra ns per call that the veneer adds over a direct patched call. */
  veneerExtraNs: number;
  /** Veneered patched call / direct patched call. */
  ratio: number;
}

export async function benchVeneer(workDir: string, opts: { calls?: number; samples?: number } = {}): Promise<VeneerBenchResult> {
  const calls = opts.calls ?? 20_000_000;
  const samples = opts.samples ?? 7;
  const saved = process.env.HOTSTACK_STATE_DIR;
  mkdirSync(workDir, { recursive: true });
  process.env.HOTSTACK_STATE_DIR = join(workDir, 'state');
  const exe = join(workDir, 'veneer');
  const payload = join(workDir, 'veneer-fix.livepatch');
  run('gcc', ['-O2', '-g', '-Wl,--build-id=sha1', '-o', exe, resolve('bench/fixtures/veneer.c')]);
  const built = buildPayload({ base: exe, out: payload, sources: [resolve('bench/fixtures/veneer-fix.c')] });
  const keeps = built.veneers.find((v) => v.function === 'kept')?.registers ?? [];
  if (!keeps.length || built.veneers.some((v) => v.function === 'plain')) {
    throw new Error(`veneer bench: expected a veneer for kept() only, the build reports ${JSON.stringify(built.veneers)}`);
  }
  const p = await startStress(exe);
  try {
    const time = async (which: 'p' | 'k'): Promise<number> => {
      const line = await p.ask(`${which} ${calls}`, 120_000);
      const ns = Number(line.split(' ')[0]);
      if (!Number.isFinite(ns)) throw new Error(`veneer bench timing: ${JSON.stringify(line)}`);
      return ns;
    };
    openProcessEngine(p.pid, (e) => e.upload('veneer-fix', readFileSync(payload)));
    await time('p');
    await time('k');
    const pu: number[] = [], pp: number[] = [], ku: number[] = [], kv: number[] = [];
    for (let i = 0; i < samples; i++) {
      pu.push(await time('p'));
      ku.push(await time('k'));
      openProcessEngine(p.pid, (e) => e.action('veneer-fix', 'APPLY'));
      pp.push(await time('p'));
      kv.push(await time('k'));
      openProcessEngine(p.pid, (e) => e.action('veneer-fix', 'REVERT'));
    }
    const plain = { unpatchedNs: median(pu), patchedNs: median(pp) };
    const kept = { unpatchedNs: median(ku), veneeredNs: median(kv) };
    return {
      machine: machineNote(), calls, samples, keeps, plain, kept,
      veneerExtraNs: kept.veneeredNs - plain.patchedNs,
      ratio: kept.veneeredNs / plain.patchedNs,
    };
  } finally {
    p.child.kill('SIGKILL');
    if (saved === undefined) delete process.env.HOTSTACK_STATE_DIR;
    else process.env.HOTSTACK_STATE_DIR = saved;
    rmSync(workDir, { recursive: true, force: true });
  }
}

/** Prints the figures (one line per call of `out`). */
export function printVeneerBench(r: VeneerBenchResult, out: (line: string) => void = console.log): void {
  const f = (x: number): string => x.toFixed(3).padStart(8);
  out(`live process: a call through a preserving veneer (keeps ${r.keeps.join(', ')}) vs a direct patched call (${r.samples} samples of ${r.calls} calls, medians, ns/call; ${r.machine})`);
  out('                 unpatched  patched');
  out(`  plain (jump)    ${f(r.plain.unpatchedNs)} ${f(r.plain.patchedNs)}`);
  out(`  kept (veneer)   ${f(r.kept.unpatchedNs)} ${f(r.kept.veneeredNs)}`);
  out(`  veneer adds ${r.veneerExtraNs.toFixed(3)} ns per call; veneered / direct patched call: ratio ${r.ratio.toFixed(3)}`);
}

/**
 * `npm run bench`: prints each benchmark as a table and as JSON. Figures
 * are as measured on this machine; the ratios against the smallest run
 * in the same process are what to compare across machines.
 */
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { benchCheckChain } from './check-chain.js';
import { benchProcess, printProcessBench } from './process.js';
import { benchVeneer, printVeneerBench } from './veneer.js';
import { benchStall, printStallBench } from './stall.js';

function machine(): string {
  const c = cpus();
  return `${c.length} x ${c[0]?.model ?? 'unknown cpu'}, node ${process.version}`;
}

async function main(): Promise<void> {
  const work = join(tmpdir(), `hotstack-bench-${process.pid}`);
  console.log(`machine: ${machine()}`);
  console.log('\ncheck of a payload chain on an offline image (time should grow linearly):');
  const rows = benchCheckChain(join(work, 'check'));
  const first = rows[0]!;
  console.log('  payloads      ms   us/payload   time ratio vs first   size ratio');
  for (const r of rows) {
    console.log(`  ${String(r.n).padStart(8)} ${r.ms.toFixed(1).padStart(7)} ${r.usPerPayload.toFixed(1).padStart(12)} ${(r.ms / first.ms).toFixed(2).padStart(21)} ${(r.n / first.n).toFixed(2).padStart(12)}`);
  }
  const last = rows[rows.length - 1]!;
  const growth = last.ms / first.ms / (last.n / first.n);
  console.log(`  growth factor (1.0 = linear): ${growth.toFixed(2)}`);

  console.log('\nlive process: time stopped per action, and the cost of a patched call:');
  const proc = await benchProcess(join(work, 'process'));
  printProcessBench(proc);

  console.log('\nlive process: the stall seen inside the target, next to the ptrace floor:');
  const stall = await benchStall(join(work, 'stall'));
  printStallBench(stall);

  console.log('\nlive process: the cost of a preserving veneer:');
  const veneer = await benchVeneer(join(work, 'veneer'));
  printVeneerBench(veneer);
  console.log(JSON.stringify({ machine: machine(), checkChain: { rows, growth }, process: proc, stall, veneer }));
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : String(e));
  process.exitCode = 1;
});

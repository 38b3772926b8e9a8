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
import { benchFleet, printFleetBench } from './fleet.js';

/**
 * `--only NAME` (check, process, stall, veneer, fleet) runs one benchmark;
 * `--fleet-processes N` sizes the fleet (default 1000).
 */
function args(): { only?: string; fleetProcesses?: number } {
  const a = process.argv.slice(2);
  const val = (k: string) => {
    const i = a.indexOf(k);
    return i >= 0 ? a[i + 1] : undefined;
  };
  const fp = val('--fleet-processes');
  if (fp !== undefined && !/^\d+$/.test(fp)) throw new Error('--fleet-processes takes a number');
  return { only: val('--only'), fleetProcesses: fp === undefined ? undefined : Number(fp) };
}

function machine(): string {
  const c = cpus();
  return `${c.length} x ${c[0]?.model ?? 'unknown cpu'}, node ${process.version}`;
}

async function main(): Promise<void> {
  const { only, fleetProcesses } = args();
  const want = (name: string) => only === undefined || only === name;
  const work = join(tmpdir(), `hotstack-bench-${process.pid}`);
  const out: Record<string, unknown> = { machine: machine() };
  console.log(`machine: ${machine()}`);
  if (want('check')) {
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
    out.checkChain = { rows, growth };
  }

  if (want('process')) {
    console.log('\nlive process: time stopped per action, and the cost of a patched call:');
    const proc = await benchProcess(join(work, 'process'));
    printProcessBench(proc);
    out.process = proc;
  }

  if (want('stall')) {
    console.log('\nlive process: the stall seen inside the target, next to the ptrace floor:');
    const stall = await benchStall(join(work, 'stall'));
    printStallBench(stall);
    out.stall = stall;
  }

  if (want('veneer')) {
    console.log('\nlive process: the cost of a preserving veneer:');
    const veneer = await benchVeneer(join(work, 'veneer'));
    printVeneerBench(veneer);
    out.veneer = veneer;
  }

  if (want('fleet')) {
    console.log('\nfleet: one --all load over many sleeping processes, against single --pid runs:');
    const fleet = await benchFleet(join(work, 'fleet'), { processes: fleetProcesses });
    printFleetBench(fleet);
    out.fleet = fleet;
  }
  console.log(JSON.stringify(out));
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : String(e));
  process.exitCode = 1;
});

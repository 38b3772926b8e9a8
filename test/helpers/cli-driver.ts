/**
 * Runs the hotstack command line (src/cli/main.ts `main`, what bin/hotstack
 * runs) many times in one Node process, capturing stdout, stderr and the
 * exit status of each run: spawning Node once per malformed file is too
 * slow on a small machine.  Only acts when HOTSTACK_CLI_DRIVER names a JSON
 * job file (so a test runner that loads every file under test/ finds
 * nothing to do here):
 *   job: { runs: string[][], out: string }  ->  out: CliResult[] (JSON)
 * A run that throws out of main() is recorded with status null and the
 * exception's stack in stderr, which the tests then flag as a crash.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { main } from '../../src/cli/main.js';

interface Job { runs: string[][]; out: string }

async function drive(job: Job): Promise<void> {
  const results: { status: number | null; stdout: string; stderr: string }[] = [];
  const realOut = process.stdout.write.bind(process.stdout);
  const realErr = process.stderr.write.bind(process.stderr);
  for (const args of job.runs) {
    let stdout = '';
    let stderr = '';
    process.stdout.write = ((s: string | Uint8Array) => { stdout += typeof s === 'string' ? s : Buffer.from(s).toString(); return true; }) as typeof process.stdout.write;
    process.stderr.write = ((s: string | Uint8Array) => { stderr += typeof s === 'string' ? s : Buffer.from(s).toString(); return true; }) as typeof process.stderr.write;
    let status: number | null;
    try {
      status = await main(args);
    } catch (e) {
      status = null;
      stderr += `CRASH: ${(e as Error)?.stack ?? String(e)}`;
    } finally {
      process.stdout.write = realOut;
      process.stderr.write = realErr;
    }
    results.push({ status, stdout, stderr });
  }
  writeFileSync(job.out, JSON.stringify(results));
}

const jobFile = process.env.HOTSTACK_CLI_DRIVER;
if (jobFile) await drive(JSON.parse(readFileSync(jobFile, 'utf8')) as Job);

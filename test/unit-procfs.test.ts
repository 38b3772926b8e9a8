/**
 * Parsing of /proc/PID/status facts that decide how hotstack drives a
 * thread: its signal masks (a batch ends with a signal only when one fits)
 * and its seccomp mode. Untrusted text: anything malformed is "unknown".
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import { spawn } from 'node:child_process';
import { hasSeccompFilter, processStartTime, readStackLimit, signalMasksOf, startBrk, startTimeAndComm, statFacts, threadCount } from '../src/targets/process/procfs.js';
import { stackLimitOf } from '../src/targets/process/ptrace.js';

const status = (blk: string, ign: string, cgt: string, seccomp = '0'): string =>
  `Name:\tx\nSigQ:\t0/1\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\nSigBlk:\t${blk}\nSigIgn:\t${ign}\nSigCgt:\t${cgt}\nSeccomp:\t${seccomp}\n`;

test('signal masks: bit n-1 is signal n, hex as the kernel prints them', () => {
  // SIGURG (23) blocked, SIGCHLD (17) ignored, SIGWINCH (28) caught.
  assert.deepEqual(signalMasksOf(status('0000000000400000', '0000000000010000', '0000000008000000')), {
    blocked: 1n << 22n, ignored: 1n << 16n, caught: 1n << 27n,
  });
  const own = signalMasksOf(readFileSync('/proc/self/status', 'utf8'));
  assert.ok(own && own.caught !== 0n, 'this Node process catches signals (SIGINT at least)');
});

test('signal masks: missing or malformed lines are unknown, never a guess', () => {
  assert.equal(signalMasksOf('Name:\tx\n'), null);
  assert.equal(signalMasksOf(status('zz', '0', '0')), null);
  assert.equal(signalMasksOf(status('0', '0', '1'.repeat(17))), null, 'more than 64 bits');
  assert.equal(signalMasksOf(status('0', '', '0')), null);
});

test('seccomp: only mode 2 is a filter', () => {
  assert.equal(hasSeccompFilter(status('0', '0', '0', '2')), true);
  assert.equal(hasSeccompFilter(status('0', '0', '0', '1')), false);
  assert.equal(hasSeccompFilter(status('0', '0', '0')), false);
  assert.equal(hasSeccompFilter('Name:\tx\n'), false);
});

test('stat facts: one read gives what four reads gave (start time, state, name, start_brk)', () => {
  const f = statFacts(process.pid);
  assert.equal(f.startTime, processStartTime(process.pid));
  assert.equal(f.comm, startTimeAndComm(process.pid).comm);
  assert.equal(f.startBrk, startBrk(process.pid));
  assert.equal(f.state, 'R', 'this thread is running while it reads');
  const fields = readFileSync('/proc/self/stat', 'utf8').split(') ')[1]!.split(' ');
  assert.equal(f.startStack, BigInt(fields[28 - 3]!), 'startstack, field 28');
  assert.ok(f.startStack! > 0n);
  assert.throws(() => statFacts(0x3fffffff), (e: Error & { errno?: string }) => e.errno === 'ESRCH');
});

test('thread count: what the kernel counts, as the task directory lists it and status says (a listing can miss threads; this cannot)', () => {
  const n = threadCount(process.pid);
  assert.equal(n, readdirSync(`/proc/${process.pid}/task`).length);
  assert.equal(n, Number(/^Threads:\s+(\d+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))![1]));
  assert.ok(n! > 1, 'Node runs several threads');
  assert.equal(threadCount(0x3fffffff), null);
});

test('stack limit: prlimit says what /proc/PID/limits says, for a process with a limit of its own; undefined for no process', async () => {
  const child = spawn('bash', ['-c', 'ulimit -s 1234 && exec sleep 30'], { stdio: 'ignore' });
  try {
    // Until bash has set the limit and become sleep, the limit is bash's own.
    for (let i = 0; i < 200 && readStackLimit(child.pid!) !== 1234n * 1024n; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(readStackLimit(child.pid!), 1234n * 1024n);
    assert.equal(stackLimitOf(child.pid!), 1234n * 1024n);
    assert.equal(stackLimitOf(process.pid), readStackLimit(process.pid));
    assert.equal(stackLimitOf(0x3fffffff), undefined);
  } finally {
    child.kill('SIGKILL');
  }
});

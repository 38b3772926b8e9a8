/**
 * The batch stub of remote system calls, decoded back with iced-x86 (an
 * independent decoder) and run on paper: each call's registers hold
 * exactly its number and arguments at its `syscall` (whatever the width of
 * the value: the assembler picks imm32, sign-extended imm32 or imm64),
 * the recorded end offsets follow each `syscall`, and every result check
 * compares rax with the call's expected value and skips to the restore
 * sequence (or, in a batch that ends with a signal, to the tgkill that
 * ends it, each result kept in a register for the tracer).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import iced from 'iced-x86';
import { arch, type BatchCall, type Regs } from '../src/arch/index.js';
import { STUB_SIZE } from '../src/targets/process/remote/runtime.js';

const { Decoder, DecoderOptions, Mnemonic, Register } = iced;

/** The 64-bit register a mov writes (a 32-bit write zero-extends into it). */
function full(reg: number): string {
  const n = Register[reg]!;
  const m = /^(E(AX|CX|DX|BX|SP|BP|SI|DI))$/.exec(n);
  if (m) return 'R' + n.slice(1);
  return n.replace(/D$/, '');
}

interface Seen { nr: bigint; args: bigint[]; end: number; expect?: bigint; skipTo?: number; regs: Map<string, bigint> }

/** The token standing for what call `k` returned. */
const result = (k: number): bigint => 0xfeed_0000n + BigInt(k);

function runOnPaper(code: Uint8Array): { calls: Seen[]; restoreAt: number } {
  const d = new Decoder(64, code, DecoderOptions.None);
  d.ip = 0n;
  const regs = new Map<string, bigint>();
  const calls: Seen[] = [];
  let restoreAt = -1;
  let done = false;
  // Up to the restore sequence's final jump (its 8-byte target follows: data, not code).
  while (d.canDecode && !done) {
    const i = d.decode();
    assert.ok(!i.isInvalid, `invalid instruction at ${i.ip}`);
    const next = Number(i.nextIP);
    const at = Number(i.ip);
    if (i.mnemonic === Mnemonic.Mov && i.op1Kind !== iced.OpKind.Register) {
      regs.set(full(i.op0Register), BigInt.asUintN(64, i.immediate(1)));
    } else if (i.mnemonic === Mnemonic.Mov) {
      assert.ok(i.op0Kind === iced.OpKind.Register, `mov to memory at ${at}`);
      regs.set(full(i.op0Register), regs.get(full(i.op1Register)) ?? -1n);
    } else if (i.mnemonic === Mnemonic.Syscall) {
      const g = (r: string): bigint => regs.get(r) ?? -1n;
      calls.push({ nr: g('RAX'), args: ['RDI', 'RSI', 'RDX', 'R10', 'R8', 'R9'].map(g), end: next, regs: new Map(regs) });
      // What the call returns, as a token the later moves carry.
      regs.set('RAX', result(calls.length - 1));
    } else if (i.mnemonic === Mnemonic.Cmp) {
      assert.deepEqual([Register[i.op0Register], Register[i.op1Register]], ['RAX', 'RCX'], `cmp at ${at}`);
      calls[calls.length - 1]!.expect = regs.get('RCX');
    } else if (i.mnemonic === Mnemonic.Jne) {
      calls[calls.length - 1]!.skipTo = Number(i.nearBranchTarget);
      restoreAt = next; // after the last check comes the restore sequence
    } else if (i.mnemonic === Mnemonic.Jmp) {
      done = true;
    }
    i.free();
  }
  d.free();
  return { calls, restoreAt };
}

const saved = Object.fromEntries(arch.process.regNames.map((n, k) => [n, BigInt(0x1000 + k)])) as unknown as Regs;

test('every argument width lands in its register exactly, checks skip to the restore sequence', () => {
  const values = [0n, 1n, 0x7fffffffn, 0x80000000n, 0xffffffffn, 0x100000000n, -1n, -2n, -(2n ** 31n), -(2n ** 31n) - 1n, 2n ** 63n, 0x7fff_dead_b000n];
  const calls: BatchCall[] = [];
  for (let k = 0; k < values.length; k += 6) {
    const args = [...values.slice(k, k + 6)];
    calls.push({ nr: 9n, args, expect: values[k]! });
  }
  calls.push({ nr: 10n, args: [0x5555_0000_0000n, 4096n, 1n], expect: 0n });
  const stub = arch.process.batchStub(calls, saved);
  const { calls: seen, restoreAt } = runOnPaper(stub.bytes);
  assert.equal(seen.length, calls.length);
  seen.forEach((s, k) => {
    const c = calls[k]!;
    assert.equal(s.nr, c.nr, `call ${k}: number`);
    c.args.forEach((a, j) => assert.equal(s.args[j], BigInt.asUintN(64, a), `call ${k}: argument ${j} (${a})`));
    assert.equal(s.end, stub.ends[k], `call ${k}: end offset`);
    assert.equal(s.expect, BigInt.asUintN(64, c.expect), `call ${k}: expected result`);
    assert.equal(s.skipTo, restoreAt, `call ${k}: a surprise skips to the restore sequence`);
  });
  assert.ok(restoreAt > 0 && restoreAt < stub.bytes.length);
});

test('a batch of up to four mmap-sized calls fits a stub slot of the runtime page', () => {
  const mmap: BatchCall = { nr: 9n, args: [0x7fff_dead_b000n, 0x40_0000n, 5n, 0x100022n, -1n, 0n], expect: 0x7fff_dead_b000n };
  const mprotect: BatchCall = { nr: 10n, args: [0x7fff_dead_c000n, 0x1000n, 3n], expect: 0n };
  const stub = arch.process.batchStub([mmap, mprotect, mprotect, mprotect], saved);
  assert.ok(stub.bytes.length <= STUB_SIZE, `${stub.bytes.length} bytes`);
});

test('a batch that ends with a signal: results in registers, then tgkill(getpid(), gettid(), sig), also after a surprise', () => {
  const abi = arch.process;
  const calls: BatchCall[] = [
    { nr: 9n, args: [0x7fff_dead_b000n, 0x40_0000n, 5n, 0x100022n, -1n, 0n], expect: 0x7fff_dead_b000n },
    ...Array.from({ length: abi.batchResultRegs - 1 }, (_, k) => ({ nr: 10n, args: [0x7fff_dead_c000n + BigInt(k) * 4096n, 4096n, 3n], expect: 0n })),
  ];
  const SIGURG = 23;
  const stub = abi.batchStub(calls, saved, SIGURG);
  const { calls: seen, restoreAt } = runOnPaper(stub.bytes);
  const n = calls.length;
  assert.deepEqual(seen.map((s) => s.nr), [...calls.map((c) => c.nr), BigInt(abi.sys.getpid), BigInt(abi.sys.gettid), BigInt(abi.sys.tgkill)]);
  seen.slice(0, n).forEach((s, k) => {
    assert.equal(s.end, stub.ends[k], `call ${k}: end offset`);
    assert.equal(s.expect, BigInt.asUintN(64, calls[k]!.expect), `call ${k}: expected result`);
    assert.equal(s.skipTo, restoreAt, `call ${k}: a surprise skips to the signal, not past it`);
  });
  const kill = seen[n + 2]!;
  assert.deepEqual(kill.args.slice(0, 3), [result(n), result(n + 1), BigInt(SIGURG)], 'tgkill of its own thread, ids as it sees them');
  assert.equal(kill.end, stub.signalEnd, 'the stop is right after the tgkill');
  // At that stop, batchResults reads every call's result from where the stub left it.
  const at = Object.fromEntries(abi.regNames.map((r) => [r, kill.regs.get(r.toUpperCase()) ?? 0n])) as unknown as Regs;
  assert.deepEqual(abi.batchResults(at, n), calls.map((_, k) => result(k)));
  assert.ok(stub.bytes.length <= STUB_SIZE, `${stub.bytes.length} bytes fit a stub slot`);
  assert.throws(() => abi.batchStub([...calls, calls[1]!], saved, SIGURG), /at most/);
  // Without a signal: no tgkill, no result moves.
  assert.equal(abi.batchStub(calls, saved).signalEnd, undefined);
  assert.equal(runOnPaper(abi.batchStub(calls, saved).bytes).calls.length, n);
});

/**
 * Preserving veneers, decoded back with iced-x86 (an independent decoder):
 * the right saves and restores in mirror order, a call that lands on the
 * replacement, and a 16-byte aligned stack at the call for every mix of
 * registers.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import iced from 'iced-x86';
import { encodePreservingVeneer, isPreservable } from '../src/arch/x86_64/preserve.js';
import type { KeptRegister } from '../src/arch/index.js';
import { entryOf, patchRanges } from '../src/core/patching.js';
import type { FuncRecord, PayloadRecord } from '../src/core/state.js';

const { Decoder, DecoderOptions, Formatter, FormatterSyntax, Mnemonic } = iced;

interface Decoded { text: string; mnemonic: number; ip: bigint; next: bigint; target: bigint }

function decode(code: Uint8Array, at: bigint): Decoded[] {
  const d = new Decoder(64, code, DecoderOptions.None);
  d.ip = at;
  const f = new Formatter(FormatterSyntax.Intel);
  const out: Decoded[] = [];
  while (d.canDecode) {
    const i = d.decode();
    assert.ok(!i.isInvalid, `invalid instruction at ${i.ip.toString(16)}`);
    out.push({ text: f.format(i), mnemonic: i.mnemonic, ip: i.ip, next: i.nextIP, target: i.mnemonic === Mnemonic.Call ? i.nearBranchTarget : 0n });
    i.free();
  }
  d.free();
  f.free();
  return out;
}

/** Simulated rsp offset (relative to entry, where rsp = 8 mod 16) at the call. */
function rspAtCall(insns: Decoded[]): number {
  let rsp = -8; // entry: the caller's call pushed the return address onto a 16-byte aligned stack
  for (const i of insns) {
    if (i.mnemonic === Mnemonic.Push) rsp -= 8;
    else if (i.mnemonic === Mnemonic.Sub) rsp -= parseInt(/,\s*([0-9A-Fa-f]+)(h?)$/.exec(i.text)![1]!, /h$/.test(i.text) ? 16 : 10);
    else if (i.mnemonic === Mnemonic.Call) return rsp;
  }
  throw new Error('no call');
}

const AT = 0x7f0000001000n;
const TARGET = 0x7f0000005000n;

test('a veneer keeping general registers pushes, calls, pops in mirror order and returns', () => {
  const regs: KeptRegister[] = [{ name: 'rdi', width: 8 }, { name: 'r8', width: 8 }, { name: 'r9', width: 8 }];
  const insns = decode(encodePreservingVeneer(AT, TARGET, regs), AT);
  assert.deepEqual(insns.map((i) => i.text.replace(/^call .*/, 'call')), ['push rdi', 'push r8', 'push r9', 'call', 'pop r9', 'pop r8', 'pop rdi', 'ret']);
  // Two pushes leave the stack 8 bytes off: the veneer pads it.
  const two = decode(encodePreservingVeneer(AT, TARGET, regs.slice(0, 2)), AT);
  assert.deepEqual(two.map((i) => i.text.replace(/^call .*/, 'call')), ['push rdi', 'push r8', 'sub rsp,8', 'call', 'add rsp,8', 'pop r8', 'pop rdi', 'ret']);
  assert.equal(insns.find((i) => i.mnemonic === Mnemonic.Call)!.target, TARGET);
});

test('vector registers are saved at their width and the stack is aligned at the call', () => {
  const cases: KeptRegister[][] = [
    [],
    [{ name: 'rsi', width: 8 }],
    [{ name: 'xmm1', width: 16 }],
    [{ name: 'rdx', width: 8 }, { name: 'xmm9', width: 32 }],
    [{ name: 'rax', width: 8 }, { name: 'r11', width: 8 }, { name: 'xmm0', width: 64 }, { name: 'xmm15', width: 16 }],
  ];
  for (const regs of cases) {
    const insns = decode(encodePreservingVeneer(AT, TARGET, regs), AT);
    const call = insns.find((i) => i.mnemonic === Mnemonic.Call)!;
    assert.equal(call.target, TARGET, `call lands on the replacement (${regs.map((r) => r.name)})`);
    assert.equal(((rspAtCall(insns) % 16) + 16) % 16, 0, `rsp aligned at the call (${regs.map((r) => r.name)}): ${insns.map((i) => i.text).join('; ')}`);
    assert.equal(insns[insns.length - 1]!.mnemonic, Mnemonic.Ret);
    const text = insns.map((i) => i.text).join('\n');
    for (const r of regs.filter((x) => x.name.startsWith('xmm'))) {
      const n = r.name.slice(3);
      const name = r.width === 16 ? `xmm${n}` : r.width === 32 ? `ymm${n}` : `zmm${n}`;
      const saves = text.split('\n').filter((l) => l.includes(name));
      assert.equal(saves.length, 2, `${name} saved and restored once each:\n${text}`);
    }
  }
});

test('only caller-saved registers can be kept', () => {
  for (const r of ['rax', 'rcx', 'rdx', 'rsi', 'rdi', 'r8', 'r9', 'r10', 'r11', 'xmm0', 'xmm15']) assert.ok(isPreservable(r), r);
  for (const r of ['rsp', 'rbp', 'rbx', 'r12', 'xmm16', 'k1']) assert.ok(!isPreservable(r), r);
});

test('the consistency check covers veneers: no action while a thread is in one or returns into one; the jump enters it', () => {
  const f: FuncRecord = {
    name: 'label', oldAddr: 0x1000n, newAddr: 0x9000n, oldSize: 32, newSize: 40, patchOffset: 0,
    expect: { enabled: false, len: 0, rsv: 0, data: '' },
    undo: '', applied: false, veneer: { addr: 0xa000n, size: 30, registers: ['r8', 'r9'] },
  };
  const p = { name: 'fix', funcs: [f] } as unknown as PayloadRecord;
  const labels = (withNew: boolean): string[] => patchRanges(p, withNew).map((r) => `${r.label} ${r.start.toString(16)}-${r.end.toString(16)}`);
  assert.deepEqual(labels(true), ['function label 1000-1020', 'label of payload fix 9000-9028', 'veneer of label of payload fix a000-a01e']);
  assert.deepEqual(labels(false), ['function label 1000-1020'], 'applying: only the old function matters, the new code is not reachable yet');
  assert.equal(entryOf(f), 0xa000n);
  assert.equal(entryOf({ ...f, veneer: undefined }), 0x9000n);
});

/**
 * Patch-safety analysis (src/analysis) on programs compiled at test time
 * with gcc -O2 -g (and clang -O2), checked against what objdump and nm
 * say about the same files: call sites and the registers read after them,
 * clobbers, clones and aliases, inlining, stack arguments; then the
 * stripped system libsqlite3/libz and the `analyze` command.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BaseAnalysis } from '../src/analysis/index.js';
import type { FunctionReport } from '../src/analysis/types.js';
import { callReads, countPrintf, UNKNOWN_CALL } from '../src/analysis/prototypes.js';
import { ElfFile } from '../src/elf/index.js';
import { assertNoStackTrace, cli } from './helpers/engine.js';
import { FIXTURES_DIR, fileOffset, run, symbolInfo } from './helpers/toolchain.js';
import type { AnalyzeErrorJson, AnalyzeJson } from '../src/cli/json-types.js';

const SRC = join(FIXTURES_DIR, 'analysis');
const work = mkdtempSync(join(tmpdir(), 'hotstack-analysis-'));
after(() => rmSync(work, { recursive: true, force: true }));
const hasClang = spawnSync('clang', ['--version']).status === 0;

/** Compile a fixture; returns the executable's path. */
function build(src: string, out: string, flags: string[] = [], cc = 'gcc'): string {
  const path = join(work, out);
  run(cc, ['-O2', '-g', ...flags, '-o', path, join(SRC, src)]);
  return path;
}

function analyse(path: string): BaseAnalysis {
  return BaseAnalysis.of(ElfFile.parse(new Uint8Array(readFileSync(path)), path), { path });
}

function report(path: string, name: string): FunctionReport {
  const r = analyse(path).report(name);
  assert.ok(r, `${path}: a report for ${name}`);
  return r;
}

// ---------------------------------------------------------------------------
// An independent reading of objdump's Intel syntax, for straight-line code.

const GPR64 = ['rax', 'rcx', 'rdx', 'rbx', 'rsp', 'rbp', 'rsi', 'rdi', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15'];
const CANDIDATES = new Set(['rax', 'rcx', 'rdx', 'rsi', 'rdi', 'r8', 'r9', 'r10', 'r11']);

/** Full 64-bit name of a general register operand ('r8d' -> 'r8', 'al' -> 'rax'), else undefined. */
function gpr64(tok: string): string | undefined {
  const t = tok.toLowerCase();
  if (GPR64.includes(t)) return t;
  const m = /^r(\d+)[dwb]$/.exec(t);
  if (m) return `r${m[1]}`;
  const legacy: Record<string, string> = {
    eax: 'rax', ax: 'rax', al: 'rax', ecx: 'rcx', cx: 'rcx', cl: 'rcx', edx: 'rdx', dx: 'rdx', dl: 'rdx',
    ebx: 'rbx', bx: 'rbx', bl: 'rbx', esi: 'rsi', si: 'rsi', sil: 'rsi', edi: 'rdi', di: 'rdi', dil: 'rdi',
    esp: 'rsp', ebp: 'rbp',
  };
  return legacy[t];
}

interface Line { addr: bigint; mnem: string; ops: string[]; text: string }

/** objdump -d of one function, one entry per instruction. */
function disassemble(path: string, fn: string): Line[] {
  const out = run('objdump', ['-d', '--no-show-raw-insn', '-M', 'intel', path]);
  const start = out.indexOf(`<${fn}>:\n`);
  assert.ok(start >= 0, `objdump finds ${fn} in ${path}`);
  const body = out.slice(start, out.indexOf('\n\n', start));
  const lines: Line[] = [];
  for (const l of body.split('\n').slice(1)) {
    const m = /^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$/.exec(l);
    if (!m) continue;
    const operands = m[3]!.replace(/#.*$/, '').replace(/<[^>]*>/g, '').trim();
    lines.push({ addr: BigInt('0x' + m[1]), mnem: m[2]!, ops: operands ? operands.split(',').map((s) => s.trim()) : [], text: l.trim() });
  }
  return lines;
}

const PURE_WRITES = new Set(['mov', 'movzx', 'movsx', 'movsxd', 'lea', 'movabs', 'cdqe']);

/** Registers an instruction reads and writes (fully, 32/64-bit), as the text says. */
function effects(l: Line): { reads: string[]; writes: string[] } {
  const reads: string[] = [];
  const writes: string[] = [];
  if (l.mnem === 'cdqe') return { reads: ['rax'], writes: ['rax'] };
  l.ops.forEach((op, i) => {
    const inMem = /\[(.*)\]/.exec(op);
    if (inMem) {
      for (const t of inMem[1]!.split(/[+*\-\s]+/)) {
        const r = gpr64(t);
        if (r) reads.push(r);
      }
      return;
    }
    const r = gpr64(op);
    if (!r) return;
    if (i === 0 && !['cmp', 'test', 'push'].includes(l.mnem)) {
      const sameXor = l.mnem === 'xor' && l.ops[1] === op;
      if (!PURE_WRITES.has(l.mnem) && !sameXor) reads.push(r);
      if (/^(r\w+|e\w\w)$/.test(op) && !/[wb]$/.test(op)) writes.push(r);
    } else reads.push(r);
  });
  return { reads, writes };
}

/**
 * After each `call <target>` in `caller`: the candidate registers the
 * straight-line code up to the next branch or call reads before writing.
 * Calls to the leaf functions in `through` are stepped over as writing
 * what they write.
 */
function readAfterCalls(path: string, caller: string, target: string, through = new Map<string, Set<string>>()): { at: bigint; reads: Set<string> }[] {
  const lines = disassemble(path, caller);
  const out: { at: bigint; reads: Set<string> }[] = [];
  lines.forEach((l, k) => {
    if (l.mnem !== 'call' || !l.text.includes(`<${target}>`)) return;
    const written = new Set<string>();
    const reads = new Set<string>();
    for (const n of lines.slice(k + 1)) {
      const leaf = n.mnem === 'call' ? [...through].find(([name]) => n.text.includes(`<${name}>`)) : undefined;
      if (leaf) {
        for (const w of leaf[1]) written.add(w);
        continue;
      }
      if (n.mnem === 'call' || n.mnem === 'ret' || n.mnem.startsWith('j')) break;
      const e = effects(n);
      for (const r of e.reads) if (CANDIDATES.has(r) && !written.has(r)) reads.add(r);
      for (const w of e.writes) written.add(w);
    }
    out.push({ at: l.addr, reads });
  });
  return out;
}

/** General registers a leaf function's instructions write, as the text says. */
function writtenBy(path: string, fn: string): Set<string> {
  const out = new Set<string>();
  for (const l of disassemble(path, fn)) {
    if (['cmp', 'test', 'ret', 'nop', 'push', 'pop'].includes(l.mnem) || l.mnem.startsWith('j')) continue;
    const r = l.ops[0] && !l.ops[0].includes('[') ? gpr64(l.ops[0]) : l.mnem === 'cdqe' ? 'rax' : undefined;
    if (r) out.add(r);
  }
  return out;
}

const gprNames = (r: FunctionReport): string[] => r.reliedRegisters.map((x) => x.name).filter((n) => !n.startsWith('xmm'));

// ---------------------------------------------------------------------------

describe('analysis: callers keep registers live across calls (gcc -O2, -fipa-ra)', () => {
  let exe: string;
  before(() => {
    exe = build('regs.c', 'regs');
  });

  it('objdump shows main reading caller-saved registers it did not write after call f and call g', () => {
    const throughF = new Map([['f', writtenBy(exe, 'f')]]);
    for (const t of ['f', 'g']) {
      const sites = readAfterCalls(exe, 'main', t, throughF);
      assert.ok(sites.length >= 2, `main calls ${t}`);
      const live = sites.flatMap((s) => [...s.reads]).filter((r) => r !== 'rax');
      assert.ok(live.length > 0, `main keeps a caller-saved register across call ${t}: ${JSON.stringify(sites.map((s) => [...s.reads]))}`);
    }
  });

  it('f: every register main reads after the call and f does not write is reported, the ones f writes are not', () => {
    const r = report(exe, 'f');
    const clobbered = writtenBy(exe, 'f');
    assert.deepEqual(new Set(r.clobbers.filter((n) => !n.startsWith('xmm'))), clobbered, 'clobbers of the leaf f are what its instructions write');
    const sites = readAfterCalls(exe, 'main', 'f');
    assert.deepEqual(r.callers.filter((c) => c.kind === 'call').map((c) => c.at).sort(), sites.map((s) => s.at).sort(), 'the call sites objdump shows');
    for (const s of sites) {
      const site = r.callers.find((c) => c.at === s.at)!;
      assert.equal(site.in, 'main');
      const expected = [...s.reads].filter((x) => !clobbered.has(x));
      for (const x of expected) assert.ok(site.relies!.includes(x), `call f at 0x${s.at.toString(16)}: ${x} is read before written (${site.relies})`);
      for (const x of clobbered) assert.ok(!site.relies!.includes(x), `call f at 0x${s.at.toString(16)}: ${x} is written by f, not relied upon`);
    }
    for (const x of ['r8', 'r10']) assert.ok(gprNames(r).includes(x), `${x} relied upon: ${gprNames(r)}`);
    assert.ok(r.reliedRegisters.every((x) => x.width === (x.name.startsWith('xmm') ? 16 : 8)));
    assert.ok(r.hazards.some((h) => h.kind === 'registers' && /r8/.test(h.detail) && /main/.test(h.detail)));
    assert.equal(r.stackArguments, false);
    assert.equal(r.noCallers, false);
  });

  it('g: main keeps h\'s result across call g (and across f, which leaves it alone)', () => {
    const r = report(exe, 'g');
    const reads = readAfterCalls(exe, 'main', 'g', new Map([['f', writtenBy(exe, 'f')]])).flatMap((s) => [...s.reads]);
    const clobbered = new Set(r.clobbers);
    const expected = reads.filter((x) => !clobbered.has(x));
    assert.ok(expected.length > 0, `something is read after call g that g leaves alone: ${reads}`);
    for (const x of expected) assert.ok(gprNames(r).includes(x), `${x} (read after call g) relied upon: ${gprNames(r)}`);
    assert.ok(!gprNames(r).includes('rax'), 'the return value is not relied upon');
  });

  it('main: reached only through its address (from _start), relies on nothing', () => {
    const r = report(exe, 'main');
    assert.ok(r.callers.some((c) => c.kind === 'address' && c.in === '_start'), JSON.stringify(r.callers, (_k, v) => (typeof v === 'bigint' ? v.toString(16) : v)));
    assert.deepEqual(r.reliedRegisters, []);
  });

  it('the same program with -flive-patching=inline-clone: callers rely on nothing', () => {
    const lp = build('regs.c', 'regs-lp', ['-flive-patching=inline-clone']);
    for (const fn of ['f', 'g', 'h']) {
      const r = report(lp, fn);
      assert.ok(r.callers.some((c) => c.kind === 'call'), `${fn} is still called`);
      assert.deepEqual(r.reliedRegisters, [], `${fn}: ${JSON.stringify(r.reliedRegisters)}`);
      assert.ok(!r.hazards.some((h) => h.kind === 'registers'));
    }
    // And indeed main keeps nothing in a register f leaves alone.
    const f = report(lp, 'f');
    for (const s of readAfterCalls(lp, 'main', 'f')) for (const x of s.reads) assert.ok(f.clobbers.includes(x), `${x} read after call f is clobbered by f`);
  });

  it('clang -O2: a sensible report (clang does no interprocedural register allocation)', { skip: !hasClang && 'clang is not installed' }, () => {
    const exe2 = build('regs.c', 'regs-clang', [], 'clang');
    const a = analyse(exe2);
    for (const fn of ['f', 'g', 'h']) {
      const r = a.report(fn)!;
      assert.ok(r, fn);
      assert.deepEqual(r.reliedRegisters, [], `${fn} relies`);
      const calls = run('objdump', ['-d', exe2]).split('\n').filter((l) => /call/.test(l) && l.includes(`<${fn}>`)).length;
      assert.equal(r.callers.filter((c) => c.kind === 'call').length, calls, `${fn}: as many call sites as objdump shows`);
      if (calls === 0) {
        assert.equal(r.noCallers, true);
        assert.deepEqual(r.inlinedInto, ['main'], `${fn} inlined into main (clang's DWARF 5)`);
      }
    }
    assert.ok(a.report('main')!.callers.length > 0);
  });
});

describe('analysis: inlining, pointers, clones, aliases, stack arguments', () => {
  it('a global function inlined into all its callers: no callers, DWARF 4 and 5 name main', () => {
    for (const dwarf of ['-gdwarf-4', '-gdwarf-5']) {
      const exe = build('inline.c', `inline${dwarf}`, [dwarf]);
      assert.ok(!/call.*<scale>/.test(run('objdump', ['-d', exe])), 'nothing calls scale');
      const r = report(exe, 'scale');
      assert.equal(r.noCallers, true);
      assert.deepEqual(r.callers, []);
      assert.deepEqual(r.inlinedInto, ['main'], dwarf);
      assert.ok(r.hazards.some((h) => h.kind === 'inlined' && /main/.test(h.detail)));
    }
    const stripped = join(work, 'inline-nodebug');
    run('objcopy', ['--strip-debug', join(work, 'inline-gdwarf-5'), stripped]);
    const r = report(stripped, 'scale');
    assert.equal(r.noCallers, true);
    assert.deepEqual(r.inlinedInto, [], 'no DWARF, no names');
  });

  it('functions only reached through a table of pointers: reloc (PIE) or data (non-PIE) callers', () => {
    for (const [out, flags, kind] of [['fnptr', ['-pie', '-fPIE'], 'reloc'], ['fnptr-nopie', ['-no-pie', '-fno-pie'], 'data']] as const) {
      const exe = build('fnptr.c', out, [...flags]);
      const table = symbolInfo(exe, 'handlers').address;
      for (const [fn, slot] of [['on_even', 0n], ['on_odd', 8n]] as const) {
        const r = report(exe, fn);
        assert.equal(r.noCallers, false, `${out} ${fn}`);
        assert.deepEqual(r.callers.map((c) => [c.kind, c.at, c.in]), [[kind, table + slot, 'handlers']], `${out} ${fn}`);
        assert.ok(!r.hazards.some((h) => h.kind === 'inlined'));
      }
    }
  });

  it('a .cold part is a copy; a function gcc replaced by a constprop/isra clone is named by its clone', () => {
    const exe = build('clones.c', 'clones');
    const cold = symbolInfo(exe, 'check.cold');
    const r = report(exe, 'check');
    assert.deepEqual(r.copies, [{ name: 'check.cold', addr: cold.address, kind: 'cold' }]);
    assert.ok(r.hazards.some((h) => h.kind === 'copy' && h.detail.includes('check.cold')));
    // check.cold calls abort: gcc assumes check clobbers every caller-saved register, so must we.
    for (const x of ['rax', 'rcx', 'rdx', 'rsi', 'rdi', 'r8', 'r9', 'r10', 'r11']) assert.ok(r.clobbers.includes(x), x);
    const a = analyse(exe);
    assert.ok(symbolInfo(exe, 'lookup.constprop.0.isra.0'));
    assert.equal(a.report('lookup'), undefined);
    assert.ok(a.functions().includes('lookup.constprop.0.isra.0'));
    const res = cli(['analyze', '--base', exe, 'lookup']);
    assert.equal(res.status, 1);
    assert.match(res.stderr, /^hotstack: Error 2: ENOENT: no function lookup .*lookup\.constprop\.0\.isra\.0/);
    assertNoStackTrace(res, 'analyze lookup');
  });

  it('identical functions folded by -fipa-icf are aliases of each other', () => {
    const exe = build('icf.c', 'icf');
    const even = symbolInfo(exe, 'weigh_even').address;
    assert.equal(symbolInfo(exe, 'weigh_odd').address, even, 'gcc folded them');
    const r = report(exe, 'weigh_even');
    assert.deepEqual(r.copies, [{ name: 'weigh_odd', addr: even, kind: 'alias' }]);
    assert.ok(r.hazards.some((h) => h.kind === 'alias' && h.detail.includes('weigh_odd')));
    assert.deepEqual(new Set(r.callers.map((c) => c.in)), new Set(['total_a', 'total_b']));
    // total_a keeps its argument in r11 across the first two calls (objdump agrees).
    const reads = readAfterCalls(exe, 'total_a', 'weigh_even').flatMap((s) => [...s.reads]);
    assert.ok(reads.includes('r11'));
    assert.ok(gprNames(r).includes('r11'));
  });

  it('stack arguments: the 7th and 8th of sum8, varargs of vsum; none for sum2 or the VLA of scratch', () => {
    const exe = build('stackargs.c', 'stackargs');
    assert.ok(disassemble(exe, 'sum8').some((l) => /\[rsp\+0x(10|18)\]/.test(l.text)), 'sum8 reads above its return address');
    assert.equal(report(exe, 'sum8').stackArguments, true);
    assert.equal(report(exe, 'vsum').stackArguments, true);
    assert.equal(report(exe, 'sum2').stackArguments, false);
    assert.ok(report(exe, 'vsum').hazards.some((h) => h.kind === 'stack-arguments'));
    // A variable-length array moves rsp by a run-time amount: never taken for stack arguments.
    assert.ok(disassemble(exe, 'scratch').some((l) => l.mnem === 'sub' && l.ops[0] === 'rsp' && gpr64(l.ops[1]!) !== undefined), 'scratch allocates on the stack');
    assert.notEqual(report(exe, 'scratch').stackArguments, true);
  });

  it('code that does not decode is reported as unanalysable, not thrown', () => {
    const exe = build('regs.c', 'regs-bad');
    const bytes = readFileSync(exe);
    const at = fileOffset(exe, 'g', 8);
    bytes.fill(0x06, at, at + 8); // push es: invalid in 64-bit mode
    const bad = join(work, 'regs-bad2');
    writeFileSync(bad, bytes);
    const r = report(bad, 'g');
    assert.ok(r.hazards.some((h) => h.kind === 'unanalysable'), JSON.stringify(r.hazards));
    assert.ok(report(bad, 'f'));
  });
});

describe('analysis: calls into the C library read what their prototype and format say', () => {
  it('printf formats are counted as the C library does; what cannot be counted is null', () => {
    assert.deepEqual(countPrintf('%d\n'), { gpr: 1, vec: 0 });
    assert.deepEqual(countPrintf('%s %d %.2f %%'), { gpr: 2, vec: 1 });
    assert.deepEqual(countPrintf('%*.*s|%-08lx|%Lf|%m|%zu'), { gpr: 5, vec: 0 });
    assert.deepEqual(countPrintf('%hhd %lld %e %G %a %p %c'), { gpr: 4, vec: 3 });
    assert.equal(countPrintf('%1$d'), null, 'positional arguments');
    assert.equal(countPrintf('%'), null, 'cut short');
    assert.equal(countPrintf('%y'), null, 'unknown conversion');
    assert.deepEqual(callReads('puts', () => -1, () => undefined), { g: 1 << 7, vec: 0 });
    assert.equal(callReads('no_such_function', () => -1, () => undefined), UNKNOWN_CALL);
    assert.equal(callReads('printf', () => -1, () => undefined).g & (1 << 9), 1 << 9, 'printf with an unknown format may read r9');
  });

  for (const pie of [true, false]) {
    it(`${pie ? 'PIE' : 'non-PIE'}: after noipa callees, printf/puts/fputs read only their arguments; printf of values kept across keep() is reliance`, () => {
      const exe = build('formats.c', pie ? 'formats' : 'formats-nopie', pie ? [] : ['-fno-pie', '-no-pie']);
      for (const f of ['opaque', 'opaque_name']) {
        // Registers main reads after the call that it did not write (objdump): only argument registers of library calls.
        assert.deepEqual(report(exe, f).reliedRegisters, [], `${f}: ${JSON.stringify(report(exe, f).reliedRegisters)}`);
      }
      // objdump: results of keep() parked in caller-saved registers while keep() is called again (they go to printf).
      const lines = disassemble(exe, 'main');
      const parked = new Set<string>();
      lines.forEach((l, k) => {
        if (l.mnem !== 'call' || !l.text.includes('<keep>')) return;
        const next = lines.slice(k + 1).findIndex((n) => n.mnem === 'call');
        if (next < 0 || !lines[k + 1 + next]!.text.includes('<keep>')) return;
        for (const n of lines.slice(k + 1, k + 1 + next)) {
          const dst = n.mnem === 'mov' && n.ops[1] === 'eax' ? gpr64(n.ops[0]!) : undefined;
          if (dst && CANDIDATES.has(dst)) parked.add(dst);
        }
      });
      assert.ok(parked.size > 0, 'gcc no longer parks keep()\'s results in caller-saved registers: the fixture lost its point');
      const kept = gprNames(report(exe, 'keep'));
      for (const r of parked) assert.ok(kept.includes(r), `main keeps ${r} across call keep (objdump) but the report says ${kept}`);
      for (const r of kept) assert.ok(CANDIDATES.has(r), r);
    });
  }
});

describe('analysis: stripped system libraries', () => {
  const libs = ['/usr/lib/x86_64-linux-gnu/libsqlite3.so.0', '/usr/lib/x86_64-linux-gnu/libz.so.1'].filter((p) => existsSync(p));

  it('analyse without error; exported functions have an export caller', { skip: !libs.length && 'neither libsqlite3 nor libz is installed' }, () => {
    for (const lib of libs) {
      const copy = join(work, lib.split('/').pop()!);
      copyFileSync(lib, copy);
      const t0 = performance.now();
      const a = analyse(copy);
      const names = a.functions();
      const exported = run('nm', ['-D', '--defined-only', copy]).split('\n').filter((l) => / T /.test(l)).map((l) => l.split(' ').pop()!);
      assert.ok(exported.length > 10 && names.length >= exported.length / 2, `${lib}: ${names.length} functions`);
      const first = a.report(exported[0]!)!;
      const t1 = performance.now();
      process.stderr.write(`# ${lib}: of()+report ${Math.round(t1 - t0)} ms\n`);
      assert.ok(first.callers.some((c) => c.kind === 'export'), `${exported[0]} is exported`);
      const sample = lib.includes('libz') ? names : names.filter((_n, i) => i % 10 === 0);
      for (const n of sample) {
        const r = a.report(n)!;
        assert.ok(r, n);
        assert.ok(r.callers.some((c) => c.kind === 'export'), `${n}: exported`);
        assert.ok(r.stackArguments === true || r.stackArguments === false, `${n}: stack use followed (${r.stackArguments})`);
      }
      if (lib.includes('libz')) {
        assert.equal(a.report('gzprintf')!.stackArguments, true, 'gzprintf is variadic');
        assert.equal(a.report('deflateInit2_')!.stackArguments, true, 'deflateInit2_ has 8 arguments');
        assert.equal(a.report('crc32')!.stackArguments, false);
      }
    }
  });
});

describe('hotstack analyze', () => {
  let exe: string;
  before(() => {
    exe = build('regs.c', 'regs-cli');
  });

  it('text: one function', () => {
    const r = cli(['analyze', '--base', exe, 'f']);
    assertNoStackTrace(r, 'analyze f');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^f  0x${symbolInfo(exe, 'f').address.toString(16)}, \\d+ bytes$`, 'm'));
    assert.match(r.stdout, /^ {2}callers: +3 call$/m);
    assert.match(r.stdout, /^ {4}call +0x[0-9a-f]+ in main, relies on .*r8.*r10/m);
    assert.match(r.stdout, /^ {2}stack args: +no$/m);
    assert.match(r.stdout, /^ {4}registers: callers keep /m);
  });

  it('text: every function with a hazard, and a count', () => {
    const r = cli(['analyze', '--base', exe]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^ {2}f +0x[0-9a-f]+ +registers \(r8, /m);
    assert.match(r.stdout, /^ {2}g +0x[0-9a-f]+ +registers \(r10\)/m);
    assert.doesNotMatch(r.stdout, /^ {2}h /m, 'h has no hazard');
    assert.match(r.stdout, /^2 of \d+ functions have hazards$/m);
  });

  it('--json: one object, bigints as hex strings', () => {
    const r = cli(['analyze', '--base', exe, '--json', 'f', 'h']);
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines.length, 1);
    const j = JSON.parse(lines[0]!) as AnalyzeJson;
    assert.equal(j.base.path, exe);
    assert.match(j.base.buildId ?? '', /^[0-9a-f]{40}$/);
    assert.deepEqual(j.functions.map((f) => f.function), ['f', 'h']);
    assert.equal(j.functions[0]!.addr, `0x${symbolInfo(exe, 'f').address.toString(16)}`);
    assert.equal(j.functions[0]!.size, `0x${symbolInfo(exe, 'f').size.toString(16)}`);
    assert.ok(j.functions[0]!.callers.every((c) => /^0x[0-9a-f]+$/.test(c.at)));
    assert.ok(j.functions[0]!.reliedRegisters.some((x) => x.name === 'r10'));
  });

  it('errors: one line, exit 1', () => {
    const missing = cli(['analyze', '--base', join(work, 'nope'), 'f']);
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /^hotstack: Error 2: ENOENT: /);
    const notElf = join(work, 'not-elf');
    writeFileSync(notElf, 'hello');
    const bad = cli(['analyze', '--base', notElf]);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /^hotstack: Error 22: EINVAL: .*ELF/);
    assert.equal(bad.stderr.trim().split('\n').length, 1);
    assert.match(bad.stderr, /base .*not-elf/, 'the message names the file');
    // A FIFO or a device named as the base is refused before anything is read (no hang, no unbounded read).
    const fifo = join(work, 'fifo');
    spawnSync('mkfifo', [fifo]);
    for (const odd of [fifo, '/dev/zero']) {
      const r = cli(['analyze', '--base', odd, 'f']);
      assert.equal(r.status, 1);
      assert.match(r.stderr, /EINVAL: base .* is a (FIFO|character device), not a regular file/);
    }
    const json = cli(['analyze', '--base', notElf, '--json']);
    assert.equal(json.status, 1);
    assert.equal((JSON.parse(json.stdout) as AnalyzeErrorJson).error.errno, 'EINVAL');
    const unknown = cli(['analyze', '--base', exe, 'no_such_function']);
    assert.equal(unknown.status, 1);
    assert.match(unknown.stderr, /ENOENT: no function no_such_function/);
    for (const x of [missing, bad, json, unknown]) assertNoStackTrace(x, 'analyze error');
  });
});

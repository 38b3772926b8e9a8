/**
 * The livepatch core: upload / get / list / action over a Target, with
 * Xen's build-id stack rules. Target-agnostic: the same engine drives an
 * offline image and a live process.
 *
 * Crash safety: every action that writes code journals its writes in the
 * state first (pending), then writes, then commits. Opening an engine on
 * a state with a pending journal undoes whatever part of it reached
 * memory, so no payload is ever left half-applied.
 */
import { fail, HotstackError, knownErrno } from '../errors.js';
import { bytesEqual, fromHex } from '../elf/bytes.js';
import { encodeHookArg, HOOK_ARG_SIZE } from './hookarg.js';
import {
  commitWrites, Overlay, patchRanges, planApply, planRevert, toJournal, type PlannedWrite,
} from './patching.js';
import * as rules from './rules.js';
import { emptyState, type EngineState, type FuncRecord, type PayloadRecord, type PayloadSignature, type PayloadStateName } from './state.js';
import type { AddrRange, HookKind, HookResult, Quiesced, Target } from './target.js';
import { upload } from './upload.js';
import { checkPayloadName } from '../payload/name.js';
import { faultPoint, uploadFaultPoint } from './fault.js';

export type ActionCmd = 'APPLY' | 'REVERT' | 'REPLACE' | 'UNLOAD';

export interface ActionOptions {
  /** How long to retry for a safe moment, ms; 0 or absent: the target's default. */
  timeoutMs?: number;
  /** APPLY without the dependency-on-top check. */
  nodeps?: boolean;
}

/** What an action did about hooks: which ran, which could not run (offline). */
export interface ActionOutcome {
  hooksCalled: HookKind[];
  hooksSkipped: HookKind[];
  /** Consistency checks the action's stop took (the most of its stops), 0 when it needed none. */
  tries: number;
}

/** The payload an action or get refers to does not exist. */
function unknown(name: string): never {
  return fail('ENOENT', `no payload named ${name} is loaded`);
}

/** A hook's non-zero return value as an error with its errno. */
function hookError(kind: HookKind, p: PayloadRecord, rc: number, what: string): HotstackError {
  const known = knownErrno(rc);
  return new HotstackError(known ?? 'EINVAL', `${kind} hook of ${p.name} ${what} (returned ${rc}${known ? ` ${known}` : ''})`);
}

export class Engine {
  readonly target: Target;
  private state: EngineState;
  /** Things a person should know about (repairs done on open). */
  readonly notices: string[] = [];
  // Indexes over state.payloads, so each action costs O(its payloads), not O(all).
  private exportsIndex = new Map<string, bigint>();
  private byName = new Map<string, PayloadRecord>();
  private byBuildId = new Map<string, PayloadRecord>();
  private outcome: ActionOutcome = { hooksCalled: [], hooksSkipped: [], tries: 0 };
  /** Depth of together(): inside, an upload's last save waits for the next one (see settle). */
  private batching = 0;
  /** The state changed since the last save, which is put off (see upload). */
  private saveOwed = false;

  constructor(target: Target) {
    this.target = target;
    this.state = target.store.load() ?? emptyState();
    this.notices.push(...(target.notices ?? []));
    this.reindex();
    if (this.state.pending) this.repair();
  }

  // ---- queries -------------------------------------------------------

  find(name: string): PayloadRecord | undefined {
    return this.byName.get(name);
  }

  get(name: string): { state: PayloadStateName; rc: number } {
    const p = this.find(name) ?? unknown(name);
    return { state: p.state, rc: p.rc };
  }

  /** Applied stacks bottom to top, then checked payloads in upload order. */
  list(): PayloadRecord[] {
    const stacks = Object.values(this.state.stacks)
      .filter((s) => s.length)
      .map((s) => s.map((n) => this.find(n)!))
      .sort((a, b) => a[0]!.uploadSeq - b[0]!.uploadSeq);
    const applied = stacks.flat();
    const checked = this.state.payloads.filter((p) => p.state !== 'APPLIED').sort((a, b) => a.uploadSeq - b.uploadSeq);
    return [...applied, ...checked];
  }

  /** The top of the applied stack of a base (by build-id hex). */
  top(baseBuildId: string): PayloadRecord | undefined {
    const s = this.state.stacks[baseBuildId];
    return s && s.length ? this.find(s[s.length - 1]!) : undefined;
  }

  /**
   * Run `fn` (an upload, then actions on it) in one stop of a live target:
   * the thread that maps the payload is held throughout, the others are
   * stopped only for each action's quiesced part, as they would be anyway.
   * Saves a detach, seize and interrupt per process in a fleet's load, and
   * a save of the state: the upload's last one waits for the apply's
   * journal (see settle), and is made at the end if nothing saved since.
   */
  together<T>(fn: () => T): T {
    const batch = this.target.batch?.bind(this.target);
    if (!batch) return fn();
    return batch(() => {
      this.batching++;
      let done = false;
      try {
        const r = fn();
        done = true;
        return r;
      } finally {
        if (--this.batching === 0) {
          try {
            this.settle();
          } catch (e) {
            // After a failure, that failure is the one to report (the save before it stands).
            if (done) throw e;
          }
        }
      }
    });
  }

  // ---- upload --------------------------------------------------------

  /** `opts.signature`: what the CLI verified of the file's signature, kept in the record (list --json). */
  upload(name: string, bytes: Uint8Array, opts: { signature?: PayloadSignature } = {}): PayloadRecord {
    checkPayloadName(name);
    rules.checkUniqueName(name, this.find(name));
    const seq = this.state.nextSeq;
    this.state.pending = { action: 'upload', payload: name, writes: [], regions: [] };
    // Saved with its first region (onAlloc), not before: until then there is nothing to repair, and a
    // live target then makes its state's copy in the same stop as the payload's memory.
    const persist = this.target.kind === 'process';
    // Whether the state changed: an upload refused before it mapped anything leaves the target untouched.
    let changed = !persist;
    let uploaded = false;
    try {
      const rec = upload(
        {
          target: this.target,
          exportedSymbol: (n) => this.exportsIndex.get(n),
          payloadWithBuildId: (hex) => this.byBuildId.get(hex),
          onAlloc: (rs) => {
            this.state.pending!.regions.push(...rs);
            changed = true;
            if (persist) this.save();
          },
          seq,
        },
        name,
        bytes,
      );
      if (opts.signature) rec.signature = opts.signature;
      this.state.payloads.push(rec);
      this.state.nextSeq = seq + 1;
      this.index(rec);
      changed = true;
      uploaded = true;
      uploadFaultPoint();
      return rec;
    } finally {
      this.state.pending = null;
      // In a batch the next save is near (an apply journals its writes before making them):
      // until then the last save (the allocation's, with its regions) is what a repair goes by,
      // and it frees this payload's memory, which no command reported as loaded yet.
      if (changed && uploaded && persist && this.batching > 0) this.saveOwed = true;
      else if (changed) this.save();
    }
  }

  // ---- actions -------------------------------------------------------

  action(name: string, cmd: ActionCmd, opts: ActionOptions = {}): ActionOutcome {
    const p = this.find(name) ?? unknown(name);
    const timeout = opts.timeoutMs && opts.timeoutMs > 0 ? opts.timeoutMs : this.target.defaultTimeoutMs;
    this.outcome = { hooksCalled: [], hooksSkipped: [], tries: 0 };
    switch (cmd) {
      case 'APPLY':
        this.apply(p, timeout, !!opts.nodeps);
        break;
      case 'REVERT':
        this.revert(p, timeout);
        break;
      case 'REPLACE':
        this.replace(p, timeout);
        break;
      case 'UNLOAD':
        this.unload(p, timeout);
        break;
      default:
        fail('EINVAL', `unknown action ${String(cmd)}`);
    }
    return this.outcome;
  }

  private apply(p: PayloadRecord, timeout: number, nodeps: boolean): void {
    rules.checkState(p, 'CHECKED', 'apply');
    rules.checkReapply(p);
    if (!nodeps) rules.checkDependsOnTop(p, this.top(p.baseBuildId), this.state.payloads);
    for (const f of p.funcs) rules.checkExpectation(f, (a, l) => this.target.read(a, l));
    this.preHook('preapply', p, 'vetoed the apply');
    try {
      this.scheduled(p, [p], () => {
        const writes = p.hooks.apply !== undefined ? [] : planApply(p, this.overlay());
        this.journalAhead('apply', p, writes);
        this.quiesced(patchRanges(p, false), timeout, (q) => {
          this.checkUnchanged(writes);
          if (p.hooks.apply !== undefined) {
            this.actionHook(q, 'apply', p.hooks.apply, p);
          } else {
            for (const fn of p.hooks.load) this.hook(q, 'load', fn, p);
          }
          this.writeAll(writes);
          p.state = 'APPLIED';
          this.stack(p.baseBuildId).push(p.name);
          commitWrites(writes);
          this.commitAfterStop();
        });
      });
    } finally {
      this.postHook('postapply', p);
    }
  }

  private revert(p: PayloadRecord, timeout: number): void {
    rules.checkState(p, 'APPLIED', 'revert');
    rules.checkIsTop(p, this.top(p.baseBuildId));
    this.preHook('prerevert', p, 'vetoed the revert');
    try {
      this.scheduled(p, [p], () => {
        const writes = planRevert(p, this.overlay());
        if (p.hooks.revert === undefined) this.journalAhead('revert', p, writes);
        this.quiesced(patchRanges(p, true), timeout, (q) => {
          this.checkUnchanged(writes);
          this.revertInWindow(q, p, writes);
          this.commitAfterStop();
        });
      });
    } finally {
      this.postHook('postrevert', p);
    }
  }

  /** Revert one payload inside the window (its writes journaled before): restore (or revert hook), then unload hooks. */
  private revertInWindow(q: Quiesced, p: PayloadRecord, writes: PlannedWrite[]): void {
    if (p.hooks.revert !== undefined) {
      this.actionHook(q, 'revert', p.hooks.revert, p);
    } else {
      this.writeAll(writes);
      for (const fn of p.hooks.unload) this.hook(q, 'unload', fn, p);
    }
    commitWrites(writes);
    p.state = 'CHECKED';
    p.reverted = true;
    const s = this.stack(p.baseBuildId);
    s.splice(s.lastIndexOf(p.name), 1);
  }

  private replace(p: PayloadRecord, timeout: number): void {
    rules.checkState(p, 'CHECKED', 'replace');
    rules.checkDependsOnBase(p);
    const applied = [...this.stack(p.baseBuildId)].reverse().map((n) => this.find(n)!);
    const vetoing = [p, ...applied].filter(rules.hasVetoingHooks);
    if (vetoing.length) {
      fail('EOPNOTSUPP', `REPLACE is refused: ${vetoing.map((x) => x.name).join(', ')} ${vetoing.length > 1 ? 'have' : 'has'} pre/post (vetoing) hooks`);
    }
    const busy: AddrRange[] = [...patchRanges(p, false), ...applied.flatMap((o) => patchRanges(o, true))];
    this.scheduled(p, [p, ...applied], () => {
      // Simulate first: reverts top-down, then the expectations, then the new patch.
      const mem = this.overlay();
      const reverts = applied.map((o) => ({ o, writes: planRevert(o, mem) }));
      try {
        for (const f of p.funcs) rules.checkExpectation(f, (a, l) => mem.read(a, l));
      } catch (e) {
        if (!(e instanceof HotstackError) || !applied.length) throw e;
        throw new HotstackError(e.errno, `${p.name}: once ${applied.map((o) => o.name).join(', ')} would be reverted, ${e.message}; nothing was changed`);
      }
      const writes = p.hooks.apply !== undefined ? [] : planApply(p, mem);
      const all = [...reverts.flatMap((r) => r.writes), ...writes];
      this.journal('replace', p, all);
      this.quiesced(busy, timeout, (q) => {
        this.checkUnchanged(all);
        const reverted: PayloadRecord[] = [];
        try {
          for (const r of reverts) {
            this.revertInWindow(q, r.o, r.writes);
            reverted.push(r.o);
          }
          if (p.hooks.apply !== undefined) this.actionHook(q, 'apply', p.hooks.apply, p);
          else for (const fn of p.hooks.load) this.hook(q, 'load', fn, p);
          this.writeAll(writes);
        } catch (e) {
          this.restoreStack(q, reverted);
          throw e;
        }
        commitWrites(writes);
        p.state = 'APPLIED';
        this.stack(p.baseBuildId).push(p.name);
        this.commitAfterStop();
      });
    });
  }

  /**
   * A REPLACE failed after reverting some payloads: put the code back (the
   * journal) and give back what their hooks undid, bottom-up, so the
   * previous stack is in place as before (Xen would leave it reverted).
   */
  private restoreStack(q: Quiesced, reverted: PayloadRecord[]): void {
    this.rollbackPending();
    for (const o of [...reverted].reverse()) {
      try {
        if (o.hooks.revert !== undefined) {
          if (o.hooks.apply !== undefined) this.hook(q, 'apply', o.hooks.apply, o);
        } else {
          for (const fn of o.hooks.load) this.hook(q, 'load', fn, o);
        }
      } catch {
        /* best effort: the code itself is already restored */
      }
    }
  }

  private unload(p: PayloadRecord, timeout: number): void {
    rules.checkState(p, 'CHECKED', 'unload');
    this.settle();
    const busy: AddrRange[] = p.text ? [{ start: p.text.start, end: p.text.end, label: `code of payload ${p.name}` }] : [];
    for (const f of p.funcs) {
      if (f.veneer) busy.push({ start: f.veneer.addr, end: f.veneer.addr + BigInt(f.veneer.size), label: `veneer of ${f.name} of payload ${p.name}` });
    }
    const release = (): void => {
      for (const r of p.regions) this.target.free(r.addr, r.size);
    };
    if (busy.length) this.quiesced(busy, timeout, release);
    else release();
    this.state.payloads = this.state.payloads.filter((x) => x !== p);
    this.reindex();
    this.save();
  }

  // ---- the quiesced part ---------------------------------------------

  /**
   * Run the part Xen schedules. A failure here sets the payload's rc (as
   * Xen's data->rc) and puts back the records it touched (only those, so
   * an action costs O(its payloads), not O(all payloads)).
   */
  private scheduled(p: PayloadRecord, involved: PayloadRecord[], fn: () => void): void {
    const stack = [...this.stack(p.baseBuildId)];
    const saved = involved.map((r) => structuredClone(r));
    try {
      fn();
      p.rc = 0;
      this.save();
    } catch (e) {
      if (this.state.pending) this.rollbackPending();
      this.state.stacks[p.baseBuildId] = stack;
      for (const r of saved) {
        const i = this.state.payloads.indexOf(this.byName.get(r.name)!);
        if (i >= 0) this.state.payloads[i] = r;
        this.index(r);
      }
      const cur = this.find(p.name);
      if (cur && e instanceof HotstackError) cur.rc = e.code;
      this.save();
      throw e;
    }
  }

  private journal(action: string, p: PayloadRecord, writes: PlannedWrite[]): void {
    this.state.pending = { action, payload: p.name, writes: toJournal(writes), regions: [] };
    this.save();
  }

  /**
   * Journal an action's writes before its stop, planned from memory read
   * while the threads ran: the stop then holds only the writes (and the
   * check that the bytes are still those read). A tool killed between the
   * journal and the writes leaves a journal whose writes never reached
   * memory, which the repair sees and drops.
   */
  private journalAhead(action: string, p: PayloadRecord, writes: PlannedWrite[]): void {
    if (writes.length) this.journal(action, p, writes);
  }

  /**
   * The bytes planned from, read while the threads ran, are still in memory
   * (only hotstack writes patch sites, under its lock): else the undo
   * buffers would be wrong, so nothing is changed (EAGAIN).
   */
  private checkUnchanged(writes: PlannedWrite[]): void {
    const seen = new Set<bigint>();
    for (const w of writes) {
      // A later write to the same place was planned over an earlier one (REPLACE): only the first reads memory.
      if (seen.has(w.addr)) continue;
      seen.add(w.addr);
      if (!bytesEqual(this.target.read(w.addr, w.before.length), w.before)) {
        fail('EAGAIN', `the code at 0x${w.addr.toString(16)} changed while hotstack prepared the ${w.kind} of ${w.payload.name} (is another tool writing the process?); nothing was changed, try again`);
      }
    }
  }

  private overlay(): Overlay {
    return new Overlay((a, l) => this.target.read(a, l));
  }

  private writeAll(writes: PlannedWrite[]): void {
    for (const w of writes) {
      this.target.write(w.addr, w.after);
      faultPoint();
    }
  }

  /** The target's quiesce, noting in the outcome how many consistency checks it took. */
  private quiesced<T>(busy: AddrRange[], timeoutMs: number, fn: (q: Quiesced) => T): T {
    this.settle();
    return this.target.quiesce(busy, timeoutMs, (q) => {
      this.outcome.tries = Math.max(this.outcome.tries, q.tries);
      return fn(q);
    });
  }

  /**
   * The action is done: no journal. Saved by `scheduled` once the threads
   * run again, not inside the stop; a tool killed before that save leaves
   * the journal, and the repair undoes the action, which was never
   * reported done.
   */
  private commitAfterStop(): void {
    this.state.pending = null;
  }

  /** Undo, last first, every journaled write that reached memory. */
  private rollbackPending(): void {
    const j = this.state.pending!;
    for (const w of [...j.writes].reverse()) {
      const after = fromHex(w.after);
      const cur = this.target.read(w.addr, after.length);
      if (Buffer.compare(cur, after) === 0) this.target.write(w.addr, fromHex(w.before));
    }
    for (const r of j.regions) {
      try {
        this.target.free(r.addr, r.size);
      } catch {
        /* already gone */
      }
    }
    this.state.pending = null;
  }

  /** Repair after a tool was killed mid-action: undo the interrupted action. */
  private repair(): void {
    const j = this.state.pending!;
    // The same safety as the action itself: no thread anywhere in a function
    // whose entry is rewritten (a loop in it may branch back into the bytes
    // being restored), not just in the rewritten bytes.
    const sites = new Map<bigint, FuncRecord>();
    for (const p of this.state.payloads) for (const f of p.funcs) sites.set(f.oldAddr + BigInt(f.patchOffset), f);
    const ranges: AddrRange[] = j.writes.map((w) => {
      const f = sites.get(w.addr);
      return f
        ? { start: f.oldAddr, end: f.oldAddr + BigInt(f.oldSize), label: `function ${f.name} (interrupted ${j.action} of ${j.payload})` }
        : { start: w.addr, end: w.addr + BigInt(w.after.length / 2), label: `interrupted ${j.action} of ${j.payload}` };
    });
    const run = (): void => this.rollbackPending();
    if (ranges.length) this.quiesced(ranges, this.target.defaultTimeoutMs, run);
    else run();
    this.save();
    this.notices.push(`repaired an interrupted ${j.action} of ${j.payload}: ${j.writes.length ? `${j.writes.length} write(s) undone` : 'its memory was freed'}`);
  }

  // ---- hooks ---------------------------------------------------------

  private writeHookArg(p: PayloadRecord): void {
    // Every hook call comes here first: the payload's code runs, the state must be on record.
    this.settle();
    if (p.hookArg === 0n || !this.target.canRunHooks) return;
    this.target.write(p.hookArg, encodeHookArg(p, p.funcsAddr, p.funcs.length).subarray(0, HOOK_ARG_SIZE));
  }

  private note(kind: HookKind, r: HookResult): void {
    (r === null ? this.outcome.hooksSkipped : this.outcome.hooksCalled).push(kind);
  }

  private hook(q: Quiesced, kind: HookKind, fn: bigint, p: PayloadRecord): HookResult {
    this.writeHookArg(p);
    const r = q.callHook(kind, fn, p.hookArg);
    this.note(kind, r);
    return r;
  }

  private actionHook(q: Quiesced, kind: 'apply' | 'revert', fn: bigint, p: PayloadRecord): void {
    const r = this.hook(q, kind, fn, p);
    if (r !== null && r !== 0) throw hookError(kind, p, r, `failed the ${kind}`);
  }

  /** A pre hook may veto: its return value becomes the payload's rc. */
  private preHook(kind: 'preapply' | 'prerevert', p: PayloadRecord, what: string): void {
    const fn = p.hooks[kind];
    if (fn === undefined) return;
    this.writeHookArg(p);
    const r = this.target.callHook(kind, fn, p.hookArg);
    this.note(kind, r);
    if (r !== null && r !== 0) {
      p.rc = r;
      this.save();
      throw hookError(kind, p, r, what);
    }
  }

  private postHook(kind: 'postapply' | 'postrevert', p: PayloadRecord): void {
    const fn = p.hooks[kind];
    if (fn === undefined) return;
    const cur = this.find(p.name) ?? p;
    this.writeHookArg(cur);
    this.note(kind, this.target.callHook(kind, fn, cur.hookArg));
  }

  // ---- state ---------------------------------------------------------

  private stack(base: string): string[] {
    return (this.state.stacks[base] ??= []);
  }

  private reindex(): void {
    this.exportsIndex = new Map();
    this.byName = new Map();
    this.byBuildId = new Map();
    for (const p of this.state.payloads) this.index(p);
  }

  private index(p: PayloadRecord): void {
    this.byName.set(p.name, p);
    this.byBuildId.set(p.buildId, p);
    for (const s of p.symbols) this.exportsIndex.set(s.name, s.addr);
  }

  private save(): void {
    this.saveOwed = false;
    this.target.store.save(this.state);
  }

  /** Make the save put off in a batch (see upload), before the process is acted on again. */
  private settle(): void {
    if (this.saveOwed) this.save();
  }
}

/**
 * Clobber sets: the registers a function may write, itself or through the
 * functions it calls or tail-jumps to. A call out of the object, through
 * a pointer, or an indirect tail call may write every caller-saved
 * register. Computed over strongly connected components of the call
 * graph (Tarjan), so recursion and shared callees cost one visit each.
 */
import type { FlowModel } from './flow.js';
import { ALL_CALLER_SAVED, union, type RegSet } from './regs.js';

export class Clobbers {
  private readonly done = new Map<number, RegSet>();

  constructor(private readonly flow: FlowModel) {}

  /** Registers the function entered at `entry` may write. */
  of(entry: number): RegSet {
    const hit = this.done.get(entry);
    if (hit) return hit;
    this.solve(entry);
    return this.done.get(entry)!;
  }

  private own(entry: number): RegSet {
    const f = this.flow.of(entry);
    return f.unknown ? union(f.writes, ALL_CALLER_SAVED) : f.writes;
  }

  /** Iterative Tarjan from `root` over entries not solved yet. */
  private solve(root: number): void {
    const index = new Map<number, number>();
    const low = new Map<number, number>();
    const onStack = new Set<number>();
    const stack: number[] = [];
    let next = 0;
    type Frame = { v: number; edges: number[]; i: number };
    const frames: Frame[] = [];
    const open = (v: number): void => {
      index.set(v, next);
      low.set(v, next);
      next++;
      stack.push(v);
      onStack.add(v);
      frames.push({ v, edges: this.flow.of(v).callees, i: 0 });
    };
    open(root);
    while (frames.length) {
      const fr = frames[frames.length - 1]!;
      if (fr.i < fr.edges.length) {
        const w = fr.edges[fr.i++]!;
        if (this.done.has(w)) continue;
        if (!index.has(w)) open(w);
        else if (onStack.has(w)) low.set(fr.v, Math.min(low.get(fr.v)!, index.get(w)!));
        continue;
      }
      frames.pop();
      const parent = frames[frames.length - 1];
      if (parent) low.set(parent.v, Math.min(low.get(parent.v)!, low.get(fr.v)!));
      if (low.get(fr.v) !== index.get(fr.v)) continue;
      // fr.v roots a component: its clobbers are the union of its members and of every solved callee.
      const members: number[] = [];
      for (;;) {
        const w = stack.pop()!;
        onStack.delete(w);
        members.push(w);
        if (w === fr.v) break;
      }
      let set = { g: 0, v: 0 };
      for (const m of members) {
        set = union(set, this.own(m));
        for (const c of this.flow.of(m).callees) {
          const d = this.done.get(c);
          if (d) set = union(set, d);
        }
      }
      for (const m of members) this.done.set(m, set);
    }
  }
}

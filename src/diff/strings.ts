/**
 * Only the string literals the payload uses. A string section of PATCHED.o
 * holds every literal of the file; the payload needs those its code points
 * at. Where a relocation points is known only up to the instruction's tail
 * (`lea .LC0(%rip)` has addend -4, `cmpb $0, .LC0(%rip)` -5, an
 * absolute pointer 0): the string starts 0 to 8 bytes after symbol + addend.
 * So each reference keeps those bytes, widened to whole strings, and every
 * offset inside what is kept moves by the same amount.
 */

/** How far after symbol + addend the string may start (rel32 field and a 4-byte immediate after it). */
const WINDOW = 8;

export interface TrimmedStrings {
  data: Uint8Array;
  /** New offset of an old one; undefined when that byte was not kept. */
  map(off: bigint): bigint | undefined;
}

/** Keep the strings of `data` around `refs` (offsets relocations point at, addend included). */
export function trimStrings(data: Uint8Array, align: number, refs: readonly bigint[]): TrimmedStrings {
  const a = Math.max(1, align);
  const ranges: [number, number][] = [];
  for (const ref of refs) {
    let from = Math.max(0, Math.min(data.length, Number(ref)));
    let to = Math.max(0, Math.min(data.length, Number(ref) + WINDOW + 1));
    while (from > 0 && data[from - 1] !== 0) from--;
    while (to < data.length && data[to - 1] !== 0) to++;
    from -= from % a;
    ranges.push([from, to]);
  }
  ranges.sort((x, y) => x[0] - y[0]);
  const merged: [number, number][] = [];
  for (const r of ranges) {
    const last = merged[merged.length - 1];
    if (last && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
    else merged.push([r[0], r[1]]);
  }
  const shifts: { from: number; to: number; at: number }[] = [];
  let size = 0;
  for (const [from, to] of merged) {
    size += (a - (size % a)) % a;
    shifts.push({ from, to, at: size });
    size += to - from;
  }
  const out = new Uint8Array(size);
  for (const s of shifts) out.set(data.subarray(s.from, s.to), s.at);
  return {
    data: out,
    map(off: bigint): bigint | undefined {
      const n = Number(off);
      const s = shifts.find((x) => n >= x.from && n < x.to) ?? shifts.find((x) => n >= x.from - WINDOW && n < x.to + WINDOW);
      return s ? BigInt(s.at - s.from) + off : undefined;
    },
  };
}

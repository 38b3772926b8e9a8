/**
 * struct hotstack_payload, the argument pre/post/action hooks receive
 * (include/hotstack.h): name pointer, state, rc, funcs pointer, nfuncs,
 * then the name itself.
 */
import { STATE_NUMBER, type PayloadRecord } from './state.js';

const NAME_OFF = 32;
/** Bytes reserved in the payload's data region: 32-byte struct + 128-byte name. */
export const HOOK_ARG_SIZE = NAME_OFF + 128;

/** Encode the struct as the target will see it at `p.hookArg`. */
export function encodeHookArg(p: PayloadRecord, funcsAddr: bigint, nfuncs: number): Uint8Array {
  const out = new Uint8Array(HOOK_ARG_SIZE);
  const dv = new DataView(out.buffer);
  dv.setBigUint64(0, p.hookArg + BigInt(NAME_OFF), true);
  dv.setInt32(8, STATE_NUMBER[p.state], true);
  dv.setInt32(12, p.rc, true);
  dv.setBigUint64(16, funcsAddr, true);
  dv.setUint32(24, nfuncs, true);
  out.set(Buffer.from(p.name, 'latin1').subarray(0, 127), NAME_OFF);
  return out;
}

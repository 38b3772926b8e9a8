/** `hotstack inspect FILE`: what a payload holds, statically. */
import { inspectPayload, type InspectedPayload } from '../payload/inspect.js';
import { readPayloadFile } from './lifecycle.js';
import type { SignatureJson } from './json-types.js';
import type { Io } from './report.js';
import { inspectSignature, signatureJson } from './trust.js';
import { signatureText, type SignatureInfo } from '../trust/signature.js';

/** What inspect reports: the payload, and its signature (null: unsigned; never enforced here). */
export type InspectReport = InspectedPayload & { signature: SignatureJson | null };

/** Read and decode FILE, and check its signature against the keyring. */
export function runInspect(file: string, keyring?: string): InspectReport {
  const bytes = readPayloadFile(file);
  const p = inspectPayload(bytes);
  return { ...p, signature: signatureJson(inspectSignature(file, bytes, keyring)) };
}

/** Human rendering: one line per fact, the functions and sections indented. */
export function printInspect(file: string, p: InspectReport, io: Io): void {
  io.out(`${file}\n`);
  io.out(`  build-id:       ${p.buildId}\n`);
  io.out(`  signature:      ${signatureText(p.signature as SignatureInfo | null)}\n`);
  io.out(`  depends:        ${p.depends}\n`);
  io.out(`  base build-id:  ${p.baseBuildId ?? '(missing: .livepatch.xen_depends)'}\n`);
  io.out(`  functions:      ${p.funcs.length}\n`);
  for (const f of p.funcs) {
    const how = f.kind === 'nop' ? `NOP ${f.newSize} bytes` : `jump to ${f.newAddr} (new_size ${f.newSize})`;
    io.out(`    ${f.name}: old_addr ${f.oldAddr === '0x0' ? '0 (by name)' : f.oldAddr}, old_size ${f.oldSize}, ${how}\n`);
    if (f.expect) io.out(`      expects ${f.expect.len} bytes: ${f.expect.bytes.slice(0, f.expect.len * 2)}\n`);
  }
  io.out(`  hooks:          ${p.hooks.length ? p.hooks.map((h) => `${h.kind} (${h.targets.join(', ')})`).join('; ') : 'none'}\n`);
  io.out(`  metadata:       ${p.metadata.length ? p.metadata.join('; ') : 'none'}\n`);
  io.out('  sections:\n');
  for (const s of p.sections) io.out(`    ${s.name.padEnd(28)} ${String(s.size).padStart(8)}  ${s.flags}\n`);
}

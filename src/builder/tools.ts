/**
 * The external tools `hotstack build` drives (the C compiler, ld, objcopy)
 * and the compiler flags a payload needs. Every failure becomes a
 * HotstackError carrying the tool's own message.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fail, type ErrnoName } from '../errors.js';
import { packageRoot } from '../package-root.js';

/**
 * The flags every payload source is compiled with (besides -c, -I and
 * -fcf-protection): position-independent code that the loader can place
 * anywhere, one section per function and datum (so a function's section
 * size is its size), no common symbols (SHN_COMMON is refused at upload),
 * no .eh_frame (the engine does not register unwind tables).
 */
export const PAYLOAD_CFLAGS: readonly string[] = [
  '-O2', '-fPIC', '-ffunction-sections', '-fdata-sections', '-fno-common', '-fno-asynchronous-unwind-tables',
];

/**
 * Added unless the user chose their own -fcf-protection: the jump to the
 * new code goes after the old function's endbr64 either way, and the
 * payload's code is only reached by direct jumps and calls.
 */
export const DEFAULT_CF_PROTECTION = '-fcf-protection=none';

/** Directory holding hotstack.h: `include/` of the installed package. */
export function includeDir(): string {
  const root = packageRoot();
  if (root === null || !existsSync(join(root, 'include', 'hotstack.h'))) {
    fail('ENOENT', `cannot find include/hotstack.h in the hotstack package (${root ?? `no package.json of hotstack above ${fileURLToPath(import.meta.url)}`}): is the package complete?`);
  }
  return join(root, 'include');
}

/** The full compiler flags for payload sources, `user` appended (they win where gcc lets the last flag win). */
export function payloadCflags(user: readonly string[] = []): string[] {
  const cf = user.some((f) => f.startsWith('-fcf-protection')) ? [] : [DEFAULT_CF_PROTECTION];
  return [...PAYLOAD_CFLAGS, ...cf, '-I', includeDir(), ...user];
}

/** Quote a word for a POSIX shell, only when it needs it. */
export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * A command given as one string (`$CC` may be `ccache gcc`): split on
 * whitespace. Empty: the default.
 */
export function splitCommand(cmd: string | undefined, dflt: string): string[] {
  const words = (cmd ?? '').trim().split(/\s+/).filter(Boolean);
  return words.length ? words : [dflt];
}

export interface ToolResult {
  stdout: string;
  stderr: string;
}

/**
 * Run a tool synchronously. Not found: ENOENT naming it; non-zero exit:
 * `errno` (EINVAL by default) with `what` and the tool's output.
 */
export function runTool(argv: readonly string[], what: string, opts: { cwd?: string; errno?: ErrnoName } = {}): ToolResult {
  const [cmd, ...args] = argv;
  const r = spawnSync(cmd!, args, { cwd: opts.cwd, encoding: 'utf8', maxBuffer: 64 << 20, stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.error) {
    const code = (r.error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') fail('ENOENT', `${what}: ${cmd} not found (is it installed and on PATH?)`);
    fail('EIO', `${what}: cannot run ${cmd}: ${r.error.message}`);
  }
  const stdout = r.stdout ?? '';
  const stderr = r.stderr ?? '';
  if (r.status !== 0) {
    const why = r.status !== null ? `exit status ${r.status}` : `killed by ${r.signal ?? 'a signal'}`;
    const out = [stderr, stdout].map((s) => s.trim()).filter(Boolean).join('\n');
    fail(opts.errno ?? 'EINVAL', `${what} failed (${cmd}, ${why})${out ? ':\n' + out : ''}`);
  }
  return { stdout, stderr };
}

/**
 * The hotstack command line. Every user error ends as one line naming the
 * errno and what to do, with exit status 1 (2 for EBUSY/EAGAIN, worth
 * retrying); never a stack trace.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { HotstackError, toHotstackError } from '../errors.js';
import { packageRoot } from '../package-root.js';
import type { Engine } from '../core/engine.js';
import { registerAnalyze } from './analyze.js';
import { registerBuild } from './build.js';
import { registerDiff } from './diff.js';
import { checkExit, printCheck, runCheck } from './check.js';
import { errorLine, exitCodeFor, nameFromFile } from './format.js';
import { printInspect, runInspect } from './inspect.js';
import type { ActionJson, CheckErrorJson, InspectErrorJson, InspectJson } from './json-types.js';
import { cmdAction, cmdList, cmdLoad, cmdUpload } from './lifecycle.js';
import { reporterFor, stdio as io, type Reporter } from './report.js';
import { checkSingleProcess, isFleet, parseBuildIdArg, runFleet, type FleetCommand, type FleetOptions } from './fleet.js';
import { loadPayloadFile, preloadForLive, registerTrust, requireSignatureOption } from './trust.js';

/** The version in package.json (read once, for --version). */
function packageVersion(): string {
  try {
    const dir = packageRoot();
    if (dir === null) return 'unknown';
    const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { version?: string };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

function parseIntArg(what: string, min: number, max = Number.MAX_SAFE_INTEGER, unit = '') {
  return (v: string): number => {
    if (!/^\d+$/.test(v)) throw new InvalidArgumentError(`${what} must be a whole number`);
    const n = Number(v);
    if (n < min) throw new InvalidArgumentError(`${what} must be at least ${min}`);
    if (n > max) throw new InvalidArgumentError(`${what} must be at most ${max}${unit}`);
    return n;
  };
}

/** Longest --timeout: an action that found no safe moment in 10 minutes will not find one. */
const MAX_TIMEOUT_MS = 600_000;

/** Open the engine for a live process, run `fn`, always release the process. */
async function withLive(pidOpt: number | undefined, fn: (e: Engine) => number): Promise<number> {
  if (pidOpt === undefined) throw new HotstackError('EINVAL', 'this command acts on a live process: give --pid PID (or --all for every process of a build)');
  const { openProcessEngine } = await import('../targets/process/session.js');
  return openProcessEngine(pidOpt, (engine) => {
    for (const n of engine.notices) io.err(`hotstack: ${n}\n`);
    return fn(engine);
  });
}

/**
 * Run an action command; with --json, print one object
 * `{"ok":BOOL,"steps":[...]}` instead of xen-livepatch's lines (same exit status).
 */
async function actionCommand(pidOpt: number | undefined, rep: Reporter, fn: (e: Engine, rep: Reporter) => number): Promise<number> {
  try {
    return rep.end(await withLive(pidOpt, (e) => fn(e, rep)));
  } catch (e) {
    const err = toHotstackError(e);
    rep.failure(err, { ok: false, steps: rep.steps } satisfies ActionJson, uncaughtText(e, err));
    return exitCodeFor(err);
  }
}

/** What an error that ends the command prints: its errno line, and with HOTSTACK_DEBUG its stack. */
function uncaughtText(e: unknown, err: HotstackError): string {
  return `hotstack: ${errorLine(err)}\n${process.env.HOTSTACK_DEBUG && e instanceof Error ? `${e.stack}\n` : ''}`;
}

/** How `check` (and `build`) resolve symbols of other libraries offline. */
export const LIBRARIES_HELP = `
Symbols a payload uses that neither the image nor a payload defines (printf,
strlen, a function of one of its libraries) are looked up in the libraries
the image needs (DT_NEEDED, and theirs), found as ld.so would: DT_RPATH,
DT_RUNPATH ($ORIGIN expanded), /etc/ld.so.cache, then the default
directories; --lib-path DIR is searched first. With --sysroot DIR every
absolute path, the cache and symlinks are taken inside DIR (another
machine's files). Libraries are only read when a payload needs one; each
symbol's library is listed (--json: "symbols" of the upload step).
`;

/** --pid, repeatable and comma-separated: every pid given, in order. */
function collectPids(v: string, prev: number[] | undefined): number[] {
  const one = parseIntArg('--pid', 1);
  return [...(prev ?? []), ...v.split(',').map((s) => one(s.trim()))];
}

/** Commander accumulator for a repeatable option. */
function collectArg(v: string, prev: string[] | undefined): string[] {
  return [...(prev ?? []), v];
}

function timeoutOption(): Option {
  return new Option('--timeout <ms>', 'how long to keep retrying for a safe moment, in ms').default(1000).argParser(parseIntArg('--timeout', 1, MAX_TIMEOUT_MS, ' (10 minutes)'));
}

export function buildProgram(setExit: (n: number) => void): Command {
  const program = new Command();
  program
    .name('hotstack')
    .description("Live patching with Xen's payload format and build-id stacks: live processes and offline images.")
    .version(packageVersion(), '-V, --version')
    .option('--pid <pid>', 'the live process to act on; several (repeated or comma-separated) act as a fleet', collectPids)
    .option('--all', 'act on every process with the payload\'s base object mapped (upload, load) or with hotstack payloads (list, apply, revert, replace, unload)')
    .option('--exe <path>', 'fleet: only processes running this executable (its replaced or deleted file too)')
    .option('--uid <uid>', 'fleet: only processes of this effective user id', parseIntArg('--uid', 0))
    .option('--base-build-id <id>', 'fleet: only processes in which an object with this build-id is mapped', (v: string) => {
      try {
        return parseBuildIdArg(v);
      } catch (e) {
        throw new InvalidArgumentError((e as Error).message);
      }
    })
    .option('--jobs <n>', 'fleet: processes worked on at once (default: one per CPU, at most 16)', parseIntArg('--jobs', 1, 256))
    .option('--keyring <dir>', 'directory of trusted public keys (*.pub) for signed payloads (default $HOTSTACK_KEYRING, else /etc/hotstack/keys)')
    .showHelpAfterError('(hotstack --help for usage)')
    .addHelpText(
      'after',
      `
Examples:
  hotstack inspect fix1.livepatch
  hotstack check --image ./server fix1.livepatch fix2.livepatch
  hotstack --pid 1234 load fix1.livepatch
  hotstack --pid 1234 list
  hotstack sign --key release.key -o fix1.livepatch fix1.livepatch
  hotstack --pid 1234 load --require-signature fix1.livepatch
  hotstack --all load fix1.livepatch          # every process with its base mapped
  hotstack --all --exe /usr/sbin/server list --json

Exit status: 0 success, 2 worth retrying (EBUSY, EAGAIN), 1 any other failure.
A fleet run (--all, or several --pid) exits 0 when no process failed, 2 when
every failure was EBUSY or EAGAIN, else 1; exited processes and processes
already in the wanted state are skipped, not failed.
Environment: HOTSTACK_STATE_DIR (per-process state, default /run/hotstack),
HOTSTACK_TRUST_STATE_FILE=1 (once, for payloads an older hotstack loaded: use a state file the process holds no copy of),
HOTSTACK_DEBUG_ROOT (debug files of stripped programs, default /usr/lib/debug),
HOTSTACK_HOOK_TIMEOUT_MS (default 5000), HOTSTACK_DEBUG=1 (stack traces of internal errors),
HOTSTACK_KEYRING (trusted keys, default /etc/hotstack/keys), HOTSTACK_POLICY (default /etc/hotstack/policy).`,
    )
    .exitOverride();
  const fleetOpts = (): FleetOptions => {
    const o = program.opts<{ pid?: number[]; all?: boolean; exe?: string; uid?: number; baseBuildId?: string; jobs?: number }>();
    return { pids: o.pid, all: o.all, exe: o.exe, uid: o.uid, baseBuildId: o.baseBuildId, jobs: o.jobs };
  };
  /** The one process of a single-process command (fleet options refused). */
  const pid = (): number | undefined => {
    const o = fleetOpts();
    checkSingleProcess(o);
    return o.pids?.[0];
  };
  /** When the command line asks for a fleet: run it there and return its status; else undefined. */
  const fleet = async (c: FleetCommand): Promise<number | undefined> => {
    const o = fleetOpts();
    return isFleet(o) ? runFleet({ ...c, trust: { ...c.trust, keyring: keyring() } }, o, io, !!process.stderr.isTTY) : undefined;
  };
  const keyring = (): string | undefined => program.opts<{ keyring?: string }>().keyring;

  program
    .command('inspect')
    .description('show what a payload holds: build-ids, functions, hooks, metadata, sections')
    .argument('<file>', 'payload file')
    .option('--json', 'machine-readable output')
    .action((file: string, o: { json?: boolean }) => {
      const rep = reporterFor(o.json, io);
      try {
        const r: InspectJson = { file, ...runInspect(file, keyring()) };
        rep.result(r, (v, out) => printInspect(file, v, out));
        setExit(0);
      } catch (e) {
        const err = toHotstackError(e);
        const at = err.offset !== undefined && err.offset >= 0 ? ` (at file offset 0x${err.offset.toString(16)})` : '';
        rep.failure(err, { file } satisfies Omit<InspectErrorJson, 'error'>, `${file}: invalid payload: ${errorLine(err)}${at}\n`, { offset: err.offset ?? null });
        setExit(1);
      }
    });

  program
    .command('check')
    .description('dry run on an offline image: would these payloads load and apply, in order?')
    .requiredOption('--image <elf>', 'the base image (an ELF executable, e.g. xen-syms)')
    .option('--debug-file <file>', "separate debug file of a stripped image (its .symtab names static functions); default: found by build-id under $HOTSTACK_DEBUG_ROOT or /usr/lib/debug, or by .gnu_debuglink")
    .option('--lib-path <dir>', "look for the image's libraries (DT_NEEDED) in DIR before ld.so's search order (repeatable)", collectArg)
    .option('--sysroot <dir>', "DIR is the target system's /: library search paths, ld.so.cache and symlinks are taken inside it")
    .option('--nodeps', 'apply without the dependency-on-top check')
    .option('--replace <file>', 'upload this payload last and REPLACE the stack with it')
    .option('--json', 'print one JSON object')
    .addOption(requireSignatureOption())
    .argument('<files...>', 'payloads, bottom of the stack first')
    .addHelpText('after', LIBRARIES_HELP)
    .action((files: string[], o: { image: string; debugFile?: string; libPath?: string[]; sysroot?: string; nodeps?: boolean; replace?: string; json?: boolean; requireSignature?: boolean }) => {
      const rep = reporterFor(o.json, io);
      const progress = !rep.json && process.stderr.isTTY && files.length > 20
        ? (d: number, t: number) => process.stderr.write(`\r${d}/${t} payloads${d === t ? '\n' : ''}`)
        : undefined;
      let r;
      try {
        r = runCheck({ image: o.image, files, replace: o.replace, nodeps: o.nodeps, debugFile: o.debugFile, libPaths: o.libPath, sysroot: o.sysroot, progress,
          load: (f) => loadPayloadFile(f, { requireSignature: o.requireSignature, keyring: keyring() }) });
      } catch (e) {
        const err = toHotstackError(e);
        rep.failure(err, { image: { path: o.image, buildId: null } } satisfies Omit<CheckErrorJson, 'error'>, `hotstack: ${errorLine(err)}\n`);
        setExit(1);
        return;
      }
      rep.result(r, printCheck);
      setExit(checkExit(r));
    });

  program
    .command('list')
    .description('list loaded payloads: the applied stack bottom to top, then checked ones')
    .option('--json', 'one JSON array')
    .action(async (o: { json?: boolean }) => setExit(await fleet({ action: 'list', name: '', json: o.json }) ?? await withLive(pid(), (e) => cmdList(e, reporterFor(o.json, io)))));

  program
    .command('upload')
    .description('load a payload and check it (state CHECKED)')
    .argument('<name>', 'name to give it')
    .argument('<file>', 'payload file')
    .option('--json', 'print one JSON object instead of the xen-livepatch lines')
    .addOption(requireSignatureOption())
    .action(async (name: string, file: string, o: { json?: boolean; requireSignature?: boolean }) => {
      const f = await fleet({ action: 'upload', name, file, json: o.json, trust: { requireSignature: o.requireSignature } });
      if (f !== undefined) return setExit(f);
      // The file is read and its signature checked before the process is opened or locked.
      const rep = reporterFor(o.json, io);
      const pre = preloadForLive(file, name, { requireSignature: o.requireSignature, keyring: keyring() }, rep);
      setExit(typeof pre === 'number' ? pre : await actionCommand(pid(), rep, (e, r) => cmdUpload(e, name, file, r, pre)));
    });

  for (const [action, help] of [
    ['apply', 'apply a checked payload on top of the stack'],
    ['revert', 'revert the top of the stack'],
    ['unload', 'free a checked payload'],
    ['replace', 'revert the whole stack and apply this cumulative payload'],
  ] as const) {
    const c = program.command(action).description(help).argument('<name>', 'payload name').addOption(timeoutOption());
    if (action === 'apply') c.option('--nodeps', 'skip the dependency-on-top check');
    c.option('--json', 'print one JSON object instead of the xen-livepatch lines');
    c.action(async (name: string, o: { timeout: number; nodeps?: boolean; json?: boolean }) =>
      setExit(await fleet({ action, name, nodeps: o.nodeps, timeoutMs: o.timeout, json: o.json })
        ?? await actionCommand(pid(), reporterFor(o.json, io), (e, r) => cmdAction(e, action, name, { nodeps: o.nodeps, timeoutMs: o.timeout }, r))),
    );
  }

  program
    .command('load')
    .description('upload FILE under its base name and apply it; unload again if the apply fails')
    .argument('<file>', 'payload file')
    .option('--nodeps', 'skip the dependency-on-top check')
    .addOption(timeoutOption())
    .option('--json', 'print one JSON object instead of the xen-livepatch lines')
    .addOption(requireSignatureOption())
    .action(async (file: string, o: { timeout: number; nodeps?: boolean; json?: boolean; requireSignature?: boolean }) => {
      const f = await fleet({ action: 'load', name: nameFromFile(file), file, nodeps: o.nodeps, timeoutMs: o.timeout, json: o.json, trust: { requireSignature: o.requireSignature } });
      if (f !== undefined) return setExit(f);
      const rep = reporterFor(o.json, io);
      const pre = preloadForLive(file, nameFromFile(file), { requireSignature: o.requireSignature, keyring: keyring() }, rep);
      setExit(typeof pre === 'number' ? pre : await actionCommand(pid(), rep, (e, r) => cmdLoad(e, file, { nodeps: o.nodeps, timeoutMs: o.timeout }, r, pre)));
    });

  registerBuild(program, setExit);
  registerDiff(program, setExit, io);
  registerAnalyze(program, setExit, io);
  registerTrust(program, setExit, io);

  return program;
}

// bin/hotstack takes both from one module (the CLI's bundle, see package.json).
export { guardOutput } from './output.js';

/** Run the CLI; resolves to the exit status. */
export async function main(argv: string[]): Promise<number> {
  let status = 0;
  const program = buildProgram((n) => (status = n));
  try {
    await program.parseAsync(argv, { from: 'user' });
    return status;
  } catch (e) {
    if (e instanceof CommanderError) {
      // Help and version are not errors; commander already printed the message.
      return e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help' ? 0 : 1;
    }
    const err = toHotstackError(e);
    io.err(uncaughtText(e, err));
    return exitCodeFor(err);
  }
}

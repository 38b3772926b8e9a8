/**
 * `npm run demo`: the main job, end to end. Compiles the bundled pricing
 * service, starts it, builds four payloads from C with `hotstack build`,
 * and walks a stack live: fix 1, fix 2 on top, fix 3 out of order
 * (refused, and why), revert the top, REPLACE with a cumulative fix,
 * showing what the service answers at each step. Cleans up after itself.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const hotstack = join(root, 'bin/hotstack');
const bold = (s: string): string => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
const dim = (s: string): string => (process.stdout.isTTY ? `\x1b[2m${s}\x1b[0m` : s);

function step(title: string): void {
  console.log(`\n${bold('== ' + title)}`);
}

/** Run a command, echoing it and its output like a terminal would. Returns the exit status. */
function sh(cmd: string, args: string[], opts: { cwd?: string; quiet?: boolean } = {}): number {
  const short = (a: string): string => a.replace(`${opts.cwd ?? '\0'}/`, '').replace(`${root}/`, '');
  const shown = [cmd === hotstack ? 'hotstack' : cmd, ...args.map(short)].join(' ');
  console.log(dim(`$ ${shown}`));
  const r = spawnSync(cmd, args, { cwd: opts.cwd, encoding: 'utf8' });
  if (r.error) throw r.error;
  const out = (r.stdout + r.stderr).trimEnd();
  if (out && !opts.quiet) console.log(out.replaceAll(`${opts.cwd ?? '\0'}/`, '').replace(/^/gm, '  '));
  if (r.status !== 0) console.log(dim(`  (exit status ${r.status})`));
  return r.status ?? 1;
}

function must(status: number, what: string): void {
  if (status !== 0) throw new Error(`demo step failed: ${what}`);
}

interface Service {
  pid: number;
  ask(q: string): Promise<string>;
  stop(): void;
}

async function startService(path: string): Promise<Service> {
  const child = spawn(path, [], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! });
  const queue: ((l: string) => void)[] = [];
  lines.on('line', (l) => queue.shift()?.(l));
  const next = (): Promise<string> =>
    new Promise((res, rej) => {
      const t = setTimeout(() => rej(new Error('the service did not answer')), 5000);
      queue.push((l) => {
        clearTimeout(t);
        res(l);
      });
    });
  const ready = await next();
  if (ready !== 'ready') throw new Error(`service said ${ready}`);
  return {
    pid: child.pid!,
    async ask(q) {
      const a = next();
      child.stdin!.write(q + '\n');
      return a;
    },
    stop() {
      child.stdin!.end('quit\n');
      setTimeout(() => child.kill('SIGKILL'), 1000).unref();
    },
  };
}

async function show(svc: Service): Promise<void> {
  for (const q of ['quote 3', 'quote 12', 'hello']) console.log(`  service> ${q.padEnd(9)} -> ${await svc.ask(q)}`);
}

async function main(): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'hotstack-demo-'));
  const state = join(work, 'state');
  process.env.HOTSTACK_STATE_DIR = state;
  let svc: Service | undefined;
  try {
    step('Compile and start the pricing service (it has a discount bug)');
    const src = join(root, 'examples/service');
    const exe = join(work, 'service');
    must(sh('gcc', ['-O2', '-Wl,--build-id=sha1', '-o', exe, 'server.c'], { cwd: src }), 'compile the service');
    svc = await startService(exe);
    console.log(`  started service, pid ${svc.pid}`);
    await show(svc);
    console.log(dim('  (3 items should cost $7.50: the 20% volume discount is meant for 10 items or more)'));

    step('Build the patches from C with hotstack build');
    const p = (n: string): string => join(root, 'examples/patches', n);
    const out = (n: string): string => join(work, n);
    must(sh(hotstack, ['build', '--base', exe, '--meta', 'ticket=PRICE-1', '-o', out('fix1.livepatch'), p('fix1-discount.c')], { cwd: work }), 'build fix1');
    must(sh(hotstack, ['build', '--base', exe, '--depends', out('fix1.livepatch'), '--meta', 'ticket=UX-7', '-o', out('fix2.livepatch'), p('fix2-greeting.c')], { cwd: work, quiet: true }), 'build fix2');
    must(sh(hotstack, ['build', '--base', exe, '--depends', out('fix1.livepatch'), '-o', out('fix3.livepatch'), p('fix3-rounding.c')], { cwd: work, quiet: true }), 'build fix3');
    must(sh(hotstack, ['build', '--base', exe, '--meta', 'ticket=PRICE-1,UX-7', '-o', out('cumulative.livepatch'), p('cumulative.c')], { cwd: work, quiet: true }), 'build cumulative');

    const pid = String(svc.pid);
    step('Apply fix 1 (depends on the service binary itself)');
    must(sh(hotstack, ['--pid', pid, 'load', out('fix1.livepatch')], { cwd: work }), 'load fix1');
    await show(svc);

    step('Apply fix 2 on top of fix 1');
    must(sh(hotstack, ['--pid', pid, 'load', out('fix2.livepatch')], { cwd: work }), 'load fix2');
    await show(svc);
    sh(hotstack, ['--pid', pid, 'list'], { cwd: work });

    step('Try fix 3, built on fix 1 only: refused, fix 2 is the top of the stack');
    if (sh(hotstack, ['--pid', pid, 'load', out('fix3.livepatch')], { cwd: work }) === 0) throw new Error('fix3 should have been refused');
    await show(svc);

    step('Revert the top of the stack (fix 2)');
    must(sh(hotstack, ['--pid', pid, 'revert', 'fix2'], { cwd: work }), 'revert fix2');
    await show(svc);

    step('REPLACE the whole stack with one cumulative fix');
    must(sh(hotstack, ['--pid', pid, 'upload', 'cumulative', out('cumulative.livepatch')], { cwd: work }), 'upload cumulative');
    must(sh(hotstack, ['--pid', pid, 'replace', 'cumulative'], { cwd: work }), 'replace');
    sh(hotstack, ['--pid', pid, 'list'], { cwd: work });
    await show(svc);

    step('Done: the service ran the whole time, never restarted');
  } finally {
    svc?.stop();
    await new Promise((r) => setTimeout(r, 100));
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(`demo failed: ${e instanceof Error ? e.message : String(e)}`);
  process.exitCode = 1;
});

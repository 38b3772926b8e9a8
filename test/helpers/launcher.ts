/**
 * The process launcher: start a built base program and talk to it line by
 * line, for the tests that patch it live.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

export interface BaseProcess {
  pid: number;
  child: ChildProcess;
  /** Sends one command line and resolves with the answer line. */
  ask(cmd: string, timeoutMs?: number): Promise<string>;
  /** Asks the base to quit (`q`), kills it if it does not; idempotent. */
  stop(): Promise<void>;
}

/**
 * Starts the base program and waits for its "ready" line, so a test that
 * then attaches to it finds it idle in its main loop (blocked in read).
 * Answers are matched to questions in order; a question that timed out
 * swallows its late answer so later questions stay aligned.
 */
export async function startBase(path: string, readyTimeoutMs = 10_000): Promise<BaseProcess> {
  const child = spawn(path, [], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (s: string) => { stderr += s; });
  child.stdin!.on('error', () => { /* EPIPE once it exited: reported through 'exit' */ });
  type Waiter = { resolve(line: string): void; reject(e: Error): void; done: boolean };
  const waiters: Waiter[] = [];
  const lines: string[] = [];
  let exited: string | undefined;
  const exitPromise = new Promise<void>((res) => child.once('close', () => res()));

  createInterface({ input: child.stdout! }).on('line', (line) => {
    const w = waiters.shift();
    if (!w) lines.push(line);
    else if (!w.done) { w.done = true; w.resolve(line); }
  });
  const fail = (why: string) => {
    exited = `${path} (pid ${child.pid}) ${why}${stderr.trim() ? '; stderr: ' + stderr.trim() : ''}`;
    for (const w of waiters.splice(0)) if (!w.done) { w.done = true; w.reject(new Error(exited)); }
  };
  child.once('error', (e) => fail(`failed to start: ${e.message}`));
  child.once('exit', (code, signal) => fail(`exited (${signal ?? `status ${code}`})`));

  const nextLine = (timeoutMs: number, what: string): Promise<string> => {
    if (lines.length) return Promise.resolve(lines.shift()!);
    if (exited) return Promise.reject(new Error(exited));
    return new Promise<string>((resolveLine, reject) => {
      const w: Waiter = { done: false, resolve: resolveLine, reject };
      const timer = setTimeout(() => {
        if (!w.done) { w.done = true; reject(new Error(`${path} (pid ${child.pid}): no answer to ${what} within ${timeoutMs} ms`)); }
      }, timeoutMs);
      w.resolve = (l) => { clearTimeout(timer); resolveLine(l); };
      w.reject = (e) => { clearTimeout(timer); reject(e); };
      waiters.push(w);
    });
  };

  const ready = await nextLine(readyTimeoutMs, 'startup').catch((e: Error) => { child.kill('SIGKILL'); throw e; });
  if (ready !== 'ready') {
    child.kill('SIGKILL');
    throw new Error(`${path}: expected "ready", got ${JSON.stringify(ready)}`);
  }
  return {
    pid: child.pid!,
    child,
    ask(cmd, timeoutMs = 10_000) {
      if (exited) return Promise.reject(new Error(exited));
      const answer = nextLine(timeoutMs, JSON.stringify(cmd));
      child.stdin!.write(cmd + '\n');
      return answer;
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return exitPromise;
      child.stdin!.end('q\n');
      const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
      await exitPromise;
      clearTimeout(timer);
    },
  };
}


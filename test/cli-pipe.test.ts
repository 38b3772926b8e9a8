/**
 * Standard output closed by its reader (src/cli/output.ts): `hotstack
 * inspect FILE | head -1` prints no EPIPE stack trace, and hotstack exits
 * with the command's own status (0 here). Run through a real shell pipe.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { HOTSTACK_BIN } from './helpers/live.js';
import { buildAll } from './helpers/toolchain.js';

let files: Record<string, string> = {};
let work = '';

before(() => {
  files = buildAll();
  work = mkdtempSync(join(tmpdir(), 'hotstack-pipe-'));
});

after(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

/**
 * `hotstack ARGS | READER` in bash: hotstack's exit status (PIPESTATUS),
 * its stderr (kept apart from the reader's) and what the reader printed.
 */
function piped(args: string[], reader: string): { status: number; stderr: string; out: string } {
  const errFile = join(work, `stderr-${Math.random().toString(36).slice(2)}`);
  const script = `"$0" "$@" 2>"$HS_ERR" | ${reader}; echo "status=\${PIPESTATUS[0]}"`;
  const r = spawnSync('bash', ['-c', script, process.execPath, HOTSTACK_BIN, ...args], {
    encoding: 'utf8', env: { ...process.env, HS_ERR: errFile }, timeout: 60_000,
  });
  if (r.error) throw r.error;
  const m = /status=(\d+)\n$/.exec(r.stdout);
  assert.ok(m, `no status line:\n${r.stdout}${r.stderr}`);
  return { status: Number(m[1]), stderr: readFileSync(errFile, 'utf8'), out: r.stdout.slice(0, m.index) };
}

describe('a reader that stops early', () => {
  // head -1 reads one line; `true` and a closed stdin read nothing, so the very first write fails with EPIPE.
  for (const [label, reader] of [['head -1', 'head -1'], ['true', 'true'], ['a closed stdin', '(exec 0<&-; sleep 1)']] as const) {
    it(`hotstack inspect FIXTURE | ${label}: no error output, status 0`, () => {
      for (const json of [false, true]) {
        const r = piped(['inspect', ...(json ? ['--json'] : []), files.hello!], reader);
        assert.equal(r.stderr, '', `hotstack inspect${json ? ' --json' : ''} | ${label}: stderr should be empty`);
        assert.equal(r.status, 0, `hotstack inspect${json ? ' --json' : ''} | ${label}: exit status`);
        if (label === 'head -1') assert.equal(r.out.split('\n').length, 2, `head printed one line:\n${r.out}`);
        if (label === 'head -1' && !json) assert.equal(r.out, `${files.hello}\n`, 'the first line names the file');
      }
    });
  }

  it('a failing command keeps its status and message when its stdout reader is gone', () => {
    const r = piped(['inspect', join(work, 'missing.livepatch')], 'true');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^.*missing\.livepatch: invalid payload: Error 2: ENOENT/);
    assert.doesNotMatch(r.stderr, /EPIPE|\n\s+at /);
  });

  it('a real write error (disk full) is reported and fails the command', () => {
    const r = spawnSync(process.execPath, [HOTSTACK_BIN, 'inspect', files.hello!], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    assert.equal(r.status, 0, 'sanity: inspect works');
    const full = spawnSync('bash', ['-c', '"$0" "$1" inspect "$2" >/dev/full', process.execPath, HOTSTACK_BIN, files.hello!], { encoding: 'utf8' });
    assert.equal(full.status, 1, `exit status:\n${full.stderr}`);
    assert.match(full.stderr, /^hotstack: cannot write standard output: ENOSPC: no space left on device/);
    assert.doesNotMatch(full.stderr, /\n\s+at /);
  });
});

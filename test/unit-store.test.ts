/**
 * The state file's text (src/targets/process/store.ts) is built by hand
 * for speed (the engine's JSON quoted once per state, not once per copy):
 * it must stay exactly what JSON.stringify of the file's shape gives, which
 * older hotstacks wrote and every reader parses. Checked on the files a
 * ProcessStore writes (a state saved, a mapping intent, a runtime page),
 * read back and re-serialized.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { emptyState } from '../src/core/state.js';
import { ProcessStore, stateFileOf } from '../src/targets/process/store.js';
import { processIdentity } from '../src/targets/process/lock.js';

let work = '';
let saved: string | undefined;

before(() => {
  work = mkdtempSync(join(tmpdir(), 'hotstack-store-'));
  saved = process.env.HOTSTACK_STATE_DIR;
  process.env.HOTSTACK_STATE_DIR = join(work, 'state');
});

after(() => {
  if (saved === undefined) delete process.env.HOTSTACK_STATE_DIR;
  else process.env.HOTSTACK_STATE_DIR = saved;
  rmSync(work, { recursive: true, force: true });
});

test('state file text: byte for byte JSON.stringify of its shape, with and without intents and a runtime page; read back the same', () => {
  const id = processIdentity(process.pid);
  const file = stateFileOf(id);
  const store = new ProcessStore(id);
  const canonical = (): string => {
    const text = readFileSync(file, 'utf8');
    assert.equal(JSON.stringify(JSON.parse(text)), text, 'what JSON.stringify gives, key order included');
    return text;
  };
  const s = emptyState();
  store.save(s);
  const first = JSON.parse(canonical()) as { key: string; seq: string; engine: string; runtime: Record<string, unknown> };
  assert.deepEqual(Object.keys(first), ['key', 'seq', 'engine', 'runtime']);
  assert.equal(first.key, id.key);
  assert.equal(first.seq, '1');
  assert.deepEqual(first.runtime, {});
  // A state with quotes, backslashes and non-ASCII in it, and an intent and a runtime page.
  s.payloads.push({ name: 'q"uo\\te \u00e9\u2028', state: 'CHECKED' } as unknown as (typeof s.payloads)[number]);
  store.save(s);
  store.runtime.trap = 0x7f0000001000n;
  store.runtime.intents = [{ addr: 0x7f0000002000n, size: 8192, perms: 'r-xp' }];
  store.saveRuntime();
  const second = JSON.parse(canonical()) as typeof first;
  assert.equal(second.seq, '2');
  assert.deepEqual(second.runtime, { trap: String(0x7f0000001000n), intents: [{ addr: String(0x7f0000002000n), size: 8192, perms: 'r-xp' }] });
  assert.match(second.engine, /q\\"uo\\\\te \u00e9\u2028/);
  // A new store reads it back: the same state and runtime.
  const again = new ProcessStore(id);
  const back = again.load()!;
  assert.equal(back.payloads[0]!.name, 'q"uo\\te \u00e9\u2028');
  assert.equal(again.runtime.trap, 0x7f0000001000n);
  assert.deepEqual(again.runtime.intents, [{ addr: 0x7f0000002000n, size: 8192, perms: 'r-xp' }]);
  // The copy kept in the process carries no intent, and is canonical too.
  const mirror = again.mirrorText();
  assert.equal(JSON.stringify(JSON.parse(mirror)), mirror);
  assert.deepEqual((JSON.parse(mirror) as typeof first).runtime, { trap: String(0x7f0000001000n) });
});

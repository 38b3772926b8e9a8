/**
 * Fault injection for crash-safety tests: HOTSTACK_FAULT=after-write:N
 * makes the tool SIGKILL itself right after its N-th code write of an
 * action, the worst instant for a half-applied payload; after-upload,
 * right after an upload is complete in memory (before the save that a
 * batch puts off, see Engine.together). Unset, it costs one comparison.
 *
 * Like every test switch, it only works with HOTSTACK_TEST_MODE=1 as well:
 * an environment variable left over (or planted, e.g. through sudo's
 * env_keep) must not be able to kill a production run halfway.
 */

/** True when the test switches (HOTSTACK_FAULT, HOTSTACK_TEST_DIE_AT) are honoured. */
export function testMode(): boolean {
  return process.env.HOTSTACK_TEST_MODE === '1';
}

const spec = testMode() ? process.env.HOTSTACK_FAULT ?? '' : '';
const m = /^after-write:(\d+)$/.exec(spec);
const killAfter = m ? Number(m[1]) : 0;
const killAfterUpload = spec === 'after-upload';
let writes = 0;

/** An upload is complete in the engine's memory; die here if the fault says so. */
export function uploadFaultPoint(): void {
  if (killAfterUpload) process.kill(process.pid, 'SIGKILL');
}

/** Count one code write; die here if the fault says so. */
export function faultPoint(): void {
  if (!killAfter) return;
  writes++;
  if (writes >= killAfter) process.kill(process.pid, 'SIGKILL');
}

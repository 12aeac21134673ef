/**
 * Loaded before every test file (`node --import`, see package.json): the file's processes, and the `graft`
 * commands they start, cache under a temporary GRAFT_CACHE removed at exit — never in ~/.cache/graft.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isMainThread } from 'node:worker_threads';

if (isMainThread && !process.env.GRAFT_TEST_CACHE_OWNER) {
  const dir = mkdtempSync(join(tmpdir(), 'graft-test-cache-'));
  process.env.GRAFT_CACHE = dir;
  process.env.GRAFT_TEST_CACHE_OWNER = String(process.pid);
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
}

/** Where the tests find things: the repository root (from dist/test/support) and the real data and models beside it. */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(fileURLToPath(new URL('../../..', import.meta.url)));
export const SHARED = resolve(ROOT, '../shared');

/**
 * Fails loudly (at load time, so the whole file reports it) when real data or models the tests need are missing:
 * a test that needs ../shared never skips. Returns its arguments.
 */
export function requireShared<T extends string[]>(...paths: T): T {
  const missing = paths.filter((p) => !existsSync(p));
  if (missing.length) throw new Error(`missing test data or model (../shared beside the checkout, see its README.md): ${missing.join(', ')}`);
  return paths;
}

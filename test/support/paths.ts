/** Where the tests find things: the repository root (from dist/test/support) and the real data and models beside it. */
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(fileURLToPath(new URL('../../..', import.meta.url)));
export const SHARED = resolve(ROOT, '../shared');

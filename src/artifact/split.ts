/**
 * Which samples a model was trained and validated on, so that `graft eval` can leave them out: the artifact's
 * `split.json` holds a content digest of every training and validation sample (the first 16 hex digits of the
 * SHA-256 of an image's bytes or of a text's UTF-8), never the samples themselves. Content, not paths: a copied
 * or renamed training image is still recognised.
 */
import { createHash } from 'node:crypto';
import { GraftError } from '../errors.js';
import type { Sample } from '../data/dataset.js';
import { mapLimit } from '../util/async.js';
import { readRegularFile } from '../util/fs.js';

export const SPLIT_FILE = 'split.json';

export interface SplitRecord {
  version: 1;
  digest: 'sha256-64';
  train: string[];
  val: string[];
}

export const sampleDigest = (content: Uint8Array | string): string => createHash('sha256').update(content).digest('hex').slice(0, 16);

/** Each sample's digest (its text, or its file's bytes); undefined where the file cannot be read. */
export async function digestSamples(samples: readonly Sample[]): Promise<Array<string | undefined>> {
  return mapLimit(samples, 16, async (s) => {
    if (s.text !== undefined) return sampleDigest(s.text);
    return readRegularFile(s.file).then(sampleDigest, () => undefined);
  });
}

export function splitRecord(train: Array<string | undefined>, val: Array<string | undefined>): string {
  const list = (xs: Array<string | undefined>) => [...new Set(xs.filter((x): x is string => x !== undefined))].sort();
  const record: SplitRecord = { version: 1, digest: 'sha256-64', train: list(train), val: list(val) };
  return JSON.stringify(record) + '\n';
}

export function parseSplitRecord(bytes: Uint8Array, file: string): SplitRecord {
  let r: SplitRecord;
  try {
    r = JSON.parse(new TextDecoder().decode(bytes)) as SplitRecord;
  } catch (e) {
    throw new GraftError('ARTIFACT', `${file}: not JSON (${(e as Error).message})`, { file }, { cause: e });
  }
  const hex = (xs: unknown) => Array.isArray(xs) && xs.every((x) => typeof x === 'string' && /^[0-9a-f]{16}$/.test(x));
  if (r?.version !== 1 || r.digest !== 'sha256-64' || !hex(r.train) || !hex(r.val)) throw new GraftError('ARTIFACT', `${file}: not a split record (version 1, sha256-64 digests)`, { file });
  return r;
}

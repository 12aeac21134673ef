/**
 * On-disk feature cache. One folder per extractor identity (backbone bytes + cut + the pipeline's key, which
 * carries its version), one file per sample content hash: `<root>/features/<key>/<hh>/<sha256>.f32` (raw
 * float32 LE) or `.skip` (the reason a sample was unusable, so a broken file is not decoded again). Writes
 * are atomic (a uniquely named temp file + rename).
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { threadId } from 'node:worker_threads';
import { writeFileAtomic } from '../util/fs.js';

/** `$GRAFT_CACHE`, else `~/.cache/graft`. */
export function defaultCacheDir(): string {
  return process.env.GRAFT_CACHE || join(homedir(), '.cache', 'graft');
}

export function contentHash(bytes: Uint8Array | string): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** `features`: `values` holds the entry's floats past the target's `dim` (its `extra` values), or the whole ragged entry. */
export type CacheEntry = { kind: 'features'; values?: Float32Array } | { kind: 'skip'; reason: string } | { kind: 'miss' };

/** Unique temp names: several writers (processes, worker threads, cache objects) may write one entry at once. */
const writer = `${process.pid}.${threadId}.${randomBytes(3).toString('hex')}`;
let writes = 0;

export class FeatureCache {
  readonly dir: string;
  private readonly made = new Set<string>();

  /**
   * `dim` floats per entry plus `extra` (a text's token count); with `ragged`, entries are any whole number
   * of rows of `dim` + `extra` floats (a token sequence's activations, then its token ids).
   */
  constructor(root: string, key: string, readonly dim: number, readonly options: { extra?: number; ragged?: boolean } = {}) {
    this.dir = join(root, 'features', key);
  }

  /** Records what this folder holds, for people browsing the cache. */
  async describe(meta: Record<string, unknown>): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    await writeFileAtomic(join(this.dir, 'meta.json'), JSON.stringify({ ...meta, dim: this.dim, ...(this.options.ragged ? { ragged: true } : {}) }, null, 2));
  }

  private path(hash: string, ext: 'f32' | 'skip'): string {
    return join(this.dir, hash.slice(0, 2), `${hash}.${ext}`);
  }

  /**
   * Reads cached features for `hash`: the first `dim` floats into `target` at `offset` (with `extra` floats
   * returned in `values`); a ragged entry is returned whole in `values` (target unused).
   */
  async read(hash: string, target?: Float32Array, offset = 0): Promise<CacheEntry> {
    try {
      const buf = await readFile(this.path(hash, 'f32'));
      const n = buf.byteLength / 4;
      const extra = this.options.extra ?? 0;
      if (this.options.ragged ? Number.isInteger(n) && n > 0 && n % (this.dim + extra) === 0 : n === this.dim + extra) {
        if (this.options.ragged) return { kind: 'features', values: new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength)) };
        const all = new Float32Array(buf.buffer, buf.byteOffset, n);
        target?.set(all.subarray(0, this.dim), offset);
        return extra ? { kind: 'features', values: all.slice(this.dim) } : { kind: 'features' };
      }
      // A foreign or damaged entry: treat as a miss, it will be rewritten.
    } catch {
      // not cached as features
    }
    try {
      return { kind: 'skip', reason: await readFile(this.path(hash, 'skip'), 'utf8') };
    } catch {
      return { kind: 'miss' };
    }
  }

  /**
   * Writes one batch of entries with synchronous calls: the extraction loop has nothing else to do meanwhile,
   * and a round trip through the thread pool per file cost more CPU than the writes themselves.
   */
  writeBatch(entries: ReadonlyArray<{ hash: string; features: Float32Array }>): void {
    for (const { hash, features } of entries) {
      const sub = hash.slice(0, 2);
      if (!this.made.has(sub)) {
        mkdirSync(join(this.dir, sub), { recursive: true });
        this.made.add(sub);
      }
      const path = this.path(hash, 'f32');
      const tmp = `${path}.${writer}.${writes++}.tmp`;
      writeFileSync(tmp, new Uint8Array(features.buffer, features.byteOffset, features.byteLength));
      renameSync(tmp, path);
    }
  }

  async writeSkip(hash: string, reason: string): Promise<void> {
    await this.ensure(hash);
    await writeFileAtomic(this.path(hash, 'skip'), reason);
  }

  private async ensure(hash: string): Promise<void> {
    const sub = hash.slice(0, 2);
    if (this.made.has(sub)) return;
    await mkdir(join(this.dir, sub), { recursive: true });
    this.made.add(sub);
  }
}

/**
 * On-disk feature cache. One folder per extractor identity (backbone bytes + cut + preprocessing), one file
 * per image content hash: `<root>/features/<key>/<hh>/<sha256>.f32` (raw float32 LE) or `.skip` (the reason
 * an image was unusable, so a broken file is not decoded again). Writes are atomic (temp file + rename).
 */
import { createHash } from 'node:crypto';
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { writeFileAtomic } from '../util/fs.js';

/** `$GRAFT_CACHE`, else `~/.cache/graft`. */
export function defaultCacheDir(): string {
  return process.env.GRAFT_CACHE || join(homedir(), '.cache', 'graft');
}

export function contentHash(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

export type CacheEntry = { kind: 'features' } | { kind: 'skip'; reason: string } | { kind: 'miss' };

export class FeatureCache {
  readonly dir: string;
  private readonly made = new Set<string>();

  constructor(root: string, key: string, readonly dim: number) {
    this.dir = join(root, 'features', key);
  }

  /** Records what this folder holds, for people browsing the cache. */
  async describe(meta: Record<string, unknown>): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    await writeFileAtomic(join(this.dir, 'meta.json'), JSON.stringify({ ...meta, dim: this.dim }, null, 2));
  }

  private path(hash: string, ext: 'f32' | 'skip'): string {
    return join(this.dir, hash.slice(0, 2), `${hash}.${ext}`);
  }

  /** Reads cached features for `hash` into `target` at `offset`. */
  async read(hash: string, target: Float32Array, offset: number): Promise<CacheEntry> {
    try {
      const buf = await readFile(this.path(hash, 'f32'));
      if (buf.byteLength === this.dim * 4) {
        const src = new Float32Array(buf.buffer, buf.byteOffset, this.dim);
        target.set(src, offset);
        return { kind: 'features' };
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
      const tmp = `${path}.${process.pid}.tmp`;
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

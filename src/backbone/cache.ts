/**
 * On-disk feature cache. One folder per extractor identity (backbone bytes + cut + the pipeline's key, which
 * carries its version): `<root>/features/<key>/meta.json` says what it holds, and `packs/<writer>.pack` files
 * hold the entries, keyed by each sample's content hash (sha256).
 *
 * A pack is append-only and has exactly one writer (one cache object: its name carries the pid, the thread id
 * and random bytes, and it is created exclusively), so writers never share a file and need no locks. A pack is
 * a sequence of records, each a fixed header (see HEADER) then its payload: float32 LE features, or the UTF-8
 * reason a sample was unusable (a skip record, so that a broken file is not decoded again). A batch of records
 * goes to disk in one write call: creating a file per entry cost ~0.8 ms of kernel time each, more than
 * inferring a text.
 *
 * Crash safety: the first use of a cache object lists the packs and scans their headers (never payloads) into
 * an in-memory index, hash → where its latest record lies. A header that is cut short, fails its own CRC or
 * announces a payload running past the end of the file (a writer killed mid-write) ends that pack's scan; the
 * records before it stay valid. A payload is checked against its CRC32 when it is read, and a damaged one (or one
 * whose length does not fit `dim`/`extra`/`ragged`) is a miss, so it is recomputed and written again. Later
 * records win (packs are scanned oldest first by mtime). Entries that other processes write after the scan are
 * not seen by this object: a recompute, harmless. A miss therefore costs no system call, and a hit one pread.
 *
 * Caches written by earlier versions (one file per entry, `<hh>/<sha256>.f32` or `.skip`) are still read, for
 * hashes that no pack holds; nothing is written in that layout any more.
 */
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, ftruncateSync, fstatSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync, writeSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { threadId } from 'node:worker_threads';
import { crc32 } from 'node:zlib';
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

/**
 * A record header, little endian: magic "GFP1" (4 bytes), kind (1 byte: 1 features, 2 skip), 3 zero bytes, the
 * sha256 (32 bytes), the payload's byte length (u32), the payload's CRC32 (u32), then the CRC32 of the 48 bytes
 * before it (u32), so that a torn or foreign header is never taken for a record.
 */
export const HEADER = 52;
const MAGIC = 0x31504647; // "GFP1" read as u32 LE
export const FEATURES_RECORD = 1;
export const SKIP_RECORD = 2;
/** Read descriptors kept open at once (the oldest is closed past this; the writer's own is kept apart). */
const MAX_OPEN = 64;
/** Bytes read at once while scanning packs of small records. */
const SCAN_CHUNK = 1 << 18;

export interface PackRecord {
  kind: typeof FEATURES_RECORD | typeof SKIP_RECORD;
  hash: string;
  /** The payload's offset in the pack. */
  offset: number;
  length: number;
  crc: number;
}

/** One record, header and payload, for `hash` (64 hex digits). */
export function encodeRecord(kind: PackRecord['kind'], hash: string, payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(HEADER + payload.byteLength);
  putRecord(out, 0, kind, hash, payload, crc32(payload));
  return out;
}

function putRecord(out: Buffer, at: number, kind: PackRecord['kind'], hash: string, payload: Uint8Array, crc: number): number {
  if (!/^[0-9a-f]{64}$/.test(hash)) throw new Error(`not a sha256 hex digest: ${hash}`);
  out.writeUInt32LE(MAGIC, at);
  out.writeUInt8(kind, at + 4);
  out.fill(0, at + 5, at + 8);
  out.write(hash, at + 8, 32, 'hex');
  out.writeUInt32LE(payload.byteLength, at + 40);
  out.writeUInt32LE(crc, at + 44);
  out.writeUInt32LE(crc32(out.subarray(at, at + 48)), at + 48);
  out.set(payload, at + HEADER);
  return at + HEADER + payload.byteLength;
}

/** The header at `at` of `buf`, or undefined when it is not a whole, intact record header. */
function parseHeader(buf: Uint8Array, at: number, fileOffset: number): PackRecord | undefined {
  if (at + HEADER > buf.byteLength) return undefined;
  const b = Buffer.from(buf.buffer, buf.byteOffset + at, HEADER);
  if (b.readUInt32LE(0) !== MAGIC || b.readUInt32LE(48) !== crc32(b.subarray(0, 48))) return undefined;
  const kind = b.readUInt8(4);
  if (kind !== FEATURES_RECORD && kind !== SKIP_RECORD) return undefined;
  return { kind, hash: b.toString('hex', 8, 40), offset: fileOffset + HEADER, length: b.readUInt32LE(40), crc: b.readUInt32LE(44) };
}

/**
 * Every intact record of an open pack, in order, reading headers only; stops (never throws on content) at the
 * first torn or damaged header, or at a payload that runs past the end of the file.
 */
export function scanPack(fd: number): PackRecord[] {
  const size = fstatSync(fd).size;
  const records: PackRecord[] = [];
  let chunk = Buffer.alloc(0);
  let chunkAt = 0; // file offset of chunk[0]
  let pos = 0;
  let last = 0;
  while (pos + HEADER <= size) {
    if (pos < chunkAt || pos + HEADER > chunkAt + chunk.byteLength) {
      // Small records: read many at once; large ones (token states): only the header, not the payloads.
      const want = Math.min(size - pos, last > 4096 ? HEADER : SCAN_CHUNK);
      chunk = Buffer.allocUnsafe(want);
      const got = readSync(fd, chunk, 0, want, pos);
      chunk = chunk.subarray(0, got);
      chunkAt = pos;
    }
    const r = parseHeader(chunk, pos - chunkAt, pos);
    if (!r || r.offset + r.length > size) break;
    records.push(r);
    last = r.length;
    pos = r.offset + r.length;
  }
  return records;
}

/** Every intact record of every pack under a cache key's folder (`FeatureCache.dir`), pack by pack in name order. */
export function listRecords(dir: string): Array<PackRecord & { pack: string }> {
  let names: string[];
  try {
    names = readdirSync(join(dir, 'packs')).filter((n) => n.endsWith('.pack')).sort();
  } catch {
    return [];
  }
  return names.flatMap((name) => {
    const pack = join(dir, 'packs', name);
    let fd: number | undefined;
    try {
      fd = openSync(pack, 'r');
      return scanPack(fd).map((r) => ({ ...r, pack }));
    } catch {
      return []; // unreadable: no entries
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  });
}

interface Loc {
  pack: number;
  offset: number;
  length: number;
  crc: number;
  kind: PackRecord['kind'];
}

interface State {
  index: Map<string, Loc>;
  /** Pack paths; a Loc's `pack` is an index here. */
  packs: string[];
  /** Old-layout `<hh>/` folders exist: a hash not in the index may still be there. */
  legacy: boolean;
}

const MISS: CacheEntry = { kind: 'miss' };

export class FeatureCache {
  readonly dir: string;
  private state: State | undefined;
  /** Open read descriptors by pack, in the order they were opened (the first opened is closed first). */
  private readonly fds = new Map<number, number>();
  private writer: { pack: number; fd: number; pos: number } | undefined;
  /** Reused for fixed-size entries, which are copied out at once. */
  private scratch = new Uint8Array(0);

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

  /**
   * Reads cached features for `hash`: the first `dim` floats into `target` at `offset` (with `extra` floats
   * returned in `values`); a ragged entry is returned whole in `values` (target unused).
   */
  async read(hash: string, target?: Float32Array, offset = 0): Promise<CacheEntry> {
    const state = this.open();
    const loc = state.index.get(hash);
    if (loc) {
      const payload = this.payload(state, loc);
      if (payload) {
        if (loc.kind === SKIP_RECORD) return { kind: 'skip', reason: Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).toString('utf8') };
        const hit = this.decode(payload, target, offset);
        if (hit) return hit;
      }
      // Damaged: forget it, so that it is recomputed (and the new record wins).
      state.index.delete(hash);
    }
    return state.legacy ? this.readLegacy(hash, target, offset) : MISS;
  }

  /** Appends one batch of entries to this object's pack in one synchronous write (the extraction loop has nothing else to do meanwhile). */
  writeBatch(entries: ReadonlyArray<{ hash: string; features: Float32Array }>): void {
    if (entries.length === 0) return;
    this.append(entries.map((e) => ({ kind: FEATURES_RECORD, hash: e.hash, payload: new Uint8Array(e.features.buffer, e.features.byteOffset, e.features.byteLength) })));
  }

  async writeSkip(hash: string, reason: string): Promise<void> {
    this.append([{ kind: SKIP_RECORD, hash, payload: Buffer.from(reason, 'utf8') }]);
  }

  /** Closes the open packs; a later call opens (and scans) them again. */
  close(): void {
    for (const fd of this.fds.values()) closeQuietly(fd);
    this.fds.clear();
    if (this.writer) closeQuietly(this.writer.fd);
    this.writer = undefined;
    this.state = undefined;
  }

  /** Lists the key's folder and packs and indexes their records, once. */
  private open(): State {
    if (this.state) return this.state;
    let legacy = false;
    try {
      legacy = readdirSync(this.dir, { withFileTypes: true }).some((d) => d.isDirectory() && /^[0-9a-f]{2}$/.test(d.name));
    } catch {
      // no folder yet
    }
    const found: Array<{ path: string; fd: number; mtime: number }> = [];
    let names: string[] = [];
    try {
      names = readdirSync(join(this.dir, 'packs')).filter((n) => n.endsWith('.pack'));
    } catch {
      // no packs yet
    }
    for (const name of names.sort()) {
      const path = join(this.dir, 'packs', name);
      try {
        const fd = openSync(path, 'r');
        found.push({ path, fd, mtime: fstatSync(fd).mtimeMs });
      } catch {
        // unreadable or gone: its entries are misses
      }
    }
    // Oldest first, so that the most recently written records win.
    found.sort((a, b) => a.mtime - b.mtime);
    const state: State = { index: new Map(), packs: [], legacy };
    for (const { path, fd } of found) {
      const pack = state.packs.push(path) - 1;
      try {
        for (const r of scanPack(fd)) state.index.set(r.hash, { pack, offset: r.offset, length: r.length, crc: r.crc, kind: r.kind });
      } catch {
        // a read error: what was indexed before it stays
      }
      this.keepOpen(pack, fd);
    }
    this.state = state;
    return state;
  }

  private keepOpen(pack: number, fd: number): void {
    this.fds.set(pack, fd);
    if (this.fds.size > MAX_OPEN) {
      const [oldest, oldFd] = this.fds.entries().next().value as [number, number];
      this.fds.delete(oldest);
      closeQuietly(oldFd);
    }
  }

  private fd(state: State, pack: number): number {
    if (this.writer?.pack === pack) return this.writer.fd;
    const fd = this.fds.get(pack);
    if (fd !== undefined) return fd;
    const opened = openSync(state.packs[pack]!, 'r');
    this.keepOpen(pack, opened);
    return opened;
  }

  /** The record's payload if it reads whole and matches its CRC. Fixed-size entries land in a reused buffer. */
  private payload(state: State, loc: Loc): Uint8Array | undefined {
    try {
      const fd = this.fd(state, loc.pack);
      let buf: Uint8Array;
      if (loc.kind === FEATURES_RECORD && !this.options.ragged) {
        if (this.scratch.byteLength < loc.length) this.scratch = new Uint8Array(Math.max(loc.length, 2 * this.scratch.byteLength));
        buf = this.scratch.subarray(0, loc.length);
      } else buf = new Uint8Array(loc.length);
      if (readSync(fd, buf, 0, loc.length, loc.offset) !== loc.length) return undefined;
      return crc32(buf) === loc.crc ? buf : undefined;
    } catch {
      return undefined;
    }
  }

  /** A features entry from its bytes (4-byte aligned), or undefined when its length does not fit this cache's shape. */
  private decode(bytes: Uint8Array, target: Float32Array | undefined, offset: number): CacheEntry | undefined {
    const n = bytes.byteLength / 4;
    const extra = this.options.extra ?? 0;
    if (this.options.ragged ? !(Number.isInteger(n) && n > 0 && n % (this.dim + extra) === 0) : n !== this.dim + extra) return undefined;
    if (this.options.ragged) {
      const own = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? bytes.buffer : bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
      return { kind: 'features', values: new Float32Array(own) };
    }
    const all = new Float32Array(bytes.buffer, bytes.byteOffset, n);
    target?.set(all.subarray(0, this.dim), offset);
    return extra ? { kind: 'features', values: all.slice(this.dim) } : { kind: 'features' };
  }

  /** An entry of the old one-file-per-entry layout. */
  private async readLegacy(hash: string, target: Float32Array | undefined, offset: number): Promise<CacheEntry> {
    const path = (ext: string) => join(this.dir, hash.slice(0, 2), `${hash}.${ext}`);
    try {
      const buf = await readFile(path('f32'));
      // A Buffer from readFile may sit at any offset of a shared pool: copy to an aligned one.
      const hit = this.decode(buf.byteOffset % 4 === 0 ? buf : new Uint8Array(buf), target, offset);
      if (hit) return hit;
      // A foreign or damaged entry: a miss, recomputed into a pack.
    } catch {
      // not cached as features
    }
    try {
      return { kind: 'skip', reason: await readFile(path('skip'), 'utf8') };
    } catch {
      return MISS;
    }
  }

  /** Appends records to this object's own pack (created on first use) in one write, and indexes them. */
  private append(records: ReadonlyArray<{ kind: PackRecord['kind']; hash: string; payload: Uint8Array }>): void {
    const state = this.open();
    const w = this.writer ?? this.createPack(state);
    const out = Buffer.allocUnsafe(records.reduce((s, r) => s + HEADER + r.payload.byteLength, 0));
    const locs: Loc[] = [];
    let at = 0;
    for (const r of records) {
      const crc = crc32(r.payload);
      locs.push({ pack: w.pack, offset: w.pos + at + HEADER, length: r.payload.byteLength, crc, kind: r.kind });
      at = putRecord(out, at, r.kind, r.hash, r.payload, crc);
    }
    let done = 0;
    try {
      while (done < out.byteLength) done += writeSync(w.fd, out, done, out.byteLength - done, w.pos + done);
    } catch (e) {
      // Leave no torn record behind ours: cut the pack back, or give it up (the next write starts a new one).
      try {
        ftruncateSync(w.fd, w.pos);
      } catch {
        this.writer = undefined;
        closeQuietly(w.fd);
      }
      throw e;
    }
    w.pos += out.byteLength;
    records.forEach((r, i) => state.index.set(r.hash, locs[i]!));
  }

  private createPack(state: State): NonNullable<FeatureCache['writer']> {
    const dir = join(this.dir, 'packs');
    mkdirSync(dir, { recursive: true });
    for (;;) {
      const path = join(dir, `${process.pid}.${threadId}.${randomBytes(6).toString('hex')}.pack`);
      let fd: number;
      try {
        fd = openSync(path, 'wx+');
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') continue;
        throw e;
      }
      this.writer = { pack: state.packs.push(path) - 1, fd, pos: 0 };
      return this.writer;
    }
  }
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // already closed
  }
}

// ------------------------------------------------------------------------------------------------- housekeeping

/** One extractor identity's folder under `<root>/features`, as `graft cache ls` shows it. */
export interface CacheFolder {
  key: string;
  dir: string;
  bytes: number;
  /** When an extractor last opened it (meta.json is rewritten on each use), else its newest file. */
  lastUsed: Date;
  /** What meta.json says it holds (backbone, pipeline config), if readable. */
  meta?: { backbone?: { name?: string; file?: string }; dim?: number; ragged?: boolean };
}

function folderStats(dir: string): { bytes: number; newest: number } {
  let bytes = 0;
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) {
      const s = folderStats(p);
      bytes += s.bytes;
      newest = Math.max(newest, s.newest);
    } else if (e.isFile()) {
      const s = statSync(p);
      bytes += s.size;
      newest = Math.max(newest, s.mtimeMs);
    }
  }
  return { bytes, newest };
}

/** The feature folders under `root`, least recently used first. */
export function listCacheFolders(root: string): CacheFolder[] {
  const features = join(root, 'features');
  let names: string[];
  try {
    names = readdirSync(features, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
  } catch {
    return [];
  }
  const out: CacheFolder[] = [];
  for (const key of names) {
    const dir = join(features, key);
    const { bytes, newest } = folderStats(dir);
    let meta: CacheFolder['meta'];
    let used = newest;
    try {
      meta = JSON.parse(readFileSync(join(dir, 'meta.json'), 'utf8')) as CacheFolder['meta'];
      used = Math.max(statSync(join(dir, 'meta.json')).mtimeMs, 0);
    } catch {
      // no or damaged meta.json: the folder's newest file dates it
    }
    out.push({ key, dir, bytes, lastUsed: new Date(used), ...(meta ? { meta } : {}) });
  }
  return out.sort((a, b) => a.lastUsed.getTime() - b.lastUsed.getTime() || a.key.localeCompare(b.key));
}

export interface PrunePolicy {
  /** Remove least recently used folders until the rest total at most this many bytes. */
  maxBytes?: number;
  /** Remove folders not used for this many milliseconds. */
  olderThanMs?: number;
  /** Folders never removed (the ones in use). */
  keep?: ReadonlySet<string>;
  /** Never remove a folder used at or after this time (ms since the epoch): the ones a run just opened. */
  usedSince?: number;
  dryRun?: boolean;
  now?: number;
}

/**
 * Evicts feature folders by the policy, least recently used first; returns those removed (or, dry, that would
 * be) and the bytes left.
 */
export function pruneCache(root: string, policy: PrunePolicy): { removed: CacheFolder[]; remainingBytes: number } {
  const folders = listCacheFolders(root);
  let total = folders.reduce((a, f) => a + f.bytes, 0);
  const now = policy.now ?? Date.now();
  const removed: CacheFolder[] = [];
  for (const f of folders) {
    if (policy.keep?.has(f.key) || (policy.usedSince !== undefined && f.lastUsed.getTime() >= policy.usedSince)) continue;
    const stale = policy.olderThanMs !== undefined && now - f.lastUsed.getTime() > policy.olderThanMs;
    const over = policy.maxBytes !== undefined && total > policy.maxBytes;
    if (!stale && !over) continue;
    if (!policy.dryRun) rmSync(f.dir, { recursive: true, force: true });
    total -= f.bytes;
    removed.push(f);
  }
  return { removed, remainingBytes: total };
}

/** Parses a size such as `500M`, `2G`, `1.5GB` or a byte count. */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$/i.exec(text);
  if (!m) throw new Error(`expected a size such as 500M or 2G, got "${text}"`);
  const scale = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  return Math.round(Number(m[1]) * scale);
}

/**
 * The extraction path: read → hash → cache lookup → decode/resize/normalise (worker pool) → infer (worker)
 * → cache write. Batches live in a few reused shared buffers, so memory does not grow with the number of
 * images, and decoding of the next batches overlaps inference of the current one.
 */
import { readFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { Skipped } from '../data/dataset.js';
import { GraftError } from '../errors.js';
import { inputShape } from '../preprocess/config.js';
import { ImagePool, sharedFloat32 } from '../preprocess/pool.js';
import { FEATURES, type Backbone } from './backbone.js';
import { contentHash, defaultCacheDir, FeatureCache } from './cache.js';
import type { InferReply, InferWorkerData } from './infer-worker.js';

export interface ExtractProgress {
  done: number;
  total: number;
  cached: number;
  skipped: number;
}

export interface ExtractOptions {
  /** Cache root (default `$GRAFT_CACHE` or `~/.cache/graft`); `false` disables the cache. */
  cacheDir?: string | false;
  batchSize?: number;
  /** Image decoding threads (default: the number of cores). */
  decodeThreads?: number;
  /** ONNX Runtime intra-op threads (default: the number of cores). */
  inferThreads?: number;
  /** Let ONNX Runtime's idle threads spin-wait (default false: decoding needs those cores). */
  spin?: boolean;
}

export interface ExtractResult {
  /** Row i holds the features of files[i] (zeros where valid[i] is 0). */
  features: Float32Array;
  dim: number;
  valid: Uint8Array;
  skipped: Skipped[];
  /** Rows read from the cache. */
  cached: number;
  /** Rows computed by the backbone in this call. */
  extracted: number;
  seconds: number;
}

/** Runs the cut backbone in a worker thread. */
class InferenceWorker {
  private readonly worker: Worker;
  private readonly ready: Promise<void>;
  private readonly waiting = new Map<number, { resolve: (o: Float32Array) => void; reject: (e: Error) => void }>();
  private readonly inflight = new Set<Promise<Float32Array>>();
  private nextId = 0;

  constructor(data: InferWorkerData) {
    this.worker = new Worker(new URL('./infer-worker.js', import.meta.url), { workerData: data });
    this.ready = new Promise((resolve, reject) => {
      const onMessage = (m: { ready?: boolean }) => {
        if (m.ready) {
          this.worker.off('error', reject);
          resolve();
        }
      };
      this.worker.once('message', onMessage);
      this.worker.once('error', reject);
      this.worker.once('exit', (code) => reject(new GraftError('MODEL', `the inference worker exited before it was ready (code ${code})`)));
    });
    // Awaited by run() and close(); a failed start must not be an unhandled rejection meanwhile.
    this.ready.catch(() => {});
    this.worker.on('message', (m: InferReply | { ready: true }) => {
      if (!('id' in m)) return;
      const w = this.waiting.get(m.id);
      this.waiting.delete(m.id);
      if ('error' in m) w?.reject(new GraftError('MODEL', `backbone inference failed: ${m.error}`));
      else w?.resolve(m.output);
    });
    this.worker.on('error', (e) => {
      for (const w of this.waiting.values()) w.reject(e);
      this.waiting.clear();
    });
  }

  async run(input: Float32Array, n: number): Promise<Float32Array> {
    await this.ready;
    const id = this.nextId++;
    const output = new Promise<Float32Array>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.worker.postMessage({ id, input, n });
    });
    const settled = () => this.inflight.delete(output);
    this.inflight.add(output);
    output.then(settled, settled);
    return output;
  }

  async close(): Promise<void> {
    // Terminating the worker while ONNX Runtime creates its session or runs a batch aborts the whole process
    // ("terminate called after throwing an instance of 'Napi::Error'"), e.g. after a run served from the cache.
    await this.ready.catch(() => {});
    await Promise.allSettled(this.inflight);
    await this.worker.terminate();
  }
}

interface Slot {
  input: Float32Array;
  rows: number[];
  hashes: string[];
  loads: Promise<{ ok: true } | { ok: false; reason: string }>[];
  /** Resolves when the slot's batch has been inferred and its buffer can be refilled. */
  busy: Promise<void>;
}

export class FeatureExtractor {
  private readonly pool: ImagePool;
  private readonly infer: InferenceWorker;
  private readonly cache: FeatureCache | undefined;
  private readonly batchSize: number;
  private readonly stride: number;
  private described = false;

  constructor(readonly backbone: Backbone, options: ExtractOptions = {}) {
    const cores = availableParallelism();
    this.batchSize = options.batchSize ?? 32;
    const shape = inputShape(backbone.config, 1).slice(1);
    this.stride = shape.reduce((a, b) => a * b, 1);
    this.pool = new ImagePool(backbone.config, { threads: options.decodeThreads ?? cores });
    this.infer = new InferenceWorker({
      model: backbone.featureModelBytes,
      inputName: backbone.config.inputName,
      outputName: FEATURES,
      itemShape: shape,
      maxBatch: this.batchSize,
      threads: options.inferThreads ?? cores,
      spin: options.spin ?? false,
    });
    const root = options.cacheDir === undefined ? defaultCacheDir() : options.cacheDir;
    this.cache = root === false ? undefined : new FeatureCache(root, backbone.key, backbone.config.featureDim);
  }

  async extract(files: readonly string[], onProgress?: (p: ExtractProgress) => void): Promise<ExtractResult> {
    const start = performance.now();
    const dim = this.backbone.config.featureDim;
    const features = new Float32Array(files.length * dim);
    const valid = new Uint8Array(files.length);
    const skipped: Skipped[] = [];
    const progress: ExtractProgress = { done: 0, total: files.length, cached: 0, skipped: 0 };
    let extracted = 0;
    if (this.cache && !this.described) {
      await this.cache.describe({ backbone: this.backbone.source, config: this.backbone.config });
      this.described = true;
    }
    const report = () => onProgress?.({ ...progress });
    const skip = (row: number, reason: string) => {
      skipped.push({ file: files[row]!, reason });
      progress.skipped++;
      progress.done++;
    };

    const slots: Slot[] = Array.from({ length: 3 }, () => ({
      input: sharedFloat32(this.batchSize * this.stride),
      rows: [],
      hashes: [],
      loads: [],
      busy: Promise.resolve(),
    }));
    let slotIndex = 0;
    let slot = slots[0]!;

    const flush = (s: Slot): Promise<void> => {
      const rows = s.rows;
      const hashes = s.hashes;
      const loads = s.loads;
      s.rows = [];
      s.hashes = [];
      s.loads = [];
      const done = (async () => {
        const results = await Promise.all(loads);
        const output = await this.infer.run(s.input, rows.length);
        const writes: Promise<void>[] = [];
        const entries: Array<{ hash: string; features: Float32Array }> = [];
        results.forEach((r, i) => {
          const row = rows[i]!;
          if (!r.ok) {
            skip(row, r.reason);
            if (this.cache) writes.push(this.cache.writeSkip(hashes[i]!, r.reason));
            return;
          }
          const f = output.subarray(i * dim, (i + 1) * dim);
          features.set(f, row * dim);
          valid[row] = 1;
          extracted++;
          progress.done++;
          entries.push({ hash: hashes[i]!, features: f });
        });
        this.cache?.writeBatch(entries);
        await Promise.all(writes);
        report();
      })();
      // Awaited only before the slot is refilled or at the end: until then a failure must not be an unhandled
      // rejection (which would end the process instead of rejecting extract()).
      done.catch(() => {});
      return done;
    };

    // Reading ahead a few files keeps the disk and hashing off the critical path (a ring, not a list per file).
    const readAhead = 8;
    const reads = new Map<number, Promise<Uint8Array | Error>>();
    const readAt = (i: number) => {
      if (i < files.length) reads.set(i, readFile(files[i]!).then((b) => new Uint8Array(b.buffer, b.byteOffset, b.byteLength), (e: Error) => e));
    };
    for (let i = 0; i < readAhead; i++) readAt(i);

    for (let row = 0; row < files.length; row++) {
      readAt(row + readAhead);
      const bytes = await reads.get(row)!;
      reads.delete(row);
      if (bytes instanceof Error) {
        skip(row, `cannot read file (${(bytes as NodeJS.ErrnoException).code ?? bytes.message})`);
        continue;
      }
      const hash = contentHash(bytes);
      if (this.cache) {
        const hit = await this.cache.read(hash, features, row * dim);
        if (hit.kind === 'features') {
          valid[row] = 1;
          progress.cached++;
          progress.done++;
          if (progress.done % 64 === 0) report();
          continue;
        }
        if (hit.kind === 'skip') {
          skip(row, hit.reason);
          continue;
        }
      }
      if (slot.rows.length === 0) await slot.busy;
      const offset = slot.rows.length * this.stride;
      slot.rows.push(row);
      slot.hashes.push(hash);
      const load = this.pool.loadInto({ file: files[row]!, bytes }, slot.input, offset);
      load.catch(() => {}); // awaited by flush; see there
      slot.loads.push(load);
      if (slot.rows.length === this.batchSize) {
        slot.busy = flush(slot);
        slotIndex = (slotIndex + 1) % slots.length;
        slot = slots[slotIndex]!;
      }
    }
    if (slot.rows.length > 0) slot.busy = flush(slot);
    await Promise.all(slots.map((s) => s.busy));
    report();
    skipped.sort((a, b) => a.file.localeCompare(b.file));
    return { features, dim, valid, skipped, cached: progress.cached, extracted, seconds: (performance.now() - start) / 1000 };
  }

  async close(): Promise<void> {
    await Promise.all([this.pool.close(), this.infer.close()]);
  }
}

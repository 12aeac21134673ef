/**
 * The extraction path: read → hash → cache lookup → encode (worker pool: decode/resize/normalise an image,
 * tokenise a text) → infer (worker) → cache write. Memory does not grow with the number of samples beyond
 * the result itself, and encoding of the next batches overlaps inference of the current one.
 *
 * Images go in fixed-size batches through a few reused shared buffers. Texts are tokenised a window at a
 * time and batched by length within the window, so that padding to a batch's longest text stays small.
 */
import { FileProblem, readRegularFile } from '../util/fs.js';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { Skipped } from '../data/dataset.js';
import { GraftError } from '../errors.js';
import { EncodePool, sharedFloat32, type EncodeResult, type LoadResult } from '../preprocess/pool.js';
import { feedSpecs, textFeeds, type Feed } from '../preprocess/pipeline.js';
import { FEATURES, type Backbone } from './backbone.js';
import { contentHash, defaultCacheDir, FeatureCache } from './cache.js';
import type { InferReply, InferWorkerData } from './infer-worker.js';
import type { RowStore } from '../util/row-store.js';
import { audioView, imageView, viewKey, type ViewSpec } from '../preprocess/augment.js';
import { createHash } from 'node:crypto';

/** The cache folder of a view's features: the backbone's key and the view's. */
function viewCacheKey(backboneKey: string, view: ViewSpec): string {
  return createHash('sha256').update(`${backboneKey}\n${viewKey(view)}`).digest('hex').slice(0, 32);
}

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
  /** Encoding (image decoding, tokenising) threads (default: the number of cores). */
  decodeThreads?: number;
  /** ONNX Runtime intra-op threads (default: the number of cores). */
  inferThreads?: number;
  /** Let ONNX Runtime's idle threads spin-wait (default false: decoding needs those cores). */
  spin?: boolean;
  /**
   * Text backbones only: the feature model outputs token states [N, T, D] (a fine-tuning boundary), and each
   * sample keeps its own T rows (`ExtractResult.sequences`) instead of one pooled row.
   */
  sequences?: boolean;
  /**
   * Where the rows go instead of `ExtractResult.features` / `.sequences` (which are then empty): a store that
   * keeps them in memory up to a budget and on disk past it (fine-tuning boundary activations).
   */
  rows?: RowStore;
}

/** A sample to extract: an image file (a path, or `{ file }`), or a text (`{ text }`, `file` naming it in messages). */
export type ExtractInput = string | { file: string; text?: string; line?: number };

/** Token statistics of a text extraction. */
export interface TokenStats {
  /** Texts cut to the backbone's max length (cached ones included). */
  truncated: number;
  /** Real tokens of the texts this call ran through the model. */
  real: number;
  /** Token positions the model computed for them (real + padding). */
  computed: number;
}

export interface ExtractResult {
  /** Row i holds the features of inputs[i] (zeros where valid[i] is 0); empty with `sequences` or `rows`. */
  features: Float32Array;
  dim: number;
  valid: Uint8Array;
  skipped: Skipped[];
  /** Rows read from the cache. */
  cached: number;
  /** Rows computed by the backbone in this call. */
  extracted: number;
  seconds: number;
  /** With `sequences` (and no `rows`): sample i's token states, T_i × dim (empty where valid[i] is 0). */
  sequences?: Float32Array[];
  /** With `sequences`: sample i's token ids (what the suffix's side inputs are made of); for audio, W zeros (its windows). */
  tokens?: Int32Array[];
  /** Text extractions only. */
  tokenStats?: TokenStats;
}

/** Runs the cut backbone in a worker thread. */
class InferenceWorker {
  private readonly worker: Worker;
  private readonly ready: Promise<void>;
  private readonly waiting = new Map<number, { resolve: (o: { output: Float32Array; dims: number[] }) => void; reject: (e: Error) => void }>();
  private readonly inflight = new Set<Promise<unknown>>();
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
      else w?.resolve(m);
      if (this.waiting.size === 0) this.worker.unref();
    });
    this.worker.on('error', (e) => {
      for (const w of this.waiting.values()) w.reject(e);
      this.waiting.clear();
    });
    // Once its session is ready, an idle worker does not keep the process alive (a forgotten close() must not
    // hang the program); until then it does, since ending the process while ONNX Runtime creates the session aborts it.
    this.ready.then(() => {
      if (this.waiting.size === 0) this.worker.unref();
    }, () => {});
  }

  async run(feeds: Record<string, Feed>): Promise<{ output: Float32Array; dims: number[] }> {
    await this.ready;
    const id = this.nextId++;
    const output = new Promise<{ output: Float32Array; dims: number[] }>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.worker.ref();
      // Private (non-shared) buffers of the feeds move to the worker instead of being copied.
      const transfer = Object.values(feeds)
        .map((f) => f.data.buffer)
        .filter((b): b is ArrayBuffer => b instanceof ArrayBuffer && b.byteLength > 0);
      this.worker.postMessage({ id, feeds }, transfer);
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
  loads: Promise<LoadResult>[];
  /** Resolves when the slot's batch has been inferred and its buffer can be refilled. */
  busy: Promise<void>;
}

/** Texts tokenised per worker message, and texts batched by length together. */
const TEXT_CHUNK = 64;
const TEXT_WINDOW_BATCHES = 16;

export class FeatureExtractor {
  private readonly pool: EncodePool;
  private readonly infer: InferenceWorker;
  /** The cache of the running extraction's view (the clean features' when it has none). */
  private cache: FeatureCache | undefined;
  private view: ViewSpec | undefined;
  private readonly caches = new Map<string, FeatureCache | undefined>();
  private readonly openCache: (view: ViewSpec | undefined) => FeatureCache | undefined;
  private readonly described = new Set<string>();
  private running = false;
  private readonly batchSize: number;

  constructor(
    readonly backbone: Backbone,
    private readonly options: ExtractOptions = {},
  ) {
    const cores = availableParallelism();
    this.batchSize = options.batchSize ?? 32;
    if (options.sequences && backbone.modality === 'image') throw new GraftError('USAGE', 'sequences: true is for text and audio backbones');
    this.pool = new EncodePool(backbone.pipeline, { threads: options.decodeThreads ?? cores });
    this.infer = new InferenceWorker({ model: backbone.featureModelBytes, outputName: FEATURES, threads: options.inferThreads ?? cores, spin: options.spin ?? false });
    const root = options.cacheDir === undefined ? defaultCacheDir() : options.cacheDir;
    // Text entries keep the token count after the features (pooled), or the token ids after the states (sequences).
    const cacheOptions = options.sequences ? { ragged: true, extra: 1 } : backbone.modality === 'text' ? { extra: 1 } : {};
    this.openCache = (view) =>
      root === false ? undefined : new FeatureCache(root, view ? viewCacheKey(backbone.key, view) : backbone.key, backbone.config.featureDim, cacheOptions);
    this.cache = this.openCache(undefined);
    this.caches.set('', this.cache);
  }

  /**
   * Features of `inputs` (see ExtractResult). With `view`, of that augmented view of each sample (images and
   * audio), cached apart from the clean features under a key naming the view; one extraction at a time.
   */
  async extract(inputs: readonly ExtractInput[], onProgress?: (p: ExtractProgress) => void, options: { view?: ViewSpec; rowOffset?: number } = {}): Promise<ExtractResult> {
    if (this.running) throw new GraftError('USAGE', 'FeatureExtractor.extract: one extraction at a time');
    const { view } = options;
    if (view && view.kind !== this.backbone.modality) throw new GraftError('USAGE', `a ${view.kind} augmentation for a ${this.backbone.modality} backbone`);
    const key = view ? viewKey(view) : '';
    if (!this.caches.has(key)) this.caches.set(key, this.openCache(view));
    this.cache = this.caches.get(key);
    this.view = view;
    this.running = true;
    try {
      const start = performance.now();
      if (this.cache && !this.described.has(key)) {
        await this.cache.describe({ backbone: this.backbone.source, config: this.backbone.config, ...(view ? { view } : {}) });
        this.described.add(key);
      }
      const samples = inputs.map((s) => (typeof s === 'string' ? { file: s } : s));
      const maxLength = this.backbone.modality === 'text' ? this.backbone.config.maxLength : Infinity;
      // With a row store: input i goes to row rowOffset + i (augmented views after the clean rows).
      const store = this.options.rows;
      const off = options.rowOffset ?? 0;
      const rows = store && off ? { put: (row: number, values: Float32Array) => store.put(off + row, values) } : store;
      const run = new Run(samples.length, this.backbone.config.featureDim, !!this.options.sequences, maxLength, onProgress, rows);
      if (this.backbone.modality === 'image') await this.extractImages(samples, run);
      else if (this.backbone.modality === 'audio') await this.extractAudio(samples, run);
      else await this.extractTexts(samples, run);
      run.report();
      run.skipped.sort((a, b) => a.file.localeCompare(b.file) || (a.line ?? 0) - (b.line ?? 0));
      return { ...run.result(), seconds: (performance.now() - start) / 1000 };
    } finally {
      this.running = false;
    }
  }

  private async extractImages(samples: ReadonlyArray<{ file: string }>, run: Run): Promise<void> {
    const stride = (feedSpecs(this.backbone.pipeline)[0]!.shape as number[]).reduce((a, b) => a * b, 1);
    const { name } = feedSpecs(this.backbone.pipeline)[0]!;
    const dim = run.dim;
    const slots: Slot[] = Array.from({ length: 3 }, () => ({
      input: sharedFloat32(this.batchSize * stride),
      rows: [],
      hashes: [],
      loads: [],
      busy: Promise.resolve(),
    }));
    let slotIndex = 0;
    let slot = slots[0]!;

    const flush = (s: Slot): Promise<void> => {
      const { rows, hashes, loads } = s;
      s.rows = [];
      s.hashes = [];
      s.loads = [];
      const done = (async () => {
        const results = await Promise.all(loads);
        const { output } = await this.infer.run({ [name]: { type: 'float32', data: s.input, dims: [rows.length, ...(feedSpecs(this.backbone.pipeline)[0]!.shape as number[])] } });
        const writes: Promise<void>[] = [];
        const entries: Array<{ hash: string; features: Float32Array }> = [];
        results.forEach((r, i) => {
          const row = rows[i]!;
          if (!r.ok) {
            run.skip(samples[row]!, r.reason);
            if (this.cache) writes.push(this.cache.writeSkip(hashes[i]!, r.reason));
            return;
          }
          const f = output.subarray(i * dim, (i + 1) * dim);
          run.computed(row, f);
          entries.push({ hash: hashes[i]!, features: f });
        });
        this.cache?.writeBatch(entries);
        await Promise.all(writes);
        run.report();
      })();
      // Awaited only before the slot is refilled or at the end: until then a failure must not be an unhandled
      // rejection (which would end the process instead of rejecting extract()).
      done.catch(() => {});
      return done;
    };

    const read = readingAhead(samples, 8, run);
    for (let row = 0; row < samples.length; row++) {
      const bytes = await read(row);
      if (!bytes) continue;
      const hash = contentHash(bytes);
      if (await this.fromCache(hash, row, samples[row]!, run)) continue;
      if (slot.rows.length === 0) await slot.busy;
      slot.rows.push(row);
      slot.hashes.push(hash);
      const view = this.view?.kind === 'image' ? imageView(this.view, hash) : undefined;
      const load = this.pool.loadInto({ file: samples[row]!.file, bytes }, slot.input, (slot.rows.length - 1) * stride, view);
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
  }

  /**
   * Audio: each file is decoded and resampled on a pool worker, then run as its own batch (clips differ in
   * length, and padding would add windows of silence to the pooled features). Several clips are decoding while
   * one is inferred, so decoding stays off the critical path.
   */
  private async extractAudio(samples: ReadonlyArray<{ file: string }>, run: Run): Promise<void> {
    const { name } = feedSpecs(this.backbone.pipeline)[0]!;
    const dim = run.dim;
    const depth = 2 * this.pool.size + 2;
    const read = readingAhead(samples, depth + 4, run);
    const inflight: Promise<void>[] = [];
    for (let row = 0; row < samples.length; row++) {
      const bytes = await read(row);
      if (!bytes) continue;
      const hash = contentHash(bytes);
      if (await this.fromCache(hash, row, samples[row]!, run)) continue;
      const job = (async () => {
        const view = this.view?.kind === 'audio' && this.backbone.modality === 'audio' ? audioView(this.view, hash, this.backbone.config.sampleRate) : undefined;
        const clip = await this.pool.encodeAudio({ file: samples[row]!.file, bytes }, view);
        if (!clip.ok) {
          run.skip(samples[row]!, clip.reason);
          await this.cache?.writeSkip(hash, clip.reason);
          return;
        }
        const { output, dims } = await this.infer.run({ [name]: { type: 'float32', data: clip.samples, dims: [1, clip.samples.length] } });
        if (run.sequences) {
          // A windowed prefix (fine-tuning): one row per window, [W, …]; the entry keeps W zeros as its "token ids".
          const windows = dims[0]!;
          if (output.length !== windows * dim) throw new GraftError('MODEL', `the prefix gave [${dims}] for one clip; expected W rows of ${dim} values`);
          run.sequence(row, output, new Int32Array(windows));
          const entry = new Float32Array(output.length + windows);
          entry.set(output);
          this.cache?.writeBatch([{ hash, features: entry }]);
        } else {
          const features = output.subarray(0, dim);
          run.computed(row, features);
          this.cache?.writeBatch([{ hash, features }]);
        }
        run.report();
      })();
      job.catch(() => {}); // awaited below
      inflight.push(job);
      if (inflight.length >= depth) await inflight.shift();
    }
    await Promise.all(inflight);
  }

  /** Serves a row from the cache when it is there (features or a skip record); false on a miss. */
  private async fromCache(hash: string, row: number, sample: { file: string; line?: number }, run: Run): Promise<boolean> {
    if (!this.cache) return false;
    const [target, offset] = run.sequences ? [undefined, 0] : run.denseTarget(row);
    const hit = await this.cache.read(hash, target, offset);
    if (hit.kind === 'features') {
      if (run.sequences) run.sequenceFromCache(row, hit.values!);
      else run.hit(row, hit.values);
      return true;
    }
    if (hit.kind === 'skip') {
      run.skip(sample, hit.reason);
      return true;
    }
    return false;
  }

  private async extractTexts(samples: ReadonlyArray<{ file: string; text?: string; line?: number }>, run: Run): Promise<void> {
    if (this.backbone.modality !== 'text') throw new Error('not a text backbone');
    const config = this.backbone.config;
    run.tokenStats = { truncated: 0, real: 0, computed: 0 };
    // Misses, in dataset order, grouped into windows that are tokenised together and batched by length.
    const pending: Array<{ row: number; hash: string; text: string }> = [];
    for (let row = 0; row < samples.length; row++) {
      const s = samples[row]!;
      if (typeof s.text !== 'string') throw new GraftError('USAGE', `${s.file}: a text backbone needs texts, this sample has none`, { file: s.file });
      const hash = contentHash(s.text);
      if (!(await this.fromCache(hash, row, s, run))) pending.push({ row, hash, text: s.text });
      else if (row % 256 === 0) run.report();
    }
    const window = this.batchSize * TEXT_WINDOW_BATCHES;
    const encode = (from: number) => {
      const part = pending.slice(from, from + window);
      const chunks: Promise<EncodeResult[]>[] = [];
      for (let i = 0; i < part.length; i += TEXT_CHUNK) chunks.push(this.pool.encodeTexts(part.slice(i, i + TEXT_CHUNK).map((p) => p.text), config.maxLength));
      const all = Promise.all(chunks).then((r) => r.flat().map((e, i) => ({ ...part[i]!, e })));
      all.catch(() => {}); // awaited below
      return all;
    };
    let next = pending.length > 0 ? encode(0) : undefined;
    const inflight: Promise<void>[] = [];
    for (let from = 0; from < pending.length; from += window) {
      const encoded = await next!;
      next = from + window < pending.length ? encode(from + window) : undefined;
      const ok: Array<{ row: number; hash: string; ids: Int32Array; tokens: number }> = [];
      for (const p of encoded) {
        if (p.e.ok) ok.push({ row: p.row, hash: p.hash, ids: p.e.ids, tokens: p.e.tokens });
        else {
          run.skip(samples[p.row]!, p.e.reason);
          if (this.cache) await this.cache.writeSkip(p.hash, p.e.reason);
        }
      }
      // Longest first within the window: batches of similar lengths.
      ok.sort((a, b) => b.ids.length - a.ids.length || a.row - b.row);
      for (let i = 0; i < ok.length; i += this.batchSize) {
        const batch = ok.slice(i, i + this.batchSize);
        // Two batches in flight keep the inference worker busy while the next one is prepared.
        if (inflight.length >= 2) await inflight.shift();
        const done = this.textBatch(batch, run);
        done.catch(() => {});
        inflight.push(done);
      }
    }
    await Promise.all(inflight);
  }

  private async textBatch(batch: Array<{ row: number; hash: string; ids: Int32Array; tokens: number }>, run: Run): Promise<void> {
    if (this.backbone.modality !== 'text') throw new Error('not a text backbone');
    const feeds = textFeeds(this.backbone.config, batch);
    const T = feeds[this.backbone.config.inputs.ids]!.dims[1]!;
    const { output, dims } = await this.infer.run(feeds);
    const dim = run.dim;
    const entries: Array<{ hash: string; features: Float32Array }> = [];
    batch.forEach((b, i) => {
      run.tokenStats!.real += b.ids.length;
      if (b.tokens > b.ids.length) run.tokenStats!.truncated++;
      if (run.sequences) {
        if (dims.length !== 3 || dims[1] !== T) throw new GraftError('MODEL', `the feature model gave [${dims}] for a batch of [${batch.length}, ${T}] tokens; expected token states [N, T, D]`);
        const states = output.slice(i * T * dim, (i * T + b.ids.length) * dim);
        run.sequence(b.row, states, b.ids);
        const entry = new Float32Array(states.length + b.ids.length);
        entry.set(states);
        entry.set(b.ids, states.length); // token ids are < 2^24: exact in float32
        entries.push({ hash: b.hash, features: entry });
      } else {
        const f = output.subarray(i * dim, (i + 1) * dim);
        run.computed(b.row, f);
        // The entry keeps the text's token count after its features, for the truncation report.
        const entry = new Float32Array(dim + 1);
        entry.set(f);
        entry[dim] = b.tokens;
        entries.push({ hash: b.hash, features: entry });
      }
    });
    run.tokenStats!.computed += batch.length * T;
    this.cache?.writeBatch(entries);
    run.report();
  }

  async close(): Promise<void> {
    for (const cache of this.caches.values()) cache?.close();
    await Promise.all([this.pool.close(), this.infer.close()]);
  }
}

/**
 * Reads sample files a few ahead of the row being handled, so the disk and hashing stay off the critical path (a
 * ring, not a list per file). `read(row)` gives row's bytes, or undefined after recording why it was skipped.
 */
function readingAhead(samples: ReadonlyArray<{ file: string }>, ahead: number, run: Run): (row: number) => Promise<Uint8Array | undefined> {
  const reads = new Map<number, Promise<Uint8Array | Error>>();
  const start = (i: number) => {
    if (i < samples.length) reads.set(i, readRegularFile(samples[i]!.file).catch((e: Error) => e));
  };
  for (let i = 0; i < ahead; i++) start(i);
  return async (row) => {
    start(row + ahead);
    const bytes = await reads.get(row)!;
    reads.delete(row);
    if (!(bytes instanceof Error)) return bytes;
    run.skip(samples[row]!, bytes instanceof FileProblem ? bytes.problem : `cannot read file (${bytes.message})`);
    return undefined;
  };
}

/** The result being filled, with the progress it reports. */
class Run {
  readonly features: Float32Array;
  readonly valid: Uint8Array;
  readonly skipped: Skipped[] = [];
  readonly progress: ExtractProgress;
  extracted = 0;
  tokenStats: TokenStats | undefined;
  private readonly seqs: Float32Array[] | undefined;
  private readonly ids: Int32Array[] | undefined;
  /** With a store: where a cached dense row is read before it is stored. */
  private readonly scratch: Float32Array;

  constructor(
    n: number,
    readonly dim: number,
    readonly sequences: boolean,
    /** A cached text whose token count exceeds this was truncated. */
    private readonly maxLength: number,
    private readonly onProgress?: (p: ExtractProgress) => void,
    private readonly store?: Pick<RowStore, 'put'>,
  ) {
    this.features = new Float32Array(sequences || store ? 0 : n * dim);
    this.scratch = new Float32Array(store && !sequences ? dim : 0);
    this.valid = new Uint8Array(n);
    this.progress = { done: 0, total: n, cached: 0, skipped: 0 };
    this.seqs = sequences && !store ? Array.from({ length: n }, () => new Float32Array(0)) : undefined;
    this.ids = sequences ? Array.from({ length: n }, () => new Int32Array(0)) : undefined;
  }

  /** Where a cached dense row is read to: its place in `features`, or the scratch row a hit then stores. */
  denseTarget(row: number): [Float32Array, number] {
    return this.store ? [this.scratch, 0] : [this.features, row * this.dim];
  }

  report(): void {
    this.onProgress?.({ ...this.progress });
  }

  skip(sample: { file: string; line?: number }, reason: string): void {
    this.skipped.push({ file: sample.file, ...(sample.line !== undefined ? { line: sample.line } : {}), reason });
    this.progress.skipped++;
    this.progress.done++;
  }

  hit(row: number, extra?: Float32Array): void {
    this.store?.put(row, this.scratch);
    this.valid[row] = 1;
    this.progress.cached++;
    this.progress.done++;
    if (extra && this.tokenStats && extra[0]! > this.maxLength) this.tokenStats.truncated++;
    if (this.progress.done % 64 === 0) this.report();
  }

  computed(row: number, features: Float32Array): void {
    if (this.store) this.store.put(row, features);
    else this.features.set(features, row * this.dim);
    this.valid[row] = 1;
    this.extracted++;
    this.progress.done++;
  }

  sequence(row: number, states: Float32Array, ids: Int32Array): void {
    if (this.store) this.store.put(row, states);
    else this.seqs![row] = states;
    this.ids![row] = ids;
    this.valid[row] = 1;
    this.extracted++;
    this.progress.done++;
  }

  /** A cached entry: T rows of `dim` states, then the T token ids. */
  sequenceFromCache(row: number, entry: Float32Array): void {
    const T = entry.length / (this.dim + 1);
    if (this.store) this.store.put(row, entry.subarray(0, T * this.dim));
    else this.seqs![row] = entry.slice(0, T * this.dim);
    this.ids![row] = Int32Array.from(entry.subarray(T * this.dim));
    this.valid[row] = 1;
    this.progress.cached++;
    this.progress.done++;
  }

  result(): Omit<ExtractResult, 'seconds'> {
    return {
      features: this.features,
      dim: this.dim,
      valid: this.valid,
      skipped: this.skipped,
      cached: this.progress.cached,
      extracted: this.extracted,
      ...(this.seqs ? { sequences: this.seqs } : {}),
      ...(this.ids ? { tokens: this.ids } : {}),
      ...(this.tokenStats ? { tokenStats: this.tokenStats } : {}),
    };
  }
}

/**
 * Models kept loaded for prediction, with dynamic batching: images from concurrent requests are decoded in
 * parallel on the model's worker pool, then queued; a batch runs as soon as 32 are waiting, when a short window
 * (2 ms) after the first has passed, or, while a batch runs, as soon as it ends with whatever arrived meanwhile.
 * The graph runs on a worker thread (GraftModel's `offThread`), so the event loop stays free while it computes.
 */
import { availableParallelism } from 'node:os';
import { GraftModel, type InputBytes } from '../artifact/model.js';
import { topK } from '../evaluate/metrics.js';
import { badRequest } from './http.js';
import type { ModelStore } from './models.js';

export interface Prediction {
  input: string;
  /** The top-K classes, most probable first. */
  predictions: Array<{ label: string; probability: number }>;
  /** Every class's probability, in the model's `labels` order. */
  probabilities: number[];
}

export interface PredictResult {
  predictions: Prediction[];
  skipped: Array<{ name: string; reason: string }>;
}

export interface BatchStats {
  batches: number;
  images: number;
}

interface Waiting {
  data: Float32Array;
  resolve: (probabilities: Float32Array) => void;
  reject: (e: unknown) => void;
}

/** Merges single preprocessed images into batches of at most `maxBatch` for one model. */
export class Batcher {
  private readonly queue: Waiting[] = [];
  private running = false;
  private timer: NodeJS.Timeout | undefined;
  readonly stats: BatchStats = { batches: 0, images: 0 };

  constructor(
    private readonly model: GraftModel,
    private readonly maxBatch = 32,
    private readonly windowMs = 2,
  ) {}

  /** The class probabilities of one image tensor (as preprocessImage gives it). */
  submit(data: Float32Array): Promise<Float32Array> {
    return new Promise((resolve, reject) => {
      this.queue.push({ data, resolve, reject });
      if (this.running) return; // the running batch's end picks it up
      if (this.queue.length >= this.maxBatch) {
        clearTimeout(this.timer);
        this.timer = undefined;
        void this.flush();
      } else {
        this.timer ??= setTimeout(() => {
          this.timer = undefined;
          void this.flush();
        }, this.windowMs);
      }
    });
  }

  private async flush(): Promise<void> {
    if (this.running || this.queue.length === 0) return;
    this.running = true;
    const items = this.queue.splice(0, this.maxBatch);
    const stride = items[0]!.data.length;
    const batch = new Float32Array(items.length * stride);
    items.forEach((it, i) => batch.set(it.data, i * stride));
    try {
      const probs = await this.model.run(batch, items.length);
      const c = probs.length / items.length;
      items.forEach((it, i) => it.resolve(probs.slice(i * c, (i + 1) * c)));
      this.stats.batches++;
      this.stats.images += items.length;
    } catch (e) {
      for (const it of items) it.reject(e);
    } finally {
      this.running = false;
      if (this.queue.length > 0) void this.flush();
    }
  }
}

interface Loaded {
  model: GraftModel;
  batcher: Batcher;
}

export interface PredictorOptions {
  /** ONNX Runtime threads and decoding workers per model (default: every core). */
  threads?: number;
  /** Models kept loaded; the least recently used is closed beyond this. */
  maxLoaded?: number;
}

export class Predictor {
  private readonly loaded = new Map<string, Promise<Loaded>>();
  private readonly threads: number;
  private readonly maxLoaded: number;

  constructor(
    private readonly models: ModelStore,
    options: PredictorOptions = {},
  ) {
    this.threads = options.threads ?? availableParallelism();
    this.maxLoaded = options.maxLoaded ?? 4;
  }

  private async get(mid: string): Promise<Loaded> {
    this.models.get(mid); // 404 for an unknown model
    let entry = this.loaded.get(mid);
    if (entry) {
      // Most recently used last.
      this.loaded.delete(mid);
      this.loaded.set(mid, entry);
      return entry;
    }
    // No spinning: ONNX Runtime's idle threads would otherwise busy-wait on the cores the decoders need.
    entry = GraftModel.load(this.models.artifactDir(mid), { threads: this.threads, offThread: true, spin: false }).then((model) => ({ model, batcher: new Batcher(model) }));
    this.loaded.set(mid, entry);
    entry.catch(() => this.loaded.delete(mid));
    while (this.loaded.size > this.maxLoaded) {
      const oldest = this.loaded.keys().next().value!;
      void this.unload(oldest);
    }
    return entry;
  }

  /** Batching statistics of a loaded model (for benchmarks). */
  async stats(mid: string): Promise<BatchStats> {
    return (await this.get(mid)).batcher.stats;
  }

  /** Classifies uploaded files: images (batched with other requests' images), audio clips, or for a text model UTF-8 text files. */
  async predictFiles(mid: string, files: readonly InputBytes[], k: number): Promise<PredictResult> {
    const { model, batcher } = await this.get(mid);
    const labels = model.labels;
    const kk = Math.min(k, labels.length);
    const result = (input: string, probs: Float32Array): Prediction => ({ input, predictions: topK(probs, labels, kk), probabilities: Array.from(probs) });
    if (model.task === 'text-classification') {
      const texts: string[] = [];
      const names: string[] = [];
      const skipped: PredictResult['skipped'] = [];
      for (const f of files) {
        try {
          texts.push(new TextDecoder('utf-8', { fatal: true }).decode(f.bytes));
          names.push(f.name);
        } catch {
          skipped.push({ name: f.name, reason: 'not UTF-8 text' });
        }
      }
      const r = await this.predictTexts(mid, texts, k);
      return { predictions: r.predictions.map((p, i) => ({ ...p, input: names[i]! })), skipped };
    }
    if (model.task === 'audio-classification') {
      const { probabilities, valid, skipped } = await model.probabilitiesOf(files);
      const c = labels.length;
      const predictions = files.flatMap((f, i) => (valid[i] ? [result(f.name, probabilities.slice(i * c, (i + 1) * c))] : []));
      return { predictions, skipped: skipped.map((s) => ({ name: s.file, reason: s.reason })) };
    }
    const outcomes = await Promise.all(
      files.map(async (f) => {
        const pre = await model.preprocessImage(f);
        if (!pre.ok) return { name: f.name, reason: pre.reason };
        return result(f.name, await batcher.submit(pre.data));
      }),
    );
    return {
      predictions: outcomes.filter((o): o is Prediction => 'predictions' in o),
      skipped: outcomes.filter((o): o is { name: string; reason: string } => 'reason' in o),
    };
  }

  async predictTexts(mid: string, texts: readonly string[], k: number): Promise<PredictResult> {
    const { model } = await this.get(mid);
    if (model.task !== 'text-classification') throw badRequest(`model ${mid} classifies ${model.task === 'audio-classification' ? 'audio' : 'images'}: send files as multipart/form-data, not texts`);
    const labels = model.labels;
    const c = labels.length;
    const { probabilities } = await model.probabilities(texts);
    const kk = Math.min(k, c);
    return {
      predictions: texts.map((t, i) => {
        const probs = probabilities.subarray(i * c, (i + 1) * c);
        return { input: t, predictions: topK(probs, labels, kk), probabilities: Array.from(probs) };
      }),
      skipped: [],
    };
  }

  /** One image as the tensor predict feeds the model, with the graph input's name. */
  async preprocess(mid: string, file: InputBytes): Promise<{ data: Float32Array; dims: number[]; input: string }> {
    const { model } = await this.get(mid);
    if (model.task !== 'image-classification') throw badRequest(`model ${mid} is not an image model: preprocess takes one image`);
    const pre = await model.preprocessImage(file);
    if (!pre.ok) throw badRequest(`${file.name}: ${pre.reason}`, { name: file.name });
    return { data: pre.data, dims: pre.dims, input: model.manifest.model.input };
  }

  async unload(mid: string): Promise<void> {
    const entry = this.loaded.get(mid);
    if (!entry) return;
    this.loaded.delete(mid);
    const loaded = await entry.catch(() => undefined);
    await loaded?.model.close();
  }

  async close(): Promise<void> {
    await Promise.all([...this.loaded.keys()].map((mid) => this.unload(mid)));
  }
}

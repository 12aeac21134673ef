/**
 * A trained model loaded back from its directory: the merged ONNX graph and the input pipeline it was
 * trained with. Prediction applies exactly the recorded config (image preprocessing, or the tokenizer and
 * text config).
 */
import { parseSplitRecord, SPLIT_FILE, type SplitRecord } from './split.js';
import { availableParallelism } from 'node:os';
import * as ort from 'onnxruntime-node';
import type { Skipped } from '../data/dataset.js';
import { GraftError } from '../errors.js';
import { topK } from '../evaluate/metrics.js';
import { inputShape } from '../preprocess/config.js';
import { mirrorTensor } from '../preprocess/augment.js';
import { scaleSamples } from '../preprocess/audio.js';
import { textFeeds, type Feed } from '../preprocess/pipeline.js';
import { EncodePool, ImagePool, sharedFloat32 } from '../preprocess/pool.js';
import { parseTokenizerFiles, TextTokenizer } from '../preprocess/text.js';
import { RemoteSession } from '../train/remote-session.js';
import { readArtifact, type Manifest } from './artifact.js';

export interface Prediction {
  /** The image or audio file, or the text, as given. */
  input: string;
  /** Ranked classes, most probable first. */
  predictions: Array<{ label: string; probability: number }>;
}

export interface ProbabilityResult {
  /** Row i holds the class probabilities of inputs[i] (zeros where valid[i] is 0). */
  probabilities: Float32Array;
  valid: Uint8Array;
  skipped: Skipped[];
}

/** An image or audio clip given as its bytes; `name` is what messages and results call it. */
export interface InputBytes {
  name: string;
  bytes: Uint8Array;
}

/** One image preprocessed exactly as predict() feeds it: the graph input's tensor for a batch of one. */
export type PreprocessedImage = { ok: true; data: Float32Array; dims: number[] } | { ok: false; reason: string };

/** Where the graph runs: on the calling thread, or on a worker thread (RemoteSession) that never blocks it. */
interface Runner {
  run(feeds: Record<string, Feed>, output: string): Promise<Float32Array>;
  release(): Promise<void>;
}

function localRunner(session: ort.InferenceSession): Runner {
  return {
    async run(feeds, output) {
      const inputs: Record<string, ort.Tensor> = {};
      for (const [name, f] of Object.entries(feeds)) inputs[name] = new ort.Tensor(f.type, f.data, [...f.dims]);
      const out = await session.run(inputs);
      return out[output]!.data as Float32Array;
    },
    release: () => session.release(),
  };
}

function workerRunner(session: RemoteSession): Runner {
  return {
    run: async (feeds, output) => (await session.run(feeds, [output]))[output]!.data,
    release: () => session.release(),
  };
}

/** An image or audio input: a file to read, or bytes already in memory (named by `file`). */
type Source = { file: string; bytes?: Uint8Array };

export class GraftModel {
  private pool: ImagePool | undefined;
  private audioPool: EncodePool | undefined;

  private constructor(
    readonly manifest: Manifest,
    readonly dir: string,
    private readonly session: Runner,
    private readonly threads: number,
    private readonly tokenizer: TextTokenizer | undefined,
    /** The samples it was trained and validated on (content digests), when the artifact records them. */
    readonly split: SplitRecord | undefined = undefined,
  ) {}

  /**
   * `threads`: ONNX Runtime's intra-op threads and the decoding workers (default: every core). `offThread`: run
   * the graph on a worker thread, so that the calling thread (a server's event loop) is never blocked by a run;
   * onnxruntime-node's `run` otherwise blocks the thread that calls it for the whole batch. `spin: false` stops
   * ONNX Runtime's idle threads from busy-waiting for work (better when other work shares the cores).
   */
  static async load(dir: string, options: { threads?: number; offThread?: boolean; spin?: boolean } = {}): Promise<GraftModel> {
    const { manifest, modelBytes, dir: root, files } = await readArtifact(dir);
    const tokenizer =
      manifest.task === 'text-classification'
        ? new TextTokenizer(parseTokenizerFiles(files[manifest.config.tokenizer.file]!, files['tokenizer_config.json'], `${root}/${manifest.config.tokenizer.file}`))
        : undefined;
    const threads = options.threads ?? availableParallelism();
    const session = options.offThread
      ? workerRunner(await RemoteSession.create(modelBytes, { threads, ...(options.spin === undefined ? {} : { spin: options.spin }) }))
      : localRunner(await ort.InferenceSession.create(modelBytes, { intraOpNumThreads: threads }));
    const split = files[SPLIT_FILE] ? parseSplitRecord(files[SPLIT_FILE], `${root}/${SPLIT_FILE}`) : undefined;
    return new GraftModel(manifest, root, session, threads, tokenizer, split);
  }

  get labels(): string[] {
    return this.manifest.labels;
  }

  get task(): Manifest['task'] {
    return this.manifest.task;
  }

  /** Probabilities for named, typed feeds (the graph's inputs, as graft.json's `model.inputs` lists them). */
  async runFeeds(feeds: Record<string, Feed>): Promise<Float32Array> {
    return this.session.run(feeds, this.manifest.model.output);
  }

  /** Probabilities for a batch of preprocessed images (layout and size as in the manifest's config). */
  async run(input: Float32Array, n: number): Promise<Float32Array> {
    if (this.manifest.task !== 'image-classification') throw new GraftError('USAGE', `run() takes preprocessed images; this is a ${this.manifest.task} model: use predict() or runFeeds()`);
    const dims = inputShape(this.manifest.config, n);
    const probs = await this.runFeeds({ [this.manifest.model.input]: { type: 'float32', data: input, dims } });
    if (this.manifest.inference?.tta !== 'flip') return probs;
    // Test-time augmentation, as the model was evaluated: the mean with the mirrored images' probabilities.
    const mirrored = await this.runFeeds({ [this.manifest.model.input]: { type: 'float32', data: mirrorTensor(input, this.manifest.config, n), dims } });
    for (let i = 0; i < probs.length; i++) probs[i] = (probs[i]! + mirrored[i]!) / 2;
    return probs;
  }

  /**
   * Classifies inputs: image files for an image model (undecodable files are skipped and reported), texts for a
   * text model (tokenised and truncated as in training), audio files for an audio model (decoded, mixed to mono
   * and resampled as in training).
   */
  async probabilities(inputs: readonly string[], batchSize = 16): Promise<ProbabilityResult> {
    if (this.manifest.task === 'text-classification') return this.textProbabilities(inputs, batchSize * 2);
    if (this.manifest.task === 'audio-classification') return this.audioProbabilities(inputs.map((file) => ({ file })));
    return this.imageProbabilities(inputs.map((file) => ({ file })), batchSize);
  }

  /**
   * As probabilities(), for images or audio clips given as bytes (an upload), decoded without temporary files;
   * skipped entries name the input by its `name`.
   */
  async probabilitiesOf(inputs: readonly InputBytes[], batchSize = 16): Promise<ProbabilityResult> {
    const sources = inputs.map((i) => ({ file: i.name, bytes: i.bytes }));
    if (this.manifest.task === 'audio-classification') return this.audioProbabilities(sources);
    if (this.manifest.task === 'image-classification') return this.imageProbabilities(sources, batchSize);
    throw new GraftError('USAGE', `probabilitiesOf() takes images or audio; this is a ${this.manifest.task} model: give texts to probabilities()`);
  }

  /**
   * One image decoded and normalised on the worker pool exactly as predict() does it, as a tensor for a batch of
   * one (a caller may batch several with run()). A bad or blank image gives `{ ok: false, reason }`.
   */
  async preprocessImage(input: InputBytes): Promise<PreprocessedImage> {
    if (this.manifest.task !== 'image-classification') throw new GraftError('USAGE', `preprocessImage() is for image models; this is a ${this.manifest.task} model`);
    this.pool ??= new ImagePool(this.manifest.config, { threads: this.threads });
    const dims = inputShape(this.manifest.config, 1);
    const shared = sharedFloat32(dims.reduce((a, b) => a * b, 1));
    const r = await this.pool.loadInto({ file: input.name, bytes: input.bytes }, shared, 0);
    return r.ok ? { ok: true, data: shared.slice(), dims } : { ok: false, reason: r.reason };
  }

  /** Probabilities of one clip given as samples at the model's rate, in [-1, 1] (e.g. from WebAudio or a decoder of your own). */
  async classifyWaveform(samples: Float32Array): Promise<Float32Array> {
    if (this.manifest.task !== 'audio-classification') throw new GraftError('USAGE', `classifyWaveform() takes audio; this is a ${this.manifest.task} model`);
    const data = scaleSamples(samples, this.manifest.config);
    return (await this.runFeeds({ [this.manifest.model.input]: { type: 'float32', data, dims: [1, samples.length] } })).slice();
  }

  private async audioProbabilities(files: readonly Source[]): Promise<ProbabilityResult> {
    if (this.manifest.task !== 'audio-classification') throw new Error('not an audio model');
    this.audioPool ??= new EncodePool({ kind: 'audio', config: this.manifest.config }, { threads: Math.min(this.threads, 4) });
    const c = this.labels.length;
    const probabilities = new Float32Array(files.length * c);
    const valid = new Uint8Array(files.length);
    const skipped: Skipped[] = [];
    // Decoding runs ahead on the pool while clips are classified one at a time (each its own length).
    const decoded = files.map((source) => this.audioPool!.encodeAudio(source));
    for (const d of decoded) d.catch(() => {});
    for (let i = 0; i < files.length; i++) {
      const clip = await decoded[i]!;
      if (!clip.ok) {
        skipped.push({ file: files[i]!.file, reason: clip.reason });
        continue;
      }
      const probs = await this.runFeeds({ [this.manifest.model.input]: { type: 'float32', data: clip.samples, dims: [1, clip.samples.length] } });
      probabilities.set(probs.subarray(0, c), i * c);
      valid[i] = 1;
    }
    return { probabilities, valid, skipped };
  }

  private async textProbabilities(texts: readonly string[], batchSize: number): Promise<ProbabilityResult> {
    if (this.manifest.task !== 'text-classification' || !this.tokenizer) throw new Error('not a text model');
    const config = this.manifest.config;
    const c = this.labels.length;
    const encoded = texts.map((t, i) => ({ i, ids: this.tokenizer!.encode(t, config.maxLength).ids }));
    // Similar lengths together: little padding.
    encoded.sort((a, b) => b.ids.length - a.ids.length || a.i - b.i);
    const probabilities = new Float32Array(texts.length * c);
    for (let start = 0; start < encoded.length; start += batchSize) {
      const batch = encoded.slice(start, start + batchSize);
      const probs = await this.runFeeds(textFeeds(config, batch));
      batch.forEach((e, k) => probabilities.set(probs.subarray(k * c, (k + 1) * c), e.i * c));
    }
    return { probabilities, valid: new Uint8Array(texts.length).fill(1), skipped: [] };
  }

  private async imageProbabilities(files: readonly Source[], batchSize: number): Promise<ProbabilityResult> {
    if (this.manifest.task !== 'image-classification') throw new Error('not an image model');
    const config = this.manifest.config;
    const c = this.labels.length;
    this.pool ??= new ImagePool(config, { threads: this.threads });
    const stride = inputShape(config, 1).slice(1).reduce((a, b) => a * b, 1);
    const shared = sharedFloat32(batchSize * stride);
    const batch = new Float32Array(batchSize * stride); // ONNX Runtime needs a non-shared buffer
    const probabilities = new Float32Array(files.length * c);
    const valid = new Uint8Array(files.length);
    const skipped: Skipped[] = [];
    for (let start = 0; start < files.length; start += batchSize) {
      const chunk = files.slice(start, start + batchSize);
      const results = await Promise.all(chunk.map((source, i) => this.pool!.loadInto(source, shared, i * stride)));
      const ok: number[] = [];
      results.forEach((r, i) => {
        if (r.ok) {
          batch.set(shared.subarray(i * stride, (i + 1) * stride), ok.length * stride);
          ok.push(i);
        } else skipped.push({ file: chunk[i]!.file, reason: r.reason });
      });
      if (ok.length === 0) continue;
      const probs = await this.run(batch.subarray(0, ok.length * stride), ok.length);
      ok.forEach((i, k) => {
        probabilities.set(probs.subarray(k * c, (k + 1) * c), (start + i) * c);
        valid[start + i] = 1;
      });
    }
    return { probabilities, valid, skipped };
  }

  /** The `k` most probable classes of each input (image files, or texts for a text model). */
  async predict(inputs: readonly string[], k = 5): Promise<{ predictions: Prediction[]; skipped: Skipped[] }> {
    const { probabilities, valid, skipped } = await this.probabilities(inputs);
    const c = this.labels.length;
    const predictions: Prediction[] = [];
    inputs.forEach((input, i) => {
      if (valid[i]) predictions.push({ input, predictions: topK(probabilities.subarray(i * c, (i + 1) * c), this.labels, k) });
    });
    return { predictions, skipped };
  }

  async close(): Promise<void> {
    await this.pool?.close();
    await this.audioPool?.close();
    await this.session.release();
  }
}

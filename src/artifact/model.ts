/**
 * A trained model loaded back from its directory: the merged ONNX graph and the preprocessing it was
 * trained with. Prediction applies exactly the recorded PretrainedConfig.
 */
import { availableParallelism } from 'node:os';
import * as ort from 'onnxruntime-node';
import type { Skipped } from '../data/dataset.js';
import { topK } from '../evaluate/metrics.js';
import { inputShape } from '../preprocess/config.js';
import { ImagePool, sharedFloat32 } from '../preprocess/pool.js';
import { readArtifact, type Manifest } from './artifact.js';

export interface Prediction {
  file: string;
  /** Ranked classes, most probable first. */
  top: Array<{ label: string; probability: number }>;
}

export interface ProbabilityResult {
  /** Row i holds the class probabilities of files[i] (zeros where valid[i] is 0). */
  probabilities: Float32Array;
  valid: Uint8Array;
  skipped: Skipped[];
}

export class GraftModel {
  private pool: ImagePool | undefined;

  private constructor(
    readonly manifest: Manifest,
    readonly dir: string,
    private readonly session: ort.InferenceSession,
    private readonly threads: number,
  ) {}

  static async load(dir: string, options: { threads?: number } = {}): Promise<GraftModel> {
    const { manifest, modelBytes, dir: root } = await readArtifact(dir);
    const threads = options.threads ?? availableParallelism();
    const session = await ort.InferenceSession.create(modelBytes, { intraOpNumThreads: threads });
    return new GraftModel(manifest, root, session, threads);
  }

  get labels(): string[] {
    return this.manifest.labels;
  }

  /** Probabilities for a batch of preprocessed images (layout and size as in the manifest's config). */
  async run(input: Float32Array, n: number): Promise<Float32Array> {
    const shape = inputShape(this.manifest.config, n);
    const out = await this.session.run({ [this.manifest.model.input]: new ort.Tensor('float32', input, shape) });
    return out[this.manifest.model.output]!.data as Float32Array;
  }

  /** Decodes, preprocesses and classifies image files; undecodable files are skipped and reported. */
  async probabilities(files: readonly string[], batchSize = 16): Promise<ProbabilityResult> {
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
      const results = await Promise.all(chunk.map((file, i) => this.pool!.loadInto({ file }, shared, i * stride)));
      const ok: number[] = [];
      results.forEach((r, i) => {
        if (r.ok) {
          batch.set(shared.subarray(i * stride, (i + 1) * stride), ok.length * stride);
          ok.push(i);
        } else skipped.push({ file: chunk[i]!, reason: r.reason });
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

  async predict(files: readonly string[], k = 5): Promise<{ predictions: Prediction[]; skipped: Skipped[] }> {
    const { probabilities, valid, skipped } = await this.probabilities(files);
    const c = this.labels.length;
    const predictions: Prediction[] = [];
    files.forEach((file, i) => {
      if (valid[i]) predictions.push({ file, top: topK(probabilities.subarray(i * c, (i + 1) * c), this.labels, k) });
    });
    return { predictions, skipped };
  }

  async close(): Promise<void> {
    await this.pool?.close();
    await this.session.release();
  }
}

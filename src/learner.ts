/**
 * The library's front door, in fastai's shape: `learner()` gathers data, backbone and head; `fit()` trains;
 * `evaluate()` measures; `export()` writes the servable model directory.
 *
 *   const learn = await learner({ data: './photos', model: 'mobilenetv2.onnx' });
 *   await learn.fit({ epochs: 30 });
 *   await learn.export('./out');
 */
import { scanImageFolder, type ImageFolderDataset, type Skipped } from './data/dataset.js';
import { GraftError } from './errors.js';
import { computeMetrics, argmaxRows, crossEntropy, type Metrics } from './evaluate/metrics.js';
import { loadBackbone, FEATURES, type Backbone } from './backbone/backbone.js';
import { FeatureExtractor, type ExtractProgress } from './backbone/extractor.js';
import { DEFAULT_HEAD, buildExportGraph, fitStandardizer, HEAD_OUTPUT, validateSpec, type HeadKind, type HeadSpec, type Standardizer } from './head/head.js';
import { mergeModels } from './onnx/surgery.js';
import { defaultOpset } from './onnx/proto.js';
import { inputShape, type PretrainedConfig } from './preprocess/config.js';
import { DEFAULT_FIT, DEFAULT_LR, Evaluator, trainHead, type Callback, type FeatureSet, type FitOptions, type TrainResult } from './train/trainer.js';
import { writeArtifact, type Manifest } from './artifact/artifact.js';

export interface LearnerOptions {
  /** Dataset folder: `DIR/train/<class>/*` + `DIR/val/<class>/*`, or `DIR/<class>/*`. */
  data: string;
  /** Path of an ONNX image model. */
  model: string;
  /** Tensor to cut the model at (default: the input of its last global pooling). */
  cut?: string;
  /** Preprocessing overrides on top of the model's own config. */
  config?: Partial<PretrainedConfig>;
  head?: HeadKind | Partial<Pick<HeadSpec, 'kind' | 'hidden' | 'dropout'>>;
  /** Validation fraction when the dataset has no val folder (default 0.2). */
  valSplit?: number;
  seed?: number;
  /** Feature cache root, or false for none. */
  cacheDir?: string | false;
  onProgress?: (p: ExtractProgress & { split: 'train' | 'val' }) => void;
}

export interface LearnerData {
  dataset: ImageFolderDataset;
  features: FeatureSet;
  trainRows: number[];
  valRows: number[];
  /** Every file skipped, at scan time or because it could not be decoded. */
  skipped: Skipped[];
  extraction: { cached: number; extracted: number; seconds: number };
}

export class Learner {
  readonly spec: HeadSpec;
  readonly standardizer: Standardizer;
  result: TrainResult | undefined;
  private fitOptions: FitOptions | undefined;

  private constructor(readonly options: LearnerOptions, readonly backbone: Backbone, readonly data: LearnerData, readonly seed: number) {
    const head = typeof options.head === 'string' ? { kind: options.head } : (options.head ?? {});
    this.spec = { ...DEFAULT_HEAD, ...head, inputDim: backbone.config.featureDim, numClasses: data.dataset.classes.length };
    validateSpec(this.spec);
    this.standardizer = fitStandardizer(data.features.features, data.features.dim, data.trainRows);
  }

  /** Scans the dataset, loads and cuts the backbone, and extracts (or reads cached) features. */
  static async create(options: LearnerOptions): Promise<Learner> {
    const seed = options.seed ?? 0;
    const dataset = await scanImageFolder(options.data, { ...(options.valSplit !== undefined ? { valSplit: options.valSplit } : {}), seed });
    const backbone = await loadBackbone(options.model, { ...(options.cut ? { cut: options.cut } : {}), ...(options.config ? { config: options.config } : {}) });
    const extractor = new FeatureExtractor(backbone, { ...(options.cacheDir !== undefined ? { cacheDir: options.cacheDir } : {}) });
    try {
      const files = [...dataset.train, ...dataset.val];
      const nTrain = dataset.train.length;
      const result = await extractor.extract(
        files.map((s) => s.file),
        (p) => options.onProgress?.({ ...p, split: p.done < nTrain ? 'train' : 'val' }),
      );
      const trainRows: number[] = [];
      const valRows: number[] = [];
      files.forEach((_, i) => {
        if (result.valid[i]) (i < nTrain ? trainRows : valRows).push(i);
      });
      const labels = Int32Array.from(files, (s) => s.label);
      checkUsable(dataset, labels, trainRows, valRows);
      const data: LearnerData = {
        dataset,
        features: { features: result.features, dim: result.dim, labels },
        trainRows,
        valRows,
        skipped: [...dataset.skipped, ...result.skipped].sort((a, b) => a.file.localeCompare(b.file)),
        extraction: { cached: result.cached, extracted: result.extracted, seconds: result.seconds },
      };
      return new Learner(options, backbone, data, seed);
    } finally {
      await extractor.close();
    }
  }

  get classes(): string[] {
    return this.data.dataset.classes;
  }

  /** Trains the head on the training features, early-stopping on validation loss. */
  async fit(options: Partial<FitOptions> = {}, callbacks: Callback[] = []): Promise<TrainResult> {
    this.fitOptions = { ...DEFAULT_FIT, lr: DEFAULT_LR[this.spec.kind], seed: this.seed, ...options };
    this.result = await trainHead(this.data.features, this.data.trainRows, this.data.valRows, this.spec, this.standardizer, this.fitOptions, callbacks);
    return this.result;
  }

  /** Metrics of the trained head on the validation rows. */
  async evaluate(): Promise<Metrics> {
    const params = this.trained().params;
    const evaluator = await Evaluator.forHead(this.spec, this.standardizer);
    try {
      const probs = await evaluator.probabilities(this.data.features, this.data.valRows, params);
      const truth = Int32Array.from(this.data.valRows, (r) => this.data.features.labels[r]!);
      const loss = crossEntropy(probs, this.spec.numClasses, truth);
      return computeMetrics(this.classes, truth, argmaxRows(probs, this.spec.numClasses), { loss });
    } finally {
      await evaluator.release();
    }
  }

  /** Writes `dir/model.onnx` (backbone + head, one graph) and `dir/graft.json`. */
  async export(dir: string, metrics?: Metrics): Promise<Manifest> {
    const result = this.trained();
    const head = buildExportGraph(this.spec, this.standardizer, result.params, defaultOpset(this.backbone.featureModel));
    const merged = mergeModels(this.backbone.featureModel, head, FEATURES, 'head/');
    const { dataset } = this.data;
    const counts = (rows: number[]) => this.classes.map((_, c) => rows.filter((r) => this.data.features.labels[r] === c).length);
    return writeArtifact(dir, merged, {
      task: 'image-classification',
      labels: this.classes,
      config: this.backbone.config,
      model: { input: this.backbone.config.inputName, output: HEAD_OUTPUT, inputShape: ['N', ...inputShape(this.backbone.config, 1).slice(1)] },
      backbone: { file: this.backbone.source.file, sha256: this.backbone.source.sha256, cut: this.backbone.config.cut, cutReason: this.backbone.cutReason },
      head: this.spec,
      training: { ...this.fitOptions!, seed: this.seed, epochsRun: result.history.length, bestEpoch: result.bestEpoch + 1, stoppedEarly: result.stoppedEarly, history: result.history },
      ...(metrics ? { metrics } : {}),
      data: {
        root: dataset.root,
        split: dataset.split,
        trainPerClass: counts(this.data.trainRows),
        valPerClass: counts(this.data.valRows),
        skipped: this.data.skipped.length,
      },
    });
  }

  private trained(): TrainResult {
    if (!this.result) throw new GraftError('TRAIN', 'the learner has not been trained yet: call fit() first');
    return this.result;
  }
}

/** Fails before training when skipping left a class without training or validation examples. */
function checkUsable(dataset: ImageFolderDataset, labels: Int32Array, trainRows: number[], valRows: number[]): void {
  const empty: string[] = [];
  dataset.classes.forEach((name, c) => {
    const nTrain = trainRows.filter((r) => labels[r] === c).length;
    if (nTrain === 0) empty.push(`${name} (no usable training image)`);
  });
  if (empty.length) throw new GraftError('DATASET', `${dataset.root}: after skipping unreadable images, ${empty.join(', ')}`, { classes: empty });
  if (valRows.length === 0) throw new GraftError('DATASET', `${dataset.root}: no usable validation image`, {});
}

export async function learner(options: LearnerOptions): Promise<Learner> {
  return Learner.create(options);
}

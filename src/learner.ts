/**
 * The library's front door, in fastai's shape: `learner()` gathers data, backbone and head; `fit()` trains;
 * `evaluate()` measures; `export()` writes the servable model directory.
 *
 *   const learn = await learner({ data: './photos', model: 'mobilenetv2.onnx' });
 *   await learn.fit({ epochs: 30 });
 *   await learn.export('./out');
 */
import { createHash } from 'node:crypto';
import { scanImageFolder, type ImageFolderDataset, type Skipped } from './data/dataset.js';
import { GraftError } from './errors.js';
import { computeMetrics, argmaxRows, crossEntropy, type Metrics } from './evaluate/metrics.js';
import { loadBackbone, FEATURES, type Backbone } from './backbone/backbone.js';
import { FeatureExtractor, type ExtractProgress } from './backbone/extractor.js';
import { DEFAULT_HEAD, buildExportGraph, fitStandardizer, HEAD_OUTPUT, initParams, validateSpec, type Param, type HeadKind, type HeadSpec, type Standardizer } from './head/head.js';
import { mergeModels } from './onnx/surgery.js';
import { defaultOpset, encodeModel, type ModelProto } from './onnx/proto.js';
import { inputShape, type PretrainedConfig } from './preprocess/config.js';
import { isQuantized, dequantizeModel } from './onnx/dequantize.js';
import { planSuffix, prefixModel, probeShape, poolWithSuffix, suffixTrainable, withWeights, type FreezeSpec, type SuffixPlan } from './train/finetune.js';
import { DEFAULT_FIT, DEFAULT_LR, Evaluator, train, type Trainable, trainHead, type Callback, type FeatureSet, type FitOptions, type TrainResult } from './train/trainer.js';
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
  /** Set by fineTune(): the tuned float backbone and what evaluate() runs on. */
  private tuned: TunedState | undefined;
  private standardizerInUse: Standardizer;

  private constructor(readonly options: LearnerOptions, readonly backbone: Backbone, readonly data: LearnerData, readonly seed: number) {
    const head = typeof options.head === 'string' ? { kind: options.head } : (options.head ?? {});
    this.spec = { ...DEFAULT_HEAD, ...head, inputDim: backbone.config.featureDim, numClasses: data.dataset.classes.length };
    validateSpec(this.spec);
    this.standardizer = fitStandardizer(data.features.features, data.features.dim, data.trainRows);
    this.standardizerInUse = this.standardizer;
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
    this.tuned = undefined;
    this.standardizerInUse = this.standardizer;
    this.result = await trainHead(this.data.features, this.data.trainRows, this.data.valRows, this.spec, this.standardizer, this.fitOptions, callbacks);
    return this.result;
  }

  /**
   * fastai's recipe: train the head on the frozen backbone for `freezeEpochs`, then unfreeze the last
   * `unfreeze` blocks (or everything from `fineTuneAt` on) and train them with the head, the backbone at
   * `lr / lrMult`. A quantized backbone is converted to float first. The frozen prefix runs once over the
   * images; its output is cached and only the suffix is run each epoch.
   */
  async fineTune(options: FineTuneOptions, callbacks: Callback[] = []): Promise<FineTuneResult> {
    const fit: FitOptions = { ...DEFAULT_FIT, lr: DEFAULT_FINE_TUNE.lr, seed: this.seed, ...options.fit };
    const freezeEpochs = options.freezeEpochs ?? DEFAULT_FINE_TUNE.freezeEpochs;
    const lrMult = options.lrMult ?? DEFAULT_FINE_TUNE.lrMult;
    const floatModel = isQuantized(this.backbone.featureModel) ? dequantizeModel(this.backbone.featureModel).model : this.backbone.featureModel;
    const plan = planSuffix(floatModel, FEATURES, options);
    const files = [...this.data.dataset.train, ...this.data.dataset.val].map((s) => s.file);

    // Boundary activations: the frozen prefix, run once (and cached on disk like features).
    const rowShape = await probeShape(floatModel, plan.boundary, this.backbone.config);
    const prefix = prefixModel(floatModel, plan.boundary, FEATURES);
    const boundaryBackbone: Backbone = {
      ...this.backbone,
      featureModel: prefix,
      featureModelBytes: encodeModel(prefix),
      config: { ...this.backbone.config, featureDim: rowShape.reduce((a, b) => a * b, 1) },
      key: createHash('sha256').update(`${this.backbone.key}\nfloat boundary ${plan.boundary}`).digest('hex').slice(0, 32),
    };
    const extractor = new FeatureExtractor(boundaryBackbone, { ...(this.options.cacheDir !== undefined ? { cacheDir: this.options.cacheDir } : {}) });
    let activations: FeatureSet;
    try {
      const r = await extractor.extract(files, (p) => this.options.onProgress?.({ ...p, split: p.done < this.data.dataset.train.length ? 'train' : 'val' }));
      for (const row of [...this.data.trainRows, ...this.data.valRows]) {
        if (!r.valid[row]) throw new GraftError('TRAIN', `${files[row]}: decoded for features but not for fine-tuning`, { file: files[row] });
      }
      activations = { features: r.features, dim: r.dim, labels: this.data.features.labels };
    } finally {
      await extractor.close();
    }

    // Phase 1: the head on the frozen (float) backbone's pooled features.
    const frozen = await poolWithSuffix(plan, rowShape, activations, [...this.data.trainRows, ...this.data.valRows], this.backbone.config.featureDim);
    const std = fitStandardizer(frozen.features, frozen.dim, this.data.trainRows);
    const headFit = { ...fit, lr: options.headLr ?? DEFAULT_LR[this.spec.kind], epochs: freezeEpochs };
    const phase1 = freezeEpochs > 0 ? await trainHead(frozen, this.data.trainRows, this.data.valRows, this.spec, std, headFit, callbacks) : undefined;
    const headParams = phase1?.params ?? initParams(this.spec, this.seed);

    // Phase 2: suffix + head, discriminative learning rates.
    const trainable = suffixTrainable(plan, rowShape, this.spec, std, headParams, { lr: fit.lr, lrMult, weightDecay: fit.weightDecay });
    const phase2 = await train(trainable, activations, this.data.trainRows, this.data.valRows, fit, callbacks);
    const headNames = new Set(headParams.map((p) => p.name));
    const backboneParams = phase2.params.filter((p) => !headNames.has(p.name));
    this.fitOptions = fit;
    this.standardizerInUse = std;
    this.result = { ...phase2, params: phase2.params.filter((p) => headNames.has(p.name)) };
    this.tuned = { featureModel: withWeights(floatModel, backboneParams), trainable, activations, params: phase2.params, plan };
    return { phase1, phase2, boundary: plan.boundary, trainableTensors: plan.trainable.length, trainableNodes: plan.nodes.length };
  }

  /** Metrics of the trained head (and tuned backbone) on the validation rows. */
  async evaluate(): Promise<Metrics> {
    const params = this.trained().params;
    const tuned = this.tuned;
    const evaluator = tuned ? await Evaluator.create(tuned.trainable) : await Evaluator.forHead(this.spec, this.standardizerInUse);
    const data = tuned ? tuned.activations : this.data.features;
    try {
      const probs = await evaluator.probabilities(data, this.data.valRows, tuned ? tuned.params : params);
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
    const backboneModel = this.tuned?.featureModel ?? this.backbone.featureModel;
    const head = buildExportGraph(this.spec, this.standardizerInUse, result.params, defaultOpset(backboneModel));
    const merged = mergeModels(backboneModel, head, FEATURES, 'head/');
    const { dataset } = this.data;
    const counts = (rows: number[]) => this.classes.map((_, c) => rows.filter((r) => this.data.features.labels[r] === c).length);
    return writeArtifact(dir, merged, {
      task: 'image-classification',
      labels: this.classes,
      config: this.backbone.config,
      model: { input: this.backbone.config.inputName, output: HEAD_OUTPUT, inputShape: ['N', ...inputShape(this.backbone.config, 1).slice(1)] },
      backbone: { file: this.backbone.source.file, sha256: this.backbone.source.sha256, cut: this.backbone.config.cut, cutReason: this.backbone.cutReason },
      head: this.spec,
      training: {
        ...this.fitOptions!,
        seed: this.seed,
        epochsRun: result.history.length,
        bestEpoch: result.bestEpoch + 1,
        stoppedEarly: result.stoppedEarly,
        history: result.history,
        ...(this.tuned ? { fineTuned: { from: this.tuned.plan.boundary, trainableTensors: this.tuned.plan.trainable.length, float: true } } : {}),
      },
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

export interface FineTuneOptions extends FreezeSpec {
  /** Epochs of head-only training on the frozen backbone before unfreezing (default 3). */
  freezeEpochs?: number;
  /** The backbone trains at lr / lrMult (default 10). */
  lrMult?: number;
  /** Learning rate of the head-only phase (default: the head's default). */
  headLr?: number;
  /** Options of the unfrozen phase (epochs, lr = the head's rate, batch size, decay, patience). */
  fit?: Partial<FitOptions>;
}

export interface FineTuneResult {
  phase1: TrainResult | undefined;
  phase2: TrainResult;
  boundary: string;
  trainableTensors: number;
  trainableNodes: number;
}

export const DEFAULT_FINE_TUNE = { lr: 1e-4, lrMult: 10, freezeEpochs: 3 } as const;

interface TunedState {
  featureModel: ModelProto;
  trainable: Trainable;
  activations: FeatureSet;
  params: Param[];
  plan: SuffixPlan;
}

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
import { resolveModel } from './backbone/resolve.js';
import type { HubOptions } from './hub/hub.js';
import { DEFAULT_HEAD, buildExportGraph, fitStandardizer, HEAD_OUTPUT, initParams, validateSpec, type Param, type HeadKind, type HeadSpec, type Standardizer } from './head/head.js';
import { boundaries, mergeModels } from './onnx/surgery.js';
import { defaultOpset, encodeModel, type ModelProto } from './onnx/proto.js';
import { inputShape, preprocessKey, type PretrainedConfig } from './preprocess/config.js';
import { isQuantized, dequantizeModel } from './onnx/dequantize.js';
import { nchwcBlockSize } from './train/runtime.js';
import { planSuffix, prefixModel, probeShape, poolWithSuffix, suffixTrainable, withWeights, type FreezeSpec, type SuffixPlan } from './train/finetune.js';
import { DEFAULT_FIT, DEFAULT_LR, Evaluator, train, trainHead, type Callback, type FeatureSet, type FitOptions, type TrainResult } from './train/trainer.js';
import { writeArtifact, type Manifest } from './artifact/artifact.js';

export interface LearnerOptions {
  /** Dataset folder: `DIR/train/<class>/*` + `DIR/val/<class>/*`, or `DIR/<class>/*`. */
  data: string;
  /**
   * The backbone: a path of an ONNX image model, or a zoo name (`graft models`). Default: the hub
   * MobileNetV2 when cached or reachable, else the bundled offline backbone (see `notice`).
   */
  model?: string;
  /** Hub endpoint, token, cache and offline mode (default: from HF_* environment variables). */
  hub?: HubOptions;
  /** One-line messages for the user (which backbone was chosen when none was named). */
  onNotice?: (message: string) => void;
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
  /** Set once the backbone runs in float for training (fine-tuning): its weights as trained so far. */
  private tuned: TunedState | undefined;
  private float: ModelProto | undefined;
  /** What the next fit() trains besides the head (undefined: the backbone is frozen). */
  private unfrozen: FreezeSpec | undefined;
  /** What evaluate() runs: the last trained graph, its rows and weights. */
  private evaluation: { graph: Promise<Evaluator>; data: FeatureSet; params: Param[] } | undefined;
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
    const resolved = await resolveModel(options.model, {
      ...(options.hub ? { hub: options.hub } : {}),
      ...(typeof options.cacheDir === 'string' ? { cacheDir: options.cacheDir } : {}),
    });
    if (resolved.notice) options.onNotice?.(resolved.notice);
    const backbone = await loadBackbone(resolved.file, {
      ...(options.cut ? { cut: options.cut } : {}),
      ...(options.config ? { config: options.config } : {}),
      ...(resolved.config ? { modelConfig: resolved.config } : {}),
      ...(resolved.name ? { name: resolved.name } : {}),
    });
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

  /**
   * Trains what is unfrozen: by default the head alone, on the cached features of the frozen backbone; after
   * unfreeze()/freezeTo(), the unfrozen blocks of the (float) backbone with the head, continuing from the
   * current weights (and, once the backbone has been trained, a frozen backbone keeps its tuned weights).
   * Early-stops on validation loss.
   */
  async fit(options: Partial<FitOptions> = {}, callbacks: Callback[] = []): Promise<TrainResult> {
    if (this.unfrozen) return (await this.fitSuffix(this.unfrozen, false, { ...DEFAULT_FIT, lr: DEFAULT_FINE_TUNE.lr, seed: this.seed, ...options }, DEFAULT_FINE_TUNE.lrMult, callbacks)).result;
    if (this.tuned) return (await this.fitSuffix({ unfreeze: 1 }, true, { ...DEFAULT_FIT, lr: DEFAULT_LR[this.spec.kind], seed: this.seed, ...options }, 1, callbacks)).result;
    this.fitOptions = { ...DEFAULT_FIT, lr: DEFAULT_LR[this.spec.kind], seed: this.seed, ...options };
    this.standardizerInUse = this.standardizer;
    this.result = await trainHead(this.data.features, this.data.trainRows, this.data.valRows, this.spec, this.standardizer, this.fitOptions, callbacks);
    this.setEvaluation(Evaluator.forHead(this.spec, this.standardizer), this.data.features, this.result.params);
    return this.result;
  }

  /** Number of blocks of the backbone (block boundaries: residual joins and branch points). */
  blockCount(): number {
    return boundaries(this.floatModel().graph!, FEATURES).filter((b) => b.block).length;
  }

  /** fastai's freeze(): the next fit() trains the head only. */
  freeze(): void {
    this.unfrozen = undefined;
  }

  /** The next fit() trains every block of the backbone with the head. */
  unfreeze(): void {
    this.unfrozen = { unfreeze: this.blockCount() };
  }

  /**
   * fastai's freezeTo over the parameter groups [block 1, …, block B, head]: groups before `n` are frozen;
   * a negative `n` counts from the end (freezeTo(-1): the head only; freezeTo(-3): the last 2 blocks + head).
   */
  freezeTo(n: number): void {
    const groups = this.blockCount() + 1;
    if (!Number.isInteger(n) || n === 0 || Math.abs(n) > groups) throw new GraftError('USAGE', `freezeTo(${n}): expected ±1 … ±${groups} (${groups - 1} blocks + the head)`);
    const trainable = n < 0 ? -n : groups - n;
    this.unfrozen = trainable > 1 ? { unfreeze: trainable - 1 } : undefined;
  }

  /**
   * fastai's recipe: train the head on the frozen backbone for `freezeEpochs`, then unfreeze the last
   * `unfreeze` blocks (or everything from `fineTuneAt` on) and train them with the head, the backbone at
   * `lr / lrMult`; with `gradual`, one more block is unfrozen at each stage. A quantized backbone is converted
   * to float first. The frozen prefix runs once over the images (cached); only the suffix runs each epoch.
   */
  async fineTune(options: FineTuneOptions, callbacks: Callback[] = []): Promise<FineTuneResult> {
    const fit: FitOptions = { ...DEFAULT_FIT, lr: DEFAULT_FINE_TUNE.lr, seed: this.seed, ...options.fit };
    const freezeEpochs = options.freezeEpochs ?? DEFAULT_FINE_TUNE.freezeEpochs;
    const lrMult = options.lrMult ?? DEFAULT_FINE_TUNE.lrMult;
    const model = this.floatModel();
    const plan = planSuffix(model, FEATURES, options);

    // Phase 1: the head on the frozen (float) backbone's pooled features, computed from the boundary activations.
    const { rowShape, activations } = await this.activationsAt(model, plan);
    const pooled = await poolWithSuffix(plan, rowShape, activations, [...this.data.trainRows, ...this.data.valRows], this.backbone.config.featureDim);
    const std = fitStandardizer(pooled.features, pooled.dim, this.data.trainRows);
    let phase1: TrainResult | undefined;
    if (freezeEpochs > 0) {
      const headFit = { ...fit, lr: options.headLr ?? DEFAULT_LR[this.spec.kind], epochs: freezeEpochs };
      phase1 = await trainHead(pooled, this.data.trainRows, this.data.valRows, this.spec, std, headFit, callbacks);
    }
    this.standardizerInUse = std;
    this.result = phase1 ?? { params: initParams(this.spec, this.seed), history: [], bestEpoch: -1, stoppedEarly: false };
    this.tuned = { featureModel: model, from: plan.boundary, trainableTensors: 0 };
    this.setEvaluation(Evaluator.forHead(this.spec, std), pooled, this.result.params);

    // Phase 2: suffix + head with discriminative learning rates; gradually, one block more per stage.
    const stages: FreezeSpec[] = [];
    if (options.gradual && options.unfreeze !== undefined) for (let k = 1; k <= options.unfreeze; k++) stages.push({ unfreeze: k, ...(options.batchNorm ? { batchNorm: options.batchNorm } : {}) });
    else stages.push(options);
    let phase2: TrainResult | undefined;
    let last = plan;
    for (let i = 0; i < stages.length; i++) {
      const epochs = Math.max(1, Math.round(fit.epochs / stages.length));
      // The stages only train blocks after the phase-1 boundary, so its activations stay valid.
      ({ result: phase2, plan: last } = await this.fitSuffix(stages[i]!, false, { ...fit, epochs }, lrMult, callbacks, i === stages.length - 1 ? fit : undefined, { plan, rowShape, activations }));
    }
    return { phase1, phase2: phase2!, boundary: last.boundary, trainableTensors: last.trainable.length, trainableNodes: last.nodes.length };
  }

  /** Metrics of the trained head (and tuned backbone) on the validation rows. */
  async evaluate(): Promise<Metrics> {
    this.trained();
    const { graph, data, params } = this.evaluation!;
    const evaluator = await graph;
    const probs = await evaluator.probabilities(data, this.data.valRows, params);
    const truth = Int32Array.from(this.data.valRows, (r) => this.data.features.labels[r]!);
    const loss = crossEntropy(probs, this.spec.numClasses, truth);
    return computeMetrics(this.classes, truth, argmaxRows(probs, this.spec.numClasses), { loss });
  }

  /** Replaces what evaluate() runs, releasing the previous evaluation session. */
  private setEvaluation(graph: Promise<Evaluator>, data: FeatureSet, params: Param[]): void {
    const previous = this.evaluation?.graph;
    this.evaluation = { graph, data, params };
    void previous?.then((e) => e.release(), () => undefined);
  }

  /** Releases the sessions the learner holds (the evaluation graph). */
  async close(): Promise<void> {
    const graph = this.evaluation?.graph;
    this.evaluation = undefined;
    await graph?.then((e) => e.release(), () => undefined);
  }

  /** The backbone in float (quantized ones converted once), with any fine-tuned weights. */
  private floatModel(): ModelProto {
    if (this.tuned) return this.tuned.featureModel;
    this.float ??= isQuantized(this.backbone.featureModel) ? dequantizeModel(this.backbone.featureModel).model : this.backbone.featureModel;
    return this.float;
  }

  /**
   * Activations at the plan's boundary for every image, from the frozen prefix run as an ordinary session
   * (weights as initializers). Cached on disk under the prefix's content hash, so tuned weights never hit
   * stale entries.
   */
  private async activationsAt(model: ModelProto, plan: SuffixPlan): Promise<{ rowShape: number[]; activations: FeatureSet }> {
    const files = [...this.data.dataset.train, ...this.data.dataset.val].map((s) => s.file);
    const rowShape = await probeShape(model, plan.boundary, this.backbone.config);
    const prefix = prefixModel(model, plan.boundary, FEATURES);
    const bytes = encodeModel(prefix);
    const boundaryBackbone: Backbone = {
      ...this.backbone,
      featureModel: prefix,
      featureModelBytes: bytes,
      config: { ...this.backbone.config, featureDim: rowShape.reduce((a, b) => a * b, 1) },
      key: createHash('sha256').update(bytes).update(`\n${preprocessKey(this.backbone.config)}`).digest('hex').slice(0, 32),
    };
    const extractor = new FeatureExtractor(boundaryBackbone, { ...(this.options.cacheDir !== undefined ? { cacheDir: this.options.cacheDir } : {}) });
    try {
      const r = await extractor.extract(files, (p) => this.options.onProgress?.({ ...p, split: p.done < this.data.dataset.train.length ? 'train' : 'val' }));
      for (const row of [...this.data.trainRows, ...this.data.valRows]) {
        if (!r.valid[row]) throw new GraftError('TRAIN', `${files[row]}: decoded for features but not for fine-tuning`, { file: files[row] });
      }
      return { rowShape, activations: { features: r.features, dim: r.dim, labels: this.data.features.labels } };
    } finally {
      await extractor.close();
    }
  }

  /** Trains the suffix after `spec`'s boundary with the head (or, with `frozenBackbone`, the head alone through it). */
  private async fitSuffix(
    spec: FreezeSpec,
    frozenBackbone: boolean,
    fit: FitOptions,
    lrMult: number,
    callbacks: Callback[],
    record: FitOptions = fit,
    extracted?: { plan: SuffixPlan; rowShape: number[]; activations: FeatureSet },
  ): Promise<{ result: TrainResult; plan: SuffixPlan }> {
    const model = this.floatModel();
    const plan = planSuffix(model, FEATURES, spec);
    const { rowShape, activations } = extracted?.plan.boundary === plan.boundary ? extracted : await this.activationsAt(model, plan);
    if (!this.result) {
      // No head yet: standardise on the float backbone's own pooled features.
      const pooled = await poolWithSuffix(plan, rowShape, activations, this.data.trainRows, this.backbone.config.featureDim);
      this.standardizerInUse = fitStandardizer(pooled.features, pooled.dim, this.data.trainRows);
    }
    const head = (this.result?.params ?? initParams(this.spec, this.seed)).map((p) => ({ ...p, data: p.data.slice() }));
    const trainable = suffixTrainable(plan, rowShape, this.spec, this.standardizerInUse, head, {
      lr: fit.lr,
      lrMult,
      weightDecay: fit.weightDecay,
      batchSize: Math.min(fit.batchSize, this.data.trainRows.length),
      nchwcBlock: await nchwcBlockSize(),
    });
    if (frozenBackbone) trainable.groups[0]!.frozen = true;
    const result = await train(trainable, activations, this.data.trainRows, this.data.valRows, fit, callbacks);
    const headNames = new Set(head.map((p) => p.name));
    // Running statistics (batchNorm 'train') go into the exported backbone with the trained weights.
    const statistics = (trainable.state ?? []).map((t) => ({ name: t.name, dims: t.dims, data: t.data, decay: false }));
    const backboneParams = [...result.params.filter((p) => !headNames.has(p.name)), ...statistics];
    this.fitOptions = record;
    this.result = { ...result, params: result.params.filter((p) => headNames.has(p.name)) };
    this.tuned = { featureModel: withWeights(model, backboneParams), from: plan.boundary, trainableTensors: frozenBackbone ? 0 : plan.trainable.length };
    this.setEvaluation(Evaluator.create(trainable), activations, [...result.params, ...statistics]);
    return { result, plan };
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
      backbone: { ...(this.backbone.source.name ? { name: this.backbone.source.name } : {}), file: this.backbone.source.file, sha256: this.backbone.source.sha256, cut: this.backbone.config.cut, cutReason: this.backbone.cutReason },
      head: this.spec,
      training: {
        ...this.fitOptions!,
        seed: this.seed,
        epochsRun: result.history.length,
        bestEpoch: result.bestEpoch + 1,
        stoppedEarly: result.stoppedEarly,
        history: result.history,
        ...(this.tuned ? { fineTuned: { from: this.tuned.from, trainableTensors: this.tuned.trainableTensors, float: true } } : {}),
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
  /** Unfreeze one more block per stage (1, 2, …, unfreeze), the epochs shared between stages. */
  gradual?: boolean;
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
  /** The float backbone with its current weights (what export writes). */
  featureModel: ModelProto;
  /** Where the last backbone training started, and how many weight tensors it trained. */
  from: string;
  trainableTensors: number;
}

/**
 * The library's front door, in fastai's shape: `learner()` gathers data, backbone and head; `fit()` trains;
 * `evaluate()` measures; `export()` writes the servable model directory. The modality (images, texts) is
 * data: it comes from the dataset, and the backbone brings the input pipeline that matches it.
 *
 *   const learn = await learner({ data: './photos', model: 'mobilenetv2.onnx' });
 *   await learn.fit({ epochs: 30 });
 *   await learn.export('./out');
 *
 *   const spam = await learner({ data: './sms.csv' });   // texts: the offline sentence encoder by default
 */
import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Dataset, type Modality, type Sample, type Skipped } from './data/dataset.js';
import { openDataset } from './data/open.js';
import { GraftError } from './errors.js';
import { computeMetrics, argmaxRows, crossEntropy, type Metrics } from './evaluate/metrics.js';
import { calibration, confusedPairs, crossValidationFolds, mislabelCandidates, nearDuplicates, topLosses, type Diagnostics, type SampleRef } from './evaluate/diagnostics.js';
export type { Diagnostics, SampleRef } from './evaluate/diagnostics.js';
import { loadAudioBackbone, loadBackbone, loadTextBackbone, FEATURES, type Backbone, type TextBackbone } from './backbone/backbone.js';
import { FeatureExtractor, type ExtractInput, type ExtractProgress, type TokenStats } from './backbone/extractor.js';
import { resolveModel } from './backbone/resolve.js';
import { defaultCacheDir, parseSize } from './backbone/cache.js';
import { DEFAULT_ROW_MEMORY, RowStore } from './util/row-store.js';
import type { HubOptions } from './hub/hub.js';
import { DEFAULT_HEAD, buildExportGraph, fitStandardizer, HEAD_OUTPUT, initParams, validateSpec, type Param, type HeadKind, type HeadSpec, type Standardizer } from './head/head.js';
import { boundaries, mergeModels } from './onnx/surgery.js';
import { defaultOpset, encodeModel, type ModelProto } from './onnx/proto.js';
import type { PretrainedConfig } from './preprocess/config.js';
import { feedSpecs, pipelineKey } from './preprocess/pipeline.js';
import type { TextPooling } from './preprocess/text.js';
import type { AudioPooling } from './preprocess/audio.js';
import { isQuantized, dequantizeModel } from './onnx/dequantize.js';
import { nchwcBlockSize } from './train/runtime.js';
import { planSuffix, planWindowSuffix, WINDOW_MASK, prefixModel, probeShape, poolWithSuffix, suffixTrainable, unfreezePoints, withWeights, type FreezeSpec, type SuffixPlan } from './train/finetune.js';
import { denseRows, sequenceRows, type Rows, type SideInput } from './train/rows.js';
import { DEFAULT_LR_RANGE, lrFind, type LrFindResult, type LrRange } from './train/lr-find.js';
import { DEFAULT_FIT, DEFAULT_LR, Evaluator, headTrainable, train, trainHead, type Callback, type FeatureSet, type FitOptions, type TrainResult } from './train/trainer.js';
import { augmentedRows, extractViews, planViews, totalRows, ttaMap, viewMap, type AugmentOptions, type ViewBlock } from './train/views.js';
import { CheckpointStore, type Checkpointing } from './train/checkpoint.js';
import { fitLogisticHead, selectHead, type HeadSelection } from './train/select-head.js';
import { writeArtifact, type Manifest, type ManifestDraft } from './artifact/artifact.js';
import { digestSamples, splitRecord, SPLIT_FILE } from './artifact/split.js';
import { concatArrays } from './util/buffer.js';

/** Data augmentation (`augment`, `views`, `tta`): see AugmentOptions. */
export interface LearnerOptions extends AugmentOptions {
  /**
   * The dataset: an image folder (`DIR/train/<class>/*` + `DIR/val/<class>/*`, or `DIR/<class>/*`), a text table
   * (`.csv`/`.tsv`/`.jsonl`, or a folder with `train.<ext>` + `val.<ext>`), class folders of `.txt` documents, or
   * a manifest (`path`, `label`, `split` columns). The modality is detected from it.
   */
  data: string;
  /** Overrides the detected modality. */
  task?: 'image' | 'text' | 'audio';
  /** Text tables: the column(s) holding the text (several are joined, e.g. title + body) and the label column. */
  textColumns?: string[];
  labelColumn?: string;
  /** A folder of files labelled by name: the pattern (`{label}_{speaker}_{index}.wav`) and the validation rule (`index<5`). */
  namePattern?: string;
  valWhere?: string;
  /**
   * The backbone: a path of an ONNX model, a zoo name (`graft models`), or a hub repository. Default for images:
   * the hub MobileNetV2 when cached or reachable, else the bundled offline backbone; for texts: the hub MiniLM
   * when cached or reachable, else the bundled Universal Sentence Encoder lite (see `onNotice`).
   */
  model?: string;
  /** Hub endpoint, token, cache and offline mode (default: from HF_* environment variables). */
  hub?: HubOptions;
  /** One-line messages for the user (which backbone was chosen when none was named). */
  onNotice?: (message: string) => void;
  /** Tensor to cut the model at (default: the input of its last global pooling; a text encoder's last_hidden_state). */
  cut?: string;
  /** Image preprocessing overrides on top of the model's own config. */
  config?: Partial<PretrainedConfig>;
  /** Text encoders: tokens per text (special tokens included) and how token states are pooled; audio: how windows are pooled. */
  maxLength?: number;
  pooling?: Exclude<TextPooling, 'model'> | AudioPooling;
  /**
   * The new head. `auto` (default): chosen by cross-validation on the training rows (train/select-head.ts) among
   * the L2 logistic regression (C on a grid, solved exactly), the MLP head and the two averaged (`ensemble`);
   * `logistic`: the logistic regression, its C by cross-validation; `mlp` / `linear` / `ensemble` (or explicit MLP
   * sizes): that head, trained by the optimizer.
   */
  head?: HeadChoice | Partial<Pick<HeadSpec, 'kind' | 'hidden' | 'dropout'>>;
  /** Validation fraction when the dataset has no split of its own (default 0.2). */
  valSplit?: number;
  seed?: number;
  /** Feature cache root, or false for none. */
  cacheDir?: string | false;
  /**
   * Bytes of fine-tuning boundary activations held in memory (default `$GRAFT_MEMORY_BUDGET`, else 1 GiB); the
   * rest go to a spill file under the cache root (or the system's temporary folder) and are read back per batch.
   */
  memoryBudget?: number;
  /**
   * Checkpoint every training here (train/checkpoint.ts), after every epoch of fit() and of each phase of
   * fineTune(): a learner made with the same options that repeats the same calls after a crash or a kill continues
   * each training from its last epoch (or skips one that had finished) and ends with the same weights, bit for bit.
   * A checkpoint written by different data, options or earlier trainings is ignored (one line to `onNotice`) and
   * overwritten. discardCheckpoints() removes the folder once the results are saved.
   */
  checkpointDir?: string;
  /** Extraction progress; `view` names the augmented view being extracted (1…K, or 'mirror' for test-time augmentation). */
  onProgress?: (p: ExtractProgress & { split: 'train' | 'val'; view?: number | 'mirror' }) => void;
}

export interface LearnerData {
  dataset: Dataset;
  features: FeatureSet;
  trainRows: number[];
  valRows: number[];
  /** Every sample skipped, at scan time or because it could not be encoded. */
  skipped: Skipped[];
  extraction: { cached: number; extracted: number; seconds: number; tokens?: TokenStats; views?: { rows: number; cached: number; extracted: number; seconds: number } };
  /** Augmented rows after the clean ones (views of training rows, mirrored validation rows); empty without augmentation. */
  viewBlocks: ViewBlock[];
}

/** Where the augmented views stand: not extracted, or extracted (their validity recorded) as pooled features and/or at a fine-tuning boundary. */
interface ViewState {
  recorded: boolean;
  pooled: boolean;
}

/**
 * The backbone's weights: the pretrained ones (the float copy made once when fine-tuning needs it), or ones
 * trained since (fine-tuning), with where that training started and how many weight tensors it changed.
 */
type BackboneWeights = { kind: 'pretrained'; float?: ModelProto } | { kind: 'tuned'; model: ModelProto; from: string; trainableTensors: number; timing?: FineTuneTiming; encoderDropout?: number };

/** The outcome of the last training: weights, options, the standardiser in use and the graph evaluate() runs. */
interface Trained {
  result: TrainResult;
  fit: FitOptions;
  standardizer: Standardizer;
  /** Released by close(). */
  evaluation: { graph: Promise<Evaluator>; data: Rows | FeatureSet; params: Param[] } | undefined;
}

/** How the head is chosen (LearnerOptions.head). */
export type HeadChoice = 'auto' | 'logistic' | HeadKind;

export class Learner {
  private headSpec: HeadSpec;
  /** auto / logistic: the head is chosen by cross-validation when it first trains (selectHead). */
  private readonly choice: 'auto' | 'logistic' | 'fixed';
  /** The last head selection (undefined before a head trains, or for a fixed head). */
  selection: HeadSelection | undefined;
  /** Standardiser of the pretrained backbone's pooled features (training rows). */
  readonly standardizer: Standardizer;
  private weights: BackboneWeights = { kind: 'pretrained' };
  /** What the next fit() trains besides the head (undefined: the backbone is frozen). */
  private unfrozen: FreezeSpec | undefined;
  private trained: Trained | undefined;
  private readonly viewState: ViewState = { recorded: false, pooled: false };
  private readonly checkpoints: CheckpointStore | undefined;
  /** Trainings started so far: each one's checkpoint is named by its place in the run. */
  private trainings = 0;
  private dataKeyMemo: string | undefined;

  private constructor(readonly options: LearnerOptions, readonly backbone: Backbone, readonly data: LearnerData, readonly seed: number) {
    const option = options.head ?? 'auto';
    this.choice = option === 'auto' || option === 'logistic' ? option : 'fixed';
    const head = option === 'auto' ? {} : option === 'logistic' ? { kind: 'linear' as const } : typeof option === 'string' ? { kind: option } : option;
    this.headSpec = { ...DEFAULT_HEAD, ...head, inputDim: backbone.config.featureDim, numClasses: data.dataset.classes.length };
    validateSpec(this.headSpec);
    this.standardizer = fitStandardizer(data.features.features, data.features.dim, data.trainRows);
    this.checkpoints = options.checkpointDir === undefined ? undefined : new CheckpointStore(options.checkpointDir, options.onNotice);
  }

  /** How the next training checkpoints (undefined without `checkpointDir`); every training takes the next number. */
  private checkpointing(kind: 'head' | 'fine-tune'): Checkpointing | undefined {
    const n = ++this.trainings;
    if (!this.checkpoints) return undefined;
    // The rows' source: every training's rows derive from these features' samples and this backbone.
    this.dataKeyMemo ??= createHash('sha256')
      .update(`${this.backbone.key}\n`)
      .update(new Uint8Array(this.data.features.labels.buffer, this.data.features.labels.byteOffset, this.data.features.labels.byteLength))
      .update(new Uint8Array(this.data.features.features.buffer, this.data.features.features.byteOffset, this.data.features.features.byteLength))
      .digest('hex');
    return { store: this.checkpoints, phase: `${n}-${kind}`, label: `${kind === 'head' ? 'head training' : 'fine-tuning'} (phase ${n})`, dataKey: this.dataKeyMemo };
  }

  /** Removes the checkpoint folder (`checkpointDir`): call it once what the trainings produced is saved. */
  async discardCheckpoints(): Promise<void> {
    if (this.checkpoints) await CheckpointStore.remove(this.checkpoints.dir);
  }

  /** Reads the dataset, loads and cuts the backbone, and extracts (or reads cached) features. */
  static async create(options: LearnerOptions): Promise<Learner> {
    const seed = options.seed ?? 0;
    const dataset = await openDataset(options.data, {
      ...(options.task ? { task: options.task } : {}),
      ...(options.valSplit !== undefined ? { valSplit: options.valSplit } : {}),
      seed,
      ...(options.textColumns ? { textColumns: options.textColumns } : {}),
      ...(options.labelColumn ? { labelColumn: options.labelColumn } : {}),
      ...(options.namePattern ? { namePattern: options.namePattern } : {}),
      ...(options.valWhere ? { valWhere: options.valWhere } : {}),
    });
    const backbone = await Learner.backboneFor(dataset.modality, options);
    const extractor = new FeatureExtractor(backbone, { ...(options.cacheDir !== undefined ? { cacheDir: options.cacheDir } : {}) });
    try {
      const samples = [...dataset.train, ...dataset.val];
      const nTrain = dataset.train.length;
      const result = await extractor.extract(samples.map(extractInput), (p) => options.onProgress?.({ ...p, split: p.done < nTrain ? 'train' : 'val' }));
      const trainRows: number[] = [];
      const valRows: number[] = [];
      samples.forEach((_, i) => {
        if (result.valid[i]) (i < nTrain ? trainRows : valRows).push(i);
      });
      const cleanLabels = Int32Array.from(samples, (s) => s.label);
      checkUsable(dataset, cleanLabels, trainRows, valRows);
      // Augmented views are extracted when a training needs them: pooled for the head (fit), or only at the
      // boundary when fine-tuning (activationsAt). Their rows' labels are known now.
      const viewBlocks = planViews(dataset.modality, options, seed, samples.length, trainRows, valRows);
      const labels = new Int32Array(totalRows(samples.length, viewBlocks));
      labels.set(cleanLabels);
      for (const b of viewBlocks) b.rows.forEach((r, j) => (labels[b.offset + j] = cleanLabels[r]!));
      const data: LearnerData = {
        dataset,
        features: { features: result.features, dim: result.dim, labels },
        trainRows,
        valRows,
        skipped: [...dataset.skipped, ...result.skipped].sort((a, b) => a.file.localeCompare(b.file) || (a.line ?? 0) - (b.line ?? 0)),
        extraction: {
          cached: result.cached,
          extracted: result.extracted,
          seconds: result.seconds,
          ...(result.tokenStats ? { tokens: result.tokenStats } : {}),
        },
        viewBlocks,
      };
      return new Learner(options, backbone, data, seed);
    } finally {
      await extractor.close();
    }
  }

  private static async backboneFor(modality: Modality, options: LearnerOptions): Promise<Backbone> {
    // 'mean' means the masked mean of token states for text, the mean over windows for audio.
    const audioPooling: AudioPooling | undefined = modality !== 'audio' ? undefined : options.pooling === 'mean+max' ? 'mean+max' : options.pooling === 'mean' || options.pooling === 'masked-mean' ? 'mean' : undefined;
    if (modality === 'audio' && options.pooling !== undefined && !audioPooling) throw new GraftError('USAGE', `pooling ${options.pooling} is for text; audio windows pool by mean or mean+max`);
    if (modality !== 'audio' && options.pooling === 'mean+max') throw new GraftError('USAGE', 'pooling mean+max is for audio backbones (text: mean or cls)');
    const resolved = await resolveModel(options.model, {
      task: modality,
      ...(audioPooling ? { audioPooling } : {}),
      ...(options.hub ? { hub: options.hub } : {}),
      ...(typeof options.cacheDir === 'string' ? { cacheDir: options.cacheDir } : {}),
    });
    if (resolved.notice) options.onNotice?.(resolved.notice);
    if (modality === 'image') {
      if (options.maxLength !== undefined || options.pooling !== undefined) throw new GraftError('USAGE', 'maxLength and pooling are options of text backbones; this dataset holds images');
      return loadBackbone(resolved.file, {
        ...(options.cut ? { cut: options.cut } : {}),
        ...(options.config ? { config: options.config } : {}),
        ...(resolved.config ? { modelConfig: resolved.config } : {}),
        ...(resolved.name ? { name: resolved.name } : {}),
      });
    }
    if (options.config) throw new GraftError('USAGE', `config (image preprocessing) does not apply to a ${modality} dataset`);
    if (modality === 'audio') {
      if (options.maxLength !== undefined) throw new GraftError('USAGE', 'maxLength is an option of text backbones; this dataset holds audio');
      return loadAudioBackbone(resolved.file, {
        ...(options.cut ? { cut: options.cut } : {}),
        ...(resolved.audio ? { modelConfig: resolved.audio } : {}),
        ...(audioPooling ? { config: { pooling: audioPooling } } : {}),
        ...(resolved.name ? { name: resolved.name } : {}),
      });
    }
    return loadTextBackbone(resolved.file, {
      tokenizer: resolved.tokenizer!,
      ...(options.cut ? { cut: options.cut } : {}),
      ...(options.maxLength !== undefined ? { maxLength: options.maxLength } : {}),
      ...((options.pooling ?? resolved.text?.pooling) ? { pooling: (options.pooling === 'mean' ? 'masked-mean' : (options.pooling ?? resolved.text?.pooling)) as Exclude<TextPooling, 'model'> } : {}),
      ...(resolved.text?.normalize ? { normalize: true } : {}),
      ...(resolved.name ? { name: resolved.name } : {}),
    });
  }

  get classes(): string[] {
    return this.data.dataset.classes;
  }

  get modality(): Modality {
    return this.data.dataset.modality;
  }

  /** The head's architecture: before an `auto` head is chosen, the MLP's. */
  get spec(): HeadSpec {
    return this.headSpec;
  }

  /**
   * Trains the head alone on pooled features: an `auto` or `logistic` head is chosen first by cross-validation on
   * the training rows (selectHead), and a logistic one is solved for rather than trained.
   */
  private async trainHeadOn(set: FeatureSet, std: Standardizer, fit: FitOptions, callbacks: Callback[]): Promise<TrainResult> {
    const checkpoint = this.checkpointing('head');
    if (this.choice === 'fixed') return trainHead(set, this.data.trainRows, this.data.valRows, this.headSpec, std, fit, callbacks, checkpoint);
    const mlp: HeadSpec = { ...DEFAULT_HEAD, inputDim: this.headSpec.inputDim, numClasses: this.headSpec.numClasses };
    const numClasses = this.headSpec.numClasses;
    const selection = await selectHead(set, this.data.trainRows, numClasses, {
      logistic: true,
      ...(this.choice === 'auto' ? { mlp: { spec: mlp, fit } } : {}),
      seed: this.seed,
      metric: fit.monitor === 'macro-f1' ? 'macro-f1' : 'accuracy',
    });
    this.selection = selection;
    const chosen = selection.chosen;
    this.headSpec = chosen.kind === 'logistic' ? { kind: 'linear', hidden: 0, dropout: 0, inputDim: mlp.inputDim, numClasses } : { ...mlp, kind: chosen.kind };
    return this.fitChosen(set, this.data.trainRows, this.data.valRows, std, fit, callbacks, checkpoint);
  }

  /**
   * The chosen head fitted on `train`: the MLP by the optimizer (early-stopped on `val`), the logistic regression
   * solved, or both for the ensemble (its history is the MLP's epochs). `val` only reports and early-stops.
   */
  private async fitChosen(set: FeatureSet, train: readonly number[], val: readonly number[], std: Standardizer, fit: FitOptions, callbacks: Callback[], checkpoint?: Checkpointing): Promise<TrainResult> {
    const chosen = this.selection?.chosen;
    if (!chosen || chosen.kind === 'mlp') return trainHead(set, train, val, this.headSpec, std, fit, callbacks, checkpoint);
    const linear: HeadSpec = { ...this.headSpec, kind: 'linear' };
    if (chosen.kind === 'logistic') return fitLogisticHead(set, train, val, linear, std, chosen.C, fit, callbacks);
    const mlp = await trainHead(set, train, val, { ...this.headSpec, kind: 'mlp' }, std, fit, callbacks, checkpoint);
    const logistic = await fitLogisticHead(set, train, val, linear, std, chosen.C, fit);
    return { ...mlp, params: [...mlp.params, ...logistic.params] };
  }

  /**
   * The head's default learning rate: DEFAULT_LR, but 1e-3 for the MLP head on text embeddings (measured on
   * SMS spam with the bundled sentence encoder, 5 seeded splits: spam F1 0.971 vs 0.966 at 3e-4; on images
   * 3e-4 stays best, hymenoptera 0.956 vs 0.948).
   */
  private headLr(): number {
    // A head still to be chosen trains its MLP candidate at the MLP's rate (the logistic one has no rate).
    const kind = this.choice === 'fixed' ? this.headSpec.kind : 'mlp';
    return this.modality === 'text' && kind === 'mlp' ? TEXT_MLP_LR : DEFAULT_LR[kind];
  }

  /** The last training's result (undefined before the first fit). */
  get result(): TrainResult | undefined {
    return this.trained?.result;
  }

  /**
   * Trains what is unfrozen: by default the head alone, on the cached features of the frozen backbone; after
   * unfreeze()/freezeTo(), the unfrozen blocks of the (float) backbone with the head, continuing from the
   * current weights (and, once the backbone has been trained, a frozen backbone keeps its tuned weights).
   * Early-stops on validation loss.
   */
  async fit(options: Partial<FitOptions> = {}, callbacks: Callback[] = []): Promise<TrainResult> {
    if (this.unfrozen) return (await this.fitSuffix(this.unfrozen, false, { ...DEFAULT_FIT, lr: DEFAULT_FINE_TUNE.lr, seed: this.seed, ...options }, DEFAULT_FINE_TUNE.lrMult, callbacks)).result;
    if (this.weights.kind === 'tuned') return (await this.fitSuffix({ unfreeze: 1 }, true, { ...DEFAULT_FIT, lr: this.headLr(), seed: this.seed, ...options }, 1, callbacks)).result;
    const fit = { ...DEFAULT_FIT, lr: this.headLr(), seed: this.seed, ...options };
    await this.ensureViewFeatures();
    const result = await this.trainHeadOn(this.data.features, this.standardizer, fit, callbacks);
    this.setTrained({ result, fit, standardizer: this.standardizer, evaluation: { graph: Evaluator.forHead(this.spec, this.standardizer), data: this.data.features, params: result.params } });
    return result;
  }

  /**
   * Number of the backbone's units `unfreeze` counts: encoder layers of a transformer whose nodes are named by
   * layer, else blocks (block boundaries: residual joins and branch points).
   */
  blockCount(): number {
    const { unit, points } = unfreezePoints(boundaries(this.floatModel().graph!, FEATURES));
    return unit === 'layer' ? points.length - 1 : points.length;
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
   * `unfreeze` blocks or encoder layers (or everything from `fineTuneAt` on) and train them with the head, the
   * backbone at `lr / lrMult`; with `gradual`, one more block is unfrozen at each stage. A quantized backbone is
   * converted to float first. The frozen prefix runs once over the samples (cached); only the suffix runs each epoch.
   */
  async fineTune(options: FineTuneOptions, callbacks: Callback[] = []): Promise<FineTuneResult> {
    const clock = stopwatch();
    const model = this.floatModel();
    const plan = this.plan(model, options);

    // Phase 1: the head on the frozen (float) backbone's pooled features, computed from the boundary activations.
    const { rowShape, activations } = await this.activationsAt(model, plan);
    try {
      return await this.fineTuneOn(options, callbacks, plan, rowShape, activations, clock);
    } catch (e) {
      // Kept by the evaluation once phase 2 has trained; otherwise nothing reads them any more.
      if (this.trained?.evaluation?.data !== activations) releaseRows(activations);
      throw e;
    }
  }

  private async fineTuneOn(options: FineTuneOptions, callbacks: Callback[], plan: SuffixPlan, rowShape: number[], activations: Rows, clock: ReturnType<typeof stopwatch>): Promise<FineTuneResult> {
    const defaults = fineTuneDefaults(this.modality);
    const fit: FitOptions = { ...DEFAULT_FIT, ...defaults.fit, seed: this.seed, ...options.fit };
    const freezeEpochs = options.freezeEpochs ?? defaults.freezeEpochs;
    const lrMult = options.lrMult ?? defaults.lrMult;
    const model = this.floatModel();
    const pooled: FeatureSet = await poolWithSuffix(plan, rowShape, activations, [...this.data.trainRows, ...this.data.valRows, ...augmentedRows(this.data.viewBlocks)], this.backbone.config.featureDim);
    if (this.data.features.views) pooled.views = this.data.features.views;
    const std = fitStandardizer(pooled.features, pooled.dim, this.data.trainRows);
    const prefixSeconds = clock.lap();
    let phase1: TrainResult | undefined;
    const headFit = { ...fit, lr: options.headLr ?? this.headLr(), epochs: freezeEpochs };
    if (freezeEpochs > 0) phase1 = await this.trainHeadOn(pooled, std, headFit, callbacks);
    const headSeconds = clock.lap();
    const result = phase1 ?? { params: initParams(this.spec, this.seed), history: [], bestEpoch: -1, stoppedEarly: false };
    this.weights = { kind: 'tuned', model, from: plan.boundary, trainableTensors: 0 };
    this.setTrained({ result, fit: headFit, standardizer: std, evaluation: { graph: Evaluator.forHead(this.spec, std), data: pooled, params: result.params } });

    // Phase 2: suffix + head with discriminative learning rates; gradually, one block more per stage.
    const stages: FreezeSpec[] = [];
    if (options.gradual && options.unfreeze !== undefined) for (let k = 1; k <= options.unfreeze; k++) stages.push({ unfreeze: k, ...(options.batchNorm ? { batchNorm: options.batchNorm } : {}), ...(options.encoderDropout !== undefined ? { encoderDropout: options.encoderDropout } : {}) });
    else stages.push(options);
    let phase2: TrainResult | undefined;
    let last = plan;
    const stageSeconds: number[] = [];
    for (let i = 0; i < stages.length; i++) {
      const epochs = Math.max(1, Math.round(fit.epochs / stages.length));
      // The stages only train blocks after the phase-1 boundary, so its activations stay valid.
      ({ result: phase2, plan: last } = await this.fitSuffix(stages[i]!, false, { ...fit, epochs }, lrMult, callbacks, i === stages.length - 1 ? fit : undefined, { plan, rowShape, activations }));
      stageSeconds.push(clock.lap());
    }
    const timing: FineTuneTiming = {
      prefix: prefixSeconds,
      head: headSeconds,
      fineTune: stageSeconds.reduce((a, b) => a + b, 0),
      stages: stageSeconds,
      total: clock.total(),
    };
    if (this.weights.kind === 'tuned') this.weights.timing = timing;
    const activationBytes = activations.stored?.() ?? { memory: 0, disk: 0 };
    return { phase1, phase2: phase2!, boundary: last.boundary, trainableTensors: last.trainable.length, trainableNodes: last.nodes.length, unit: last.unit, timing, activations: activationBytes };
  }

  /** Metrics of the trained head (and tuned backbone) on the validation rows. */
  async evaluate(): Promise<Metrics> {
    const probs = await this.validationProbabilities('evaluate()');
    const truth = Int32Array.from(this.data.valRows, (r) => this.data.features.labels[r]!);
    const loss = crossEntropy(probs, this.spec.numClasses, truth);
    return computeMetrics(this.classes, truth, argmaxRows(probs, this.spec.numClasses), { loss });
  }

  /**
   * The learning-rate range test on the head's training graph, from fresh head weights (the learner's state is
   * untouched): the suggested rate, and the curve to plot (lrFindSvg). Fine-tuning graphs are not tested yet.
   */
  async lrFind(options: Partial<FitOptions> = {}, range: Partial<LrRange> = {}): Promise<LrFindResult> {
    if (this.unfrozen || this.weights.kind === 'tuned') throw new GraftError('USAGE', 'lrFind() tests the head on the frozen pretrained backbone; call it before unfreezing or fine-tuning');
    const fit = { ...DEFAULT_FIT, lr: this.headLr(), seed: this.seed, ...options };
    const trainable = headTrainable(this.spec, this.standardizer, fit.seed, fit.lr, fit.weightDecay);
    await this.ensureViewFeatures();
    return lrFind(trainable, this.data.features, this.data.trainRows, this.data.valRows, fit, { ...DEFAULT_LR_RANGE, ...range });
  }

  /**
   * What to look at after training (validation rows of the last training): the highest losses, the most-confused
   * class pairs, calibration (ECE overall and per class, the reliability curve), likely-mislabelled training
   * samples (out-of-fold: `folds` heads trained on the frozen features for as many epochs as the last training
   * kept, each predicting the fold it did not see — never choosing its epoch on that fold, which would let it
   * learn to agree with a wrong label) and near-duplicates between training
   * and validation (cosine of the frozen backbone's features ≥ `duplicateCosine`: leakage).
   */
  async diagnose(options: { top?: number; folds?: number; duplicateCosine?: number } = {}): Promise<Diagnostics> {
    const { top = 10, folds = 5, duplicateCosine = 0.98 } = options;
    const trained = this.requireTrained();
    const probs = await this.validationProbabilities('diagnose()');
    const c = this.spec.numClasses;
    const samples = [...this.data.dataset.train, ...this.data.dataset.val];
    const { labels } = this.data.features;
    const name = (row: number) => sampleRef(samples[row]!);
    const valRows = this.data.valRows;
    const truth = Int32Array.from(valRows, (r) => labels[r]!);
    const metrics = computeMetrics(this.classes, truth, argmaxRows(probs, c));
    const cal = calibration(probs, c, truth);

    // Out-of-fold probabilities of every training row, from heads on the frozen features.
    const trainRows = this.data.trainRows;
    const k = Math.min(folds, ...this.classes.map((_, cls) => trainRows.filter((r) => labels[r] === cls).length));
    const oof = new Float32Array(trainRows.length * c);
    const epochs = Math.max(5, trained.result.bestEpoch + 1);
    if (k >= 2) {
      const fold = crossValidationFolds(Int32Array.from(trainRows, (r) => labels[r]!), k, this.seed);
      const evaluator = await Evaluator.forHead(this.spec, this.standardizer);
      try {
        for (let f = 0; f < k; f++) {
          const held = trainRows.filter((_, i) => fold[i] === f);
          const rest = trainRows.filter((_, i) => fold[i] !== f);
          // The training rows stand in for validation: the epoch kept is the one of least training loss.
          const fit = { ...DEFAULT_FIT, lr: this.headLr(), seed: this.seed + f, epochs, patience: 0 };
          const result = await this.fitChosen(this.data.features, rest, rest, this.standardizer, fit, []);
          const p = await evaluator.probabilities(this.data.features, held, result.params);
          let j = 0;
          trainRows.forEach((_, i) => {
            if (fold[i] !== f) return;
            oof.set(p.subarray(j * c, (j + 1) * c), i * c);
            j++;
          });
        }
      } finally {
        await evaluator.release();
      }
    }
    const given = Int32Array.from(trainRows, (r) => labels[r]!);
    const { features, dim } = this.data.features;
    return {
      topLosses: topLosses(probs, c, truth, top).map((l) => ({ ...name(valRows[l.index]!), label: this.classes[l.label]!, predicted: this.classes[l.predicted]!, probability: l.probability, loss: l.loss })),
      confusedPairs: confusedPairs(metrics.confusion, this.classes, top),
      calibration: { ece: cal.ece, perClass: Object.fromEntries(this.classes.map((label, i) => [label, cal.perClass[i]!])), bins: cal.bins },
      mislabeled: k >= 2
        ? mislabelCandidates(oof, c, given, { limit: top }).map((m) => ({ ...name(trainRows[m.index]!), given: this.classes[m.given]!, suggested: this.classes[m.suggested]!, givenProbability: m.givenProbability, suggestedProbability: m.suggestedProbability }))
        : [],
      nearDuplicates: nearDuplicates(features, dim, trainRows, valRows, duplicateCosine).slice(0, top).map((d) => ({ val: name(d.val), train: name(d.train), cosine: d.cosine })),
    };
  }

  /**
   * The augmented views' pooled features, extracted (or read from the cache) the first time a head trains on
   * them, after the clean rows of `data.features`.
   */
  private async ensureViewFeatures(): Promise<void> {
    const blocks = this.data.viewBlocks;
    if (!blocks.length || this.viewState.pooled) return;
    const samples = [...this.data.dataset.train, ...this.data.dataset.val];
    const extractor = new FeatureExtractor(this.backbone, { ...(this.options.cacheDir !== undefined ? { cacheDir: this.options.cacheDir } : {}) });
    try {
      const views = await extractViews(extractor, samples.map(extractInput), blocks, { record: !this.viewState.recorded, onProgress: this.viewProgress() });
      const { features: clean, dim } = this.data.features;
      this.data.features = { ...this.data.features, features: concatArrays([clean.subarray(0, samples.length * dim), ...views.features], Float32Array) };
      this.recordViews({ cached: views.cached, extracted: views.extracted, seconds: views.seconds });
      this.viewState.pooled = true;
    } finally {
      await extractor.close();
    }
  }

  /** After the views' first extraction: their validity is known, and with it each training row's views. */
  private recordViews(stats: { cached: number; extracted: number; seconds: number }): void {
    this.viewState.recorded = true;
    const views = viewMap(this.data.viewBlocks);
    if (views.size) this.data.features.views = views;
    const before = this.data.extraction.views;
    this.data.extraction.views = {
      rows: augmentedRows(this.data.viewBlocks).length,
      cached: stats.cached + (before?.cached ?? 0),
      extracted: stats.extracted + (before?.extracted ?? 0),
      seconds: stats.seconds + (before?.seconds ?? 0),
    };
  }

  private viewProgress(): (p: ExtractProgress, b: ViewBlock) => void {
    return (p, b) => this.options.onProgress?.({ ...p, split: b.purpose === 'tta' ? 'val' : 'train', view: b.purpose === 'tta' ? 'mirror' : b.spec.view });
  }

  /**
   * Class probabilities of the validation rows under the last training (its evaluation graph and weights); with
   * test-time augmentation, the mean of each row's and its mirror's.
   */
  private async validationProbabilities(caller: string): Promise<Float32Array> {
    const evaluation = this.requireTrained().evaluation;
    if (!evaluation) throw new GraftError('USAGE', `the learner is closed: ${caller} needs the evaluation session close() released`);
    const graph = await evaluation.graph;
    const probs = await graph.probabilities(evaluation.data, this.data.valRows, evaluation.params);
    const mirror = ttaMap(this.data.viewBlocks);
    if (!mirror.size) return probs;
    const mirrored = await graph.probabilities(evaluation.data, this.data.valRows.map((r) => mirror.get(r) ?? r), evaluation.params);
    for (let i = 0; i < probs.length; i++) probs[i] = (probs[i]! + mirrored[i]!) / 2;
    return probs;
  }

  /** Records a training's outcome, releasing the previous evaluation session. */
  private setTrained(trained: Trained): void {
    const previous = this.trained?.evaluation;
    this.trained = trained;
    void previous?.graph.then((e) => e.release(), () => undefined);
    if (previous && previous.data !== trained.evaluation?.data) releaseRows(previous.data);
  }

  /** Releases what the learner holds: the evaluation graph and the activations it reads (memory, spill file). */
  async close(): Promise<void> {
    const evaluation = this.trained?.evaluation;
    if (this.trained) this.trained.evaluation = undefined;
    if (evaluation) releaseRows(evaluation.data);
    await evaluation?.graph.then((e) => e.release(), () => undefined);
  }

  /** The backbone in float (quantized ones converted once), with any fine-tuned weights. */
  private floatModel(): ModelProto {
    if (this.weights.kind === 'tuned') return this.weights.model;
    this.weights.float ??= isQuantized(this.backbone.featureModel) ? dequantizeModel(this.backbone.featureModel).model : this.backbone.featureModel;
    return this.weights.float;
  }

  /**
   * Activations at the plan's boundary for every sample, from the frozen prefix run as an ordinary session
   * (weights as initializers): one flattened row per image, or a text's token states with its token ids for
   * the side inputs (attention mask, ids) the suffix reads. Cached on disk under the prefix's content hash,
   * so tuned weights never hit stale entries.
   */
  private async activationsAt(model: ModelProto, plan: SuffixPlan): Promise<{ rowShape: number[]; activations: Rows }> {
    const samples = [...this.data.dataset.train, ...this.data.dataset.val];
    const rowShape = await probeShape(model, plan.boundary, this.backbone.pipeline);
    const text = this.backbone.modality === 'text';
    // Token states of a text, or the windows of a clip: a sequence per sample.
    const sequence = this.backbone.modality !== 'image';
    const prefix = prefixModel(model, plan.boundary, FEATURES, sequence);
    const bytes = encodeModel(prefix);
    const key = createHash('sha256').update(bytes).update(`\n${pipelineKey(this.backbone.pipeline)}`).digest('hex').slice(0, 32);
    const rowSize = sequence ? rowShape.slice(1).reduce((a, b) => a * b, 1) : rowShape.reduce((a, b) => a * b, 1);
    const boundaryBackbone = { ...this.backbone, featureModel: prefix, featureModelBytes: bytes, config: { ...this.backbone.config, featureDim: rowSize }, key } as Backbone;
    const store = this.rowStore();
    const extractor = new FeatureExtractor(boundaryBackbone, { ...(this.options.cacheDir !== undefined ? { cacheDir: this.options.cacheDir } : {}), ...(sequence ? { sequences: true } : {}), rows: store });
    let kept = false;
    try {
      const inputs = samples.map(extractInput);
      const r = await extractor.extract(inputs, (p) => this.options.onProgress?.({ ...p, split: p.done < this.data.dataset.train.length ? 'train' : 'val' }));
      for (const row of [...this.data.trainRows, ...this.data.valRows]) {
        if (!r.valid[row]) throw new GraftError('TRAIN', `${samples[row]!.file}: encoded for features but not for fine-tuning`, { file: samples[row]!.file });
      }
      // The augmented views' activations go to the rows the feature extraction gave them.
      const blocks = this.data.viewBlocks;
      const recording = !this.viewState.recorded;
      const views = await extractViews(extractor, inputs, blocks, { record: recording, toStore: true, onProgress: this.viewProgress() });
      if (recording && blocks.length) this.recordViews(views);
      const labels = this.data.features.labels;
      const viewRows = this.data.features.views;
      const withViews = (rows: Rows): Rows => (viewRows ? { ...rows, views: viewRows } : rows);
      kept = true;
      if (!sequence) return { rowShape, activations: withViews(denseRows({ features: store, dim: r.dim, labels }, plan.boundary, rowShape)) };
      // Sequence rows: the views' windows (audio) come with each extraction's own window counts.
      const tokens = [...r.tokens!];
      blocks.forEach((b, i) => b.rows.forEach((_, j) => (tokens[b.offset + j] = views.tokens[i]![j] ?? new Int32Array(0))));
      if (!text) return { rowShape, activations: withViews(sequenceRows({ states: store, tokens, width: rowSize, tokenShape: rowShape.slice(1), labels }, plan.boundary, { [WINDOW_MASK]: 'mask' }, 0)) };
      const config = (this.backbone as TextBackbone).config;
      const side: Record<string, SideInput> = {};
      for (const { name } of plan.sideInputs) {
        const kind: SideInput | undefined = name === config.inputs.mask ? 'mask' : name === config.inputs.ids ? 'ids' : name === config.inputs.typeIds ? 'typeIds' : undefined;
        if (!kind) throw new GraftError('MODEL', `the layers after ${plan.boundary} read the input ${name}, which graft does not know how to feed`, { input: name });
        side[name] = kind;
      }
      return { rowShape, activations: sequenceRows({ states: store, tokens: r.tokens!, width: rowSize, labels }, plan.boundary, side, config.padId) };
    } catch (e) {
      kept = false;
      throw e;
    } finally {
      if (!kept) store.close();
      await extractor.close();
    }
  }

  /** Where the backbone splits for a freeze spec: a block or layer boundary, or for audio a block of the windowed embedding. */
  private plan(model: ModelProto, spec: FreezeSpec): SuffixPlan {
    return this.modality === 'audio' ? planWindowSuffix(model, FEATURES, spec) : planSuffix(model, FEATURES, spec);
  }

  /** Where boundary activations go: memory up to the budget, then a spill file beside the cache (or in the temporary folder). */
  private rowStore(): RowStore {
    const env = process.env.GRAFT_MEMORY_BUDGET;
    const memoryBytes = this.options.memoryBudget ?? (env ? parseSize(env) : DEFAULT_ROW_MEMORY);
    const root = this.options.cacheDir === undefined ? defaultCacheDir() : this.options.cacheDir;
    let spillDir = tmpdir();
    if (root !== false) {
      try {
        mkdirSync(join(root, 'tmp'), { recursive: true });
        spillDir = join(root, 'tmp');
      } catch {
        // an unwritable cache: the temporary folder
      }
    }
    return new RowStore({ memoryBytes, spillDir });
  }

  /** Trains the suffix after `spec`'s boundary with the head (or, with `frozenBackbone`, the head alone through it). */
  private async fitSuffix(
    spec: FreezeSpec,
    frozenBackbone: boolean,
    fit: FitOptions,
    lrMult: number,
    callbacks: Callback[],
    record: FitOptions = fit,
    extracted?: { plan: SuffixPlan; rowShape: number[]; activations: Rows },
  ): Promise<{ result: TrainResult; plan: SuffixPlan }> {
    const model = this.floatModel();
    // A frozen backbone is a fixed feature map: no dropout inside it.
    const plan = this.plan(model, frozenBackbone ? { ...spec, encoderDropout: 0 } : spec);
    const reused = extracted?.plan.boundary === plan.boundary;
    const { rowShape, activations } = reused ? extracted : await this.activationsAt(model, plan);
    try {
      return await this.fitSuffixOn(plan, frozenBackbone, fit, lrMult, callbacks, record, model, rowShape, activations);
    } catch (e) {
      if (!reused && this.trained?.evaluation?.data !== activations) releaseRows(activations);
      throw e;
    }
  }

  private async fitSuffixOn(
    plan: SuffixPlan,
    frozenBackbone: boolean,
    fit: FitOptions,
    lrMult: number,
    callbacks: Callback[],
    record: FitOptions,
    model: ModelProto,
    rowShape: number[],
    activations: Rows,
  ): Promise<{ result: TrainResult; plan: SuffixPlan }> {
    // No head yet: standardise on the float backbone's own pooled features.
    const standardizer = this.trained?.standardizer ?? fitStandardizer((await poolWithSuffix(plan, rowShape, activations, this.data.trainRows, this.backbone.config.featureDim)).features, this.backbone.config.featureDim, this.data.trainRows);
    const head = (this.trained?.result.params ?? initParams(this.spec, this.seed)).map((p) => ({ ...p, data: p.data.slice() }));
    const trainable = suffixTrainable(plan, rowShape, this.spec, standardizer, head, {
      lr: fit.lr,
      lrMult,
      weightDecay: fit.weightDecay,
      batchSize: Math.min(fit.batchSize, this.data.trainRows.length),
      nchwcBlock: await nchwcBlockSize(),
      seed: fit.seed,
    });
    if (frozenBackbone) trainable.groups[0]!.frozen = true;
    const result = await train(trainable, activations, this.data.trainRows, this.data.valRows, fit, callbacks, undefined, this.checkpointing(frozenBackbone ? 'head' : 'fine-tune'));
    const headNames = new Set(head.map((p) => p.name));
    // Running statistics (batchNorm 'train') go into the exported backbone with the trained weights.
    const statistics = (trainable.state ?? []).map((t) => ({ name: t.name, dims: t.dims, data: t.data, decay: false }));
    const backboneParams = [...result.params.filter((p) => !headNames.has(p.name)), ...statistics];
    const encoderDropout = frozenBackbone ? (this.weights.kind === 'tuned' ? this.weights.encoderDropout : undefined) : plan.encoderDropout || undefined;
    this.weights = { kind: 'tuned', model: withWeights(model, backboneParams), from: plan.boundary, trainableTensors: frozenBackbone ? 0 : plan.trainable.length, ...(encoderDropout ? { encoderDropout } : {}) };
    this.setTrained({
      result: { ...result, params: result.params.filter((p) => headNames.has(p.name)) },
      fit: record,
      standardizer,
      evaluation: { graph: Evaluator.create(trainable), data: activations, params: [...result.params, ...statistics] },
    });
    return { result, plan };
  }

  /** Writes `dir/model.onnx` (backbone + head, one graph), `dir/graft.json` and the pipeline's side files. */
  async export(dir: string, metrics?: Metrics): Promise<Manifest> {
    const { result, fit, standardizer } = this.requireTrained();
    const backboneModel = this.weights.kind === 'tuned' ? this.weights.model : this.backbone.featureModel;
    const head = buildExportGraph(this.spec, standardizer, result.params, defaultOpset(backboneModel));
    const merged = mergeModels(backboneModel, head, FEATURES, 'head/');
    const { dataset } = this.data;
    const counts = (rows: number[]) => this.classes.map((_, c) => rows.filter((r) => this.data.features.labels[r] === c).length);
    const inputs = feedSpecs(this.backbone.pipeline).map((f) => ({ name: f.name, type: f.type, shape: ['N', ...f.shape] }));
    const tokens = this.data.extraction.tokens;
    const augmentation = this.augmentation();
    const common = {
      labels: this.classes,
      model: { input: inputs[0]!.name, inputs, output: HEAD_OUTPUT, inputShape: inputs[0]!.shape },
      backbone: { ...(this.backbone.source.name ? { name: this.backbone.source.name } : {}), file: this.backbone.source.file, sha256: this.backbone.source.sha256, cut: this.backbone.config.cut, cutReason: this.backbone.cutReason },
      head: this.spec,
      training: {
        ...fit,
        seed: this.seed,
        epochsRun: result.history.length,
        bestEpoch: result.bestEpoch + 1,
        stoppedEarly: result.stoppedEarly,
        history: result.history,
        ...(augmentation ? { augmentation } : {}),
        ...(this.selection ? { headSelection: this.selection } : {}),
        ...(this.weights.kind === 'tuned' ? { fineTuned: { from: this.weights.from, trainableTensors: this.weights.trainableTensors, float: true, ...(this.weights.encoderDropout ? { encoderDropout: this.weights.encoderDropout } : {}), ...(this.weights.timing ? { seconds: roundTiming(this.weights.timing) } : {}) } } : {}),
      },
      ...(metrics ? { metrics } : {}),
      ...(ttaMap(this.data.viewBlocks).size ? { inference: { tta: 'flip' as const } } : {}),
      data: {
        root: dataset.root,
        split: dataset.split,
        trainPerClass: counts(this.data.trainRows),
        valPerClass: counts(this.data.valRows),
        skipped: this.data.skipped.length,
        ...(tokens ? { truncated: tokens.truncated } : {}),
        ...(dataset.leaks ? { leaks: dataset.leaks.length } : {}),
      },
    };
    // What the model saw, by content digest: graft eval leaves these samples out (split.ts).
    const samples = [...dataset.train, ...dataset.val];
    const digests = await digestSamples(samples);
    const split = { [SPLIT_FILE]: splitRecord(this.data.trainRows.map((r) => digests[r]), this.data.valRows.map((r) => digests[r])) };
    if (this.backbone.modality === 'image') return writeArtifact(dir, merged, { task: 'image-classification', config: this.backbone.config, ...common } as ManifestDraft, split);
    if (this.backbone.modality === 'audio') return writeArtifact(dir, merged, { task: 'audio-classification', config: this.backbone.config, ...common } as ManifestDraft, split);
    const { tokenizer } = this.backbone.pipeline;
    return writeArtifact(dir, merged, { task: 'text-classification', config: this.backbone.config, ...common } as ManifestDraft, {
      ...split,
      [this.backbone.config.tokenizer.file]: tokenizer.text,
      ...(tokenizer.configText !== undefined ? { 'tokenizer_config.json': tokenizer.configText } : {}),
    });
  }

  /** The augmentation the training used, as graft.json records it (undefined: none). */
  private augmentation(): { policy?: unknown; views: number; tta: boolean } | undefined {
    const blocks = this.data.viewBlocks;
    if (!blocks.length) return undefined;
    const train = blocks.filter((b) => b.purpose === 'train');
    const policy = this.options.augment;
    return { ...(train.length ? { policy: typeof policy === 'string' ? policy : train[0]!.spec.policy } : {}), views: train.length, tta: blocks.some((b) => b.purpose === 'tta') };
  }

  private requireTrained(): Trained {
    if (!this.trained) throw new GraftError('TRAIN', 'the learner has not been trained yet: call fit() first');
    return this.trained;
  }
}

/** A sample as diagnostics name it: its file (and table line), and a text's first 120 characters. */
function sampleRef(s: Sample): SampleRef {
  return { file: s.file, ...(s.line !== undefined ? { line: s.line } : {}), ...(s.text !== undefined ? { text: s.text.length > 120 ? `${s.text.slice(0, 119)}…` : s.text } : {}) };
}

/** Frees activations that live in a store (memory beyond a FeatureSet's array, a spill file). */
function releaseRows(data: Rows | FeatureSet): void {
  if ('close' in data && typeof data.close === 'function') data.close();
}

/** What the extractor reads of a sample: its file, or its text (named by file and line in messages). */
function extractInput(s: Sample): ExtractInput {
  return s.text !== undefined ? { file: s.file, text: s.text, ...(s.line !== undefined ? { line: s.line } : {}) } : s.file;
}

/** Fails before training when skipping left a class without training or validation examples. */
function checkUsable(dataset: Dataset, labels: Int32Array, trainRows: number[], valRows: number[]): void {
  const what = dataset.modality === 'text' ? 'text' : dataset.modality === 'audio' ? 'clip' : 'image';
  const empty: string[] = [];
  dataset.classes.forEach((name, c) => {
    const nTrain = trainRows.filter((r) => labels[r] === c).length;
    if (nTrain === 0) empty.push(`${name} (no usable training ${what})`);
  });
  if (empty.length) throw new GraftError('DATASET', `${dataset.root}: after skipping unusable samples, ${empty.join(', ')}`, { classes: empty });
  if (valRows.length === 0) throw new GraftError('DATASET', `${dataset.root}: no usable validation ${what}`, {});
}

export async function learner(options: LearnerOptions): Promise<Learner> {
  return Learner.create(options);
}

export interface FineTuneOptions extends FreezeSpec {
  /** Epochs of head-only training on the frozen backbone before unfreezing (default 3; texts and audio: TEXT_FINE_TUNE, AUDIO_FINE_TUNE). */
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
  /** What `unfreeze` counted: residual blocks, or a transformer's encoder layers. */
  unit: 'block' | 'layer';
  /** Where the time went, phase by phase. */
  timing: FineTuneTiming;
  /** Bytes of boundary activations held in memory and, past the memory budget, in the spill file. */
  activations: { memory: number; disk: number };
}

/**
 * Wall-clock seconds of each phase of fineTune(): `prefix` runs the frozen layers once over every sample (the
 * boundary activations, read from the cache when they are there) and pools them through the suffix for the head;
 * `head` trains the head alone on those features; `fineTune` trains the unfrozen layers with the head (graph
 * building and sessions included), `stages` the same per stage of gradual unfreezing (one entry otherwise).
 * `total` is the whole call; evaluation and export are not part of it.
 */
export interface FineTuneTiming {
  prefix: number;
  head: number;
  fineTune: number;
  stages: number[];
  total: number;
}

/** Timings to 0.1 s, as written into graft.json and the CLI's JSON. */
export function roundTiming(t: FineTuneTiming): FineTuneTiming {
  const r = (x: number) => Math.round(x * 10) / 10;
  return { prefix: r(t.prefix), head: r(t.head), fineTune: r(t.fineTune), stages: t.stages.map(r), total: r(t.total) };
}

function stopwatch(): { lap(): number; total(): number } {
  const start = performance.now();
  let last = start;
  return {
    lap() {
      const now = performance.now();
      const s = (now - last) / 1000;
      last = now;
      return s;
    },
    total: () => (performance.now() - start) / 1000,
  };
}

export const DEFAULT_FINE_TUNE = { lr: 1e-4, lrMult: 10, freezeEpochs: 3 } as const;

/**
 * Text encoders: the head first trains to convergence on the frozen features (early stopping, up to 60 epochs:
 * seconds on pooled features), then the unfrozen layers train with it for 5 epochs at one rate, 3e-5 for head and
 * layers alike, warmed up over the first 10% of the steps. The head starts that phase at its best validation loss,
 * so any larger step loses ground: with 1e-4 for the head and 1e-5 for the layers (the image recipe), 3 epochs,
 * SMS spam F1 over seeds 0-4 averaged 0.9707 against the frozen head's 0.9713; this recipe 0.9755 (per seed
 * 0.9655, 0.9797, 0.9831, 0.9695, 0.9799 vs frozen 0.9724, 0.9730, 0.9693, 0.9619, 0.9799): a small average gain,
 * not a sure one.
 */
export const TEXT_FINE_TUNE = { freezeEpochs: 60, epochs: 5, lr: 3e-5, lrMult: 1, warmup: 0.1 } as const;

/**
 * Fine-tuning the speech embedding: as for texts, the head first trains to convergence (≤ 60 epochs, early
 * stopping), then the unfrozen blocks train with it (bench/audio).
 */
export const AUDIO_FINE_TUNE = { freezeEpochs: 60, epochs: 10 } as const;

/** What fineTune() uses for options it is not given, per modality: head epochs, the backbone's lr divisor, and fit options. */
export function fineTuneDefaults(modality: Modality): { freezeEpochs: number; lrMult: number; fit: Partial<FitOptions> } {
  if (modality === 'text') {
    const { freezeEpochs, lrMult, epochs, lr, warmup } = TEXT_FINE_TUNE;
    return { freezeEpochs, lrMult, fit: { epochs, lr, warmup } };
  }
  const { freezeEpochs, epochs } = modality === 'audio' ? AUDIO_FINE_TUNE : { ...DEFAULT_FINE_TUNE, epochs: undefined };
  return { freezeEpochs, lrMult: DEFAULT_FINE_TUNE.lrMult, fit: { lr: DEFAULT_FINE_TUNE.lr, ...(epochs !== undefined ? { epochs } : {}) } };
}

/** Default learning rate of the MLP head on text features (see Learner.headLr). */
export const TEXT_MLP_LR = 1e-3;

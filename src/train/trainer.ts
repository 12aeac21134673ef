/**
 * Trains ONNX graphs on cached rows (pooled features for a head; boundary activations for a backbone suffix +
 * head): ONNX Runtime runs the training graph (forward, loss, gradients) and AdamW updates the weights in
 * place. Events form a closed list that callbacks subscribe to; early stopping with best-weights restore is
 * one such callback.
 */
import { availableParallelism } from 'node:os';
import { GraftError } from '../errors.js';
import { computeMetrics, crossEntropy, argmaxRows } from '../evaluate/metrics.js';
import {
  buildEvalGraph,
  buildTrainingGraph,
  gradName,
  HEAD_INPUT,
  HEAD_OUTPUT,
  initParams,
  TRAIN_LABELS,
  IGNORE_LABEL,
  TRAIN_LOSS,
  TRAIN_MASK,
  type HeadSpec,
  type Param,
  type Standardizer,
  hasDropoutMask,
} from '../head/head.js';
import { encodeModel, type ModelProto } from '../onnx/proto.js';
import { Random } from '../util/random.js';
import { RemoteSession, type Feed } from './remote-session.js';
import { denseRows, type Rows } from './rows.js';
import { Adam, AdamW, clipGradNorm, SGD, type GroupSpec, type Optimizer } from './optimizer.js';
import { captureTraining, restoreTraining, restoreWeights, trainingParts, type Checkpointing, type TrainingSnapshot } from './checkpoint.js';
import { constant, cosine, oneCycle, Scheduler, step, warmup, type Schedule, type Schedules } from './schedule.js';

/** Features of a dataset: row i of `features` (length dim) has class `labels[i]`. */
export interface FeatureSet {
  features: Float32Array;
  dim: number;
  labels: Int32Array;
  /** Augmented views: row r's other rows (same sample, other augmentations); each epoch trains on r or one of them. */
  views?: ReadonlyMap<number, readonly number[]>;
}

/** An epoch's rows with each row replaced by itself or one of its augmented views, uniformly (no views: the rows). */
export function pickViews(rows: number[], views: ReadonlyMap<number, readonly number[]> | undefined, rng: Random): number[] {
  if (!views?.size) return rows;
  return rows.map((r) => {
    const alt = views.get(r);
    if (!alt?.length) return r;
    const k = rng.int(alt.length + 1);
    return k === 0 ? r : alt[k - 1]!;
  });
}

/** Rows pooled before sorting by length into batches: long enough that batches are nearly uniform, short enough to stay random. */
const LENGTH_POOL_BATCHES = 50;

/**
 * The batches of one epoch over rows already shuffled: consecutive runs of `size`, or, for rows of different
 * lengths (token sequences), batches of similar lengths (sorted within pools of LENGTH_POOL_BATCHES batches,
 * the batches then shuffled), so that padding to a batch's longest row stays small.
 */
export function batchesOf(order: readonly number[], size: number, lengths: ArrayLike<number> | undefined, rng: Random): number[][] {
  const out: number[][] = [];
  if (!lengths) {
    for (let s = 0; s < order.length; s += size) out.push(order.slice(s, s + size));
    return out;
  }
  const pool = size * LENGTH_POOL_BATCHES;
  for (let s = 0; s < order.length; s += pool) {
    const part = order.slice(s, s + pool).sort((a, b) => lengths[a]! - lengths[b]! || a - b);
    for (let i = 0; i < part.length; i += size) out.push(part.slice(i, i + size));
  }
  return rng.shuffle(out);
}

/** Dense rows for a graph's row input, as they are; any other Rows source passes through. */
function asRows(data: FeatureSet | Rows, trainable: Pick<Trainable, 'inputName' | 'rowShape'>): Rows {
  if ('feeds' in data) return data;
  const rowSize = trainable.rowShape.reduce((a, b) => a * b, 1);
  if (rowSize !== data.dim) throw new GraftError('TRAIN', `rows hold ${data.dim} values but the graph takes [${trainable.rowShape}]`);
  const rows = denseRows(data, trainable.inputName, trainable.rowShape);
  return data.views ? { ...rows, views: data.views } : rows;
}

export interface FitOptions {
  epochs: number;
  lr: number;
  batchSize: number;
  weightDecay: number;
  /** Stop after this many epochs without a lower validation loss (0 disables early stopping). */
  patience: number;
  seed: number;
  /** Learning-rate schedule over all steps of `epochs` (a multiplier of each group's base rate). */
  schedule: ScheduleKind;
  /** Fraction of the steps spent warming the learning rate up linearly from 0 (0: none). */
  warmup: number;
  optimizer: OptimizerKind;
  /** SGD momentum (Adam's β1 stays 0.9 unless a one-cycle schedule cycles it). */
  momentum: number;
  /** Clip the gradients' global L2 norm to this value (0: off). */
  clipNorm: number;
  /**
   * Balanced sampling (`--class-weights auto`): each epoch draws every class as often as the largest one (a
   * smaller class's rows all once, the rest drawn again at random), so an imbalanced set trains as if balanced.
   */
  balance: boolean;
  /** What early stopping watches, and which epoch's weights it keeps: the least validation loss (default), or the best accuracy or macro-F1. */
  monitor: Monitor;
}

export type Monitor = 'val-loss' | 'accuracy' | 'macro-f1';

export type ScheduleKind = 'constant' | 'cosine' | 'one-cycle' | 'step';
export type OptimizerKind = 'adamw' | 'adam' | 'sgd';

export const DEFAULT_FIT: FitOptions = {
  epochs: 60,
  lr: 3e-4,
  batchSize: 32,
  weightDecay: 0.3,
  patience: 8,
  seed: 0,
  schedule: 'cosine',
  warmup: 0,
  optimizer: 'adamw',
  momentum: 0.9,
  clipNorm: 0,
  balance: false,
  monitor: 'val-loss',
};

/** The rows of each class present, in class order. */
export function rowsByClass(rows: readonly number[], labels: ArrayLike<number>): number[][] {
  const byClass = new Map<number, number[]>();
  for (const r of rows) {
    const c = labels[r]!;
    const list = byClass.get(c);
    if (list) list.push(r);
    else byClass.set(c, [r]);
  }
  return [...byClass.entries()].sort((a, b) => a[0] - b[0]).map(([, l]) => l);
}

/** Rows in a balanced epoch: every class as many as the largest has. */
export const balancedLength = (byClass: readonly number[][]): number => byClass.length * Math.max(...byClass.map((l) => l.length));

/** One balanced epoch's rows in training order: every class drawn as often as the largest (its own rows all once). */
export function balancedRows(byClass: readonly number[][], rng: Random): number[] {
  const largest = Math.max(...byClass.map((l) => l.length));
  const out: number[] = [];
  for (const list of byClass) {
    out.push(...list);
    for (let i = list.length; i < largest; i++) out.push(list[rng.int(list.length)]!);
  }
  return rng.shuffle(out);
}

/** The optimizer named in the options, over the given groups (weight decay: decoupled for AdamW, L2 otherwise). */
export function makeOptimizer(groups: GroupSpec[], options: Pick<FitOptions, 'optimizer' | 'lr' | 'weightDecay' | 'momentum'>): Optimizer {
  const { lr, weightDecay } = options;
  switch (options.optimizer) {
    case 'adamw':
      return new AdamW(groups, { lr, weightDecay });
    case 'adam':
      return new Adam(groups, { lr, weightDecay });
    case 'sgd':
      return new SGD(groups, { lr, weightDecay, momentum: options.momentum });
    default:
      throw new GraftError('USAGE', `unknown optimizer "${options.optimizer as string}": use adamw, adam or sgd`);
  }
}

/** Per-step schedules (learning-rate multiplier, and momentum for one-cycle) for the options. */
export function makeSchedules(options: Pick<FitOptions, 'schedule' | 'warmup' | 'optimizer' | 'momentum'>): Schedules {
  let lr: Schedule;
  let momentum: Schedule | undefined;
  switch (options.schedule) {
    case 'constant':
      lr = constant(1);
      break;
    case 'cosine':
      lr = cosine(1, 0);
      break;
    case 'step':
      lr = step(1, [0.5, 0.75], 0.1);
      break;
    case 'one-cycle': {
      const cycle = oneCycle(options.optimizer === 'sgd' ? { moms: [options.momentum + 0.05, options.momentum - 0.05, options.momentum + 0.05] } : {});
      lr = cycle.lr;
      momentum = cycle.momentum;
      break;
    }
    default:
      throw new GraftError('USAGE', `unknown schedule "${options.schedule as string}": use constant, cosine, one-cycle or step`);
  }
  if (options.warmup > 0) lr = warmup(options.warmup, lr);
  return { lr, ...(momentum ? { momentum } : {}) };
}

/** Measured defaults per head (bench/heads.ts): the wide MLP wants a lower rate than the linear head. */
export const DEFAULT_LR: Record<HeadSpec['kind'], number> = { mlp: 3e-4, linear: 1e-3, ensemble: 3e-4 };

export interface EpochRecord {
  epoch: number;
  lr: number;
  trainLoss: number;
  valLoss: number;
  valAccuracy: number;
  /** Mean over classes of each class's F1 on the validation rows. */
  valMacroF1: number;
  seconds: number;
}

/** The closed list of training events (a misspelt event is a type error). */
export const EVENTS = ['beforeFit', 'beforeEpoch', 'afterBatch', 'afterEpoch', 'afterFit'] as const;
export type TrainEvent = (typeof EVENTS)[number];

export interface TrainState {
  epoch: number;
  step: number;
  stepsPerEpoch: number;
  /** Loss of the last batch (afterBatch). */
  batchLoss: number;
  history: EpochRecord[];
  params: Param[];
  /** Running statistics carried by the training graph (restored with the weights by early stopping). */
  state: Param[];
  options: FitOptions;
}

export type Callback = Partial<Record<TrainEvent, (state: TrainState) => void>>;

/** Thrown by a callback to end training after the current epoch (fastai's CancelFitException). */
export class CancelFit extends Error {
  constructor(readonly reason: string) {
    super(reason);
    this.name = 'CancelFit';
  }
}

/**
 * Early stopping on a validation measure (least loss by default; or best accuracy or macro-F1, ties going to the
 * lower loss), restoring the best epoch's weights at the end.
 */
export class EarlyStopping implements Callback {
  best: [number, number] = [-Infinity, -Infinity];
  bestEpoch = -1;
  private snapshot: Float32Array[] = [];
  stoppedEarly = false;

  constructor(private readonly patience: number, private readonly monitor: Monitor = 'val-loss', private readonly minDelta = 1e-4) {}

  afterEpoch = (s: TrainState): void => {
    const r = s.history[s.history.length - 1]!;
    // Higher is better: [the measure, then minus the loss to break its ties].
    const score: [number, number] = this.monitor === 'val-loss' ? [-r.valLoss, 0] : [this.monitor === 'accuracy' ? r.valAccuracy : r.valMacroF1, -r.valLoss];
    const delta = this.monitor === 'val-loss' ? this.minDelta : 0;
    if (score[0] > this.best[0] + delta || (score[0] === this.best[0] && score[1] > this.best[1] + this.minDelta)) {
      this.best = score;
      this.bestEpoch = s.epoch;
      this.snapshot = [...s.params, ...s.state].map((p) => p.data.slice());
    } else if (this.patience > 0 && s.epoch - this.bestEpoch >= this.patience) {
      this.stoppedEarly = true;
      throw new CancelFit(`no better ${this.monitor === 'val-loss' ? 'validation loss' : this.monitor} for ${this.patience} epochs`);
    }
  };

  afterFit = (s: TrainState): void => {
    if (this.snapshot.length) [...s.params, ...s.state].forEach((p, i) => p.data.set(this.snapshot[i]!));
  };

  /** What resuming needs (checkpoint.ts): the best score, its epoch and its weights (not copied). */
  checkpoint(): { best: [number, number]; bestEpoch: number; snapshot: Float32Array[] } {
    return { best: this.best, bestEpoch: this.bestEpoch, snapshot: this.snapshot };
  }

  restore(saved: { best: [number, number]; bestEpoch: number; snapshot: Float32Array[] }): void {
    this.best = saved.best;
    this.bestEpoch = saved.bestEpoch;
    this.snapshot = saved.snapshot;
  }
}

export interface TrainResult {
  params: Param[];
  history: EpochRecord[];
  bestEpoch: number;
  stoppedEarly: boolean;
}

/**
 * What the loop trains, whatever it is (a head on features, or a backbone suffix + head on cached boundary
 * activations): a training graph (rows, labels, optional dropout mask and weights in; mean loss and one
 * gradient per weight out) and an evaluation graph over the same weights (probabilities out).
 */
export interface Trainable {
  trainModel: ModelProto;
  evalModel: ModelProto;
  /** Parameter groups, head last; each group's lr is its base rate, scaled by the schedule. */
  groups: GroupSpec[];
  /** Name of the rows input of both graphs, and the shape of one row. */
  inputName: string;
  rowShape: number[];
  numClasses: number;
  /**
   * The training graph's fixed batch size, when it has one: a shorter last batch is padded to it with rows
   * labelled IGNORE_LABEL, which the loss skips.
   */
  batchSize?: number;
  /** The inverted-dropout mask input of the training graph, when it has one. */
  mask?: { name: string; width: number; rate: number };
  /**
   * Running statistics (BatchNorm in training mode): fed to both graphs as `name`, replaced after every
   * training step by the training graph's output `output`.
   */
  state?: StateTensor[];
}

/** A running statistic updated by the training graph: fed as `name`, its new value read from `output`. */
export interface StateTensor {
  name: string;
  output: string;
  dims: number[];
  data: Float32Array;
}

/** The head as a Trainable: one parameter group, weights initialised from the seed. */
export function headTrainable(spec: HeadSpec, std: Standardizer, seed: number, lr: number, weightDecay: number): Trainable {
  return {
    trainModel: buildTrainingGraph(spec, std),
    evalModel: buildEvalGraph(spec, std),
    groups: [{ name: 'head', params: initParams(spec, seed), lr, weightDecay }],
    inputName: HEAD_INPUT,
    rowShape: [spec.inputDim],
    numClasses: spec.numClasses,
    ...(hasDropoutMask(spec) ? { mask: { name: TRAIN_MASK, width: spec.hidden, rate: spec.dropout } } : {}),
  };
}

/**
 * Sessions whose runs take less than this (a head's) move from their worker to the main thread: a worker costs
 * about 1 ms per run, as much as such a run, and blocking the main thread for so short a time is harmless.
 */
const INLINE_BELOW_MS = 10;

/** Runs an eval graph over rows of a feature set, returning [rows, numClasses] probabilities. */
export class Evaluator {
  private constructor(private readonly session: RemoteSession, private readonly trainable: Pick<Trainable, 'inputName' | 'rowShape'>) {}

  static async create(trainable: Pick<Trainable, 'evalModel' | 'inputName' | 'rowShape'>, threads?: number): Promise<Evaluator> {
    const session = await RemoteSession.create(encodeModel(trainable.evalModel), { threads: threads ?? availableParallelism(), spin: false, inlineBelowMs: INLINE_BELOW_MS });
    return new Evaluator(session, trainable);
  }

  static forHead(spec: HeadSpec, std: Standardizer): Promise<Evaluator> {
    return Evaluator.create({ evalModel: buildEvalGraph(spec, std), inputName: HEAD_INPUT, rowShape: [spec.inputDim] });
  }

  /** Probabilities for `rows`, evaluated in chunks so that large activations never make one huge batch. */
  async probabilities(data: FeatureSet | Rows, rows: ArrayLike<number>, params: readonly Param[], chunk = 256): Promise<Float32Array> {
    const source = asRows(data, this.trainable);
    let out: Float32Array | undefined;
    let numClasses = 0;
    // Positions into `rows`, by length where rows differ in length (little padding per chunk).
    const positions = Array.from({ length: rows.length }, (_, i) => i);
    const lengths = source.lengths;
    if (lengths) positions.sort((a, b) => lengths[rows[a]!]! - lengths[rows[b]!]! || a - b);
    for (let start = 0; start < positions.length; start += chunk) {
      const part = positions.slice(start, start + chunk);
      const feeds: Record<string, Feed> = source.feeds(part.map((i) => rows[i]!), part.length);
      for (const p of params) feeds[p.name] = { type: 'float32', data: p.data, dims: p.dims };
      const probs = (await this.session.run(feeds, [HEAD_OUTPUT]))[HEAD_OUTPUT]!.data;
      if (!out) {
        numClasses = probs.length / part.length;
        out = new Float32Array(positions.length * numClasses);
      }
      part.forEach((i, k) => out!.set(probs.subarray(k * numClasses, (k + 1) * numClasses), i * numClasses));
    }
    return out ?? new Float32Array(0);
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}

/** Trains a head on `train` rows of features, validating on `val` rows after every epoch. */
export async function trainHead(
  data: FeatureSet | Rows,
  trainRows: readonly number[],
  valRows: readonly number[],
  spec: HeadSpec,
  std: Standardizer,
  options: FitOptions,
  callbacks: Callback[] = [],
  checkpoint?: Checkpointing,
): Promise<TrainResult> {
  return train(headTrainable(spec, std, options.seed, options.lr, options.weightDecay), data, trainRows, valRows, options, callbacks, undefined, checkpoint);
}

/**
 * The training loop: shuffled mini-batches through the training graph on ONNX Runtime, AdamW in place,
 * validation after every epoch, events to callbacks, early stopping with best-weights restore.
 * `options.lr` is ignored here: each group brings its own base rate.
 */
export async function train(
  trainable: Trainable,
  input: FeatureSet | Rows,
  trainRows: readonly number[],
  valRows: readonly number[],
  options: FitOptions,
  callbacks: Callback[] = [],
  /** A schedule of its own over `steps` steps in place of the options' (the learning-rate range test's). */
  schedule?: { steps: number; schedules: Schedules },
  /**
   * Checkpoint after every epoch, and continue from this training's own checkpoint when there is one
   * (checkpoint.ts). A resumed training emits beforeFit (its history already holding the restored epochs),
   * then the events of the epochs it trains; one that had finished emits only beforeFit and afterFit.
   */
  checkpoint?: Checkpointing,
): Promise<TrainResult> {
  if (trainRows.length === 0) throw new GraftError('TRAIN', 'no training examples');
  if (valRows.length === 0) throw new GraftError('TRAIN', 'no validation examples');
  const data = asRows(input, trainable);
  const trainBytes = encodeModel(trainable.trainModel);
  const phase = checkpoint && (await checkpoint.store.open(checkpoint, trainingParts(checkpoint.dataKey, trainBytes, trainable, options, trainRows, valRows)));
  if (phase?.saved?.done) return finishedTraining(trainable, phase.saved, options, callbacks);
  // Both sessions run on worker threads (ONNX Runtime's run blocks its thread, and the main thread must stay
  // free), unless their runs prove shorter than INLINE_BELOW_MS.
  // ONNX Runtime's default here is one intra-op thread: ask for every core (a 7-block step: 545 → 337 ms).
  const session = await RemoteSession.create(trainBytes, { threads: availableParallelism(), spin: false, inlineBelowMs: INLINE_BELOW_MS });
  const evaluator = await Evaluator.create(trainable).catch(async (e: unknown) => {
    await session.release();
    throw e;
  });
  const rng = new Random(options.seed + 1);
  const opt = makeOptimizer(trainable.groups, options);
  const params = [...opt.params];
  const B = trainable.batchSize ?? Math.min(options.batchSize, trainRows.length);
  // Reused batch buffers (fresh memory is expensive on these machines).
  const labels = new BigInt64Array(B);
  const mask = trainable.mask ? new Float32Array(B * trainable.mask.width) : undefined;
  const keep = 1 - (trainable.mask?.rate ?? 0);
  const valLabels = Int32Array.from(valRows, (r) => data.labels[r]!);
  const classNames = Array.from({ length: trainable.numClasses }, (_, c) => String(c));
  const byClass = options.balance ? rowsByClass(trainRows, data.labels) : undefined;
  const stepsPerEpoch = Math.ceil((byClass ? balancedLength(byClass) : trainRows.length) / B);
  const scheduler = schedule ? new Scheduler(opt, schedule.steps, schedule.schedules) : new Scheduler(opt, stepsPerEpoch * options.epochs, makeSchedules(options));
  const stopper = new EarlyStopping(options.patience, options.monitor);
  const all: Callback[] = [...callbacks, stopper];
  const stateParams: Param[] = (trainable.state ?? []).map((t) => ({ name: t.name, dims: t.dims, data: t.data, decay: false }));
  const state: TrainState = { epoch: 0, step: 0, stepsPerEpoch, batchLoss: NaN, history: [], params, state: stateParams, options };
  const emit = (event: TrainEvent) => {
    for (const cb of all) cb[event]?.(state);
  };
  const order = [...trainRows];
  const loop = { params, stateParams, order, opt, rng, stopper, state };
  let first = 0;
  try {
    if (phase?.saved) first = restoreTraining(phase.saved, loop);
    emit('beforeFit');
    for (let epoch = first; epoch < options.epochs; epoch++) {
      const started = performance.now();
      state.epoch = epoch;
      emit('beforeEpoch');
      const rows = pickViews(byClass ? balancedRows(byClass, rng) : rng.shuffle(order), data.views, rng);
      let lossSum = 0;
      for (const batch of batchesOf(rows, B, data.lengths, rng)) {
        const n = batch.length;
        for (let i = 0; i < n; i++) labels[i] = BigInt(data.labels[batch[i]!]!);
        // A fixed-size graph gets the short last batch padded with ignored rows (zeros: finite activations).
        const fed = trainable.batchSize ?? n;
        if (fed > n) labels.fill(BigInt(IGNORE_LABEL), n, fed);
        const feeds: Record<string, Feed> = {
          ...data.feeds(batch, fed),
          [TRAIN_LABELS]: { type: 'int64', data: labels.subarray(0, fed), dims: [fed] },
        };
        if (mask && trainable.mask) {
          const width = trainable.mask.width;
          for (let i = 0; i < fed * width; i++) mask[i] = rng.next() < keep ? 1 / keep : 0;
          feeds[trainable.mask.name] = { type: 'float32', data: mask.subarray(0, fed * width), dims: [fed, width] };
        }
        for (const p of params) feeds[p.name] = { type: 'float32', data: p.data, dims: p.dims };
        for (const t of stateParams) feeds[t.name] = { type: 'float32', data: t.data, dims: t.dims };
        const out = await session.run(feeds);
        for (const t of trainable.state ?? []) t.data.set(out[t.output]!.data);
        const loss = out[TRAIN_LOSS]!.data[0]!;
        if (!Number.isFinite(loss)) throw new GraftError('TRAIN', `training diverged at epoch ${epoch + 1} (loss ${loss}); lower the learning rate`, { epoch, lr: opt.lr });
        const grads = params.map((p) => out[gradName(p.name)]!.data);
        if (options.clipNorm > 0) clipGradNorm(grads, options.clipNorm);
        scheduler.setStep(state.step);
        opt.step(grads);
        lossSum += loss * n;
        state.step++;
        state.batchLoss = loss;
        emit('afterBatch');
      }
      const probs = await evaluator.probabilities(data, valRows, [...params, ...stateParams]);
      const predicted = argmaxRows(probs, trainable.numClasses);
      let correct = 0;
      for (let i = 0; i < valRows.length; i++) if (predicted[i] === valLabels[i]) correct++;
      const { macroF1 } = computeMetrics(classNames, valLabels, predicted);
      state.history.push({
        epoch,
        lr: opt.lr,
        trainLoss: lossSum / rows.length,
        valLoss: crossEntropy(probs, trainable.numClasses, valLabels),
        valAccuracy: correct / valRows.length,
        valMacroF1: macroF1,
        seconds: (performance.now() - started) / 1000,
      });
      emit('afterEpoch');
      await phase?.save(captureTraining(loop));
    }
  } catch (e) {
    if (!(e instanceof CancelFit)) throw e;
  } finally {
    await session.release();
    await evaluator.release();
  }
  emit('afterFit');
  const result = { params, history: state.history, bestEpoch: stopper.bestEpoch, stoppedEarly: stopper.stoppedEarly };
  await phase?.save(captureTraining(loop, result));
  return result;
}

/** A training its checkpoint says had finished: its kept weights and outcome, and no session started. */
function finishedTraining(trainable: Trainable, saved: TrainingSnapshot, options: FitOptions, callbacks: Callback[]): TrainResult {
  const params = trainable.groups.flatMap((g) => g.params);
  const stateParams: Param[] = (trainable.state ?? []).map((t) => ({ name: t.name, dims: t.dims, data: t.data, decay: false }));
  restoreWeights(saved, [...params, ...stateParams]);
  const state: TrainState = { epoch: saved.epochs - 1, step: saved.step, stepsPerEpoch: saved.stepsPerEpoch, batchLoss: NaN, history: saved.history, params, state: stateParams, options };
  for (const cb of callbacks) cb.beforeFit?.(state);
  for (const cb of callbacks) cb.afterFit?.(state);
  return { params, history: saved.history, bestEpoch: saved.bestEpoch, stoppedEarly: saved.stoppedEarly };
}

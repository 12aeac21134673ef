/**
 * Trains a head on cached features by running its ONNX training graph (forward, loss, gradients) on ONNX
 * Runtime and updating the weights in place with AdamW. Events form a closed list that callbacks subscribe
 * to; early stopping with best-weights restore is one such callback.
 */
import * as ort from 'onnxruntime-node';
import { GraftError } from '../errors.js';
import { crossEntropy, argmaxRows } from '../evaluate/metrics.js';
import {
  buildEvalGraph,
  buildTrainingGraph,
  gradName,
  HEAD_INPUT,
  HEAD_OUTPUT,
  initParams,
  TRAIN_LABELS,
  TRAIN_LOSS,
  TRAIN_MASK,
  type HeadParams,
  type HeadSpec,
  type Standardizer,
} from '../head/head.js';
import { encodeModel } from '../onnx/proto.js';
import { Random } from '../util/random.js';
import { AdamW } from './optimizer.js';

/** Features of a dataset: row i of `features` (length dim) has class `labels[i]`. */
export interface FeatureSet {
  features: Float32Array;
  dim: number;
  labels: Int32Array;
}

export interface FitOptions {
  epochs: number;
  lr: number;
  batchSize: number;
  weightDecay: number;
  /** Stop after this many epochs without a lower validation loss (0 disables early stopping). */
  patience: number;
  seed: number;
  /** Learning-rate schedule over the epochs. */
  schedule: 'constant' | 'cosine';
}

export const DEFAULT_FIT: FitOptions = { epochs: 60, lr: 3e-4, batchSize: 32, weightDecay: 0.3, patience: 8, seed: 0, schedule: 'cosine' };

/** Measured defaults per head (bench/heads.ts): the wide MLP wants a lower rate than the linear head. */
export const DEFAULT_LR: Record<HeadSpec['kind'], number> = { mlp: 3e-4, linear: 1e-3 };

export interface EpochRecord {
  epoch: number;
  lr: number;
  trainLoss: number;
  valLoss: number;
  valAccuracy: number;
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
  params: HeadParams;
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

/** Early stopping on validation loss, restoring the best weights at the end. */
export class EarlyStopping implements Callback {
  best = Infinity;
  bestEpoch = -1;
  private snapshot: Float32Array[] = [];
  stoppedEarly = false;

  constructor(private readonly patience: number, private readonly minDelta = 1e-4) {}

  afterEpoch = (s: TrainState): void => {
    const loss = s.history[s.history.length - 1]!.valLoss;
    if (loss < this.best - this.minDelta) {
      this.best = loss;
      this.bestEpoch = s.epoch;
      this.snapshot = s.params.map((p) => p.data.slice());
    } else if (this.patience > 0 && s.epoch - this.bestEpoch >= this.patience) {
      this.stoppedEarly = true;
      throw new CancelFit(`no lower validation loss for ${this.patience} epochs`);
    }
  };

  afterFit = (s: TrainState): void => {
    if (this.snapshot.length) s.params.forEach((p, i) => p.data.set(this.snapshot[i]!));
  };
}

export interface TrainResult {
  params: HeadParams;
  history: EpochRecord[];
  bestEpoch: number;
  stoppedEarly: boolean;
}

/** Runs the head's eval graph over rows of a feature set, returning [rows, numClasses] probabilities. */
export class HeadEvaluator {
  private constructor(private readonly session: ort.InferenceSession, private readonly spec: HeadSpec) {}

  static async create(spec: HeadSpec, std: Standardizer, threads?: number): Promise<HeadEvaluator> {
    const session = await ort.InferenceSession.create(encodeModel(buildEvalGraph(spec, std)), threads ? { intraOpNumThreads: threads } : {});
    return new HeadEvaluator(session, spec);
  }

  async probabilities(data: FeatureSet, rows: ArrayLike<number>, params: HeadParams): Promise<Float32Array> {
    const n = rows.length;
    const x = new Float32Array(n * data.dim);
    for (let i = 0; i < n; i++) x.set(data.features.subarray(rows[i]! * data.dim, (rows[i]! + 1) * data.dim), i * data.dim);
    const feeds: Record<string, ort.Tensor> = { [HEAD_INPUT]: new ort.Tensor('float32', x, [n, data.dim]) };
    for (const p of params) feeds[p.name] = new ort.Tensor('float32', p.data, p.dims);
    const out = await this.session.run(feeds);
    return out[HEAD_OUTPUT]!.data as Float32Array;
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}

/** Trains a head on `train` rows, validating on `val` rows after every epoch. */
export async function trainHead(
  data: FeatureSet,
  trainRows: readonly number[],
  valRows: readonly number[],
  spec: HeadSpec,
  std: Standardizer,
  options: FitOptions,
  callbacks: Callback[] = [],
): Promise<TrainResult> {
  if (trainRows.length === 0) throw new GraftError('TRAIN', 'no training examples');
  if (valRows.length === 0) throw new GraftError('TRAIN', 'no validation examples');
  const params = initParams(spec, options.seed);
  const session = await ort.InferenceSession.create(encodeModel(buildTrainingGraph(spec, std)));
  const evaluator = await HeadEvaluator.create(spec, std);
  const rng = new Random(options.seed + 1);
  const opt = new AdamW(params, { lr: options.lr, weightDecay: options.weightDecay });
  const B = Math.min(options.batchSize, trainRows.length);
  const { dim } = data;
  // Reused batch buffers (fresh memory is expensive on these machines).
  const x = new Float32Array(B * dim);
  const labels = new BigInt64Array(B);
  const mask = spec.kind === 'mlp' ? new Float32Array(B * spec.hidden) : undefined;
  const keep = 1 - spec.dropout;
  const valLabels = Int32Array.from(valRows, (r) => data.labels[r]!);
  const stepsPerEpoch = Math.ceil(trainRows.length / B);
  const stopper = new EarlyStopping(options.patience);
  const all: Callback[] = [...callbacks, stopper];
  const state: TrainState = { epoch: 0, step: 0, stepsPerEpoch, batchLoss: NaN, history: [], params, options };
  const emit = (event: TrainEvent) => {
    for (const cb of all) cb[event]?.(state);
  };
  const order = [...trainRows];
  try {
    emit('beforeFit');
    for (let epoch = 0; epoch < options.epochs; epoch++) {
      const started = performance.now();
      state.epoch = epoch;
      opt.setLr(options.schedule === 'cosine' ? (options.lr * (1 + Math.cos((Math.PI * epoch) / options.epochs))) / 2 : options.lr);
      emit('beforeEpoch');
      rng.shuffle(order);
      let lossSum = 0;
      for (let start = 0; start < order.length; start += B) {
        const n = Math.min(B, order.length - start);
        for (let i = 0; i < n; i++) {
          const row = order[start + i]!;
          x.set(data.features.subarray(row * dim, (row + 1) * dim), i * dim);
          labels[i] = BigInt(data.labels[row]!);
        }
        const feeds: Record<string, ort.Tensor> = {
          [HEAD_INPUT]: new ort.Tensor('float32', x.subarray(0, n * dim), [n, dim]),
          [TRAIN_LABELS]: new ort.Tensor('int64', labels.subarray(0, n), [n]),
        };
        if (mask) {
          for (let i = 0; i < n * spec.hidden; i++) mask[i] = rng.next() < keep ? 1 / keep : 0;
          feeds[TRAIN_MASK] = new ort.Tensor('float32', mask.subarray(0, n * spec.hidden), [n, spec.hidden]);
        }
        for (const p of params) feeds[p.name] = new ort.Tensor('float32', p.data, p.dims);
        const out = await session.run(feeds);
        const loss = (out[TRAIN_LOSS]!.data as Float32Array)[0]!;
        if (!Number.isFinite(loss)) throw new GraftError('TRAIN', `training diverged at epoch ${epoch + 1} (loss ${loss}); lower the learning rate`, { epoch, lr: opt.lr });
        opt.step(params.map((p) => out[gradName(p.name)]!.data as Float32Array));
        lossSum += loss * n;
        state.step++;
        state.batchLoss = loss;
        emit('afterBatch');
      }
      const probs = await evaluator.probabilities(data, valRows, params);
      const predicted = argmaxRows(probs, spec.numClasses);
      let correct = 0;
      for (let i = 0; i < valRows.length; i++) if (predicted[i] === valLabels[i]) correct++;
      state.history.push({
        epoch,
        lr: opt.lr,
        trainLoss: lossSum / order.length,
        valLoss: crossEntropy(probs, spec.numClasses, valLabels),
        valAccuracy: correct / valRows.length,
        seconds: (performance.now() - started) / 1000,
      });
      emit('afterEpoch');
    }
  } catch (e) {
    if (!(e instanceof CancelFit)) throw e;
  } finally {
    await session.release();
    await evaluator.release();
  }
  emit('afterFit');
  return { params, history: state.history, bestEpoch: stopper.bestEpoch, stoppedEarly: stopper.stoppedEarly };
}

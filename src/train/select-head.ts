/**
 * Which head, chosen on the training rows alone: stratified k-fold cross-validation over candidate heads — the
 * L2 logistic regression at each C of a grid (solved exactly, warm-started along the grid) and the MLP head as
 * `trainHead` trains it — scored by the out-of-fold accuracy (or macro-F1), ties to the lower out-of-fold loss.
 * The validation rows are never read. The winner is then fitted on every training row (fitLogisticHead, or the
 * usual trainHead for the MLP).
 */
import { computeMetrics, argmaxRows, crossEntropy } from '../evaluate/metrics.js';
import { crossValidationFolds } from '../evaluate/diagnostics.js';
import { fitStandardizer, type HeadSpec, type Standardizer } from '../head/head.js';
import { availableParallelism } from 'node:os';
import * as ort from 'onnxruntime-node';
import { buildLogisticGraph, logisticParams, minimize, withPenalty, type Objective } from '../head/logistic.js';
import { encodeModel } from '../onnx/proto.js';
import { Evaluator, trainHead, type Callback, type EpochRecord, type FeatureSet, type FitOptions, type TrainResult, type TrainState } from './trainer.js';

/** C values tried, strongest regularisation first (sklearn's C: the inverse of the L2 penalty). */
export const LOGISTIC_GRID: readonly number[] = [1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1, 3, 10];

/** The path along the grid stops once this many C values in a row do no better than the best so far (score, then loss). */
const PATIENCE = 3;

/** Cross-validation solves to this gradient (the final fit to 1e-5): the scores do not move beyond it. */
const CV_TOLERANCE = 1e-4;

/** Training rows below which the k-fold split is repeated (with other seeds): ⌈1000 / rows⌉ splits, at most 5. */
const ROWS_FOR_ONE_SPLIT = 1000;
const MAX_REPEATS = 5;
const REPEAT_SEED = 7919;

export type HeadCandidate = { kind: 'logistic'; C: number } | { kind: 'mlp' };

export interface CandidateScore {
  candidate: HeadCandidate;
  /** Out-of-fold accuracy (or macro-F1) over every training row. */
  score: number;
  /** Out-of-fold mean cross-entropy. */
  loss: number;
}

export interface HeadSelection {
  chosen: HeadCandidate;
  metric: 'accuracy' | 'macro-f1';
  folds: number;
  /** How many different k-fold splits were scored (averaged). */
  repeats: number;
  scores: CandidateScore[];
  seconds: number;
  /** Why no cross-validation ran (a class with fewer than 2 training rows), if so. */
  fallback?: string;
}

export interface SelectOptions {
  /** Candidates: the logistic grid, the MLP head (its spec and fit options), or both. */
  logistic: boolean;
  mlp?: { spec: HeadSpec; fit: FitOptions };
  folds?: number;
  /** k-fold splits to average (default: enough for about ROWS_FOR_ONE_SPLIT rows, at most MAX_REPEATS). */
  repeats?: number;
  seed: number;
  metric?: 'accuracy' | 'macro-f1';
  grid?: readonly number[];
}

/** Rows followed by their augmented views (a view trains like its row), with the row each one belongs to. */
function withViews(rows: readonly number[], views: FeatureSet['views']): { rows: number[]; owner: number[] } {
  const out = [...rows];
  const owner = [...rows];
  for (const r of rows) {
    for (const v of views?.get(r) ?? []) {
      out.push(v);
      owner.push(r);
    }
  }
  return { rows: out, owner };
}

/**
 * Rows of a feature set gathered once, with the session that evaluates the logistic objective over them
 * (head/logistic.ts's graph): the same rows serve every fold and every C, only the row weights change.
 */
class LogisticData {
  readonly size: number;
  private constructor(
    private readonly session: ort.InferenceSession,
    private readonly x: ort.Tensor,
    private readonly onehot: ort.Tensor,
    private readonly dim: number,
    private readonly numClasses: number,
  ) {
    this.size = dim * numClasses + numClasses;
  }

  static async create(set: FeatureSet, rows: readonly number[], numClasses: number): Promise<LogisticData> {
    const { dim } = set;
    const x = new Float32Array(rows.length * dim);
    const onehot = new Float32Array(rows.length * numClasses);
    rows.forEach((r, i) => {
      x.set(set.features.subarray(r * dim, (r + 1) * dim), i * dim);
      onehot[i * numClasses + set.labels[r]!] = 1;
    });
    const session = await ort.InferenceSession.create(encodeModel(buildLogisticGraph(dim, numClasses)), { intraOpNumThreads: availableParallelism() });
    return new LogisticData(session, new ort.Tensor('float32', x, [rows.length, dim]), new ort.Tensor('float32', onehot, [rows.length, numClasses]), dim, numClasses);
  }

  private feeds(theta: Float64Array, std: Standardizer, weight: Float32Array): Record<string, ort.Tensor> {
    const WK = this.dim * this.numClasses;
    return {
      x: this.x,
      mean: new ort.Tensor('float32', std.mean, [this.dim]),
      inv_std: new ort.Tensor('float32', std.invStd, [this.dim]),
      w: new ort.Tensor('float32', Float32Array.from(theta.subarray(0, WK)), [this.dim, this.numClasses]),
      b: new ort.Tensor('float32', Float32Array.from(theta.subarray(WK)), [this.numClasses]),
      onehot: this.onehot,
      weight: new ort.Tensor('float32', weight, [weight.length, 1]),
    };
  }

  /** The weighted mean cross-entropy (no penalty) as an Objective. */
  objective(std: Standardizer, weight: Float32Array): Objective {
    const WK = this.dim * this.numClasses;
    return async (theta, grad) => {
      const out = await this.session.run(this.feeds(theta, std, weight), ['loss', 'grad_w', 'grad_b']);
      grad.set(out.grad_w!.data as Float32Array);
      grad.set(out.grad_b!.data as Float32Array, WK);
      return (out.loss!.data as Float32Array)[0]!;
    };
  }

  /** Every row's logits [rows, K]. */
  async logits(theta: Float64Array, std: Standardizer): Promise<Float32Array> {
    const weight = new Float32Array(this.x.dims[0]!);
    return (await this.session.run(this.feeds(theta, std, weight), ['logits'])).logits!.data as Float32Array;
  }

  release(): Promise<void> {
    return this.session.release();
  }
}

export async function selectHead(set: FeatureSet, trainRows: readonly number[], numClasses: number, options: SelectOptions): Promise<HeadSelection> {
  const started = performance.now();
  const metric = options.metric ?? 'accuracy';
  const grid = options.grid ?? LOGISTIC_GRID;
  const labels = Int32Array.from(trainRows, (r) => set.labels[r]!);
  const counts = new Array<number>(numClasses).fill(0);
  for (const y of labels) counts[y]!++;
  const k = Math.min(options.folds ?? 5, ...counts);
  const seconds = () => (performance.now() - started) / 1000;
  if (k < 2) {
    const chosen: HeadCandidate = options.mlp ? { kind: 'mlp' } : { kind: 'logistic', C: 1 };
    return { chosen, metric, folds: 0, repeats: 0, scores: [], seconds: seconds(), fallback: `a class has ${Math.min(...counts)} training row(s): no cross-validation, ${chosen.kind === 'mlp' ? 'the MLP head' : 'C = 1'}` };
  }
  // Small sets are split several times (repeated k-fold): one split's luck moves the scores of a few hundred rows.
  const repeats = options.repeats ?? Math.min(MAX_REPEATS, Math.max(1, Math.ceil(ROWS_FOR_ONE_SPLIT / trainRows.length)));
  const folds = Array.from({ length: repeats }, (_, rep) => crossValidationFolds(labels, k, options.seed + REPEAT_SEED * rep)).flatMap((fold) =>
    Array.from({ length: k }, (_, f) => ({
      train: trainRows.filter((_, i) => fold[i] !== f),
      held: trainRows.filter((_, i) => fold[i] === f),
    })),
  );
  // Out-of-fold probabilities in trainRows order: each fold writes its held-out rows.
  const truth = folds.flatMap((f) => f.held.map((r) => set.labels[r]!));
  const score = (probs: Float32Array): { score: number; loss: number } => {
    const predicted = argmaxRows(probs, numClasses);
    const names = Array.from({ length: numClasses }, (_, c) => String(c));
    const m = computeMetrics(names, truth, predicted);
    return { score: metric === 'accuracy' ? m.accuracy : m.macroF1, loss: crossEntropy(probs, numClasses, truth) };
  };
  const scores: CandidateScore[] = [];

  if (options.logistic) {
    // Every training row (and view) once; each fold weighs its own training rows and leaves its held-out rows at 0.
    const { rows, owner } = withViews(trainRows, set.views);
    const data = await LogisticData.create(set, rows, numClasses);
    try {
      const problems = folds.map((f, i) => {
        const held = new Set(f.held);
        const inFold = owner.map((r) => !held.has(r));
        const n = inFold.filter(Boolean).length;
        const weight = Float32Array.from(inFold, (t) => (t ? 1 / n : 0));
        return { std: fitStandardizer(set.features, set.dim, f.train), weight, n, held: rows.flatMap((r, j) => (j < trainRows.length && !inFold[j] ? [j] : [])) };
      });
      const warm: Array<Float64Array | undefined> = problems.map(() => undefined);
      let best = { score: -Infinity, loss: Infinity };
      let worse = 0;
      for (const C of grid) {
        const probs = new Float32Array(truth.length * numClasses);
        let at = 0;
        for (const [f, p] of problems.entries()) {
          const solution = await minimize(withPenalty(data.objective(p.std, p.weight), set.dim * numClasses, C, p.n), data.size, { gradientTolerance: CV_TOLERANCE, ...(warm[f] ? { init: warm[f] } : {}) });
          warm[f] = solution.theta;
          const z = await data.logits(solution.theta, p.std);
          for (const j of p.held) {
            softmaxRow(z, j, numClasses, probs, at);
            at += numClasses;
          }
        }
        const s = score(probs);
        scores.push({ candidate: { kind: 'logistic', C }, ...s });
        if (s.score > best.score || (s.score === best.score && s.loss < best.loss)) [best, worse] = [s, 0];
        else if (++worse >= PATIENCE) break;
      }
    } finally {
      await data.release();
    }
  }

  if (options.mlp) {
    const { spec, fit } = options.mlp;
    const probs = new Float32Array(truth.length * numClasses);
    let at = 0;
    for (const [f, { train, held }] of folds.entries()) {
      const std = fitStandardizer(set.features, set.dim, train);
      // Early stopping watches the held-out fold, as the final training watches the validation rows.
      const result = await trainHead(set, train, held, spec, std, { ...fit, seed: fit.seed + f });
      const evaluator = await Evaluator.forHead(spec, std);
      try {
        probs.set(await evaluator.probabilities(set, held, result.params), at);
      } finally {
        await evaluator.release();
      }
      at += held.length * numClasses;
    }
    scores.push({ candidate: { kind: 'mlp' }, ...score(probs) });
  }

  const ranked = [...scores].sort((a, b) => b.score - a.score || a.loss - b.loss);
  return { chosen: ranked[0]!.candidate, metric, folds: k, repeats, scores, seconds: seconds() };
}

/** Softmax of row `row` of [*, K] logits into out[at…at+K). */
function softmaxRow(z: Float32Array, row: number, K: number, out: Float32Array, at: number): void {
  let max = -Infinity;
  for (let k = 0; k < K; k++) max = Math.max(max, z[row * K + k]!);
  let sum = 0;
  for (let k = 0; k < K; k++) sum += Math.exp(z[row * K + k]! - max);
  for (let k = 0; k < K; k++) out[at + k] = Math.exp(z[row * K + k]! - max) / sum;
}

/**
 * The logistic head fitted on every training row (and its views) at one C: the `linear` head's weights, with one
 * history record (training objective, validation loss, accuracy and macro-F1) and the usual callback events.
 */
export async function fitLogisticHead(
  set: FeatureSet,
  trainRows: readonly number[],
  valRows: readonly number[],
  spec: HeadSpec,
  std: Standardizer,
  C: number,
  fit: FitOptions,
  callbacks: Callback[] = [],
): Promise<TrainResult> {
  const started = performance.now();
  const K = spec.numClasses;
  const { rows } = withViews(trainRows, set.views);
  const data = await LogisticData.create(set, [...rows, ...valRows], K);
  let solution;
  let z;
  try {
    const weight = Float32Array.from({ length: rows.length + valRows.length }, (_, i) => (i < rows.length ? 1 / rows.length : 0));
    solution = await minimize(withPenalty(data.objective(std, weight), set.dim * K, C, rows.length), data.size, { maxIterations: 2000 });
    z = await data.logits(solution.theta, std);
  } finally {
    await data.release();
  }
  const params = logisticParams(solution, set.dim, K);
  const probs = new Float32Array(valRows.length * K);
  valRows.forEach((_, i) => softmaxRow(z, rows.length + i, K, probs, i * K));
  const truth = Int32Array.from(valRows, (r) => set.labels[r]!);
  const m = computeMetrics(Array.from({ length: K }, (_, c) => String(c)), truth, argmaxRows(probs, K));
  const record: EpochRecord = {
    epoch: 0,
    lr: 0,
    trainLoss: solution.objective,
    valLoss: crossEntropy(probs, K, truth),
    valAccuracy: m.accuracy,
    valMacroF1: m.macroF1,
    seconds: (performance.now() - started) / 1000,
  };
  const state: TrainState = { epoch: 0, step: solution.iterations, stepsPerEpoch: solution.iterations, batchLoss: solution.objective, history: [], params, state: [], options: { ...fit, epochs: 1 } };
  for (const cb of callbacks) cb.beforeFit?.(state);
  for (const cb of callbacks) cb.beforeEpoch?.(state);
  state.history.push(record);
  for (const cb of callbacks) cb.afterEpoch?.(state);
  for (const cb of callbacks) cb.afterFit?.(state);
  return { params, history: state.history, bestEpoch: 0, stoppedEarly: false };
}

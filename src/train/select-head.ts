/**
 * Which head, chosen on the training rows alone (the validation rows are never read), by stratified k-fold
 * cross-validation (repeated for small sets): the L2 logistic regression at each C of a grid (solved exactly,
 * warm-started along the grid; the best out-of-fold accuracy or macro-F1 picks C, ties to the lower loss), the
 * MLP head as `trainHead` trains it, and the two averaged. The average is kept unless one head alone is right on
 * significantly more out-of-fold rows (preferEnsemble): at a few hundred rows the two heads' scores differ by
 * less than their noise, and averaging them lowers the variance that decides validation accuracy there. The winner
 * is then fitted on every training row (fitLogisticHead, the usual trainHead for the MLP, or both).
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

/** Standard errors by which a single head must beat the ensemble (paired, out of fold) to be chosen instead. */
const SIGNIFICANCE = 2;

/** `ensemble`: the logistic regression at C and the MLP, their probabilities averaged. */
export type HeadCandidate = { kind: 'logistic'; C: number } | { kind: 'mlp' } | { kind: 'ensemble'; C: number };

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
  const truth = Int32Array.from(folds.flatMap((f) => f.held.map((r) => set.labels[r]!)));
  const score = (probs: Float32Array): { score: number; loss: number } => {
    const t = truth.subarray(0, probs.length / numClasses);
    const predicted = argmaxRows(probs, numClasses);
    const names = Array.from({ length: numClasses }, (_, c) => String(c));
    const m = computeMetrics(names, t, predicted);
    return { score: metric === 'accuracy' ? m.accuracy : m.macroF1, loss: crossEntropy(probs, numClasses, t) };
  };
  const scores: CandidateScore[] = [];

  let logisticBest: { C: number; probs: Float32Array } | undefined;
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
        if (s.score > best.score || (s.score === best.score && s.loss < best.loss)) [best, worse, logisticBest] = [s, 0, { C, probs }];
        else if (++worse >= PATIENCE) break;
      }
    } finally {
      await data.release();
    }
  }

  if (!options.mlp || !logisticBest) {
    const ranked = [...scores].sort((a, b) => b.score - a.score || a.loss - b.loss);
    return { chosen: ranked[0]!.candidate, metric, folds: k, repeats, scores, seconds: seconds() };
  }

  // The MLP on the first split only (its folds cost a training each); the ensemble and the comparisons on that split.
  const { spec, fit } = options.mlp;
  const n = trainRows.length;
  const mlpProbs = new Float32Array(n * numClasses);
  let at = 0;
  for (const [f, { train, held }] of folds.slice(0, k).entries()) {
    const std = fitStandardizer(set.features, set.dim, train);
    // Early stopping watches the held-out fold, as the final training watches the validation rows.
    const result = await trainHead(set, train, held, spec, std, { ...fit, seed: fit.seed + f });
    const evaluator = await Evaluator.forHead(spec, std);
    try {
      mlpProbs.set(await evaluator.probabilities(set, held, result.params), at);
    } finally {
      await evaluator.release();
    }
    at += held.length * numClasses;
  }
  const C = logisticBest.C;
  const logisticProbs = logisticBest.probs.subarray(0, n * numClasses);
  // The average of the two heads' out-of-fold probabilities is the ensemble's (no row's heads saw it).
  const ensembleProbs = mlpProbs.map((p, i) => (p + logisticProbs[i]!) / 2);
  scores.push({ candidate: { kind: 'mlp' }, ...score(mlpProbs) }, { candidate: { kind: 'ensemble', C }, ...score(ensembleProbs) });
  const chosen = preferEnsemble(truth.subarray(0, n), numClasses, { kind: 'ensemble', C }, ensembleProbs, [
    [{ kind: 'logistic', C }, logisticProbs],
    [{ kind: 'mlp' }, mlpProbs],
  ]);
  return { chosen, metric, folds: k, repeats, scores, seconds: seconds() };
}

/**
 * The ensemble (of lower variance than either head alone) stays unless one head alone is right on significantly
 * more rows of the same out-of-fold predictions: a paired comparison, mean gain > SIGNIFICANCE standard errors;
 * of two such heads, the one with the larger gain.
 */
export function preferEnsemble(truth: Int32Array, numClasses: number, ensemble: HeadCandidate, ensembleProbs: Float32Array, singles: Array<[HeadCandidate, Float32Array]>): HeadCandidate {
  const correct = (probs: Float32Array) => {
    const predicted = argmaxRows(probs, numClasses);
    return Float64Array.from(truth, (t, i) => (predicted[i] === t ? 1 : 0));
  };
  const base = correct(ensembleProbs);
  let chosen = ensemble;
  let bestGain = 0;
  for (const [candidate, probs] of singles) {
    const gain = pairedGain(correct(probs), base);
    if (gain.mean > SIGNIFICANCE * gain.se && gain.mean > bestGain) [chosen, bestGain] = [candidate, gain.mean];
  }
  return chosen;
}

/** Mean and standard error of a − b over paired rows. */
function pairedGain(a: Float64Array, b: Float64Array): { mean: number; se: number } {
  const n = a.length;
  let sum = 0;
  for (let i = 0; i < n; i++) sum += a[i]! - b[i]!;
  const mean = sum / n;
  let sq = 0;
  for (let i = 0; i < n; i++) sq += (a[i]! - b[i]! - mean) ** 2;
  return { mean, se: Math.sqrt(sq / Math.max(n - 1, 1) / n) };
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
  const data = await LogisticData.create(set, rows, K);
  let solution;
  try {
    solution = await minimize(withPenalty(data.objective(std, new Float32Array(rows.length).fill(1 / rows.length)), set.dim * K, C, rows.length), data.size, { maxIterations: 2000 });
  } finally {
    await data.release();
  }
  // The validation rows' logits from a session of their own: in the solve they would only cost every evaluation.
  const val = await LogisticData.create(set, valRows, K);
  let z;
  try {
    z = await val.logits(solution.theta, std);
  } finally {
    await val.release();
  }
  const params = logisticParams(solution, set.dim, K);
  const probs = new Float32Array(valRows.length * K);
  valRows.forEach((_, i) => softmaxRow(z, i, K, probs, i * K));
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

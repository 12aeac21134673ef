/**
 * Training diagnostics over plain typed arrays: which samples cost the most, which classes are confused, how well the
 * probabilities are calibrated, which labels look wrong and which validation rows duplicate training rows.
 * Probabilities are row-major [rows, numClasses] matrices, as in metrics.ts. Pure functions: no I/O, no ONNX.
 */
import { invalidParameter } from '../errors.js';
import { Random } from '../util/random.js';
import { argmaxRows, crossEntropy } from './metrics.js';

export interface LossSample {
  index: number;
  /** True class index. */
  label: number;
  /** Most probable class index. */
  predicted: number;
  /** Probability given to the true class. */
  probability: number;
  loss: number;
}

export interface ConfusedPair {
  actual: string;
  predicted: string;
  count: number;
  /** count / number of samples whose true class is `actual`. */
  rate: number;
}

export interface CalibrationBin {
  lower: number;
  upper: number;
  count: number;
  /** Mean confidence of the bin's samples (0 when empty). */
  confidence: number;
  /** Fraction of the bin's samples that are correct (0 when empty). */
  accuracy: number;
}

export interface Calibration {
  /** Expected calibration error of the top-label confidence (Guo et al. 2017). */
  ece: number;
  /** One-vs-rest ECE of each class, indexed by class. */
  perClass: number[];
  /** Reliability diagram of the top-label confidence. */
  bins: CalibrationBin[];
}

export interface MislabelCandidate {
  index: number;
  given: number;
  suggested: number;
  givenProbability: number;
  suggestedProbability: number;
  /** suggestedProbability - givenProbability. */
  margin: number;
}

export interface NearDuplicate {
  /** Row index (into features) of the validation row. */
  val: number;
  /** Row index (into features) of its most similar training row. */
  train: number;
  cosine: number;
}

function ratio(a: number, b: number): number {
  return b === 0 ? 0 : a / b;
}

function checkCount(name: string, k: number): void {
  if (!Number.isInteger(k) || k < 0) throw invalidParameter(name, 'a non-negative integer', k);
}

/** Number of rows of a probability matrix, every value of which must lie in [0, 1]. */
function probabilityRows(probs: Float32Array, numClasses: number): number {
  if (!Number.isInteger(numClasses) || numClasses < 1) throw invalidParameter('numClasses', 'a positive integer', numClasses);
  const rows = probs.length / numClasses;
  if (!Number.isInteger(rows)) throw invalidParameter('probabilities.length', `a multiple of numClasses (${numClasses})`, probs.length);
  for (let i = 0; i < probs.length; i++) {
    if (!(probs[i]! >= 0 && probs[i]! <= 1)) throw invalidParameter(`probabilities[${i}]`, 'a probability in [0, 1]', probs[i]);
  }
  return rows;
}

function checkTruth(name: string, truth: Int32Array, rows: number, numClasses: number): void {
  if (truth.length !== rows) throw invalidParameter(`${name}.length`, `the number of probability rows (${rows})`, truth.length);
  for (let i = 0; i < rows; i++) {
    if (truth[i]! < 0 || truth[i]! >= numClasses) throw invalidParameter(`${name}[${i}]`, `a class index in [0, ${numClasses})`, truth[i]);
  }
}

/**
 * The k samples with the highest cross-entropy -log p(true class) (p clamped at 1e-12, as crossEntropy does), highest
 * first; equal losses keep index order and a NaN loss ranks first.
 */
export function topLosses(probs: Float32Array, numClasses: number, truth: Int32Array, k: number): LossSample[] {
  checkCount('k', k);
  const predicted = argmaxRows(probs, numClasses);
  checkTruth('truth', truth, predicted.length, numClasses);
  const loss = (i: number): number =>
    crossEntropy(probs.subarray(i * numClasses, (i + 1) * numClasses), numClasses, truth.subarray(i, i + 1));
  const samples = Array.from(predicted, (p, index) => ({
    index,
    label: truth[index]!,
    predicted: p,
    probability: probs[index * numClasses + truth[index]!]!,
    loss: loss(index),
  }));
  const key = (s: LossSample): number => (Number.isNaN(s.loss) ? Infinity : s.loss);
  return samples.sort((a, b) => key(b) - key(a) || a.index - b.index).slice(0, k);
}

/**
 * The k most confused ordered pairs (actual, predicted) of a confusion matrix (rows actual, columns predicted): off the
 * diagonal, non-zero, by count then rate (count / actual's samples), both descending, then row and column order.
 */
export function confusedPairs(confusion: readonly (readonly number[])[], labels: readonly string[], k: number): ConfusedPair[] {
  checkCount('k', k);
  const n = labels.length;
  if (confusion.length !== n || confusion.some((row) => row.length !== n)) {
    throw invalidParameter('confusion', `a ${n}x${n} matrix (one row and column per label)`, `${confusion.length} rows`);
  }
  const pairs: ConfusedPair[] = [];
  confusion.forEach((row, i) => {
    const support = row.reduce((s, v) => s + v, 0);
    row.forEach((count, j) => {
      if (i !== j && count > 0) pairs.push({ actual: labels[i]!, predicted: labels[j]!, count, rate: ratio(count, support) });
    });
  });
  // Array.prototype.sort is stable, so equal pairs keep their row-major order.
  return pairs.sort((a, b) => b.count - a.count || b.rate - a.rate).slice(0, k);
}

/**
 * Equal-width reliability bins of one confidence score: bin m of M holds the scores in ((m-1)/M, m/M] (0 goes in the
 * first), and ECE = sum over bins of |B_m|/n * |accuracy(B_m) - confidence(B_m)|.
 */
function reliability(rows: number, bins: number, score: (r: number) => number, hit: (r: number) => boolean): { ece: number; bins: CalibrationBin[] } {
  const count = new Float64Array(bins);
  const scoreSum = new Float64Array(bins);
  const hits = new Float64Array(bins);
  for (let r = 0; r < rows; r++) {
    const p = score(r);
    const b = Math.min(bins - 1, Math.max(0, Math.ceil(p * bins) - 1));
    count[b]++;
    scoreSum[b] += p;
    if (hit(r)) hits[b]++;
  }
  let ece = 0;
  const out = Array.from(count, (c, b) => {
    const bin = { lower: b / bins, upper: (b + 1) / bins, count: c, confidence: ratio(scoreSum[b]!, c), accuracy: ratio(hits[b]!, c) };
    ece += ratio(c, rows) * Math.abs(bin.accuracy - bin.confidence);
    return bin;
  });
  return { ece, bins: out };
}

/**
 * Calibration in `bins` equal-width bins. Overall ECE (Guo et al. 2017): the score is the top-label confidence max_c p_c
 * and a hit is argmax = truth. Per-class ECE (one-vs-rest): the score is p_c and a hit is truth = c, over every sample.
 * In both, ECE = sum_m |B_m|/n * |hits(B_m)/|B_m| - mean score(B_m)| with B_m the scores in ((m-1)/M, m/M]; 0 when empty.
 */
export function calibration(probs: Float32Array, numClasses: number, truth: Int32Array, bins = 10): Calibration {
  if (!Number.isInteger(bins) || bins < 1) throw invalidParameter('bins', 'a positive integer', bins);
  const rows = probabilityRows(probs, numClasses);
  checkTruth('truth', truth, rows, numClasses);
  const predicted = argmaxRows(probs, numClasses);
  const overall = reliability(rows, bins, (r) => probs[r * numClasses + predicted[r]!]!, (r) => predicted[r] === truth[r]);
  const perClass = Array.from({ length: numClasses }, (_, c) =>
    reliability(rows, bins, (r) => probs[r * numClasses + c]!, (r) => truth[r] === c).ece,
  );
  return { ece: overall.ece, perClass, bins: overall.bins };
}

/**
 * Confident-learning label issues (Northcutt et al. 2021) from out-of-fold probabilities. Class j's threshold t_j is
 * the mean p_j over the samples labelled j ('per-class', the default; NaN for a class with no samples, which is then
 * never suggested) or one fixed number. A sample labelled i is a candidate when p_i < t_i and some other class j has
 * p_j >= t_j; the suggestion is the most probable such j (lowest index on ties). Sorted by margin p_j - p_i descending,
 * then index; at most `limit`.
 */
export function mislabelCandidates(
  outOfFold: Float32Array,
  numClasses: number,
  given: Int32Array,
  options: { threshold?: 'per-class' | number; limit?: number } = {},
): MislabelCandidate[] {
  const { threshold = 'per-class', limit = Infinity } = options;
  if (limit !== Infinity) checkCount('limit', limit);
  if (threshold !== 'per-class' && !(threshold >= 0 && threshold <= 1)) {
    throw invalidParameter('threshold', "'per-class' or a number in [0, 1]", threshold);
  }
  const rows = probabilityRows(outOfFold, numClasses);
  checkTruth('given', given, rows, numClasses);
  const t = new Float64Array(numClasses).fill(typeof threshold === 'number' ? threshold : 0);
  if (threshold === 'per-class') {
    const n = new Float64Array(numClasses);
    for (let r = 0; r < rows; r++) {
      t[given[r]!] += outOfFold[r * numClasses + given[r]!]!;
      n[given[r]!]++;
    }
    for (let c = 0; c < numClasses; c++) t[c] = t[c]! / n[c]!; // 0/0 = NaN: no sample reaches it
  }
  const candidates: MislabelCandidate[] = [];
  for (let r = 0; r < rows; r++) {
    const base = r * numClasses;
    const i = given[r]!;
    const pi = outOfFold[base + i]!;
    if (!(pi < t[i]!)) continue;
    let j = -1;
    for (let c = 0; c < numClasses; c++) {
      if (c !== i && outOfFold[base + c]! >= t[c]! && (j < 0 || outOfFold[base + c]! > outOfFold[base + j]!)) j = c;
    }
    if (j < 0) continue;
    const pj = outOfFold[base + j]!;
    candidates.push({ index: r, given: i, suggested: j, givenProbability: pi, suggestedProbability: pj, margin: pj - pi });
  }
  return candidates.sort((a, b) => b.margin - a.margin || a.index - b.index).slice(0, limit);
}

/**
 * Stratified fold ids in [0, k) for cross-validation: each class's samples, shuffled by a Random(seed), are dealt to
 * the folds in turn, the deal continuing from class to class, so every fold holds floor or ceil of n_c/k of each class
 * and of n/k overall. Each distinct label value is a class; the same labels, k and seed give the same folds.
 */
export function crossValidationFolds(labels: Int32Array, k: number, seed: number): Int32Array {
  if (!Number.isInteger(k) || k < 2) throw invalidParameter('k', 'an integer >= 2', k);
  const byClass = new Map<number, number[]>();
  labels.forEach((c, i) => {
    const members = byClass.get(c);
    if (members) members.push(i);
    else byClass.set(c, [i]);
  });
  const random = new Random(seed);
  const folds = new Int32Array(labels.length);
  let dealt = 0;
  for (const c of [...byClass.keys()].sort((a, b) => a - b)) {
    for (const i of random.shuffle(byClass.get(c)!)) folds[i] = dealt++ % k;
  }
  return folds;
}

/** Validation rows per block of the duplicate search, and dimensions between two pruning checks. */
const BLOCK = 64;
const STAGE = 32;

/**
 * Unit-length copies of the given rows with their dimensions permuted by `order`, and for each row the norm of the
 * dimensions left after each stage of STAGE dimensions (0 after the last). A zero row stays zero.
 */
function normalise(features: Float32Array, dim: number, rows: readonly number[], order: Int32Array): { x: Float32Array; tail: Float64Array } {
  const stages = Math.ceil(dim / STAGE);
  const x = new Float32Array(rows.length * dim);
  const tail = new Float64Array(rows.length * stages);
  rows.forEach((row, r) => {
    const src = row * dim;
    let sq = 0;
    for (let d = 0; d < dim; d++) sq += features[src + d]! * features[src + d]!;
    const inv = sq > 0 ? 1 / Math.sqrt(sq) : 0;
    for (let d = 0; d < dim; d++) x[r * dim + d] = features[src + order[d]!]! * inv;
    let rest = 0;
    for (let s = stages - 1; s >= 0; s--) {
      tail[r * stages + s] = Math.sqrt(rest);
      for (let d = s * STAGE; d < Math.min(dim, (s + 1) * STAGE); d++) rest += x[r * dim + d]! * x[r * dim + d]!;
    }
  });
  return { x, tail };
}

/** Dimensions by decreasing variance of the unit-length rows: the bound below then tightens fastest. */
function dimensionsByVariance(features: Float32Array, dim: number, rows: readonly number[]): Int32Array {
  const sum = new Float64Array(dim);
  const sumSq = new Float64Array(dim);
  for (const row of rows) {
    let sq = 0;
    for (let d = 0; d < dim; d++) sq += features[row * dim + d]! * features[row * dim + d]!;
    const inv = sq > 0 ? 1 / Math.sqrt(sq) : 0;
    for (let d = 0; d < dim; d++) {
      const v = features[row * dim + d]! * inv;
      sum[d] += v;
      sumSq[d] += v * v;
    }
  }
  const variance = (d: number): number => sumSq[d]! - (sum[d]! * sum[d]!) / Math.max(1, rows.length);
  return Int32Array.from({ length: dim }, (_, d) => d).sort((a, b) => variance(b) - variance(a) || a - b);
}

/**
 * For each validation row (an index into the row-major [rows, dim] features) its most similar training row by cosine
 * (the first in `train` on ties), kept when the cosine is >= threshold; sorted by cosine descending, then val order.
 * A zero row has cosine 0 with every row. Exact: a pair is abandoned only once its partial dot product plus the product
 * of the two rows' remaining norms (Cauchy-Schwarz) cannot reach the threshold or the row's best so far.
 */
export function nearDuplicates(
  features: Float32Array,
  dim: number,
  train: readonly number[],
  val: readonly number[],
  threshold = 0.98,
): NearDuplicate[] {
  if (!Number.isInteger(dim) || dim < 1) throw invalidParameter('dim', 'a positive integer', dim);
  if (features.length % dim !== 0) throw invalidParameter('features.length', `a multiple of dim (${dim})`, features.length);
  if (!(threshold >= -1 && threshold <= 1)) throw invalidParameter('threshold', 'a cosine in [-1, 1]', threshold);
  const rows = features.length / dim;
  for (const [name, list] of [['train', train], ['val', val]] as const) {
    list.forEach((row, i) => {
      if (!Number.isInteger(row) || row < 0 || row >= rows) throw invalidParameter(`${name}[${i}]`, `a row index in [0, ${rows})`, row);
    });
  }
  const order = dimensionsByVariance(features, dim, [...train, ...val]);
  const t = normalise(features, dim, train, order);
  const v = normalise(features, dim, val, order);
  const [V, T, vTail, tTail] = [v.x, t.x, v.tail, t.tail];
  const stages = Math.ceil(dim / STAGE);
  const best = new Float64Array(val.length).fill(-Infinity);
  const match = new Int32Array(val.length).fill(-1);
  for (let v0 = 0; v0 < val.length; v0 += BLOCK) {
    const v1 = Math.min(val.length, v0 + BLOCK);
    for (let j = 0; j < train.length; j++) {
      for (let i = v0; i < v1; i++) {
        // 1e-6 of slack keeps rounding in the bound from abandoning a pair that reaches the limit.
        const limit = Math.max(threshold, best[i]!) - 1e-6;
        let dot = 0;
        for (let s = 0, p = i * dim, q = j * dim, end = p + dim; s < stages; s++) {
          const stop = Math.min(end, p + STAGE);
          let a0 = 0, a1 = 0, a2 = 0, a3 = 0;
          for (; p + 3 < stop; p += 4, q += 4) {
            a0 += V[p]! * T[q]!;
            a1 += V[p + 1]! * T[q + 1]!;
            a2 += V[p + 2]! * T[q + 2]!;
            a3 += V[p + 3]! * T[q + 3]!;
          }
          for (; p < stop; p++, q++) a0 += V[p]! * T[q]!;
          dot += a0 + a1 + a2 + a3;
          if (dot + vTail[i * stages + s]! * tTail[j * stages + s]! < limit) break;
        }
        if (dot >= threshold && dot > best[i]!) {
          best[i] = dot;
          match[i] = j;
        }
      }
    }
  }
  const found: NearDuplicate[] = [];
  match.forEach((j, i) => {
    if (j >= 0) found.push({ val: val[i]!, train: train[j]!, cosine: Math.min(1, best[i]!) });
  });
  return found.sort((a, b) => b.cosine - a.cosine);
}

/** A sample as diagnostics name it: its file (and table line), and a text's first 120 characters. */
export interface SampleRef {
  file: string;
  line?: number;
  text?: string;
}

/** What Learner.diagnose() finds after training. */
export interface Diagnostics {
  /** Validation samples the model is most wrong about. */
  topLosses: Array<SampleRef & { label: string; predicted: string; probability: number; loss: number }>;
  confusedPairs: ConfusedPair[];
  /** Expected calibration error of the top label (Guo et al.), one-vs-rest per class, and the reliability curve. */
  calibration: { ece: number; perClass: Record<string, number>; bins: Calibration['bins'] };
  /** Training samples whose given label their out-of-fold prediction doubts (confident learning), most suspicious first. */
  mislabeled: Array<SampleRef & { given: string; suggested: string; givenProbability: number; suggestedProbability: number }>;
  /** Validation samples whose features nearly equal a training sample's (leakage). */
  nearDuplicates: Array<{ val: SampleRef; train: SampleRef; cosine: number }>;
}

import { GraftError, invalidParameter } from '../errors.js';

export interface ClassMetrics {
  precision: number;
  recall: number;
  f1: number;
  /** Number of samples whose true class is this one. */
  support: number;
}

export interface Metrics {
  accuracy: number;
  loss?: number;
  perClass: Record<string, ClassMetrics>;
  /** Unweighted mean of the per-class F1 over every label, present in the data or not (sklearn's average='macro'). */
  macroF1: number;
  /** confusion[i][j]: samples of true class i predicted as class j. */
  confusion: number[][];
  labels: string[];
  count: number;
}

/** a / b, or 0 when b is 0 (sklearn's zero_division=0). */
function ratio(a: number, b: number): number {
  return b === 0 ? 0 : a / b;
}

function checkIndices(name: string, values: ArrayLike<number>, numClasses: number): void {
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (!Number.isInteger(v) || v < 0 || v >= numClasses) {
      throw invalidParameter(`${name}[${i}]`, `a class index in [0, ${numClasses})`, v);
    }
  }
}

/** Accuracy, per-class precision/recall/F1, macro F1 and the confusion matrix of predicted class indices against true ones. */
export function computeMetrics(
  labels: readonly string[],
  truth: ArrayLike<number>,
  predicted: ArrayLike<number>,
  options: { loss?: number } = {},
): Metrics {
  const n = labels.length;
  if (new Set(labels).size !== n) throw invalidParameter('labels', 'distinct class names', labels.join(', '));
  if (truth.length !== predicted.length) {
    throw new GraftError('USAGE', `Expected as many predictions as true labels but received ${predicted.length} predictions for ${truth.length} labels`, {
      truth: truth.length,
      predicted: predicted.length,
    });
  }
  checkIndices('truth', truth, n);
  checkIndices('predicted', predicted, n);

  const confusion = labels.map(() => new Array<number>(n).fill(0));
  let correct = 0;
  for (let i = 0; i < truth.length; i++) {
    const t = truth[i]!;
    const p = predicted[i]!;
    confusion[t]![p]!++;
    if (t === p) correct++;
  }

  const perClass: Record<string, ClassMetrics> = {};
  let f1Sum = 0;
  labels.forEach((label, c) => {
    const tp = confusion[c]![c]!;
    const support = confusion[c]!.reduce((s, v) => s + v, 0);
    const predictedAsC = confusion.reduce((s, row) => s + row[c]!, 0);
    const precision = ratio(tp, predictedAsC);
    const recall = ratio(tp, support);
    const f1 = ratio(2 * precision * recall, precision + recall);
    perClass[label] = { precision, recall, f1, support };
    f1Sum += f1;
  });

  const metrics: Metrics = {
    accuracy: ratio(correct, truth.length),
    perClass,
    macroF1: ratio(f1Sum, n),
    confusion,
    labels: [...labels],
    count: truth.length,
  };
  if (options.loss !== undefined) metrics.loss = options.loss;
  return metrics;
}

function checkRows(probabilities: ArrayLike<number>, numClasses: number): number {
  if (!Number.isInteger(numClasses) || numClasses < 1) throw invalidParameter('numClasses', 'a positive integer', numClasses);
  if (probabilities.length % numClasses !== 0) {
    throw invalidParameter('probabilities.length', `a multiple of numClasses (${numClasses})`, probabilities.length);
  }
  return probabilities.length / numClasses;
}

/** Index of the largest value in each row of a row-major [rows, numClasses] matrix; the first one wins ties, NaN never wins. */
export function argmaxRows(probabilities: Float32Array, numClasses: number): Int32Array {
  const rows = checkRows(probabilities, numClasses);
  const out = new Int32Array(rows);
  for (let r = 0; r < rows; r++) {
    const base = r * numClasses;
    let best = 0;
    let bestValue = -Infinity;
    for (let c = 0; c < numClasses; c++) {
      const v = probabilities[base + c]!;
      if (v > bestValue) {
        bestValue = v;
        best = c;
      }
    }
    out[r] = best;
  }
  return out;
}

/** Mean of -log p(true class) over the rows, with p clamped at 1e-12; 0 when there are no rows. */
export function crossEntropy(probabilities: Float32Array, numClasses: number, truth: ArrayLike<number>): number {
  const rows = checkRows(probabilities, numClasses);
  if (truth.length !== rows) throw invalidParameter('truth.length', `the number of probability rows (${rows})`, truth.length);
  checkIndices('truth', truth, numClasses);
  let sum = 0;
  for (let r = 0; r < rows; r++) {
    sum -= Math.log(Math.max(probabilities[r * numClasses + truth[r]!]!, 1e-12));
  }
  return ratio(sum, rows);
}

/** The k most probable labels, highest first; equal probabilities keep label order, NaN ranks last. k is capped at labels.length. */
export function topK(
  probabilities: ArrayLike<number>,
  labels: readonly string[],
  k: number,
): Array<{ label: string; probability: number }> {
  if (probabilities.length !== labels.length) {
    throw invalidParameter('probabilities.length', `one probability per label (${labels.length})`, probabilities.length);
  }
  if (!Number.isInteger(k) || k < 0) throw invalidParameter('k', 'a non-negative integer', k);
  const key = (i: number): number => (Number.isNaN(probabilities[i]) ? -Infinity : probabilities[i]!);
  return labels
    .map((_, i) => i)
    .sort((a, b) => key(b) - key(a) || a - b)
    .slice(0, k)
    .map((i) => ({ label: labels[i]!, probability: probabilities[i]! }));
}

/** The outside yardstick for a backbone's features: an L2 logistic-regression probe (sklearn's objective). */
import type { FeatureSet } from '../src/train/trainer.js';

/** Full-batch Adam on mean cross-entropy + ||W||² / (2·C·N) (sklearn's objective scaled by 1/N). */
export function probe(set: FeatureSet, train: readonly number[], val: readonly number[], numClasses: number, C = 1, iterations = 400): number {
  const { features: F, dim: D, labels } = set;
  const K = numClasses;
  const W = new Float32Array(D * K);
  const b = new Float32Array(K);
  const m = new Float32Array(D * K + K);
  const v = new Float32Array(D * K + K);
  const g = new Float32Array(D * K + K);
  const z = new Float64Array(K);
  const lr = 0.01;
  for (let t = 1; t <= iterations; t++) {
    g.fill(0);
    for (const r of train) {
      const x = F.subarray(r * D, (r + 1) * D);
      for (let k = 0; k < K; k++) z[k] = b[k]!;
      for (let j = 0; j < D; j++) {
        const xj = x[j]!;
        for (let k = 0; k < K; k++) z[k]! += xj * W[j * K + k]!;
      }
      let max = -Infinity;
      for (let k = 0; k < K; k++) max = Math.max(max, z[k]!);
      let sum = 0;
      for (let k = 0; k < K; k++) sum += z[k] = Math.exp(z[k]! - max);
      for (let k = 0; k < K; k++) z[k] = z[k]! / sum - (labels[r] === k ? 1 : 0);
      for (let j = 0; j < D; j++) {
        const xj = x[j]!;
        for (let k = 0; k < K; k++) g[j * K + k]! += xj * z[k]!;
      }
      for (let k = 0; k < K; k++) g[D * K + k]! += z[k]!;
    }
    const n = train.length;
    for (let i = 0; i < D * K + K; i++) {
      const gi = g[i]! / n + (i < D * K ? W[i]! / (C * n) : 0);
      m[i] = 0.9 * m[i]! + 0.1 * gi;
      v[i] = 0.999 * v[i]! + 0.001 * gi * gi;
      const step = (lr * (m[i]! / (1 - 0.9 ** t))) / (Math.sqrt(v[i]! / (1 - 0.999 ** t)) + 1e-8);
      if (i < D * K) W[i]! -= step;
      else b[i - D * K]! -= step;
    }
  }
  let correct = 0;
  for (const r of val) {
    let best = 0;
    let bestScore = -Infinity;
    for (let k = 0; k < K; k++) {
      let s = b[k]!;
      for (let j = 0; j < D; j++) s += F[r * D + j]! * W[j * K + k]!;
      if (s > bestScore) [bestScore, best] = [s, k];
    }
    if (best === labels[r]) correct++;
  }
  return correct / val.length;
}

/**
 * Head selection study: trains candidate heads on the cached features of one dataset (same split) and
 * prints validation accuracy per seed, next to a plain L2 logistic-regression probe (sklearn's
 * LogisticRegression(C=1) objective, solved full-batch) on the raw pooled features, so the defaults are
 * measured rather than assumed.
 *
 *   node dist/bench/heads.js DATA MODEL ['{"cropPct": 1}' (PretrainedConfig overrides)] [--seeds 3]
 *
 * The split is seeded by the first seed only; the seeds vary initialisation, shuffling and dropout.
 */
import { Learner } from '../src/learner.js';
import { fitStandardizer, type HeadSpec } from '../src/head/head.js';
import { DEFAULT_FIT, Evaluator, trainHead, type FeatureSet, type FitOptions } from '../src/train/trainer.js';
import { argmaxRows } from '../src/evaluate/metrics.js';

const args = process.argv.slice(2);
const seedsAt = args.indexOf('--seeds');
const seeds = seedsAt >= 0 ? Number(args[seedsAt + 1]) : 3;
const [data, model, configJson] = args.filter((a, i) => !a.startsWith('--') && args[i - 1] !== '--seeds');
if (!data || !model) throw new Error('usage: heads.js DATA MODEL [CONFIG_JSON] [--seeds N]');
const config = configJson ? (JSON.parse(configJson) as Record<string, unknown>) : undefined;

type Candidate = { name: string; head: Pick<HeadSpec, 'kind' | 'hidden' | 'dropout'>; fit: Partial<FitOptions> };
const candidates: Candidate[] = [
  { name: 'linear lr1e-3', head: { kind: 'linear', hidden: 0, dropout: 0 }, fit: { lr: 1e-3 } },
  { name: 'linear lr1e-3 wd0.3', head: { kind: 'linear', hidden: 0, dropout: 0 }, fit: { lr: 1e-3, weightDecay: 0.3 } },
  { name: 'mlp256 d0.2 lr1e-3', head: { kind: 'mlp', hidden: 256, dropout: 0.2 }, fit: { lr: 1e-3 } },
  { name: 'mlp256 d0.5 lr3e-4', head: { kind: 'mlp', hidden: 256, dropout: 0.5 }, fit: { lr: 3e-4 } },
  { name: 'mlp256 d0.5 lr3e-4 wd0.3', head: { kind: 'mlp', hidden: 256, dropout: 0.5 }, fit: { lr: 3e-4, weightDecay: 0.3 } },
  { name: 'mlp512 d0.5 lr3e-4 wd0.3', head: { kind: 'mlp', hidden: 512, dropout: 0.5 }, fit: { lr: 3e-4, weightDecay: 0.3 } },
];

/** Full-batch Adam on mean cross-entropy + ||W||² / (2·C·N) (sklearn's objective scaled by 1/N). */
function probe(set: FeatureSet, train: readonly number[], val: readonly number[], numClasses: number, C = 1, iterations = 400): number {
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

const learn = await Learner.create({ data, model, seed: 0, ...(config ? { config } : {}) });
const { features, trainRows, valRows } = learn.data;
const K = learn.classes.length;
console.log(`${data}: ${trainRows.length} train / ${valRows.length} val, ${K} classes`);
const t0 = performance.now();
console.log(`${'probe: L2 logistic regression C=1'.padEnd(28)} acc ${probe(features, trainRows, valRows, K).toFixed(4)} (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
for (const c of candidates) {
  const accs: number[] = [];
  let seconds = 0;
  for (let seed = 0; seed < seeds; seed++) {
    const spec: HeadSpec = { ...c.head, inputDim: features.dim, numClasses: K };
    const std = fitStandardizer(features.features, features.dim, trainRows);
    const started = performance.now();
    const r = await trainHead(features, trainRows, valRows, spec, std, { ...DEFAULT_FIT, ...c.fit, seed });
    seconds += (performance.now() - started) / 1000;
    const evaluator = await Evaluator.forHead(spec, std);
    const predicted = argmaxRows(await evaluator.probabilities(features, valRows, r.params), K);
    await evaluator.release();
    accs.push(valRows.filter((row, i) => predicted[i] === features.labels[row]).length / valRows.length);
  }
  const mean = accs.reduce((a, b) => a + b, 0) / accs.length;
  console.log(`${c.name.padEnd(28)} acc ${mean.toFixed(4)} (seeds: ${accs.map((a) => a.toFixed(4)).join(' ')}) ${(seconds / seeds).toFixed(1)} s/fit`);
}

/**
 * Head selection study: trains candidate heads on the cached features of one dataset (same split) and
 * prints validation accuracy per seed, next to sklearn's L2 logistic-regression probe (standardised, C by
 * 5-fold CV on the training rows; bench/probe.ts), so the defaults are measured rather than assumed.
 *
 *   node dist/bench/heads.js DATA MODEL ['{"cropPct": 1}' (PretrainedConfig overrides)] [--seeds 3]
 *
 * The split is seeded by the first seed only; the seeds vary initialisation, shuffling and dropout.
 */
import { Learner } from '../src/learner.js';
import { fitStandardizer, type HeadSpec } from '../src/head/head.js';
import { DEFAULT_FIT, Evaluator, trainHead, type FitOptions } from '../src/train/trainer.js';
import { argmaxRows } from '../src/evaluate/metrics.js';
import { probe } from './probe.js';

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

const learn = await Learner.create({ data, model, seed: 0, ...(config ? { config } : {}) });
const { features, trainRows, valRows } = learn.data;
const K = learn.classes.length;
console.log(`${data}: ${trainRows.length} train / ${valRows.length} val, ${K} classes`);
const t0 = performance.now();
const p = probe(features, trainRows, valRows);
console.log(`${`sklearn probe, C=${p.C} by CV`.padEnd(28)} acc ${p.accuracy.toFixed(4)} (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
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

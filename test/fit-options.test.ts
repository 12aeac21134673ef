/** The training loop's optimizer, schedule, warmup and clipping options, on small synthetic features. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { fitStandardizer, initParams, type HeadSpec } from '../src/head/head.js';
import { balancedRows, rowsByClass, DEFAULT_FIT, makeOptimizer, makeSchedules, trainHead, type FeatureSet, type FitOptions } from '../src/train/trainer.js';
import { computeMetrics } from '../src/evaluate/metrics.js';
import { Evaluator } from '../src/train/trainer.js';
import { AdamW, SGD, Adam } from '../src/train/optimizer.js';
import { Random } from '../src/util/random.js';
import { GraftError } from '../src/errors.js';

/** Two Gaussian blobs in 16 dimensions, 48 rows each, their centres ±shift apart in 4 of them. */
function blobs(seed: number, shift = 1.5): { data: FeatureSet; train: number[]; val: number[] } {
  const rng = new Random(seed);
  const dim = 16;
  const n = 96;
  const features = new Float32Array(n * dim);
  const labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    labels[i] = i % 2;
    for (let j = 0; j < dim; j++) features[i * dim + j] = rng.normal() + (labels[i] ? shift : -shift) * (j < 4 ? 1 : 0);
  }
  const rows = [...Array(n).keys()];
  return { data: { features, dim, labels }, train: rows.slice(0, 64), val: rows.slice(64) };
}

const spec: HeadSpec = { kind: 'linear', hidden: 0, dropout: 0, inputDim: 16, numClasses: 2 };

async function fit(options: Partial<FitOptions>, shift?: number) {
  const { data, train, val } = blobs(1, shift);
  const std = fitStandardizer(data.features, data.dim, train);
  return trainHead(data, train, val, spec, std, { ...DEFAULT_FIT, epochs: 12, patience: 0, batchSize: 16, lr: 1e-2, ...options });
}

describe('fit options', () => {
  it('builds the named optimizer', () => {
    const groups = () => [{ params: [{ name: 'w', dims: [2], data: new Float32Array(2), decay: true }] }];
    assert.ok(makeOptimizer(groups(), { ...DEFAULT_FIT, optimizer: 'adamw' }) instanceof AdamW);
    assert.ok(makeOptimizer(groups(), { ...DEFAULT_FIT, optimizer: 'adam' }) instanceof Adam);
    assert.ok(makeOptimizer(groups(), { ...DEFAULT_FIT, optimizer: 'sgd' }) instanceof SGD);
    assert.throws(() => makeOptimizer(groups(), { ...DEFAULT_FIT, optimizer: 'lion' as never }), GraftError);
  });

  it('schedules the learning-rate multiplier per step, with warmup', () => {
    const cos = makeSchedules({ ...DEFAULT_FIT, schedule: 'cosine' }).lr!;
    assert.equal(cos(0), 1);
    assert.ok(Math.abs(cos(0.5) - 0.5) < 1e-12);
    assert.ok(Math.abs(cos(1)) < 1e-12);
    const warm = makeSchedules({ ...DEFAULT_FIT, schedule: 'constant', warmup: 0.2 }).lr!;
    assert.equal(warm(0), 0);
    assert.ok(Math.abs(warm(0.1) - 0.5) < 1e-12);
    assert.equal(warm(0.5), 1);
    const cycle = makeSchedules({ ...DEFAULT_FIT, schedule: 'one-cycle' });
    assert.ok(cycle.lr!(0.25) > cycle.lr!(0) && cycle.lr!(0.25) > cycle.lr!(0.9));
    assert.ok(cycle.momentum!(0.25) < cycle.momentum!(0));
    const stepped = makeSchedules({ ...DEFAULT_FIT, schedule: 'step' }).lr!;
    assert.deepEqual([stepped(0.1), stepped(0.6), stepped(0.9)].map((v) => +v.toFixed(6)), [1, 0.1, 0.01]);
  });

  it('one-cycle raises then lowers the rate across epochs; SGD learns the blobs', async () => {
    const result = await fit({ optimizer: 'sgd', schedule: 'one-cycle', lr: 0.1 });
    const lrs = result.history.map((h) => h.lr);
    const peak = lrs.indexOf(Math.max(...lrs));
    assert.ok(peak > 0 && peak < lrs.length - 1, `peak at epoch ${peak} of ${lrs}`);
    assert.ok(result.history.at(-1)!.valAccuracy >= 0.9, `accuracy ${result.history.at(-1)!.valAccuracy}`);
  });

  it('gradient clipping bounds how far the weights move', async () => {
    const free = await fit({ schedule: 'constant', optimizer: 'sgd', lr: 0.5, weightDecay: 0 });
    const clipped = await fit({ schedule: 'constant', optimizer: 'sgd', lr: 0.5, weightDecay: 0, clipNorm: 1e-3 });
    const start = initParams(spec, DEFAULT_FIT.seed).find((p) => p.name === 'fc.weight')!.data;
    const moved = (r: typeof free) => Math.hypot(...r.params.find((p) => p.name === 'fc.weight')!.data.map((v, i) => v - start[i]!));
    // 48 steps of at most lr·clip = 5e-4 each, up to 10x with momentum 0.9.
    assert.ok(moved(clipped) <= 48 * 0.5 * 1e-3 * 10, `clipped moved ${moved(clipped)}`);
    assert.ok(moved(free) > 10 * moved(clipped), `free moved ${moved(free)} vs clipped ${moved(clipped)}`);
  });

  it('balanced sampling draws every class as often as the largest, each row of a small class at least once', () => {
    const labels = Int32Array.from({ length: 30 }, (_, i) => (i < 24 ? 0 : i < 28 ? 1 : 2));
    const rows = [...Array(30).keys()];
    const byClass = rowsByClass(rows, labels);
    const epoch = balancedRows(byClass, new Random(3));
    assert.equal(epoch.length, 3 * 24);
    for (const c of [0, 1, 2]) assert.equal(epoch.filter((r) => labels[r] === c).length, 24);
    for (const r of rows) assert.ok(epoch.includes(r), `row ${r} drawn`);
    assert.deepEqual(balancedRows(byClass, new Random(3)), epoch, 'the same seed draws the same epoch');
    assert.notDeepEqual(balancedRows(byClass, new Random(4)), epoch);
  });

  it('on imbalanced overlapping classes, balanced sampling raises the recall of the small class', async () => {
    // 19:1 imbalance, classes one standard deviation apart: unbalanced training rarely predicts the small class.
    const rng = new Random(5);
    const dim = 8;
    const n = 800;
    const features = new Float32Array(n * dim);
    const labels = Int32Array.from({ length: n }, (_, i) => (i % 20 === 0 ? 1 : 0));
    for (let i = 0; i < n; i++) for (let j = 0; j < dim; j++) features[i * dim + j] = rng.normal() + (labels[i] ? 0.5 : 0);
    const data = { features, dim, labels };
    const train = [...Array(600).keys()];
    const val = [...Array(200).keys()].map((i) => 600 + i);
    const head: HeadSpec = { ...spec, inputDim: dim };
    const std = fitStandardizer(features, dim, train);
    const recall = async (balance: boolean) => {
      const r = await trainHead(data, train, val, head, std, { ...DEFAULT_FIT, epochs: 20, patience: 0, lr: 1e-2, balance });
      const evaluator = await Evaluator.forHead(head, std);
      const probs = await evaluator.probabilities(data, val, r.params);
      await evaluator.release();
      const predicted = Int32Array.from(val, (_, k) => (probs[k * 2 + 1]! > probs[k * 2]! ? 1 : 0));
      return computeMetrics(['big', 'small'], Int32Array.from(val, (v) => labels[v]!), predicted).perClass.small!.recall;
    };
    const plain = await recall(false);
    const balanced = await recall(true);
    assert.ok(balanced > plain + 0.3, `small-class recall: balanced ${balanced}, plain ${plain}`);
  });

  it('early stopping keeps the epoch of the monitored measure: least loss, or best accuracy / macro-F1 (ties: lower loss)', async () => {
    // Overlapping blobs: validation loss is least at one epoch, accuracy best at another.
    const byLoss = await fit({ epochs: 15, lr: 0.05, schedule: 'constant' }, 0.25);
    const h = byLoss.history;
    assert.ok(h.every((r) => r.valMacroF1 >= 0 && r.valMacroF1 <= 1));
    const least = h.reduce((b, r) => (r.valLoss < b.valLoss - 1e-4 ? r : b), h[0]!);
    assert.equal(byLoss.bestEpoch, least.epoch);
    for (const monitor of ['accuracy', 'macro-f1'] as const) {
      const r = await fit({ epochs: 15, lr: 0.05, schedule: 'constant', monitor }, 0.25);
      assert.deepEqual(r.history.map((x) => x.valLoss), h.map((x) => x.valLoss), 'same training, only the choice differs');
      const measure = (x: (typeof h)[number]) => (monitor === 'accuracy' ? x.valAccuracy : x.valMacroF1);
      const top = Math.max(...h.map(measure));
      const candidates = h.filter((x) => measure(x) === top);
      const expected = candidates.reduce((b, x) => (x.valLoss < b.valLoss - 1e-4 ? x : b), candidates[0]!);
      assert.equal(r.bestEpoch, expected.epoch, `${monitor}: best ${top} at ${candidates.map((c) => c.epoch)}`);
      assert.notEqual(r.bestEpoch, byLoss.bestEpoch, 'the case separates the measures');
    }
  });
});

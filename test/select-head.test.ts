/**
 * The head chosen by cross-validation: the logistic objective graph against a float64 reference and finite
 * differences, L-BFGS reaching the optimum, selectHead's choices (an XOR problem needs the MLP; the validation
 * rows are never read), and the learner's logistic head exported and reproduced by the artifact.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { buildLogisticGraph, logisticParams, minimize, withPenalty, type Objective } from '../src/head/logistic.js';
import { buildEvalGraph, buildTrainingGraph, DEFAULT_HEAD, fitStandardizer, gradName, initParams, TRAIN_LABELS, TRAIN_LOSS, type HeadSpec, type Param, type Standardizer } from '../src/head/head.js';
import { encodeModel } from '../src/onnx/proto.js';
import { fitLogisticHead, LOGISTIC_GRID, preferEnsemble, selectHead } from '../src/train/select-head.js';
import { DEFAULT_FIT, Evaluator, type FeatureSet } from '../src/train/trainer.js';
import { Random } from '../src/util/random.js';
import { GraftModel, learner, type Learner } from '../src/index.js';
import { requireShared, SHARED } from './support/paths.js';

/** The objective in float64, written independently of the graph: mean CE over rows + ||W||²/(2·C·n). */
function reference(set: FeatureSet, rows: number[], std: Standardizer, K: number, C: number): (theta: Float64Array) => number {
  const D = set.dim;
  return (theta) => {
    let loss = 0;
    for (const r of rows) {
      const s = Array.from({ length: K }, (_, k) => theta[D * K + k]!);
      for (let j = 0; j < D; j++) {
        const z = (set.features[r * D + j]! - std.mean[j]!) * std.invStd[j]!;
        for (let k = 0; k < K; k++) s[k]! += z * theta[j * K + k]!;
      }
      const max = Math.max(...s);
      const lse = max + Math.log(s.reduce((a, v) => a + Math.exp(v - max), 0));
      loss += lse - s[set.labels[r]!]!;
    }
    let norm = 0;
    for (let i = 0; i < D * K; i++) norm += theta[i]! ** 2;
    return loss / rows.length + norm / (2 * C * rows.length);
  };
}

/** Gaussian blobs: class k centred at a random point, `noise` around it, in `dim` dimensions. */
function blobs(n: number, dim: number, K: number, noise: number, seed: number): FeatureSet {
  const rng = new Random(seed);
  const gauss = () => Math.sqrt(-2 * Math.log(rng.next() + 1e-12)) * Math.cos(2 * Math.PI * rng.next());
  const centres = Array.from({ length: K }, () => Array.from({ length: dim }, () => gauss() * 2));
  const features = new Float32Array(n * dim);
  const labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    labels[i] = i % K;
    for (let j = 0; j < dim; j++) features[i * dim + j] = centres[i % K]![j]! + noise * gauss() + 5;
  }
  return { features, dim, labels };
}

/** The objective the graph computes (session over `rows`, weights 1/n), penalty added by withPenalty. */
async function graphObjective(set: FeatureSet, rows: number[], std: Standardizer, K: number, C: number): Promise<{ f: Objective; release: () => Promise<void> }> {
  const session = await ort.InferenceSession.create(encodeModel(buildLogisticGraph(set.dim, K)));
  const D = set.dim;
  const x = new Float32Array(rows.length * D);
  const onehot = new Float32Array(rows.length * K);
  rows.forEach((r, i) => {
    x.set(set.features.subarray(r * D, (r + 1) * D), i * D);
    onehot[i * K + set.labels[r]!] = 1;
  });
  const data: Objective = async (theta, grad) => {
    const out = await session.run({
      x: new ort.Tensor('float32', x, [rows.length, D]),
      mean: new ort.Tensor('float32', std.mean, [D]),
      inv_std: new ort.Tensor('float32', std.invStd, [D]),
      w: new ort.Tensor('float32', Float32Array.from(theta.subarray(0, D * K)), [D, K]),
      b: new ort.Tensor('float32', Float32Array.from(theta.subarray(D * K)), [K]),
      onehot: new ort.Tensor('float32', onehot, [rows.length, K]),
      weight: new ort.Tensor('float32', new Float32Array(rows.length).fill(1 / rows.length), [rows.length, 1]),
    });
    grad.set(out.grad_w!.data as Float32Array);
    grad.set(out.grad_b!.data as Float32Array, D * K);
    return (out.loss!.data as Float32Array)[0]!;
  };
  return { f: withPenalty(data, D * K, C, rows.length), release: () => session.release() };
}

describe('logistic objective graph', () => {
  const K = 3;
  const set = blobs(60, 7, K, 1.5, 1);
  const rows = Array.from({ length: 60 }, (_, i) => i);
  const std = fitStandardizer(set.features, set.dim, rows);
  const size = set.dim * K + K;
  const rng = new Random(3);
  const theta = Float64Array.from({ length: size }, () => (rng.next() - 0.5) * 0.8);

  it('equals the float64 reference, and its gradient equals central finite differences of the reference', async () => {
    const C = 0.7;
    const { f, release } = await graphObjective(set, rows, std, K, C);
    const ref = reference(set, rows, std, K, C);
    const grad = new Float64Array(size);
    const value = await f(theta, grad);
    assert.ok(Math.abs(value - ref(theta)) < 1e-5 * Math.max(1, ref(theta)), `${value} vs ${ref(theta)}`);
    const h = 1e-4;
    let worst = 0;
    for (let i = 0; i < size; i++) {
      const plus = theta.slice();
      const minus = theta.slice();
      plus[i]! += h;
      minus[i]! -= h;
      const numeric = (ref(plus) - ref(minus)) / (2 * h);
      worst = Math.max(worst, Math.abs(numeric - grad[i]!) / Math.max(1e-3, Math.abs(numeric)));
    }
    assert.ok(worst < 2e-3, `worst relative gradient error ${worst}`);
    await release();
  });

  it('L-BFGS reaches the optimum: the float64 reference gradient vanishes and no nearby point is lower', async () => {
    const C = 0.05;
    const { f, release } = await graphObjective(set, rows, std, K, C);
    const solution = await minimize(f, size);
    await release();
    assert.ok(solution.iterations > 3);
    const ref = reference(set, rows, std, K, C);
    const best = ref(solution.theta);
    const h = 1e-5;
    for (let i = 0; i < size; i++) {
      const plus = solution.theta.slice();
      const minus = solution.theta.slice();
      plus[i]! += h;
      minus[i]! -= h;
      const slope = (ref(plus) - ref(minus)) / (2 * h);
      assert.ok(Math.abs(slope) < 5e-4, `∂f/∂θ${i} = ${slope} at the solution`);
    }
    const r = new Random(9);
    for (let t = 0; t < 20; t++) {
      const moved = Float64Array.from(solution.theta, (v) => v + (r.next() - 0.5) * 0.02);
      assert.ok(ref(moved) >= best - 1e-9, 'a random nearby point is lower');
    }
  });

  it('a warm start from a neighbouring C converges in fewer iterations to the same point', async () => {
    const wide = blobs(150, 40, K, 3, 4);
    const all = Array.from({ length: 150 }, (_, i) => i);
    const s = fitStandardizer(wide.features, wide.dim, all);
    const n = wide.dim * K + K;
    const near = await graphObjective(wide, all, s, K, 0.3);
    const from = await minimize(near.f, n);
    await near.release();
    const target = await graphObjective(wide, all, s, K, 1);
    const cold = await minimize(target.f, n);
    const warm = await minimize(target.f, n, { init: from.theta });
    await target.release();
    assert.ok(warm.iterations < cold.iterations, `warm ${warm.iterations} vs cold ${cold.iterations}`);
    const ref = reference(wide, all, s, K, 1);
    assert.ok(Math.abs(ref(warm.theta) - ref(cold.theta)) < 1e-5, `objectives ${ref(warm.theta)} vs ${ref(cold.theta)}`);
  });
});

describe('selectHead', () => {
  it('keeps the ensemble on XOR (no line beats chance there, and averaging with one does not hurt the MLP)', async () => {
    const rng = new Random(5);
    const n = 200;
    const features = new Float32Array(n * 2);
    const labels = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const a = rng.next() < 0.5 ? -1 : 1;
      const b = rng.next() < 0.5 ? -1 : 1;
      features[2 * i] = a + (rng.next() - 0.5) * 0.6;
      features[2 * i + 1] = b + (rng.next() - 0.5) * 0.6;
      labels[i] = a === b ? 0 : 1;
    }
    const set: FeatureSet = { features, dim: 2, labels };
    const train = Array.from({ length: n }, (_, i) => i);
    const spec: HeadSpec = { ...DEFAULT_HEAD, hidden: 16, dropout: 0, inputDim: 2, numClasses: 2 };
    const s = await selectHead(set, train, 2, { logistic: true, mlp: { spec, fit: { ...DEFAULT_FIT, lr: 1e-2, epochs: 60 } }, seed: 0 });
    assert.equal(s.chosen.kind, 'ensemble');
    assert.equal(s.folds, 5);
    assert.equal(s.repeats, 5);
    const logistic = s.scores.filter((x) => x.candidate.kind === 'logistic');
    // Near chance: log-loss within 0.01 of ln 2 (the quadrants' sampled sizes let a line do a little better than 0.5).
    assert.ok(logistic.length >= 1 && logistic.every((x) => x.score < 0.75 && x.loss > Math.LN2 - 0.01), JSON.stringify(logistic));
    const mlp = s.scores.find((x) => x.candidate.kind === 'mlp')!;
    const ensemble = s.scores.find((x) => x.candidate.kind === 'ensemble')!;
    assert.ok(mlp.score > 0.95 && ensemble.score > 0.95, JSON.stringify(s.scores.slice(-2)));
  });

  it('keeps the ensemble unless one head alone is right on significantly more rows (paired)', () => {
    const n = 200;
    const truth = Int32Array.from({ length: n }, (_, i) => i % 2);
    // Probabilities [n, 2] right on the rows `right` says.
    const probs = (right: (i: number) => boolean) => {
      const p = new Float32Array(n * 2);
      for (let i = 0; i < n; i++) p[i * 2 + (right(i) ? truth[i]! : 1 - truth[i]!)] = 0.9, (p[i * 2 + (right(i) ? 1 - truth[i]! : truth[i]!)] = 0.1);
      return p;
    };
    const ensemble = { kind: 'ensemble', C: 1 } as const;
    const ens = probs((i) => i % 10 !== 0); // 90% right
    const mlp = { kind: 'mlp' } as const;
    const logistic = { kind: 'logistic', C: 1 } as const;
    // Two rows more: within noise, the ensemble stays.
    assert.deepEqual(preferEnsemble(truth, 2, ensemble, ens, [[mlp, probs((i) => i % 10 !== 0 || i < 20)]]), ensemble);
    // 18 rows more and none fewer: the MLP alone.
    assert.deepEqual(preferEnsemble(truth, 2, ensemble, ens, [[logistic, ens], [mlp, probs((i) => i % 10 !== 0 || i < 180)]]), mlp);
    // Both better: the larger gain.
    assert.deepEqual(preferEnsemble(truth, 2, ensemble, ens, [[logistic, probs(() => true)], [mlp, probs((i) => i % 10 !== 0 || i < 180)]]), logistic);
    // Worse: never.
    assert.deepEqual(preferEnsemble(truth, 2, ensemble, ens, [[mlp, probs((i) => i % 5 !== 0)]]), ensemble);
  });

  it('scores only training rows: relabelling or changing the validation rows changes nothing, and it is deterministic', async () => {
    const set = blobs(150, 12, 3, 3, 2);
    const train = Array.from({ length: 100 }, (_, i) => i);
    const a = await selectHead(set, train, 3, { logistic: true, seed: 4 });
    const other: FeatureSet = { ...set, features: set.features.slice(), labels: set.labels.slice() };
    for (let r = 100; r < 150; r++) {
      other.labels[r] = (other.labels[r]! + 1) % 3;
      other.features.fill(1e3 * r, r * 12, (r + 1) * 12);
    }
    const b = await selectHead(other, train, 3, { logistic: true, seed: 4 });
    assert.deepEqual(b, { ...a, seconds: b.seconds });
    assert.equal(a.chosen.kind, 'logistic');
    // The path starts at the strongest regularisation and walks the grid in order.
    assert.deepEqual(a.scores.map((x) => (x.candidate as { C: number }).C), LOGISTIC_GRID.slice(0, a.scores.length));
  });

  it('falls back without cross-validation when a class has a single training row', async () => {
    const set = blobs(12, 4, 2, 1, 3);
    const s = await selectHead(set, [0, 1, 3, 5, 7], 2, { logistic: true, seed: 0 });
    assert.equal(s.folds, 0);
    assert.match(s.fallback ?? '', /1 training row/);
  });

  it('fitLogisticHead returns the linear head whose evaluation graph gives the reported validation loss', async () => {
    const set = blobs(90, 6, 3, 2.5, 6);
    const train = Array.from({ length: 60 }, (_, i) => i);
    const val = Array.from({ length: 30 }, (_, i) => 60 + i);
    const spec: HeadSpec = { kind: 'linear', hidden: 0, dropout: 0, inputDim: 6, numClasses: 3 };
    const std = fitStandardizer(set.features, 6, train);
    const events: string[] = [];
    const r = await fitLogisticHead(set, train, val, spec, std, 0.1, DEFAULT_FIT, [{ beforeFit: () => events.push('beforeFit'), afterEpoch: () => events.push('afterEpoch'), afterFit: () => events.push('afterFit') }]);
    assert.deepEqual(events, ['beforeFit', 'afterEpoch', 'afterFit']);
    assert.deepEqual(r.params.map((p) => [p.name, p.dims]), [['fc.weight', [6, 3]], ['fc.bias', [3]]]);
    const evaluator = await Evaluator.forHead(spec, std);
    const probs = await evaluator.probabilities(set, val, r.params);
    await evaluator.release();
    let loss = 0;
    val.forEach((row, i) => (loss -= Math.log(probs[i * 3 + set.labels[row]!]!)));
    assert.ok(Math.abs(loss / val.length - r.history[0]!.valLoss) < 1e-4, `${loss / val.length} vs ${r.history[0]!.valLoss}`);
    const ref = reference(set, train, std, 3, 0.1);
    const theta = Float64Array.from([...r.params[0]!.data, ...r.params[1]!.data]);
    assert.ok(Math.abs(ref(theta) - r.history[0]!.trainLoss) < 1e-4);
    assert.deepEqual(logisticParams({ theta, objective: 0, iterations: 0, converged: true }, 6, 3)[0]!.data, r.params[0]!.data);
  });
});

describe('ensemble head', () => {
  const set = blobs(40, 5, 3, 2, 8);
  const rows = Array.from({ length: 40 }, (_, i) => i);
  const std = fitStandardizer(set.features, 5, rows);
  const spec: HeadSpec = { kind: 'ensemble', hidden: 6, dropout: 0, inputDim: 5, numClasses: 3 };
  const params = initParams(spec, 2);
  const feeds = (ps: Param[], n = rows.length) => ({
    features: new ort.Tensor('float32', set.features.slice(0, n * 5), [n, 5]),
    ...Object.fromEntries(ps.map((p) => [p.name, new ort.Tensor('float32', p.data, p.dims)])),
  });

  it('gives the average of its MLP and linear heads\' probabilities', async () => {
    assert.deepEqual(params.map((p) => p.name), ['fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias', 'fc.weight', 'fc.bias']);
    const run = async (s: HeadSpec, ps: Param[]) => {
      const session = await ort.InferenceSession.create(encodeModel(buildEvalGraph(s, std)));
      const out = (await session.run(feeds(ps))).probabilities!.data as Float32Array;
      await session.release();
      return out;
    };
    const both = await run(spec, params);
    const mlp = await run({ ...spec, kind: 'mlp' }, params.slice(0, 4));
    const linear = await run({ ...spec, kind: 'linear' }, params.slice(4));
    both.forEach((p, i) => assert.ok(Math.abs(p - (mlp[i]! + linear[i]!) / 2) < 1e-6, `${i}: ${p} vs ${(mlp[i]! + linear[i]!) / 2}`));
  });

  it('its training graph\'s gradients equal central differences of its loss', async () => {
    const session = await ort.InferenceSession.create(encodeModel(buildTrainingGraph(spec, std)));
    const labels = new ort.Tensor('int64', BigInt64Array.from(rows, (r) => BigInt(set.labels[r]!)), [rows.length]);
    const loss = async (ps: Param[]) => ((await session.run({ ...feeds(ps), [TRAIN_LABELS]: labels }, [TRAIN_LOSS]))[TRAIN_LOSS]!.data as Float32Array)[0]!;
    const out = await session.run({ ...feeds(params), [TRAIN_LABELS]: labels });
    const rng = new Random(4);
    const eps = 1e-2;
    let checked = 0;
    for (const [pi, p] of params.entries()) {
      const g = out[gradName(p.name)]!.data as Float32Array;
      for (let t = 0; t < 4; t++) {
        const i = rng.int(p.data.length);
        const shifted = (d: number) => params.map((q, qi) => (qi === pi ? { ...q, data: Float32Array.from(q.data, (v, j) => (j === i ? v + d : v)) } : q));
        const numeric = ((await loss(shifted(eps))) - (await loss(shifted(-eps)))) / (2 * eps);
        assert.ok(Math.abs(numeric - g[i]!) <= 2e-3 + 2e-2 * Math.abs(numeric), `${p.name}[${i}]: autodiff ${g[i]} vs numeric ${numeric}`);
        checked++;
      }
    }
    assert.equal(checked, 24);
    await session.release();
  });
});

describe('Learner with head auto and logistic on real images', () => {
  let tmp: string;
  let learn: Learner;

  before(async () => {
    const [hym, int8] = requireShared(join(SHARED, 'data/hymenoptera'), join(SHARED, 'models/mobilenetv2-12-int8/model.onnx'));
    tmp = await mkdtemp(join(tmpdir(), 'graft-select-'));
    for (const cls of ['ants', 'bees']) {
      await mkdir(join(tmp, 'data', cls), { recursive: true });
      const files = (await readdir(join(hym, 'train', cls))).filter((f) => f.endsWith('.jpg')).sort().slice(0, 30);
      for (const f of files) await symlink(join(hym, 'train', cls, f), join(tmp, 'data', cls, f));
    }
    learn = await learner({ data: join(tmp, 'data'), model: int8, cacheDir: join(tmp, 'cache'), valSplit: 0.3, seed: 7, head: 'logistic' });
    model = int8;
  });
  let model: string;

  after(async () => {
    await learn?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  it('logistic: C chosen on the training rows, solved, exported as the linear head, reproduced by the artifact', async () => {
    const result = await learn.fit();
    assert.equal(learn.spec.kind, 'linear');
    const chosen = learn.selection?.chosen;
    assert.equal(chosen?.kind, 'logistic');
    assert.ok(learn.selection!.scores.every((s) => s.candidate.kind === 'logistic'));
    assert.equal(result.history.length, 1);
    const metrics = await learn.evaluate();
    assert.ok(metrics.accuracy >= 0.8, `accuracy ${metrics.accuracy}`);
    assert.ok(Math.abs(metrics.loss! - result.history[0]!.valLoss) < 1e-4);
    const out = join(tmp, 'out');
    await learn.export(out, metrics);
    const manifest = JSON.parse(await readFile(join(out, 'graft.json'), 'utf8')) as { head: HeadSpec; training: { headSelection: { chosen: unknown } } };
    assert.equal(manifest.head.kind, 'linear');
    assert.deepEqual(manifest.training.headSelection.chosen, chosen);
    const model = await GraftModel.load(out);
    const files = [...learn.data.dataset.train, ...learn.data.dataset.val];
    const first = learn.data.valRows[0]!;
    const { probabilities: predicted } = await model.probabilities([files[first]!.file]);
    const evaluator = await Evaluator.forHead(learn.spec, learn.standardizer);
    const probs = await evaluator.probabilities(learn.data.features, [first], learn.result!.params);
    await evaluator.release();
    learn.classes.forEach((c, i) => assert.ok(Math.abs(predicted[i]! - probs[i]!) < 1e-4, `${c}: ${predicted[i]} vs ${probs[i]}`));
    await model.close();
  });

  it('auto: the chosen candidate decides the head, recorded in graft.json, and the artifact reproduces evaluate()', async () => {
    const auto = await learner({ data: join(tmp, 'data'), model, cacheDir: join(tmp, 'cache'), valSplit: 0.3, seed: 7 });
    try {
      await auto.fit();
      const s = auto.selection!;
      assert.deepEqual(s.scores.map((x) => x.candidate.kind).slice(-2), ['mlp', 'ensemble']);
      // The ensemble unless one head alone is significantly better (paired, out of fold): then that head had the best score.
      assert.equal(s.folds, 5);
      assert.equal(s.repeats, 5); // 42 training rows: ⌈1000 / 42⌉ capped at 5 splits
      const kind = { logistic: 'linear', mlp: 'mlp', ensemble: 'ensemble' }[s.chosen.kind];
      assert.equal(auto.spec.kind, kind);
      assert.equal(auto.result!.params.length, { linear: 2, mlp: 4, ensemble: 6 }[kind]);
      if (s.chosen.kind !== 'ensemble') {
        const ensemble = s.scores.find((x) => x.candidate.kind === 'ensemble')!;
        assert.ok(s.scores.find((x) => x.candidate.kind === s.chosen.kind && (x.candidate as { C?: number }).C === (s.chosen as { C?: number }).C)!.score > ensemble.score);
      }
      const metrics = await auto.evaluate();
      const out = join(tmp, 'out-auto');
      await auto.export(out, metrics);
      const exported = await GraftModel.load(out);
      const samples = [...auto.data.dataset.train, ...auto.data.dataset.val];
      const { probabilities } = await exported.probabilities(auto.data.valRows.map((r) => samples[r]!.file));
      await exported.close();
      let loss = 0;
      auto.data.valRows.forEach((r, i) => (loss -= Math.log(probabilities[i * 2 + auto.data.features.labels[r]!]!)));
      assert.ok(Math.abs(loss / auto.data.valRows.length - metrics.loss!) < 1e-4, `artifact loss ${loss / auto.data.valRows.length} vs ${metrics.loss}`);
    } finally {
      await auto.close();
    }
  });
});

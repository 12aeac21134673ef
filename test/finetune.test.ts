/**
 * Fine-tuning on the float MobileNetV2 made from the int8 one: where the backbone can be split, the suffix
 * training graph, an overfit check on a fixed batch, and the Learner workflow through export.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, readdir, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { loadBackbone, type ImageBackbone as Backbone } from '../src/backbone/backbone.js';
import { FeatureExtractor } from '../src/backbone/extractor.js';
import { dequantizeModel, isQuantized } from '../src/onnx/dequantize.js';
import { boundaries } from '../src/onnx/surgery.js';
import { decodeModel, encodeModel, tensorToFloat32, type ModelProto } from '../src/onnx/proto.js';
import { fitStandardizer, gradName, initParams, type HeadSpec } from '../src/head/head.js';
import { planSuffix, poolWithSuffix, prefixModel, probeShape, suffixTrainable, withWeights } from '../src/train/finetune.js';
import { AdamW } from '../src/train/optimizer.js';
import { DEFAULT_FIT, train, type FeatureSet } from '../src/train/trainer.js';
import { denseRows } from '../src/train/rows.js';
import { Random } from '../src/util/random.js';
import { maxAbsDiff } from './support/onnx.js';
import { GraftError, GraftModel, learner } from '../src/index.js';
import { readArtifact } from '../src/artifact/artifact.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const MODEL = resolve(root, '../shared/models/mobilenetv2-12-int8/model.onnx');
const HYM = resolve(root, '../shared/data/hymenoptera');
const FEATURES = 'features';

describe('fine-tuning graphs on MobileNetV2', () => {
  let backbone: Backbone;
  let float: ModelProto;

  before(async () => {
    backbone = await loadBackbone(MODEL);
    assert.ok(isQuantized(backbone.featureModel));
    float = dequantizeModel(backbone.featureModel).model;
    assert.ok(!isQuantized(float));
  });

  it('finds the inverted-residual block boundaries', () => {
    const all = boundaries(float.graph!, FEATURES);
    const blocks = all.filter((b) => b.block);
    assert.equal(blocks.length, 15);
    // Every block boundary is a residual join or a tensor feeding one.
    assert.ok(blocks.some((b) => b.tensor === '452'));
    const conv = (k: number) => planSuffix(float, FEATURES, { unfreeze: k }).nodes.filter((n) => n.opType === 'Conv').length;
    // The last K blocks hold 3 convolutions each, plus the final 1x1 convolution to 1280 channels.
    assert.deepEqual([1, 2, 4, 7].map(conv), [4, 7, 13, 22]);
  });

  it('resolves --fine-tune-at by node index (snapped back to a split point) and by tensor', () => {
    const byTensor = planSuffix(float, FEATURES, { fineTuneAt: '443' });
    assert.equal(byTensor.boundary, '443');
    const byIndex = planSuffix(float, FEATURES, { fineTuneAt: byTensor.boundaryIndex + 3 });
    assert.equal(byIndex.boundary, boundaries(float.graph!, FEATURES).filter((b) => b.index <= byTensor.boundaryIndex + 2).at(-1)!.tensor);
    assert.throws(() => planSuffix(float, FEATURES, { fineTuneAt: 'no-such-tensor' }), (e: unknown) => e instanceof GraftError && e.code === 'USAGE');
    assert.throws(() => planSuffix(float, FEATURES, { unfreeze: 99 }), (e: unknown) => e instanceof GraftError && /15 blocks/.test(e.message));
    assert.throws(() => planSuffix(float, FEATURES, {}), (e: unknown) => e instanceof GraftError && e.code === 'USAGE');
  });

  it('trains only weight tensors of the suffix, and withWeights writes them back', () => {
    const plan = planSuffix(float, FEATURES, { unfreeze: 2 });
    assert.equal(plan.trainable.length, 14); // 7 convolutions, weight + bias each
    const names = new Set(plan.trainable);
    for (const n of plan.nodes) if (n.opType === 'Clip') for (const i of n.input!.slice(1)) assert.ok(!names.has(i), 'Clip bounds are not trained');
    const w = plan.initializers.get(plan.trainable[0]!)!;
    const changed = tensorToFloat32(w).map((v) => v + 1);
    const updated = withWeights(float, [{ name: w.name!, dims: (w.dims ?? []).map(Number), data: changed, decay: true }]);
    const after = updated.graph!.initializer!.find((t) => t.name === w.name)!;
    assert.deepEqual(tensorToFloat32(after), changed);
  });

  it('a fixed-size training graph pads the short last batch with ignored rows: same training as without', async () => {
    const plan = planSuffix(float, FEATURES, { unfreeze: 1 });
    const rowShape = await probeShape(float, plan.boundary, backbone.pipeline);
    const spec: HeadSpec = { kind: 'linear', hidden: 0, dropout: 0, inputDim: 1280, numClasses: 3 };
    const std = { mean: new Float32Array(1280), invStd: new Float32Array(1280).fill(1) };
    const dim = rowShape.reduce((a, b) => a * b, 1);
    const rng = new Random(4);
    const data: FeatureSet = { features: Float32Array.from({ length: 10 * dim }, () => Math.max(0, rng.normal())), dim, labels: Int32Array.from({ length: 10 }, (_, i) => i % 3) };
    const rows = [...Array(10).keys()];
    const options = { ...DEFAULT_FIT, epochs: 2, batchSize: 4, lr: 1e-3, weightDecay: 0.01 };
    const fitWith = async (batchSize?: number) => {
      const trainable = suffixTrainable(plan, rowShape, spec, std, initParams(spec, 2), { lr: 1e-3, lrMult: 10, weightDecay: 0.01, batchSize });
      assert.equal(trainable.batchSize, batchSize);
      const result = await train(trainable, data, rows, [0, 1], options);
      return { params: result.params, losses: result.history.map((h) => h.trainLoss) };
    };
    const fixed = await fitWith(4); // batches of 4, 4 and 2 (+ 2 ignored rows)
    const free = await fitWith(undefined);
    fixed.losses.forEach((l, i) => assert.ok(Math.abs(l - free.losses[i]!) < 1e-5 * Math.abs(l), `epoch ${i}: ${l} vs ${free.losses[i]}`));
    for (const [i, p] of fixed.params.entries()) {
      const diff = maxAbsDiff(p.data, free.params[i]!.data);
      assert.ok(diff < 1e-5, `${p.name}: max diff ${diff}`);
    }
  });

  it('overfits a fixed batch of real images: the loss falls at each of the first 20 steps', async () => {
    const plan = planSuffix(float, FEATURES, { unfreeze: 2 });
    const rowShape = await probeShape(float, plan.boundary, backbone.pipeline);
    assert.deepEqual(rowShape, [160, 7, 7]);
    const files = [
      ...(await readdir(join(HYM, 'train/ants'))).filter((f) => f.endsWith('.jpg')).slice(0, 4).map((f) => join(HYM, 'train/ants', f)),
      ...(await readdir(join(HYM, 'train/bees'))).filter((f) => f.endsWith('.jpg')).slice(0, 4).map((f) => join(HYM, 'train/bees', f)),
    ];
    const prefix = prefixModel(float, plan.boundary, FEATURES);
    const extractor = new FeatureExtractor(
      { ...backbone, featureModel: prefix, featureModelBytes: encodeModel(prefix), config: { ...backbone.config, featureDim: 160 * 49 }, key: 'test' },
      { cacheDir: false, batchSize: 8 },
    );
    const r = await extractor.extract(files);
    await extractor.close();
    const labels = Int32Array.from(files, (_, i) => (i < 4 ? 0 : 1));
    const rows = files.map((_, i) => i);
    const spec: HeadSpec = { kind: 'mlp', hidden: 64, dropout: 0, inputDim: 1280, numClasses: 2 };
    const pooled = await poolWithSuffix(plan, rowShape, denseRows({ features: r.features, dim: r.dim, labels }, plan.boundary, rowShape), rows, 1280);
    const std = fitStandardizer(pooled.features, 1280, rows);
    const trainable = suffixTrainable(plan, rowShape, spec, std, initParams(spec, 3), { lr: 1e-4, lrMult: 10, weightDecay: 0 });
    const session = await ort.InferenceSession.create(encodeModel(trainable.trainModel));
    const opt = new AdamW(trainable.groups, { lr: 1e-4, weightDecay: 0 });
    const feeds: Record<string, ort.Tensor> = {
      [plan.boundary]: new ort.Tensor('float32', r.features, [8, ...rowShape]),
      labels: new ort.Tensor('int64', BigInt64Array.from(labels, BigInt), [8]),
    };
    const losses: number[] = [];
    for (let step = 0; step < 20; step++) {
      for (const p of opt.params) feeds[p.name] = new ort.Tensor('float32', p.data, p.dims);
      const out = await session.run(feeds);
      losses.push((out.loss!.data as Float32Array)[0]!);
      opt.step(opt.params.map((p) => out[gradName(p.name)]!.data as Float32Array));
    }
    await session.release();
    for (let i = 1; i < losses.length; i++) assert.ok(losses[i]! < losses[i - 1]!, `step ${i}: ${losses[i - 1]} → ${losses[i]}`);
    assert.ok(losses[19]! < losses[0]! * 0.2, `losses ${losses[0]} → ${losses[19]}`);
  });
});

describe('Learner.fineTune on a hymenoptera subset', () => {
  let tmp: string;

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'graft-finetune-'));
    for (const split of ['train', 'val']) {
      for (const cls of ['ants', 'bees']) {
        await mkdir(join(tmp, 'data', split, cls), { recursive: true });
        const files = (await readdir(join(HYM, split, cls))).filter((f) => f.endsWith('.jpg')).sort().slice(0, split === 'train' ? 24 : 16);
        for (const f of files) await symlink(join(HYM, split, cls, f), join(tmp, 'data', split, cls, f));
      }
    }
  });

  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  it('freeze / freezeTo / unfreeze choose what fit() trains, continuing from the current weights', async () => {
    const learn = await learner({ data: join(tmp, 'data'), model: MODEL, cacheDir: join(tmp, 'cache') });
    assert.equal(learn.blockCount(), 15);
    assert.throws(() => learn.freezeTo(0), (e: unknown) => e instanceof GraftError && e.code === 'USAGE');
    assert.throws(() => learn.freezeTo(-17), (e: unknown) => e instanceof GraftError && /15 blocks/.test(e.message));
    await learn.fit({ epochs: 3 });
    const headOnly = await learn.evaluate();
    learn.freezeTo(-2); // the last block + the head
    const tuned = await learn.fit({ epochs: 2, patience: 0 });
    assert.equal(tuned.history.length, 2);
    const manifest = await learn.export(join(tmp, 'tuned'), await learn.evaluate());
    assert.equal((manifest.training as { fineTuned?: { from: string; trainableTensors: number } }).fineTuned?.from, '452');
    assert.equal((manifest.training as { fineTuned?: { trainableTensors: number } }).fineTuned?.trainableTensors, 8);
    // Back to a frozen backbone: the head trains through the tuned backbone, whose weights stay as they are.
    learn.freeze();
    await learn.fit({ epochs: 1, patience: 0 });
    await learn.export(join(tmp, 'again'));
    const weights = async (dir: string) => {
      const { modelBytes } = await readArtifact(dir);
      const m = decodeModel(modelBytes);
      return m.graph!.initializer!.filter((t) => !t.name!.startsWith('head/')).map((t) => tensorToFloat32(t));
    };
    const [w1, w2] = [await weights(join(tmp, 'tuned')), await weights(join(tmp, 'again'))];
    assert.deepEqual(w1, w2);
    assert.ok(headOnly.accuracy > 0.5);
    await learn.close();
  });

  it('boundary activations past the memory budget are read from disk per batch, training the same model', async () => {
    const run = async (memoryBudget?: number) => {
      const learn = await learner({ data: join(tmp, 'data'), model: MODEL, cacheDir: join(tmp, 'cache'), ...(memoryBudget !== undefined ? { memoryBudget } : {}) });
      try {
        const result = await learn.fineTune({ unfreeze: 1, freezeEpochs: 1, fit: { epochs: 2, patience: 0 } });
        const metrics = await learn.evaluate();
        const dir = join(tmp, `spill-${memoryBudget ?? 'default'}`);
        await learn.export(dir, metrics);
        const m = decodeModel((await readArtifact(dir)).modelBytes);
        return { result, metrics, weights: m.graph!.initializer!.map((t) => tensorToFloat32(t)) };
      } finally {
        await learn.close();
      }
    };
    const inMemory = await run();
    const onDisk = await run(0);
    assert.equal(inMemory.result.activations.disk, 0);
    assert.ok(inMemory.result.activations.memory > 0);
    assert.equal(onDisk.result.activations.memory, 0);
    assert.equal(onDisk.result.activations.disk, inMemory.result.activations.memory, 'every row went to the spill file');
    assert.deepEqual(onDisk.result.phase2.history.map((h) => h.trainLoss), inMemory.result.phase2.history.map((h) => h.trainLoss));
    assert.deepEqual(onDisk.metrics, inMemory.metrics);
    assert.deepEqual(onDisk.weights, inMemory.weights);
    // The spill file was unlinked when created and is closed with the learner: nothing is left in the cache.
    assert.deepEqual(await readdir(join(tmp, 'cache', 'tmp')), []);
  });

  it('gradual unfreezing trains one more block per stage (from a solved logistic head)', async () => {
    const learn = await learner({ data: join(tmp, 'data'), model: MODEL, cacheDir: join(tmp, 'cache'), head: 'logistic' });
    const seen: string[] = [];
    // Each fit's own duration, from the callbacks: the head fit, then one per stage.
    const fits: number[] = [];
    let started = 0;
    const result = await learn.fineTune({ unfreeze: 2, gradual: true, freezeEpochs: 1, fit: { epochs: 2, patience: 0 } }, [
      { beforeFit: (s) => (seen.push(`${s.params.length}`), (started = performance.now())), afterFit: () => void fits.push((performance.now() - started) / 1000) },
    ]);
    // The logistic head (2 weights: solved, no optimizer), then the last block (+8 tensors), then the last two blocks (+14 tensors).
    assert.deepEqual(seen, ['2', '10', '16']);
    assert.equal(learn.spec.kind, 'linear');
    assert.equal(learn.selection?.chosen.kind, 'logistic');
    assert.equal(result.boundary, '443');
    // Timing per phase: every fit falls inside the phase it is attributed to, and the phases add up to the call.
    const t = result.timing;
    assert.equal(t.stages.length, 2);
    assert.ok(t.prefix > 0, `prefix ${t.prefix}`);
    assert.ok(fits[0]! <= t.head, `head fit ${fits[0]} s within the head phase ${t.head} s`);
    fits.slice(1).forEach((f, i) => assert.ok(f <= t.stages[i]!, `stage ${i + 1} fit ${f} s within its phase ${t.stages[i]} s`));
    assert.ok(Math.abs(t.stages[0]! + t.stages[1]! - t.fineTune) < 1e-9);
    assert.ok(Math.abs(t.prefix + t.head + t.fineTune - t.total) < 0.05, JSON.stringify(t));
    await learn.close();
  });

  it('trains head then suffix, and the exported graph reproduces the tuned model', async () => {
    const learn = await learner({ data: join(tmp, 'data'), model: MODEL, cacheDir: join(tmp, 'cache'), head: 'mlp' });
    const result = await learn.fineTune({ unfreeze: 1, freezeEpochs: 2, fit: { epochs: 3 } });
    assert.equal(result.phase1!.history.length, 2);
    assert.equal(result.phase2.history.length, 3);
    assert.equal(result.boundary, '452');
    const metrics = await learn.evaluate();
    assert.ok(metrics.accuracy >= 0.75, `accuracy ${metrics.accuracy}`);
    const out = join(tmp, 'out');
    const manifest = await learn.export(out, metrics);
    assert.equal((manifest.training as { fineTuned?: { from: string } }).fineTuned?.from, '452');

    const model = await GraftModel.load(out);
    const files = [...learn.data.dataset.train, ...learn.data.dataset.val].map((s) => s.file);
    const { probabilities } = await model.probabilities(learn.data.valRows.map((r) => files[r]!));
    await model.close();
    let correct = 0;
    learn.data.valRows.forEach((row, i) => {
      const predicted = probabilities[2 * i + 1]! > probabilities[2 * i]! ? 1 : 0;
      if (predicted === learn.data.features.labels[row]) correct++;
    });
    assert.equal(correct / learn.data.valRows.length, metrics.accuracy);
  });
});

/**
 * BatchNorm policy when fine-tuning a float backbone that has BatchNormalization nodes (a small CNN made
 * here): `frozen-stats` keeps inference mode and the pretrained statistics; `train` normalises with batch
 * statistics and carries the running statistics out of the training graph into the exported model.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { GraphBuilder } from '../src/onnx/builder.js';
import { DataType, decodeModel, encodeModel, tensorToFloat32, type ModelProto } from '../src/onnx/proto.js';
import { cutModel } from '../src/onnx/surgery.js';
import { planSuffix, suffixTrainable, stateOutput } from '../src/train/finetune.js';
import { initParams, type HeadSpec } from '../src/head/head.js';
import { readArtifact } from '../src/artifact/artifact.js';
import { learner } from '../src/index.js';
import { Random } from '../src/util/random.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const HYM = resolve(root, '../shared/data/hymenoptera');

/** input [N,3,32,32] → Conv s2 → BN → Relu → Conv → BN → Relu → GlobalAveragePool → Flatten → Gemm(10). */
function smallCnn(): ModelProto {
  const rng = new Random(5);
  const b = new GraphBuilder('small_cnn');
  const rand = (n: number, scale: number) => Float32Array.from({ length: n }, () => rng.normal() * scale);
  const x = b.input('input', DataType.FLOAT, ['N', 3, 32, 32]);
  const bn = (t: string, c: number, name: string) =>
    b.op('BatchNormalization', [t, b.constant(`${name}.scale`, rand(c, 0.2).map((v) => 1 + v), [c]), b.constant(`${name}.bias`, rand(c, 0.1), [c]), b.constant(`${name}.mean`, rand(c, 0.1), [c]), b.constant(`${name}.var`, rand(c, 0.1).map((v) => 1 + Math.abs(v)), [c])], { epsilon: 1e-5 });
  const c1 = b.op('Conv', [x, b.constant('conv1.w', rand(8 * 3 * 9, 0.3), [8, 3, 3, 3])], { strides: [2, 2], pads: [1, 1, 1, 1] });
  const r1 = b.op('Relu', [bn(c1, 8, 'bn1')], {}, { outputs: ['stage1'] });
  const c2 = b.op('Conv', [r1, b.constant('conv2.w', rand(16 * 8 * 9, 0.2), [16, 8, 3, 3])], { pads: [1, 1, 1, 1] }, { outputs: ['conv2'] });
  const r2 = b.op('Relu', [bn(c2, 16, 'bn2')], {}, { outputs: ['stage2'] });
  const pooled = b.op('Flatten', [b.op('GlobalAveragePool', [r2])]);
  b.op('Gemm', [pooled, b.constant('fc.w', rand(10 * 16, 0.3), [10, 16]), b.constant('fc.b', new Float32Array(10), [10])], { transB: 1 }, { outputs: ['logits'] });
  b.output('logits', DataType.FLOAT, ['N', 10]);
  return b.model(15);
}

describe('BatchNorm policy', () => {
  const model = smallCnn();
  const features = cutModel(model, 'stage2', { layout: 'NCHW', rank: 4 });
  const spec: HeadSpec = { kind: 'linear', hidden: 0, dropout: 0, inputDim: 16, numClasses: 2 };
  const std = { mean: new Float32Array(16), invStd: new Float32Array(16).fill(1) };

  it('frozen-stats keeps inference mode; train exposes the running statistics as state', () => {
    const frozen = planSuffix(features, 'features', { fineTuneAt: 'stage1' });
    assert.equal(frozen.batchNorm, 'frozen-stats');
    const tf = suffixTrainable(frozen, [8, 16, 16], spec, std, initParams(spec, 0), { lr: 1e-3, lrMult: 10, weightDecay: 0 });
    assert.equal(tf.state, undefined);
    assert.ok(!tf.trainModel.graph!.node!.some((n) => n.opType === 'BatchNormalization' && n.attribute!.some((a) => a.name === 'training_mode' && Number(a.i) === 1)));
    assert.ok(frozen.trainable.includes('bn2.scale') && frozen.trainable.includes('bn2.bias'));
    assert.ok(!frozen.trainable.includes('bn2.mean') && !frozen.trainable.includes('bn2.var'));

    const trained = planSuffix(features, 'features', { fineTuneAt: 'stage1', batchNorm: 'train' });
    assert.deepEqual(trained.statistics, ['bn2.mean', 'bn2.var']);
    const tt = suffixTrainable(trained, [8, 16, 16], spec, std, initParams(spec, 0), { lr: 1e-3, lrMult: 10, weightDecay: 0, batchSize: 4 });
    assert.deepEqual(tt.state!.map((s) => s.name), ['bn2.mean', 'bn2.var']);
    // Batch statistics must not see padding rows: no fixed batch size with BatchNorm 'train'.
    assert.equal(tt.batchSize, undefined);
    assert.equal(suffixTrainable(frozen, [8, 16, 16], spec, std, initParams(spec, 0), { lr: 1e-3, lrMult: 10, weightDecay: 0, batchSize: 4 }).batchSize, 4);
    assert.ok(!tt.evalModel.graph!.node!.some((n) => n.opType === 'BatchNormalization' && n.attribute!.some((a) => a.name === 'training_mode' && Number(a.i) === 1)));
  });

  it('the training graph updates running statistics with momentum 0.9 from the batch', async () => {
    const plan = planSuffix(features, 'features', { fineTuneAt: 'stage1', batchNorm: 'train' });
    const trainable = suffixTrainable(plan, [8, 16, 16], spec, std, initParams(spec, 0), { lr: 1e-3, lrMult: 10, weightDecay: 0 });
    const rng = new Random(9);
    const n = 4;
    const x = Float32Array.from({ length: n * 8 * 16 * 16 }, () => Math.max(0, rng.normal()));
    const feeds: Record<string, ort.Tensor> = {
      stage1: new ort.Tensor('float32', x, [n, 8, 16, 16]),
      labels: new ort.Tensor('int64', BigInt64Array.from([0n, 1n, 0n, 1n]), [n]),
    };
    for (const g of trainable.groups) for (const p of g.params) feeds[p.name] = new ort.Tensor('float32', p.data, p.dims);
    for (const s of trainable.state!) feeds[s.name] = new ort.Tensor('float32', s.data, s.dims);
    const session = await ort.InferenceSession.create(encodeModel(trainable.trainModel));
    const out = await session.run(feeds);
    await session.release();
    // The batch mean of conv2's output, computed by running the original graph from stage1 to conv2.
    const probe = new GraphBuilder('probe');
    probe.input('stage1', DataType.FLOAT, ['N', 8, 16, 16]);
    const w = features.graph!.initializer!.find((t) => t.name === 'conv2.w')!;
    probe.initializer(w);
    probe.op('Conv', ['stage1', 'conv2.w'], { pads: [1, 1, 1, 1] }, { outputs: ['c'] });
    probe.output('c', DataType.FLOAT, ['N', 16, 16, 16]);
    const ps = await ort.InferenceSession.create(encodeModel(probe.model(15)));
    const conv = (await ps.run({ stage1: feeds.stage1! })).c!.data as Float32Array;
    await ps.release();
    const oldMean = trainable.state![0]!.data;
    const newMean = out[stateOutput('bn2.mean')]!.data as Float32Array;
    for (let c = 0; c < 16; c++) {
      let sum = 0;
      for (let i = 0; i < n; i++) for (let k = 0; k < 256; k++) sum += conv[(i * 16 + c) * 256 + k]!;
      const expected = 0.9 * oldMean[c]! + 0.1 * (sum / (n * 256));
      assert.ok(Math.abs(newMean[c]! - expected) < 1e-4, `channel ${c}: ${newMean[c]} vs ${expected}`);
    }
  });

  describe('through the Learner', () => {
    let tmp: string;
    before(async () => {
      tmp = await mkdtemp(join(tmpdir(), 'graft-bn-'));
      await writeFile(join(tmp, 'cnn.onnx'), encodeModel(smallCnn()));
      for (const split of ['train', 'val']) {
        for (const cls of ['ants', 'bees']) {
          await mkdir(join(tmp, 'data', split, cls), { recursive: true });
          const files = (await readdir(join(HYM, split, cls))).filter((f) => f.endsWith('.jpg')).sort().slice(0, 8);
          for (const f of files) await symlink(join(HYM, split, cls, f), join(tmp, 'data', split, cls, f));
        }
      }
    });
    after(async () => {
      await rm(tmp, { recursive: true, force: true });
    });

    it('exports the running statistics learned with batchNorm "train", and keeps them with frozen-stats', async () => {
      const original = (name: string) => tensorToFloat32(smallCnn().graph!.initializer!.find((t) => t.name === name)!);
      const exported = async (policy: 'train' | 'frozen-stats') => {
        const learn = await learner({ data: join(tmp, 'data'), model: join(tmp, 'cnn.onnx'), cut: 'stage2', head: 'linear', cacheDir: join(tmp, 'cache') });
        await learn.fineTune({ fineTuneAt: 'stage1', batchNorm: policy, freezeEpochs: 1, fit: { epochs: 2, patience: 0 } });
        await learn.export(join(tmp, policy));
        await learn.close();
        const m = decodeModel((await readArtifact(join(tmp, policy))).modelBytes);
        return (name: string) => tensorToFloat32(m.graph!.initializer!.find((t) => t.name === name)!);
      };
      const trained = await exported('train');
      assert.notDeepEqual(trained('bn2.mean'), original('bn2.mean'));
      assert.notDeepEqual(trained('bn2.var'), original('bn2.var'));
      assert.deepEqual(trained('bn1.mean'), original('bn1.mean'), 'the frozen prefix keeps its statistics');
      const frozen = await exported('frozen-stats');
      assert.deepEqual(frozen('bn2.mean'), original('bn2.mean'));
      assert.deepEqual(frozen('bn2.var'), original('bn2.var'));
      assert.notDeepEqual(frozen('bn2.scale'), original('bn2.scale'), 'scale and shift still train');
    });
  });
});

/**
 * Depthwise convolutions on ONNX Runtime's NCHWc kernels (src/onnx/nchwc.ts): the rewritten gradient graphs
 * against finite differences of the plain forward graph, the rewrite's structure (one blocked copy per
 * tensor, what it leaves alone), and a MobileNetV2 fine-tuning graph with and without it.
 * Skipped where the runtime has no NCHWc kernels (nchwcBlockSize() is 0).
 */
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { resolve } from 'node:path';
import * as ort from 'onnxruntime-node';
import { appendGradients } from '../src/onnx/autodiff.js';
import { GraphBuilder } from '../src/onnx/builder.js';
import { NCHWC_DOMAIN, useNchwcDepthwise } from '../src/onnx/nchwc.js';
import { DataType, encodeModel, type ModelProto, type NodeProto } from '../src/onnx/proto.js';
import { inferShapes } from '../src/onnx/shapes.js';
import { nchwcBlockSize } from '../src/train/runtime.js';
import { loadBackbone } from '../src/backbone/backbone.js';
import { dequantizeModel } from '../src/onnx/dequantize.js';
import { gradName, initParams, type HeadSpec } from '../src/head/head.js';
import { planSuffix, probeShape, suffixTrainable } from '../src/train/finetune.js';
import { Random } from '../src/util/random.js';
import { checkGradients, type GradCase } from './support/gradcheck.js';
import { maxAbsDiff, runModel } from './support/onnx.js';
import { SHARED } from './support/paths.js';

const block = await nchwcBlockSize();
const skip = block === 0 ? 'this ONNX Runtime build or CPU has no NCHWc kernels' : false;
const F = DataType.FLOAT;

const nchwcConvs = (m: ModelProto) => (m.graph!.node ?? []).filter((n) => n.domain === NCHWC_DOMAIN && n.opType === 'Conv');

/** Rewrites and insists that something was rewritten (a check that rewrote nothing would test nothing). */
function rewrite(m: ModelProto): ModelProto {
  const { model, rewritten } = useNchwcDepthwise(m, block);
  assert.ok(rewritten > 0, 'no depthwise Conv was rewritten');
  return model;
}

/** A depthwise Conv case (C = 16: every block size divides it) whose gradient graph runs rewritten. */
function depthwiseCase(name: string, x: number[], attrs: Record<string, number[]>): GradCase {
  const c = x[1]!;
  return {
    name,
    float32: true,
    eps: 1,
    tol: 1e-4,
    floor: 1e-2,
    inputs: [
      { name: 'x', dims: x, wrt: true },
      { name: 'w', dims: [c, 1, 3, 3], wrt: true },
      { name: 'b', dims: [c], wrt: true },
    ],
    build: (b, v) => b.op('Conv', [v.x!, v.w!, v.b!], { group: c, ...attrs }),
    transform: rewrite,
  };
}

describe('NCHWc depthwise convolutions', { skip }, () => {
  it('the runtime reports its channel block', () => {
    assert.ok([4, 8, 16].includes(block), `block ${block}`);
  });

  for (const c of [
    depthwiseCase('depthwise 3x3 stride 1 pads 1, bias', [2, 16, 6, 6], { pads: [1, 1, 1, 1] }),
    depthwiseCase('depthwise 3x3 stride 2 pads 1, bias (MobileNetV2 downsampling)', [2, 16, 7, 7], { strides: [2, 2], pads: [1, 1, 1, 1] }),
    depthwiseCase('depthwise 3x3 asymmetric pads [1,0,0,1], dilation 2', [3, 16, 8, 7], { pads: [1, 0, 0, 1], dilations: [2, 2] }),
  ]) {
    it(`gradients through the rewrite match finite differences: ${c.name}`, async () => checkGradients(c, 11));
  }

  it('reorders each tensor once: the weight gradient shares the blocked copies of X and dY', () => {
    const b = new GraphBuilder('g');
    const x = b.input('x', F, [4, 32, 8, 8]);
    const w = b.input('w', F, [32, 1, 3, 3]);
    const y = b.op('Conv', [x, w], { group: 32, pads: [1, 1, 1, 1] });
    const loss = b.op('ReduceSum', [b.op('Mul', [y, y])], { keepdims: 0 });
    const grads = appendGradients(b, { loss, wrt: [x, w] });
    b.output(grads.get(x)!, F, [4, 32, 8, 8]);
    b.output(grads.get(w)!, F, [32, 1, 3, 3]);
    const { model, rewritten } = useNchwcDepthwise(b.model(), block);
    assert.equal(rewritten, 3, 'forward, input gradient and weight gradient');
    const nodes = model.graph!.node!;
    const reorders = nodes.filter((n) => n.opType === 'ReorderInput');
    assert.equal(new Set(reorders.map((n) => n.input![0])).size, reorders.length, 'a tensor reordered twice');
    const producer = new Map<string, NodeProto>(nodes.flatMap((n) => (n.output ?? []).map((o) => [o, n] as [string, NodeProto])));
    const sourceOf = (t: string): string => {
      const p = producer.get(t)!;
      return p.opType === 'ReorderInput' ? p.input![0]! : sourceOf(p.input![0]!); // through Reshapes
    };
    const convs = nchwcConvs(model);
    // X feeds the forward Conv and (as its (1, N·C) view) the weight gradient's; dY feeds the input gradient
    // (as data) and the weight gradient (as its kernels).
    const forward = convs.find((n) => sourceOf(n.input![0]!) === x)!;
    const weightGrad = convs.find((n) => n !== forward && sourceOf(n.input![0]!) === x)!;
    assert.ok(forward && weightGrad, 'X is not shared');
    const inputGrad = convs.find((n) => n !== forward && n !== weightGrad)!;
    assert.equal(sourceOf(weightGrad.input![1]!), sourceOf(inputGrad.input![0]!));
  });

  it('leaves alone what it cannot run: channels the block does not divide, grouped convs, auto_pad, block 0', () => {
    const b = new GraphBuilder('g');
    const x = b.input('x', F, ['N', 12, 8, 8]);
    b.op('Conv', [x, b.input('w', F, [12, 1, 3, 3])], { group: 12, pads: [1, 1, 1, 1] }, { outputs: ['odd'] });
    const x2 = b.input('x2', F, ['N', 64, 8, 8]);
    b.op('Conv', [x2, b.input('w2', F, [32, 32, 3, 3])], { group: 2, pads: [1, 1, 1, 1] }, { outputs: ['grouped'] });
    b.op('Conv', [x2, b.input('w3', F, [64, 1, 3, 3])], { group: 64, auto_pad: 'SAME_UPPER' }, { outputs: ['same'] });
    for (const o of ['odd', 'grouped', 'same']) b.output(o, F, []);
    const m = b.model();
    assert.equal(useNchwcDepthwise(m, 16).rewritten, 0);
    assert.equal(useNchwcDepthwise(m, 0).model, m);
  });

  it('runs a forward depthwise Conv with a symbolic batch like the plain one', async () => {
    const b = new GraphBuilder('g');
    b.input('x', F, ['N', 32, 9, 9]);
    b.op('Conv', ['x', b.input('w', F, [32, 1, 3, 3]), b.input('b', F, [32])], { group: 32, pads: [1, 1, 1, 1], strides: [2, 2] }, { outputs: ['y'] });
    b.output('y', F, ['N', 32, 5, 5]);
    const plain = b.model();
    const rng = new Random(3);
    const t = (dims: number[]) => ({ data: Float32Array.from({ length: dims.reduce((a, c) => a * c, 1) }, () => rng.normal()), dims });
    const feeds = { x: t([3, 32, 9, 9]), w: t([32, 1, 3, 3]), b: t([32]) };
    const [want, got] = [(await runModel(plain, feeds)).y!, (await runModel(rewrite(plain), feeds)).y!];
    assert.deepEqual(got.dims, want.dims);
    const diff = maxAbsDiff(got.data as Float32Array, want.data as Float32Array);
    assert.ok(diff < 1e-5, `max abs diff ${diff}`);
  });
});

describe('shape inference for the rewrite', () => {
  it('knows a flipped-kernel Slice and a Reshape of an unknown tensor to an explicit shape', () => {
    const b = new GraphBuilder('g');
    const w = b.input('w', F, [8, 1, 3, 3]);
    const flipped = b.op('Slice', [w, b.int64('s', [-1, -1]), b.int64('e', [-4, -4]), b.int64('a', [2, 3]), b.int64('st', [-1, -1])]);
    const part = b.op('Slice', [w, b.int64('s2', [1]), b.int64('e2', [100]), b.int64('a2', [0])]);
    const unknown = b.op('NonZero', [w]);
    const viewed = b.op('Reshape', [unknown, b.int64('r', [2, -1])]);
    const explicit = b.op('Reshape', [unknown, b.int64('r2', [4, 1, 2, 3])]);
    const shapes = inferShapes(b.nodes, b.inputs, b.initializers);
    assert.deepEqual(shapes.get(flipped), [8, 1, 3, 3]);
    assert.deepEqual(shapes.get(part), [7, 1, 3, 3]);
    assert.deepEqual(shapes.get(viewed), [2, -1], 'rank known, size not');
    assert.deepEqual(shapes.get(explicit), [4, 1, 2, 3]);
  });
});

describe('a MobileNetV2 fine-tuning graph on NCHWc kernels', { skip }, () => {
  let float: ModelProto;
  let config: Awaited<ReturnType<typeof loadBackbone>>['config'];
  before(async () => {
    const backbone = await loadBackbone(resolve(SHARED, 'models/mobilenetv2-12-int8/model.onnx'));
    float = dequantizeModel(backbone.featureModel).model;
    config = backbone.config;
  });

  it('gives the plain graph’s loss and gradients (last 2 blocks, batch 8)', async () => {
    const spec: HeadSpec = { kind: 'linear', hidden: 0, dropout: 0, inputDim: 1280, numClasses: 3 };
    const std = { mean: new Float32Array(1280), invStd: new Float32Array(1280).fill(1) };
    const plan = planSuffix(float, 'features', { unfreeze: 2 });
    const rowShape = await probeShape(float, plan.boundary, config);
    const B = 8;
    const rng = new Random(7);
    const x = Float32Array.from({ length: B * rowShape.reduce((a, b) => a * b, 1) }, () => Math.max(0, rng.normal()));
    const labels = BigInt64Array.from({ length: B }, (_, i) => BigInt(i % 3));
    const run = async (options: { batchSize?: number; nchwcBlock?: number }) => {
      const trainable = suffixTrainable(plan, rowShape, spec, std, initParams(spec, 1), { lr: 1e-3, lrMult: 10, weightDecay: 0, ...options });
      const session = await ort.InferenceSession.create(encodeModel(trainable.trainModel));
      const feeds: Record<string, ort.Tensor> = { [plan.boundary]: new ort.Tensor('float32', x, [B, ...rowShape]), labels: new ort.Tensor('int64', labels, [B]) };
      const params = trainable.groups.flatMap((g) => g.params);
      for (const p of params) feeds[p.name] = new ort.Tensor('float32', p.data, p.dims);
      const out = await session.run(feeds);
      return { trainable, out, params };
    };
    const plain = await run({});
    const fast = await run({ batchSize: B, nchwcBlock: block });
    assert.equal(nchwcConvs(fast.trainable.trainModel).length, 6, 'two depthwise convs: forward, input and weight gradient each');
    assert.equal(nchwcConvs(fast.trainable.evalModel).length, 2);
    const loss = [plain.out.loss!.data[0]!, fast.out.loss!.data[0]!] as number[];
    assert.ok(Math.abs(loss[0]! - loss[1]!) < 1e-5 * Math.abs(loss[0]!), `loss ${loss}`);
    for (const p of plain.params) {
      const [a, b] = [plain.out[gradName(p.name)]!.data as Float32Array, fast.out[gradName(p.name)]!.data as Float32Array];
      let [diff, norm] = [0, 0];
      for (let i = 0; i < a.length; i++) {
        diff += (a[i]! - b[i]!) ** 2;
        norm += a[i]! ** 2;
      }
      assert.ok(Math.sqrt(diff) <= 1e-4 * Math.sqrt(norm) + 1e-12, `gradient of ${p.name}: relative difference ${Math.sqrt(diff / norm)}`);
    }
  });
});

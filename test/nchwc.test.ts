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
import { NCHWC_DOMAIN, useNchwc } from '../src/onnx/nchwc.js';
import { DataType, encodeModel, type ModelProto, type NodeProto } from '../src/onnx/proto.js';
import { inferShapes } from '../src/onnx/shapes.js';
import { nchwcBlockSize } from '../src/train/runtime.js';
import { loadBackbone } from '../src/backbone/backbone.js';
import { dequantizeModel } from '../src/onnx/dequantize.js';
import { gradName, initParams, type HeadSpec } from '../src/head/head.js';
import { planSuffix, probeShape, suffixTrainable } from '../src/train/finetune.js';
import { Random } from '../src/util/random.js';
import { checkGradients, type GradCase, type Typed } from './support/gradcheck.js';
import { maxAbsDiff, runModel } from './support/onnx.js';
import { SHARED } from './support/paths.js';

const block = await nchwcBlockSize();
const skip = block === 0 ? 'this ONNX Runtime build or CPU has no NCHWc kernels' : false;
const F = DataType.FLOAT;

const nchwcConvs = (m: ModelProto) => (m.graph!.node ?? []).filter((n) => n.domain === NCHWC_DOMAIN && n.opType === 'Conv');

/** Rewrites and insists that something was rewritten (a check that rewrote nothing would test nothing). */
function rewrite(m: ModelProto): ModelProto {
  const { model, rewritten } = useNchwc(m, block);
  assert.ok(rewritten > 0, 'no depthwise Conv was rewritten');
  return model;
}

/** A depthwise Conv case (C = 16: every block size divides it) whose gradient graph runs rewritten. */
function depthwiseCase(name: string, x: number[], attrs: Record<string, number[]>, k = 3, polyphase = false): GradCase {
  const c = x[1]!;
  return {
    name,
    float32: true,
    eps: 1,
    tol: 1e-4,
    floor: 1e-2,
    inputs: [
      { name: 'x', dims: x, wrt: true },
      { name: 'w', dims: [c, 1, k, k], wrt: true },
      { name: 'b', dims: [c], wrt: true },
    ],
    build: (b, v) => b.op('Conv', [v.x!, v.w!, v.b!], { group: c, ...attrs }),
    transform: (m) => {
      const out = rewrite(m);
      // (The harness also runs a graph with dynamic shapes, where the ConvTranspose stays.)
      if (polyphase && !out.graph!.node!.some((n) => n.opType === 'ConvTranspose')) polyphaseRuns.set(name, (polyphaseRuns.get(name) ?? 0) + 1);
      return out;
    },
  };
}
/** Per polyphase case, how many of its gradient graphs lost their ConvTranspose to the rewrite. */
const polyphaseRuns = new Map<string, number>();
const polyphaseCase = (name: string, x: number[], attrs: Record<string, number[]>, k = 3) => depthwiseCase(name, x, attrs, k, true);

/**
 * An inverted residual as MobileNetV2 has them, all of it on blocked tensors: 1×1 → ReLU6 → depthwise → ReLU6
 * → 1×1, the residual sum, then the pooled values broadcast back (GlobalAveragePool and a broadcasting Add
 * through the 5-D view). ORT has no float64 Conv: the differences are taken on a float64 reference of the same
 * function (1×1 convs as Einsum, the depthwise conv as nine shifted slices).
 */
function invertedResidualCase(): GradCase {
  const [N, C, E, H, W] = [2, 16, 32, 5, 5];
  const block = (b: GraphBuilder, v: Record<string, string>, t: Typed, conv: { pointwise(x: string, w: string): string; depthwise(x: string): string; pool(x: string): string }) => {
    const relu6 = (h: string) => b.op('Clip', [t.watch(b, h, [0, 6]), t.scalar(b, 0), t.scalar(b, 6)]);
    const expanded = relu6(b.op('Add', [conv.pointwise(v.x!, v.we!), b.op('Reshape', [v.be!, b.int64('bias_shape', [1, E, 1, 1])])]));
    const out = b.op('Add', [conv.pointwise(relu6(conv.depthwise(expanded)), v.wp!), v.x!]);
    return b.op('Add', [out, conv.pool(out)]);
  };
  return {
    name: 'inverted residual: 1×1, ReLU6, depthwise, ReLU6, 1×1, residual sum, pooled broadcast sum',
    float32: true,
    tol: 1e-4,
    floor: 1e-2,
    inputs: [
      { name: 'x', dims: [N, C, H, W], wrt: true },
      { name: 'we', dims: [E, C, 1, 1], wrt: true },
      { name: 'be', dims: [E], wrt: true },
      { name: 'wd', dims: [E, 1, 3, 3], wrt: true },
      { name: 'wp', dims: [C, E, 1, 1], wrt: true },
    ],
    build: (b, v, t) =>
      block(b, v, t, {
        pointwise: (x, w) => b.op('Conv', [x, w]),
        depthwise: (x) => b.op('Conv', [x, v.wd!], { group: E, pads: [1, 1, 1, 1] }),
        pool: (x) => b.op('GlobalAveragePool', [x]),
      }),
    reference: (b, v, t) =>
      block(b, v, t, {
        pointwise: (x, w) => b.op('Einsum', [x, b.op('Squeeze', [w, b.int64('hw', [2, 3])])], { equation: 'nchw,oc->nohw' }),
        depthwise: (x) => {
          const padded = b.op('Pad', [x, b.int64('pads', [0, 0, 1, 1, 0, 0, 1, 1])]);
          const taps = [];
          for (let i = 0; i < 3; i++) {
            for (let j = 0; j < 3; j++) {
              const window = b.op('Slice', [padded, b.int64('from', [i, j]), b.int64('to', [i + H, j + W]), b.int64('axes', [2, 3])]);
              const tap = b.op('Slice', [v.wd!, b.int64('tap_from', [i, j]), b.int64('tap_to', [i + 1, j + 1]), b.int64('axes', [2, 3])]);
              taps.push(b.op('Mul', [window, b.op('Reshape', [tap, b.int64('tap_shape', [1, E, 1, 1])])]));
            }
          }
          return b.op('Sum', taps);
        },
        pool: (x) => b.op('ReduceMean', [x], { axes: [2, 3], keepdims: 1 }),
      }),
    transform: rewrite,
  };
}

describe('NCHWc convolutions', { skip }, () => {
  it('the runtime reports its channel block', () => {
    assert.ok([4, 8, 16].includes(block), `block ${block}`);
  });

  for (const c of [
    depthwiseCase('depthwise 3x3 stride 1 pads 1, bias', [2, 16, 6, 6], { pads: [1, 1, 1, 1] }),
    depthwiseCase('depthwise 3x3 stride 2 pads 1, bias (MobileNetV2 downsampling)', [2, 16, 7, 7], { strides: [2, 2], pads: [1, 1, 1, 1] }),
    depthwiseCase('depthwise 3x3 asymmetric pads [1,0,0,1], dilation 2', [3, 16, 8, 7], { pads: [1, 0, 0, 1], dilations: [2, 2] }),
    // Stride 2 with an even input: the input gradient in polyphase form (four phase convs, interleaved).
    polyphaseCase('depthwise 3x3 stride 2 pads 1, even input (polyphase input gradient)', [2, 16, 8, 6], { strides: [2, 2], pads: [1, 1, 1, 1] }),
    polyphaseCase('depthwise 3x3 stride 2 pads [0,0,1,1] (TF SAME, polyphase)', [2, 16, 8, 8], { strides: [2, 2], pads: [0, 0, 1, 1] }),
    polyphaseCase('depthwise 5x5 stride 2 pads 2 (EfficientNet, polyphase)', [2, 16, 8, 10], { strides: [2, 2], pads: [2, 2, 2, 2] }, 5),
    invertedResidualCase(),
  ]) {
    it(`gradients through the rewrite match finite differences: ${c.name}`, async () => {
      await checkGradients(c, 11);
      if (c.name.includes('polyphase')) assert.ok(polyphaseRuns.get(c.name), 'the input gradient stayed a ConvTranspose');
    });
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
    const { model, rewritten } = useNchwc(b.model(), block);
    assert.equal(rewritten, 3, 'forward, input gradient and weight gradient');
    const nodes = model.graph!.node!;
    const reorders = nodes.filter((n) => n.opType === 'ReorderInput');
    assert.equal(new Set(reorders.map((n) => n.input![0])).size, reorders.length, 'a tensor reordered twice');
    const producer = new Map<string, NodeProto>(nodes.flatMap((n) => (n.output ?? []).map((o) => [o, n] as [string, NodeProto])));
    const sourceOf = (t: string): string => (producer.get(t)?.opType === 'Reshape' ? sourceOf(producer.get(t)!.input![0]!) : t); // through views
    const blockedX = reorders.find((n) => n.input![0] === x)!.output![0]!;
    const convs = nchwcConvs(model);
    const group = (n: NodeProto) => Number(n.attribute!.find((a) => a.name === 'group')!.i);
    // X feeds the forward Conv and (as its (1, N·C) view) the weight gradient's; dY feeds the input gradient
    // (as data) and the weight gradient (as its kernels).
    const readingX = convs.filter((n) => sourceOf(n.input![0]!) === blockedX);
    assert.deepEqual(readingX.map(group).sort((a, b) => a - b), [32, 4 * 32], 'X is not shared by the forward Conv and the weight gradient');
    const weightGrad = readingX.find((n) => group(n) === 4 * 32)!;
    const inputGrad = convs.find((n) => !readingX.includes(n))!;
    assert.equal(sourceOf(weightGrad.input![1]!), sourceOf(inputGrad.input![0]!));
  });

  it('moves non-float tensors between layouts too (a mask made blocked, one read plain)', async () => {
    const b = new GraphBuilder('g');
    const x = b.input('x', F, [2, 32, 4, 4]);
    const y = b.op('Conv', [x, b.input('w', F, [32, 32, 1, 1])]);
    const blockedMask = b.op('Greater', [y, b.constant('zero', Float32Array.of(0), [])]);
    const plainMask = b.op('Greater', [b.input('x2', F, [2, 32, 4, 4]), b.constant('zero', Float32Array.of(0), [])]);
    const both = b.op('And', [blockedMask, plainMask]); // the plain mask enters the blocked layout
    // A (2, 32, 4, 1) operand cannot be read blocked: the mask and y go back to NCHW for this Where.
    b.op('Where', [both, y, b.input('column', F, [2, 32, 4, 1])], {}, { outputs: ['out'] });
    b.output('out', F, [2, 32, 4, 4]);
    const plain = b.model();
    const fast = rewrite(plain);
    const ops = fast.graph!.node!.map((n) => n.opType);
    assert.equal(ops.filter((o) => o === 'Transpose').length, 2, 'one bool mask moved in, one moved out');
    const rng = new Random(5);
    const t = (dims: number[]) => ({ data: Float32Array.from({ length: dims.reduce((a, c) => a * c, 1) }, () => rng.normal()), dims });
    const feeds = { x: t([2, 32, 4, 4]), w: t([32, 32, 1, 1]), x2: t([2, 32, 4, 4]), column: t([2, 32, 4, 1]) };
    const [want, got] = [(await runModel(plain, feeds)).out!, (await runModel(fast, feeds)).out!];
    const diff = maxAbsDiff(got.data as Float32Array, want.data as Float32Array);
    assert.ok(diff < 1e-5, `max abs diff ${diff}`);
  });

  it('broadcasts pooled values back over positions, with a symbolic batch (5-D view) and a static one (Expand)', async () => {
    for (const batch of ['N', 3] as const) {
      const b = new GraphBuilder('g');
      b.input('x', F, [batch, 32, 5, 5]);
      const y = b.op('Conv', ['x', b.input('w', F, [32, 32, 1, 1])]);
      b.op('Mul', [y, b.op('GlobalAveragePool', [y])], {}, { outputs: ['out'] });
      b.output('out', F, [batch, 32, 5, 5]);
      const plain = b.model();
      const fast = rewrite(plain);
      assert.equal(fast.graph!.node!.some((n) => n.opType === 'Expand'), batch === 3);
      const rng = new Random(9);
      const t = (dims: number[]) => ({ data: Float32Array.from({ length: dims.reduce((a, c) => a * c, 1) }, () => rng.normal()), dims });
      const feeds = { x: t([3, 32, 5, 5]), w: t([32, 32, 1, 1]) };
      const [want, got] = [(await runModel(plain, feeds)).out!, (await runModel(fast, feeds)).out!];
      const diff = maxAbsDiff(got.data as Float32Array, want.data as Float32Array);
      assert.ok(diff < 1e-4, `batch ${batch}: max abs diff ${diff}`);
    }
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
    assert.equal(useNchwc(m, 16).rewritten, 0);
    assert.equal(useNchwc(m, 0).model, m);
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
  let pipeline: Awaited<ReturnType<typeof loadBackbone>>['pipeline'];
  before(async () => {
    const backbone = await loadBackbone(resolve(SHARED, 'models/mobilenetv2-12-int8/model.onnx'));
    float = dequantizeModel(backbone.featureModel).model;
    pipeline = backbone.pipeline;
  });

  it('gives the plain graph’s loss and gradients (last 2 blocks, batch 8)', async () => {
    const spec: HeadSpec = { kind: 'linear', hidden: 0, dropout: 0, inputDim: 1280, numClasses: 3 };
    const std = { mean: new Float32Array(1280), invStd: new Float32Array(1280).fill(1) };
    const plan = planSuffix(float, 'features', { unfreeze: 2 });
    const rowShape = await probeShape(float, plan.boundary, pipeline);
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
    const grouped = (m: ModelProto) => nchwcConvs(m).filter((n) => (n.attribute ?? []).some((a) => a.name === 'group' && Number(a.i) > 1)).length;
    assert.equal(grouped(fast.trainable.trainModel), 6, 'two depthwise convs: forward, input and weight gradient each');
    // 1×1: the final Conv (forward, input gradient), two projections (the same), the two expansions (forward;
    // the second's input gradient, the first's input is the frozen boundary).
    assert.equal(nchwcConvs(fast.trainable.trainModel).length - 6, 9);
    assert.equal(nchwcConvs(fast.trainable.evalModel).length, 7);
    const ops = fast.trainable.trainModel.graph!.node!.map((n) => n.opType);
    assert.ok(!ops.includes('Clip'), 'each ReLU6 runs as its Conv’s fused activation');
    assert.ok(!ops.includes('Add') && !ops.includes('Sum'), 'the residual join and its gradient sum run as Convs’ Sum inputs');
    assert.equal(nchwcConvs(fast.trainable.trainModel).filter((n) => n.attribute!.some((a) => a.name === 'activation')).length, 5, 'two ReLU6 a block, one after the final Conv');
    assert.equal(fast.trainable.trainModel.graph!.node!.filter((n) => n.opType === 'Transpose' && n.input![0] === plan.boundary).length, 1, 'the boundary is read plain');
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

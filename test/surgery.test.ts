/**
 * Graph surgery (src/onnx/surgery.ts) and ONNX IO round trips, checked by running the graphs in onnxruntime-node:
 * pruning keeps only ancestors, the automatic cut point (float and int8 QOperator graphs), cutting a model to
 * `[N, D]` pooled features (NCHW and NHWC), and merging a feature model with a head.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { describe, it } from 'node:test';
import { GraphBuilder } from '../src/onnx/builder.js';
import { DataType, decodeModel, defaultOpset, encodeModel, loadModel, tensorToFloat32, type ModelProto } from '../src/onnx/proto.js';
import { cutModel, findCut, mergeModels, pruneTo } from '../src/onnx/surgery.js';
import { Random } from '../src/util/random.js';
import { assertGraftError, maxAbsDiff, runModel, withOutputs, type Feeds } from './support/onnx.js';
import { requireShared, SHARED } from './support/paths.js';

const INT8_MODEL = `${SHARED}/models/mobilenetv2-12-int8/model.onnx`;
const FLOAT = DataType.FLOAT;

function randn(n: number, seed: number, scale = 1): Float32Array {
  const r = new Random(seed);
  return Float32Array.from({ length: n }, () => r.normal() * scale);
}

/** Conv → Relu → GlobalAveragePool → Flatten → Gemm, NCHW, input `image` [N, 3, 6, 5]; the Relu output is `act`. */
const C_IN = 3, C = 4, H = 6, W = 5, CLASSES = 2;
function convNet(opset = 13): ModelProto {
  const b = new GraphBuilder('convnet');
  b.input('image', FLOAT, ['N', C_IN, H, W]);
  const w = b.constant('conv_w', randn(C * C_IN * 9, 1, 0.5), [C, C_IN, 3, 3]);
  const bias = b.constant('conv_b', randn(C, 2, 0.1), [C]);
  const conv = b.op('Conv', ['image', w, bias], { kernel_shape: [3, 3], pads: [1, 1, 1, 1] });
  const act = b.op('Relu', [conv], {}, { outputs: ['act'] });
  const pooled = b.op('GlobalAveragePool', [act]);
  const flat = b.op('Flatten', [pooled]);
  const gw = b.constant('fc_w', randn(CLASSES * C, 3), [CLASSES, C]);
  const gb = b.constant('fc_b', randn(CLASSES, 4), [CLASSES]);
  b.op('Gemm', [flat, gw, gb], { transB: 1 }, { outputs: ['logits'] });
  b.output('logits', FLOAT, ['N', CLASSES]);
  return b.model(opset);
}

/** Runs a model once on one thread; returns all its outputs. */
const run = (model: ModelProto | Uint8Array, feeds: Feeds) => runModel(model, feeds, undefined, { intraOpNumThreads: 1 });

/** Runs `model` with `extra` added as graph outputs (their shapes left open). */
async function runWithOutputs(model: ModelProto, extra: string[], feeds: Feeds) {
  return run(decodeModel(encodeModel(withOutputs(model, extra))), feeds);
}

describe('ONNX IO', () => {
  it('encodes and decodes a builder-made model without loss, and both run alike', async () => {
    const model = convNet();
    const bytes = encodeModel(model);
    const decoded = decodeModel(bytes);
    const g0 = model.graph!, g1 = decoded.graph!;
    assert.deepEqual(g1.node!.map((n) => [n.opType, n.name, [...n.input!], [...n.output!]]), g0.node!.map((n) => [n.opType, n.name, [...n.input!], [...n.output!]]));
    assert.deepEqual(g1.initializer!.map((t) => t.name), g0.initializer!.map((t) => t.name));
    for (let i = 0; i < g0.initializer!.length; i++) {
      assert.deepEqual(tensorToFloat32(g1.initializer![i]!), tensorToFloat32(g0.initializer![i]!), `initializer ${g0.initializer![i]!.name}`);
    }
    assert.deepEqual(g1.input!.map((i) => i.name), ['image']);
    assert.deepEqual(g1.output!.map((o) => o.name), ['logits']);
    assert.equal(defaultOpset(decoded), 13);
    // Attributes survive (ints become Longs on decode).
    const conv = g1.node!.find((n) => n.opType === 'Conv')!;
    assert.deepEqual(conv.attribute!.find((a) => a.name === 'pads')!.ints!.map(Number), [1, 1, 1, 1]);
    // Encoding the decoded model again gives the same bytes.
    assert.deepEqual(encodeModel(decoded), bytes);

    const x = { image: { data: randn(2 * C_IN * H * W, 10), dims: [2, C_IN, H, W] } };
    const [a, b] = await Promise.all([run(bytes, x), run(encodeModel(decoded), x)]);
    assert.deepEqual([...a.logits!.dims], [2, CLASSES]);
    assert.deepEqual(a.logits!.data, b.logits!.data);
  });

  it('decodeModel rejects bytes that are not a model with a MODEL error naming the source', () => {
    assertGraftError(() => decodeModel(new Uint8Array([0xff, 0xff, 0xff, 0x07, 0x01, 0x02]), 'junk.onnx'), 'MODEL', /junk\.onnx/);
  });
});

describe('pruneTo', () => {
  it('keeps only the ancestors of the requested tensors', () => {
    const b = new GraphBuilder('dead-branch');
    b.input('x', FLOAT, ['N', 4]);
    b.input('unused', FLOAT, ['N', 4]);
    const k = b.constant('k', randn(4, 1), [4]);
    const dead = b.constant('dead', randn(4, 2), [4]);
    const a = b.op('Add', ['x', k], {}, { outputs: ['a'] });
    const live = b.op('Relu', [a], {}, { outputs: ['live'] });
    // The dead branch: from x and from a, and from the unused input, none of it needed for `live`.
    const d1 = b.op('Mul', ['x', dead], {}, { outputs: ['d1'] });
    const d2 = b.op('Sigmoid', [a], {}, { outputs: ['d2'] });
    const d3 = b.op('Add', [d1, 'unused'], {}, { outputs: ['d3'] });
    b.op('Sum', [live, d2, d3], {}, { outputs: ['y'] });
    b.output('y', FLOAT, ['N', 4]);
    const graph = b.graph();
    graph.valueInfo = [{ name: 'a' }, { name: 'd1' }];

    const pruned = pruneTo(graph, ['live']);
    assert.deepEqual(pruned.node!.map((n) => n.output![0]), ['a', 'live']);
    assert.deepEqual(pruned.initializer!.map((t) => t.name), [k]);
    assert.deepEqual(pruned.input!.map((i) => i.name), ['x']);
    assert.deepEqual(pruned.valueInfo!.map((v) => v.name), ['a']);
    assert.deepEqual(pruned.output, []);
    // The original graph is untouched.
    assert.equal(graph.node!.length, 6);

    const both = pruneTo(graph, ['live', 'd3']);
    assert.deepEqual(both.node!.map((n) => n.output![0]), ['a', 'live', 'd1', 'd3']);
    assert.deepEqual(both.input!.map((i) => i.name), ['x', 'unused']);
    assert.deepEqual(new Set(both.initializer!.map((t) => t.name)), new Set([k, dead]));
  });
});

describe('findCut', () => {
  it('finds the dequantized input of the QLinearGlobalAveragePool in the int8 MobileNetV2', async () => {
    requireShared(INT8_MODEL);
    const { model } = await loadModel(INT8_MODEL);
    const cut = findCut(model);
    assert.equal(cut.tensor, '627');
    assert.match(cut.reason, /QLinearGlobalAveragePool/);
    assert.match(cut.reason, /GlobalAveragePool_97_quant/);
  });

  it('returns the input of the last GlobalAveragePool of a float graph', () => {
    const cut = findCut(convNet());
    assert.equal(cut.tensor, 'act');
    assert.match(cut.reason, /GlobalAveragePool/);
  });

  it('throws a MODEL error when there is no pooling', () => {
    const b = new GraphBuilder('flat');
    b.input('x', FLOAT, ['N', 4]);
    const w = b.constant('w', randn(8, 1), [2, 4]);
    b.op('Gemm', ['x', w], { transB: 1 }, { outputs: ['y'] });
    b.output('y', FLOAT, ['N', 2]);
    assertGraftError(() => findCut(b.model()), 'MODEL', /global pooling/);
  });
});

describe('cutModel', () => {
  it('cuts a float conv net at the Relu: one output `features` [N, C] = mean over H, W of the Relu output', async () => {
    const model = convNet();
    const cut = cutModel(model, 'act', { layout: 'NCHW', rank: 4 });
    const graph = cut.graph!;
    assert.deepEqual(graph.output!.map((o) => o.name), ['features']);
    assert.deepEqual(graph.input!.map((i) => i.name), ['image']);
    const ops = graph.node!.map((n) => n.opType);
    assert.ok(!ops.includes('Gemm'), `the classifier is dropped: ${ops}`);
    assert.deepEqual(new Set(graph.initializer!.map((t) => t.name)), new Set(['conv_w', 'conv_b']));
    assert.equal(defaultOpset(cut), 13);

    const N = 3;
    const x = { image: { data: randn(N * C_IN * H * W, 20), dims: [N, C_IN, H, W] } };
    const [orig, got] = await Promise.all([runWithOutputs(model, ['act'], x), run(cut, x)]);
    const act = orig.act!.data as Float32Array;
    assert.deepEqual([...orig.act!.dims], [N, C, H, W]);
    const expected = new Float32Array(N * C);
    for (let n = 0; n < N; n++) {
      for (let c = 0; c < C; c++) {
        let s = 0;
        for (let i = 0; i < H * W; i++) s += act[(n * C + c) * H * W + i]!;
        expected[n * C + c] = s / (H * W);
      }
    }
    assert.deepEqual([...got.features!.dims], [N, C]);
    assert.ok(maxAbsDiff(got.features!.data as Float32Array, expected) < 1e-5);
    assert.ok(expected.some((v) => v > 0), 'the test is not vacuous');
  });

  it('pools axes 1 and 2 of an NHWC feature map', async () => {
    const N = 2, h = 3, w = 4, c = 5;
    const b = new GraphBuilder('nhwc');
    b.input('image', FLOAT, ['N', h, w, c]);
    const s = b.constant('s', randn(c, 3), [c]);
    const m = b.op('Mul', ['image', s], {}, { outputs: ['fmap'] });
    const top = b.op('ReduceMax', [m], { axes: [1, 2], keepdims: 0 });
    b.op('Identity', [top], {}, { outputs: ['top'] });
    b.output('top', FLOAT, ['N', c]);
    const model = b.model(13);

    const cut = cutModel(model, 'fmap', { layout: 'NHWC', rank: 4 });
    assert.deepEqual(cut.graph!.output!.map((o) => o.name), ['features']);
    const x = { image: { data: randn(N * h * w * c, 30), dims: [N, h, w, c] } };
    const [orig, got] = await Promise.all([runWithOutputs(model, ['fmap'], x), run(cut, x)]);
    const fmap = orig.fmap!.data as Float32Array;
    const expected = new Float32Array(N * c);
    for (let n = 0; n < N; n++) for (let i = 0; i < h * w; i++) for (let k = 0; k < c; k++) expected[n * c + k]! += fmap[(n * h * w + i) * c + k]! / (h * w);
    assert.deepEqual([...got.features!.dims], [N, c]);
    assert.ok(maxAbsDiff(got.features!.data as Float32Array, expected) < 1e-5);
  });

  it('passes an already pooled rank-2 tensor through', async () => {
    const model = convNet();
    const flat = model.graph!.node!.find((n) => n.opType === 'Flatten')!.output![0]!;
    const cut = cutModel(model, flat, { layout: 'NCHW', rank: 2 });
    const x = { image: { data: randn(2 * C_IN * H * W, 40), dims: [2, C_IN, H, W] } };
    const [orig, got] = await Promise.all([runWithOutputs(model, [flat], x), run(cut, x)]);
    assert.deepEqual([...got.features!.dims], [2, C]);
    assert.deepEqual(got.features!.data, orig[flat]!.data);
  });

  it('throws a MODEL error naming a tensor that is not in the model', () => {
    assertGraftError(() => cutModel(convNet(), 'no_such_tensor', { layout: 'NCHW', rank: 4 }), 'MODEL', /no_such_tensor/);
  });
});

describe('mergeModels', () => {
  /** A Gemm + Softmax head over [N, C] features, input `x`, output `probs`, at opset 11. */
  function head(): ModelProto {
    const b = new GraphBuilder('head');
    b.input('x', FLOAT, ['N', C]);
    const w = b.constant('w', randn(CLASSES * C, 50), [CLASSES, C]);
    const bias = b.constant('b', randn(CLASSES, 51), [CLASSES]);
    const logits = b.op('Gemm', ['x', w, bias], { transB: 1 }, { outputs: ['logits'] });
    b.op('Softmax', [logits], { axis: 1 }, { outputs: ['probs'] });
    b.output('probs', FLOAT, ['N', CLASSES]);
    return b.model(11);
  }

  it('feeds the first model output into the head: same result as running both, first opset, prefixed names', async () => {
    const features = cutModel(convNet(), 'act', { layout: 'NCHW', rank: 4 });
    const h = head();
    const merged = mergeModels(features, h, 'features', 'head/');
    assert.equal(defaultOpset(merged), 13);
    assert.deepEqual(merged.graph!.output!.map((o) => o.name), ['probs']);
    assert.deepEqual(merged.graph!.input!.map((i) => i.name), ['image']);
    const headNodes = merged.graph!.node!.slice(features.graph!.node!.length);
    assert.deepEqual(headNodes.map((n) => n.opType), ['Gemm', 'Softmax']);
    for (const n of headNodes) assert.ok(n.name!.startsWith('head/'), `node name ${n.name}`);
    assert.deepEqual(headNodes[0]!.input, ['features', 'head/w', 'head/b']);
    assert.deepEqual(headNodes[0]!.output, ['head/logits']);
    assert.deepEqual(headNodes[1]!.output, ['probs']);
    const inits = merged.graph!.initializer!.map((t) => t.name);
    assert.ok(inits.includes('head/w') && inits.includes('head/b') && inits.includes('conv_w'), `${inits}`);
    // The inputs are not modified.
    assert.deepEqual(h.graph!.node![0]!.input, ['x', 'w', 'b']);

    const N = 3;
    const x = { image: { data: randn(N * C_IN * H * W, 60), dims: [N, C_IN, H, W] } };
    const f = await run(features, x);
    const [separate, together] = await Promise.all([
      run(h, { x: { data: f.features!.data as Float32Array, dims: [N, C] } }),
      run(merged, x),
    ]);
    assert.deepEqual([...together.probs!.dims], [N, CLASSES]);
    assert.ok(maxAbsDiff(together.probs!.data as Float32Array, separate.probs!.data as Float32Array) < 1e-6);
  });

  it('rejects a link that is not an output of the first model', () => {
    const features = cutModel(convNet(), 'act', { layout: 'NCHW', rank: 4 });
    assertGraftError(() => mergeModels(features, head(), 'act', 'head/'), 'MODEL', /"act"/);
  });
});

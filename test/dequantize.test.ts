/**
 * Int8 → float conversion (src/onnx/dequantize.ts), checked by running both models in onnxruntime-node: hand-built
 * QOperator and QDQ models match ORT's int8 output within quantization error; on MobileNetV2-12-int8 every
 * converted layer reproduces its int8 layer to half a quantization step when fed the int8 layer's input, and on
 * real hymenoptera images the float model predicts like the int8 one, while dropping the restored activations
 * wrecks it.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { before, describe, it } from 'node:test';
import { GraphBuilder } from '../src/onnx/builder.js';
import { dequantizeModel } from '../src/onnx/dequantize.js';
import { DataType, loadModel, tensorToFloat32, type ModelProto, type NodeProto } from '../src/onnx/proto.js';
import { findCut } from '../src/onnx/surgery.js';
import { IMAGENET_DEFAULTS } from '../src/preprocess/config.js';
import { decodeImage, normalizeInto } from '../src/preprocess/image.js';
import { Random } from '../src/util/random.js';
import { assertGraftError, runModel, withOutputs, type Feeds } from './support/onnx.js';
import { requireShared, SHARED } from './support/paths.js';

const INT8_MODEL = `${SHARED}/models/mobilenetv2-12-int8/model.onnx`;
const VAL = `${SHARED}/data/hymenoptera/val`;
requireShared(INT8_MODEL, VAL);
const FLOAT = DataType.FLOAT;
const QUANTIZED_OPS = /^(QLinear|QuantizeLinear|DequantizeLinear)/;

const ops = (m: ModelProto) => m.graph!.node!.map((n) => n.opType!);
const argmax = (a: ArrayLike<number>, row: number, k: number): number => {
  let best = 0;
  for (let j = 1; j < k; j++) if (a[row * k + j]! > a[row * k + best]!) best = j;
  return best;
};

/** Random integers in [lo, hi], as float values. */
function ints(n: number, lo: number, hi: number, seed: number): number[] {
  const r = new Random(seed);
  return Array.from({ length: n }, () => lo + Math.floor(r.next() * (hi - lo + 1)));
}

describe('dequantizeModel on hand-built models', () => {
  // x [1,3,6,6] → QuantizeLinear (uint8, zp 128) → QLinearConv 3→4 3x3 (per-channel int8 weights, int32 bias, output
  // uint8 zp 0: a fused ReLU with a low saturation bound) → QLinearConv depthwise 3x3 stride 2 (output zp 128: linear)
  // → DequantizeLinear → y.
  const XS = 0.02, XZ = 128, Y1S = 0.004, Y2S = 0.04, Y2Z = 128;
  const W1S = [0.01, 0.02, 0.005, 0.015], W2S = [0.02, 0.01, 0.03, 0.015];
  const w1 = ints(4 * 3 * 9, -127, 127, 1), w2 = ints(4 * 9, -30, 30, 2);
  const b1 = ints(4, -3000, 3000, 3), b2 = ints(4, -400, 400, 4);

  function qoperatorModel(): ModelProto {
    const b = new GraphBuilder('qconv');
    b.input('x', FLOAT, [1, 3, 6, 6]);
    const xs = b.constant('x_scale', Float32Array.of(XS), []);
    const xz = b.constant('x_zero_point', Uint8Array.of(XZ), []);
    const xq = b.op('QuantizeLinear', ['x', xs, xz], {}, { outputs: ['x_quantized'] });
    const y1s = b.constant('y1_scale', Float32Array.of(Y1S), []);
    const y1z = b.constant('y1_zero_point', Uint8Array.of(0), []);
    const y1 = b.op(
      'QLinearConv',
      [xq, xs, xz, b.constant('w1_quantized', Int8Array.from(w1), [4, 3, 3, 3]), b.constant('w1_scale', Float32Array.from(W1S), [4]),
        b.constant('w1_zero_point', new Int8Array(4), [4]), y1s, y1z, b.constant('b1_quantized', Int32Array.from(b1), [4])],
      { kernel_shape: [3, 3], pads: [1, 1, 1, 1] },
      { outputs: ['y1_quantized'], name: 'conv1_quant' },
    );
    const y2s = b.constant('y2_scale', Float32Array.of(Y2S), []);
    const y2z = b.constant('y2_zero_point', Uint8Array.of(Y2Z), []);
    const y2 = b.op(
      'QLinearConv',
      [y1, y1s, y1z, b.constant('w2_quantized', Int8Array.from(w2), [4, 1, 3, 3]), b.constant('w2_scale', Float32Array.from(W2S), [4]),
        b.constant('w2_zero_point', new Int8Array(4), [4]), y2s, y2z, b.constant('b2_quantized', Int32Array.from(b2), [4])],
      { kernel_shape: [3, 3], pads: [1, 1, 1, 1], strides: [2, 2], group: 4 },
      { outputs: ['y2_quantized'], name: 'conv2_quant' },
    );
    b.op('DequantizeLinear', [y2, y2s, y2z], {}, { outputs: ['y'] });
    b.output('y', FLOAT, [1, 4, 3, 3]);
    return b.model(13);
  }

  /** x on the input's quantization grid, so that quantizing it is exact and both models see the same input. */
  const xGrid = Float32Array.from(ints(3 * 36, 0, 255, 5), (q) => (q - XZ) * XS);

  it('QLinearConv (per-channel weights, bias, fused ReLU, depthwise) matches the int8 output within quantization error', async () => {
    const int8 = qoperatorModel();
    const { model, report } = dequantizeModel(int8);
    assert.deepEqual(report.converted, { QuantizeLinear: 1, QLinearConv: 2, DequantizeLinear: 1 });
    assert.equal(report.activations, 1, 'only conv1 (output zero point 0) gets a Clip');
    assert.deepEqual(ops(model), ['Conv', 'Clip', 'Conv']);
    assert.deepEqual(model.graph!.input!.map((i) => i.name), ['x']);
    assert.deepEqual(model.graph!.output!.map((o) => o.name), ['y']);
    assert.ok(model.graph!.initializer!.every((t) => t.dataType === FLOAT), 'every remaining initializer is float');
    const clip = model.graph!.node!.find((n) => n.opType === 'Clip')!;
    const bounds = clip.input!.slice(1).map((name) => tensorToFloat32(model.graph!.initializer!.find((t) => t.name === name)!)[0]!);
    assert.deepEqual(bounds, [0, Math.fround(255 * Math.fround(Y1S))]);

    const feeds = { x: { data: xGrid, dims: [1, 3, 6, 6] } };
    const [ref, got] = await Promise.all([runModel(withOutputs(int8, ['y1_quantized']), feeds), runModel(withOutputs(model, ['y1']), feeds)]);
    // Layer 1 alone: the float output rounds to the int8 one, and its Clip reproduces both saturations.
    const y1q = ref.y1_quantized!.data as Uint8Array;
    const y1f = got.y1!.data as Float32Array;
    let maxDiff1 = 0;
    for (let i = 0; i < y1q.length; i++) maxDiff1 = Math.max(maxDiff1, Math.abs(y1f[i]! - y1q[i]! * Y1S));
    assert.ok(maxDiff1 <= 0.5 * Y1S + 1e-6, `layer 1 differs by ${maxDiff1}`);
    assert.ok(y1q.includes(0) && y1q.includes(255), 'the test input exercises both ends of the ReLU range');
    // Layer 2 adds its own rounding and propagates layer 1's (at most Y1S/2 per input times the channel's Σ|w|).
    const propagated = Math.max(...W2S.map((s, c) => 0.5 * Y1S * s * w2.slice(c * 9, c * 9 + 9).reduce((a, v) => a + Math.abs(v), 0)));
    const y = ref.y!.data as Float32Array, yf = got.y!.data as Float32Array;
    let maxDiff2 = 0;
    for (let i = 0; i < y.length; i++) maxDiff2 = Math.max(maxDiff2, Math.abs(yf[i]! - y[i]!));
    assert.ok(maxDiff2 <= 0.5 * Y2S + propagated + 1e-5, `output differs by ${maxDiff2} (bound ${0.5 * Y2S + propagated})`);
    // A linear output gets no Clip, so the check only holds where the int8 output does not saturate.
    assert.ok(y.every((v) => v > -Y2Z * Y2S + 1e-6 && v < (255 - Y2Z) * Y2S - 1e-6), 'layer 2 stays inside its int8 range');
  });

  it('QDQ models: constant weights fold into float initializers and Q→DQ pairs vanish, restoring the fused ReLU', async () => {
    const b = new GraphBuilder('qdq');
    b.input('x', FLOAT, [1, 3, 6, 6]);
    const xs = b.constant('x_scale', Float32Array.of(XS), []);
    const xz = b.constant('x_zero_point', Uint8Array.of(XZ), []);
    const xdq = b.op('DequantizeLinear', [b.op('QuantizeLinear', ['x', xs, xz], {}, { outputs: ['x_q'] }), xs, xz], {}, { outputs: ['x_dq'] });
    const w = b.op(
      'DequantizeLinear',
      [b.constant('w_int8', Int8Array.from(w1), [4, 3, 3, 3]), b.constant('w_scale', Float32Array.from(W1S), [4]), b.constant('w_zp', new Int8Array(4), [4])],
      { axis: 0 },
      { outputs: ['w_dq'] },
    );
    const bias = b.op(
      'DequantizeLinear',
      [b.constant('b_int32', Int32Array.from(b1), [4]), b.constant('b_scale', Float32Array.from(W1S, (s) => XS * s), [4]), b.constant('b_zp', new Int32Array(4), [4])],
      { axis: 0 },
      { outputs: ['b_dq'] },
    );
    const conv = b.op('Conv', [xdq, w, bias], { kernel_shape: [3, 3], pads: [1, 1, 1, 1] }, { outputs: ['conv'] });
    const ys = b.constant('y_scale', Float32Array.of(Y1S), []);
    const yz = b.constant('y_zero_point', Uint8Array.of(0), []);
    b.op('DequantizeLinear', [b.op('QuantizeLinear', [conv, ys, yz], {}, { outputs: ['conv_q'] }), ys, yz], {}, { outputs: ['y'] });
    b.output('y', FLOAT, [1, 4, 6, 6]);
    const qdq = b.model(13);

    const { model, report } = dequantizeModel(qdq);
    assert.deepEqual(ops(model), ['Conv', 'Clip']);
    assert.equal(report.activations, 1);
    assert.deepEqual(report.converted, { QuantizeLinear: 2, DequantizeLinear: 4 });
    const conv2 = model.graph!.node![0]!;
    assert.deepEqual(conv2.input, ['x', 'w_dq', 'b_dq'], 'the activation Q→DQ pair is gone; the weights are folded under their DQ names');
    assert.deepEqual(model.graph!.initializer!.find((t) => t.name === 'w_dq')!.dims!.map(Number), [4, 3, 3, 3]);

    const feeds = { x: { data: xGrid, dims: [1, 3, 6, 6] } };
    const [ref, got] = await Promise.all([runModel(qdq, feeds), runModel(model, feeds)]);
    const y = ref.y!.data as Float32Array, yf = got.y!.data as Float32Array;
    let maxDiff = 0;
    for (let i = 0; i < y.length; i++) maxDiff = Math.max(maxDiff, Math.abs(yf[i]! - y[i]!));
    assert.ok(maxDiff <= 0.5 * Y1S + 1e-5, `QDQ output differs by ${maxDiff}`);
    assert.ok(y.includes(0) && y.some((v) => Math.abs(v - 255 * Y1S) < 1e-6), 'the test input exercises both ends of the range');
  });

  it("the 'relu6' policy clips at 6 whatever the calibrated bound", () => {
    const { model } = dequantizeModel(qoperatorModel(), { clip: 'relu6' });
    const clip = model.graph!.node!.find((n) => n.opType === 'Clip')!;
    assert.deepEqual(clip.input!.slice(1).map((name) => tensorToFloat32(model.graph!.initializer!.find((t) => t.name === name)!)[0]), [0, 6]);
  });

  it('an unknown quantized op, or a float op reading a quantized tensor, is a MODEL error naming node and op', () => {
    const b = new GraphBuilder('unknown');
    b.input('x', FLOAT, [1, 4]);
    const s = b.constant('s', Float32Array.of(0.1), []);
    const z = b.constant('z', Uint8Array.of(128), []);
    const q = b.op('QuantizeLinear', ['x', s, z]);
    const sig = b.op('QLinearSigmoid', [q, s, z, s, z], {}, { domain: 'com.microsoft', name: 'my_sigmoid' });
    b.op('DequantizeLinear', [sig, s, z], {}, { outputs: ['y'] });
    b.output('y', FLOAT, [1, 4]);
    assertGraftError(() => dequantizeModel(b.model(13)), 'MODEL', /my_sigmoid/, /QLinearSigmoid/);

    const c = new GraphBuilder('float-op-on-int8');
    c.input('x', FLOAT, [1, 4]);
    const s2 = c.constant('s', Float32Array.of(0.1), []);
    const z2 = c.constant('z', Uint8Array.of(128), []);
    const q2 = c.op('QuantizeLinear', ['x', s2, z2], {}, { outputs: ['x_quantized'] });
    c.op('Cast', [q2], { to: FLOAT }, { outputs: ['y'], name: 'raw_cast' });
    c.output('y', FLOAT, [1, 4]);
    assertGraftError(() => dequantizeModel(c.model(13)), 'MODEL', /raw_cast/, /Cast/, /x_quantized/);
  });
});

describe('dequantizeModel on MobileNetV2-12-int8', () => {
  const S = 3 * 224 * 224;
  let int8: ModelProto;
  let float: ModelProto;
  let report: ReturnType<typeof dequantizeModel>['report'];
  let n = 0;
  let input: Float32Array;
  let ref: { logits: Float32Array; features: Float32Array };
  let got: { logits: Float32Array; features: Float32Array };

  /** Logits and the 627 features averaged over 7x7, for every image. */
  async function predict(model: ModelProto): Promise<{ logits: Float32Array; features: Float32Array }> {
    const out = await runModel(withOutputs(model, ['627']), { input: { data: input, dims: [n, 3, 224, 224] } }, ['output', '627']);
    const maps = out['627']!.data as Float32Array;
    const features = new Float32Array(n * 1280);
    for (let i = 0; i < features.length; i++) {
      let sum = 0;
      for (let j = 0; j < 49; j++) sum += maps[i * 49 + j]!;
      features[i] = sum / 49;
    }
    return { logits: out.output!.data as Float32Array, features };
  }

  function top1Agreement(a: Float32Array, b: Float32Array): number {
    let same = 0;
    for (let i = 0; i < n; i++) if (argmax(a, i, 1000) === argmax(b, i, 1000)) same++;
    return same / n;
  }

  before(async () => {
    int8 = (await loadModel(INT8_MODEL)).model;
    ({ model: float, report } = dequantizeModel(int8));
    // The first 30 ants and 30 bees of the validation split, in name order.
    const files = ['ants', 'bees'].flatMap((c) => readdirSync(`${VAL}/${c}`).sort().slice(0, 30).map((f) => `${VAL}/${c}/${f}`));
    n = files.length;
    input = new Float32Array(n * S);
    const pixels = await Promise.all(files.map((f) => decodeImage(f, IMAGENET_DEFAULTS)));
    pixels.forEach((p, i) => normalizeInto(p, IMAGENET_DEFAULTS, input, i * S));
    ref = await predict(int8);
    got = await predict(float);
  });

  it('is a plain float graph: 52 Conv, no quantized or com.microsoft op, one Clip per non-negative output range', () => {
    const types = ops(float);
    assert.equal(types.filter((t) => t === 'Conv').length, 52);
    assert.deepEqual(types.filter((t) => QUANTIZED_OPS.test(t)), []);
    assert.ok(float.graph!.node!.every((nd) => !nd.domain), 'only default-domain ops');
    assert.deepEqual(float.opsetImport.map((o) => [o.domain ?? '', Number(o.version)]), [['', 12]]);
    assert.ok(float.graph!.initializer!.every((t) => t.dataType === FLOAT || t.dataType === DataType.INT64), 'no integer weights left');
    // Outputs of QLinearConv/Add/MatMul whose real range [(0 − zp)·s, (255 − zp)·s] starts at 0.
    const init = new Map(int8.graph!.initializer!.map((t) => [t.name!, t]));
    const nonNegative = int8.graph!.node!.filter(
      (nd: NodeProto) => /^QLinear(Conv|Add|MatMul)$/.test(nd.opType!) && tensorToFloat32(init.get(nd.input![7]!)!)[0] === 0,
    ).length;
    assert.equal(types.filter((t) => t === 'Clip').length, nonNegative);
    assert.equal(report.activations, nonNegative);
    assert.equal(nonNegative, 35);
    assert.deepEqual(report.converted, { QuantizeLinear: 1, QLinearConv: 52, QLinearAdd: 11, QLinearGlobalAveragePool: 1, DequantizeLinear: 2, QLinearMatMul: 1 });
    // Names survive: the input, the output and the feature tensor the int8 model is cut at.
    assert.deepEqual(float.graph!.input!.map((i) => i.name), ['input']);
    assert.deepEqual(float.graph!.output!.map((o) => o.name), ['output']);
    assert.equal(findCut(float).tensor, '627');
    assert.equal(findCut(int8).tensor, '627');
  });

  it('every converted layer reproduces its int8 layer to half a quantization step when fed the int8 input', async () => {
    // Quantization parameters of every quantized activation, by the float name the conversion gives it.
    const init = new Map(int8.graph!.initializer!.map((t) => [t.name!, tensorToFloat32(t)[0]!]));
    const params = new Map<string, { q: string; scale: number; zp: number }>();
    const floatName = (q: string) => (q === 'input_quantized' ? 'input' : q === 'output_quantized' ? 'output' : q.replace(/_quantized$/, ''));
    for (const nd of int8.graph!.node!) {
      const q = nd.output![0]!;
      if (!q.endsWith('_quantized')) continue;
      const [s, z] =
        nd.opType === 'QuantizeLinear' ? [nd.input![1]!, nd.input![2]!]
        : nd.opType === 'QLinearGlobalAveragePool' ? [nd.input![3]!, nd.input![4]!]
        : nd.opType === 'Reshape' ? [nd.input![0]!.replace(/_quantized$/, '_scale'), nd.input![0]!.replace(/_quantized$/, '_zero_point')]
        : [nd.input![6]!, nd.input![7]!];
      params.set(floatName(q), { q, scale: init.get(s)!, zp: init.get(z)! });
    }
    assert.equal(params.size, 67);
    // Teacher forcing: every float node reads the int8 model's (dequantized) tensors instead of its own.
    const forced = (f: string) => (params.has(f) ? `forced/${f}` : f);
    const graph = float.graph!;
    const model = {
      ...float,
      graph: {
        ...graph,
        node: graph.node!.map((nd) => ({ ...nd, input: nd.input!.map(forced) })),
        input: [...params.keys()].map((f) => ({ name: `forced/${f}`, type: { tensorType: { elemType: FLOAT } } })),
        output: [...params.keys()].filter((f) => f !== 'input').map((name) => ({ name })),
      },
    } as ModelProto;
    const one = { input: { data: input.subarray(0, 2 * S), dims: [2, 3, 224, 224] } };
    const quantized = await runModel(withOutputs(int8, [...params.values()].map((p) => p.q)), one, [...params.values()].map((p) => p.q));
    const feeds: Feeds = {};
    for (const [f, p] of params) {
      const t = quantized[p.q]!;
      feeds[`forced/${f}`] = { data: Float32Array.from(t.data as Uint8Array, (v) => (v - p.zp) * p.scale), dims: t.dims.slice() };
    }
    const out = await runModel(model, feeds);
    const worst: string[] = [];
    for (const [f, p] of params) {
      if (f === 'input') continue;
      const a = out[f]!.data as Float32Array, b = feeds[`forced/${f}`]!.data;
      let maxDiff = 0;
      for (let i = 0; i < a.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a[i]! - b[i]!));
      if (maxDiff > 0.5 * p.scale * 1.001 + 1e-5) worst.push(`${f}: ${(maxDiff / p.scale).toFixed(3)} steps`);
    }
    assert.deepEqual(worst, [], 'layers off by more than half a step');
  });

  it("predicts the int8 model's top-1 ImageNet class on real images", (t) => {
    const agreement = top1Agreement(got.logits, ref.logits);
    let meanDelta = 0;
    for (let i = 0; i < ref.logits.length; i++) meanDelta += Math.abs(got.logits[i]! - ref.logits[i]!);
    meanDelta /= ref.logits.length;
    // The int8 logits are quantized in steps of 0.16 and many of these photos sit on near-ties between insect
    // classes: measured 53/60 (88%), 140/153 on the whole split, mean |Δlogit| 0.47 (the int8 model's own noise;
    // each layer is exact to half a step, see above). Where the int8 top-1 leads by more than two output steps
    // the two agree on 50/51; and the int8 top-1 is always among the float model's top 2 but once.
    assert.ok(agreement >= 0.85, `top-1 agreement ${agreement}`);
    assert.ok(meanDelta < 0.6, `mean |Δlogit| ${meanDelta}`);
    let clear = 0, clearSame = 0, inTop2 = 0;
    const step = 0.16014;
    for (let i = 0; i < n; i++) {
      const row = Array.from(ref.logits.subarray(i * 1000, i * 1000 + 1000));
      const r = argmax(ref.logits, i, 1000);
      const second = Math.max(...row.filter((_, j) => j !== r));
      const g = argmax(got.logits, i, 1000);
      if (row[r]! - second > 2 * step + 1e-3) {
        clear++;
        if (g === r) clearSame++;
      }
      const grow = Array.from(got.logits.subarray(i * 1000, i * 1000 + 1000));
      const gSecond = grow.indexOf(Math.max(...grow.filter((_, j) => j !== g)));
      if (r === g || r === gSecond) inTop2++;
    }
    t.diagnostic(`top-1 ${Math.round(agreement * n)}/${n}, mean |Δlogit| ${meanDelta.toFixed(3)}, clear-margin ${clearSame}/${clear}, int8 top-1 in float top-2 ${inTop2}/${n}`);
    assert.ok(clear >= 40, `${clear} images with a clear int8 top-1`);
    assert.ok(clearSame / clear >= 0.95, `clear-margin agreement ${clearSame}/${clear}`);
    assert.ok(inTop2 / n >= 0.95, `int8 top-1 within the float top-2 for ${inTop2}/${n}`);
  });

  it('gives features at 627 that match the int8 ones', () => {
    let sum = 0, worst = 1;
    for (let i = 0; i < n; i++) {
      let ab = 0, aa = 0, bb = 0;
      for (let j = 0; j < 1280; j++) {
        const a = got.features[i * 1280 + j]!, b = ref.features[i * 1280 + j]!;
        ab += a * b;
        aa += a * a;
        bb += b * b;
      }
      const cos = ab / Math.sqrt(aa * bb);
      sum += cos;
      worst = Math.min(worst, cos);
    }
    assert.ok(sum / n > 0.97, `mean cosine ${sum / n}`);
    assert.ok(worst > 0.9, `worst cosine ${worst}`);
  });

  it('needs its restored activations: without the Clips the predictions collapse', async () => {
    const graph = float.graph!;
    const node = graph.node!.map((nd) => (nd.opType === 'Clip' ? { ...nd, opType: 'Identity', input: [nd.input![0]!] } : nd));
    const read = new Set(node.flatMap((nd) => nd.input!));
    const noClip = { ...float, graph: { ...graph, node, initializer: graph.initializer!.filter((t) => read.has(t.name!)) } } as ModelProto;
    const bare = await predict(noClip);
    const agreement = top1Agreement(bare.logits, ref.logits);
    assert.ok(agreement <= 0.2, `agreement without activations ${agreement}`);
    assert.ok(top1Agreement(got.logits, ref.logits) - agreement >= 0.6);
  });
});

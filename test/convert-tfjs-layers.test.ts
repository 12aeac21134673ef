/**
 * TensorFlow.js layers models → ONNX (src/convert/tfjs-layers.ts), checked numerically against
 * @tensorflow/tfjs itself (pure CPU backend): the real Teachable Machine MobileNetV2 export on hymenoptera
 * images (probabilities and pooled features), and small models built here with tfjs covering every
 * supported layer, written with uint8/uint16/float16-quantized weights that both tfjs and the converter
 * read from the same files. Also the errors for an unsupported layer, a missing weight and an unknown
 * extra output.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { convertLayersModel, type ConvertedModel } from '../src/convert/tfjs-layers.js';
import { permute } from '../src/convert/tf-layout.js';
import { assertGraftError, maxAbsDiff, runModel, withOutputs } from './support/onnx.js';
import { readTfjsModel, type TfjsModelJson, type TfjsWeightEntry } from '../src/convert/tfjs-weights.js';
import { valueInfoShape } from '../src/onnx/proto.js';
import { findCut } from '../src/onnx/surgery.js';
import { resolveConfig } from '../src/preprocess/config.js';
import { decodeImage, normalizeInto } from '../src/preprocess/image.js';
import { Random } from '../src/util/random.js';
import { requireShared, SHARED } from './support/paths.js';

tf.enableProdMode(); // silences the "use tfjs-node" banner
tf.setBackend('cpu');

const TM = `${SHARED}/models/tm-mobilenetv2-0.35`;
const VAL = `${SHARED}/data/hymenoptera/val`;
requireShared(TM, VAL);
const TOL = 1e-4;


/** Loads a model folder into tfjs the way browser/file handlers do: shards concatenated per group. */
async function tfjsFromDir(dir: string): Promise<tf.LayersModel> {
  const json = JSON.parse(await readFile(path.join(dir, 'model.json'), 'utf8')) as TfjsModelJson;
  const parts: Buffer[] = [];
  for (const g of json.weightsManifest) for (const p of g.paths) parts.push(await readFile(path.join(dir, p)));
  const all = Buffer.concat(parts);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength) as ArrayBuffer;
  const handler: tf.io.IOHandler = {
    load: async () => ({ modelTopology: json.modelTopology as object, weightSpecs: json.weightsManifest.flatMap((g) => g.weights) as tf.io.WeightsManifestEntry[], weightData }),
  };
  return tf.loadLayersModel(handler);
}

describe('permute (weight layouts)', () => {
  it('moves axes like numpy.transpose', () => {
    // [2,3,4] with value = 100a + 10b + c, transposed to [4,2,3] (perm [2,0,1]).
    const data = Float32Array.from({ length: 24 }, (_, i) => 100 * Math.floor(i / 12) + 10 * (Math.floor(i / 4) % 3) + (i % 4));
    const out = permute(data, [2, 3, 4], [2, 0, 1]);
    for (let c = 0; c < 4; c++) for (let a = 0; a < 2; a++) for (let b = 0; b < 3; b++) assert.equal(out[c * 6 + a * 3 + b], 100 * a + 10 * b + c);
  });
});

describe('convertLayersModel on the Teachable Machine MobileNetV2 export', () => {
  const POOLED = 'global_average_pooling2d_GlobalAveragePooling2D6';
  const N = 4;
  let converted: ConvertedModel;
  let reference: tf.LayersModel;
  let batch: Float32Array;

  before(async () => {
    converted = convertLayersModel(await readTfjsModel(TM), { outputs: [POOLED] });
    reference = await tfjsFromDir(TM);
    // Two ants and two bees, Teachable Machine's [-1, 1] scaling, NHWC.
    const config = resolveConfig({ inputName: converted.inputName, layout: 'NHWC', inputSize: [224, 224], scale: 1 / 127.5, mean: [1, 1, 1], std: [1, 1, 1] });
    const files = ['ants', 'bees'].flatMap((c) => readdirSync(path.join(VAL, c)).sort().slice(0, N / 2).map((f) => path.join(VAL, c, f)));
    batch = new Float32Array(N * 224 * 224 * 3);
    for (const [i, f] of files.entries()) normalizeInto(await decodeImage(f, config), config, batch, i * 224 * 224 * 3);
  });

  it('keeps the NHWC input and names the outputs after the output layers', () => {
    const g = converted.model.graph!;
    assert.equal(converted.inputName, 'input_1');
    assert.deepEqual(converted.inputShape, [-1, 224, 224, 3]);
    assert.deepEqual(g.input!.map((i) => i.name), ['input_1']);
    assert.deepEqual(g.input![0]!.type!.tensorType!.shape!.dim!.map((d) => d.dimParam || Number(d.dimValue)), ['N', 224, 224, 3]);
    assert.deepEqual(converted.outputs, ['sequential_23', POOLED]);
    assert.deepEqual(g.output!.map((o) => o.name), converted.outputs);
    assert.equal(Number(converted.model.opsetImport[0]!.version), 17);
    // One transpose (the input's): every feature map stays NCHW.
    assert.equal(g.node!.filter((n) => n.opType === 'Transpose').length, 1);
  });

  it('pools the [N,1280,7,7] feature map with GlobalAveragePool, where the automatic cut finds it', async () => {
    const pools = converted.model.graph!.node!.filter((n) => n.opType === 'GlobalAveragePool');
    assert.equal(pools.length, 1);
    const map = pools[0]!.input![0]!;
    assert.equal(findCut(converted.model).tensor, map);
    assert.equal(converted.layerOutputs.get('out_relu'), map);
    const info = converted.model.graph!.valueInfo!.find((v) => v.name === map);
    assert.deepEqual(info && valueInfoShape(info), [-1, 1280, 7, 7]);
    const out = await runModel(withOutputs(converted.model, [map]), { input_1: { data: batch, dims: [N, 224, 224, 3] } }, [map]);
    assert.deepEqual(out[map]!.dims, [N, 1280, 7, 7]);
  });

  it('matches tfjs on real images: probabilities and 1280-d pooled features within 1e-4', async () => {
    const out = await runModel(converted.model, { input_1: { data: batch, dims: [N, 224, 224, 3] } });
    const x = tf.tensor4d(batch, [N, 224, 224, 3]);
    const probs = reference.predict(x) as tf.Tensor;
    const features = (reference.layers[0] as tf.LayersModel).predict(x) as tf.Tensor;
    const [p, f] = [await probs.data(), await features.data()];
    tf.dispose([x, probs, features]);
    assert.deepEqual(out.sequential_23!.dims, [N, 3]);
    assert.deepEqual(out[POOLED]!.dims, [N, 1280]);
    const dp = maxAbsDiff(out.sequential_23!.data as Float32Array, p);
    const df = maxAbsDiff(out[POOLED]!.data as Float32Array, f);
    console.log(`# Teachable Machine MobileNetV2: max |Δ| probabilities ${dp.toExponential(2)}, pooled features ${df.toExponential(2)}`);
    assert.ok(dp <= TOL, `probabilities differ by ${dp}`);
    assert.ok(df <= TOL, `pooled features differ by ${df}`);
    // Real features: not all zero, and the classifier is not constant.
    assert.ok(Math.max(...f) > 0.5);
    assert.ok(Math.max(...p) - Math.min(...p) > 0.1);
  });
});

// ---- small models built with tfjs, stored with quantized weights ----

type Artifacts = { modelTopology: object; weightSpecs: tf.io.WeightsManifestEntry[]; weightData: ArrayBuffer };

async function artifactsOf(model: tf.LayersModel): Promise<Artifacts> {
  let saved: tf.io.ModelArtifacts | undefined;
  await model.save(tf.io.withSaveHandler(async (a) => ((saved = a), { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } })));
  const data = saved!.weightData;
  return {
    modelTopology: saved!.modelTopology as object,
    weightSpecs: saved!.weightSpecs!,
    weightData: data instanceof ArrayBuffer ? data : (tf.io.concatenateArrayBuffers(data as ArrayBuffer[]) as ArrayBuffer),
  };
}

/** Random weights (the initializers leave batch-norm statistics trivial); variances stay positive. */
function randomizeWeights(model: tf.LayersModel, seed: number): void {
  const r = new Random(seed);
  model.setWeights(
    model.weights.map((w) => {
      const n = w.shape.reduce((a, b) => a! * b!, 1)!;
      const name = w.originalName ?? w.name;
      const values = Float32Array.from({ length: n }, () =>
        /moving_variance/.test(name) ? 0.5 + r.next() : /gamma/.test(name) ? 0.7 + 0.6 * r.next() : (r.next() - 0.5) * (/kernel|alpha/.test(name) ? 1.2 : 0.4));
      return tf.tensor(values, w.shape as number[]);
    }),
  );
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
/** float32 → IEEE half bits, rounding to nearest even. */
function toHalf(v: number): number {
  f32[0] = v;
  const x = u32[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 112; // rebias 127 → 15
  if (e >= 31) return sign | 0x7c00;
  let h: number, rem: number, halfway: number;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    h = mant >>> shift;
    rem = mant & ((1 << shift) - 1);
    halfway = 1 << (shift - 1);
  } else {
    h = (e << 10) | (mant >>> 13);
    rem = mant & 0x1fff;
    halfway = 0x1000;
  }
  if (rem > halfway || (rem === halfway && h & 1)) h++; // a carry into the exponent is the correct result
  return sign | h;
}

type Storage = 'float32' | 'uint8' | 'uint16' | 'float16';

/**
 * Writes model.json and two shards the way tensorflowjs_converter's --quantize_* options do: per weight,
 * scale = (max − min) / (2^bits − 1), q = round((v − min) / scale); float16 stores half floats.
 * `drop` leaves one weight out of the manifest and the shards.
 */
async function writeModelDir(dir: string, a: Artifacts, storage: Storage, drop?: string): Promise<void> {
  const chunks: Uint8Array[] = [];
  const weights: TfjsWeightEntry[] = [];
  let offset = 0;
  for (const spec of a.weightSpecs) {
    const n = spec.shape.reduce((x, y) => x * y, 1);
    const values = new Float32Array(a.weightData.slice(offset, offset + 4 * n));
    offset += 4 * n;
    if (spec.name === drop) continue;
    const entry: TfjsWeightEntry = { name: spec.name, shape: spec.shape, dtype: 'float32' };
    if (storage === 'float32') chunks.push(new Uint8Array(values.buffer));
    else if (storage === 'float16') {
      chunks.push(new Uint8Array(Uint16Array.from(values, toHalf).buffer));
      entry.quantization = { dtype: 'float16', original_dtype: 'float32' };
    } else {
      let min = Infinity, max = -Infinity;
      for (const v of values) (min = Math.min(min, v)), (max = Math.max(max, v));
      const levels = storage === 'uint8' ? 255 : 65535;
      const scale = max > min ? (max - min) / levels : 1;
      const q = Array.from(values, (v) => Math.round((v - min) / scale));
      chunks.push(new Uint8Array((storage === 'uint8' ? Uint8Array.from(q) : Uint16Array.from(q)).buffer));
      entry.quantization = { dtype: storage, scale, min, original_dtype: 'float32' };
    }
    weights.push(entry);
  }
  const all = Buffer.concat(chunks);
  const half = Math.floor(all.length / 2);
  await writeFile(path.join(dir, 'group1-shard1of2.bin'), all.subarray(0, half));
  await writeFile(path.join(dir, 'group1-shard2of2.bin'), all.subarray(half));
  const json: TfjsModelJson = {
    format: 'layers-model',
    generatedBy: `TensorFlow.js tfjs-layers v${tf.version.tfjs}`,
    modelTopology: a.modelTopology,
    weightsManifest: [{ paths: ['group1-shard1of2.bin', 'group1-shard2of2.bin'], weights }],
  };
  await writeFile(path.join(dir, 'model.json'), JSON.stringify(json));
}

const L = tf.layers;

/**
 * Functional: Conv2D 'same' stride 2 on an even size (TF pads the odd pixel at the end), BatchNormalization,
 * ReLU(max 6), DepthwiseConv2D ×2, Add, dilated Conv2D, SeparableConv2D, ZeroPadding2D, Concatenate,
 * 'same' pooling on an odd size, a shared layer called twice, Multiply, Flatten of a 4-D tensor, Dense and a
 * nested Sequential; three outputs, one of them 4-D.
 */
function convModel(): tf.LayersModel {
  const inp = L.input({ shape: [14, 14, 3], name: 'image' });
  let a = L.conv2d({ filters: 8, kernelSize: 3, strides: 2, padding: 'same', name: 'stem' }).apply(inp) as tf.SymbolicTensor;
  a = L.batchNormalization({ name: 'stem_bn' }).apply(a) as tf.SymbolicTensor;
  a = L.reLU({ maxValue: 6 }).apply(a) as tf.SymbolicTensor;
  let b = L.depthwiseConv2d({ kernelSize: 3, depthMultiplier: 2, padding: 'same' }).apply(a) as tf.SymbolicTensor;
  b = L.batchNormalization().apply(b) as tf.SymbolicTensor;
  b = L.reLU({ maxValue: 6 }).apply(b) as tf.SymbolicTensor;
  b = L.conv2d({ filters: 8, kernelSize: 1, useBias: false }).apply(b) as tf.SymbolicTensor;
  a = L.add().apply([a, b]) as tf.SymbolicTensor; // 7x7x8
  const c = L.conv2d({ filters: 4, kernelSize: 3, dilationRate: 2, padding: 'same', activation: 'swish' }).apply(a) as tf.SymbolicTensor;
  let d = L.separableConv2d({ filters: 4, kernelSize: 3, activation: 'elu' }).apply(a) as tf.SymbolicTensor; // 5x5
  d = L.zeroPadding2d({ padding: [[1, 1], [2, 0]] }).apply(d) as tf.SymbolicTensor; // 7x7
  const e = L.concatenate({ axis: -1 }).apply([c, d]) as tf.SymbolicTensor; // 7x7x8
  const p = L.averagePooling2d({ poolSize: 2, strides: 2, padding: 'same' }).apply(e) as tf.SymbolicTensor; // 4x4
  const q = L.maxPooling2d({ poolSize: 3, strides: 2, padding: 'same' }).apply(e) as tf.SymbolicTensor; // 4x4
  const shared = L.conv2d({ filters: 6, kernelSize: 1, activation: 'relu6', name: 'shared' });
  const r = L.multiply({ name: 'product' }).apply([shared.apply(p), shared.apply(q)] as tf.SymbolicTensor[]) as tf.SymbolicTensor;
  const pooled = L.globalAveragePooling2d({ name: 'pooled' }).apply(r) as tf.SymbolicTensor;
  let f = L.flatten().apply(r) as tf.SymbolicTensor; // order of NHWC matters here
  f = L.dense({ units: 10, activation: 'tanh' }).apply(f) as tf.SymbolicTensor;
  const head = tf.sequential({
    name: 'head',
    layers: [L.dense({ units: 6, inputShape: [10], activation: 'relu' }), L.dropout({ rate: 0.5 }), L.dense({ units: 3, activation: 'softmax' })],
  });
  const probs = head.apply(f) as tf.SymbolicTensor;
  return tf.model({ inputs: inp, outputs: [probs, pooled, r] });
}

/**
 * Sequential: activations of Conv2D (selu, hard_sigmoid, softplus, gelu), LeakyReLU, PReLU, ELU,
 * ThresholdedReLU, UpSampling2D, Cropping2D, Dense on a 4-D tensor (mish), the Softmax layer on channels,
 * Permute, Reshape to rank 3, LayerNormalization, BatchNormalization on rank 3, Dense on rank 3,
 * GlobalAveragePooling1D, BatchNormalization on [N, C], Rescaling and an Activation layer.
 */
function activationsModel(): tf.LayersModel {
  return tf.sequential({
    layers: [
      L.conv2d({ filters: 4, kernelSize: 3, padding: 'same', activation: 'selu', inputShape: [8, 8, 3] }),
      L.conv2d({ filters: 4, kernelSize: 3, padding: 'same', activation: 'hardSigmoid' }),
      L.leakyReLU({ alpha: 0.2 }),
      L.conv2d({ filters: 6, kernelSize: 1, activation: 'softplus' }),
      L.prelu({ sharedAxes: [1, 2] }),
      L.elu(),
      L.thresholdedReLU({ theta: 0.1 }),
      L.upSampling2d({ size: [2, 2] }), // 16x16
      L.cropping2D({ cropping: [[1, 2], [3, 0]] }), // 13x13
      L.conv2d({ filters: 5, kernelSize: 3, strides: 2, activation: 'gelu' }), // 6x6
      L.dense({ units: 5, activation: 'mish' }),
      L.softmax({ axis: -1 }), // tfjs's default axis is 1, Keras's -1
      L.permute({ dims: [2, 1, 3] }),
      L.reshape({ targetShape: [-1, 5] }), // [36, 5]
      L.layerNormalization(),
      L.batchNormalization(), // on the last axis of a rank-3 tensor: not ONNX's channel axis
      L.dense({ units: 4, activation: 'softsign' }),
      L.globalAveragePooling1d(),
      L.batchNormalization(),
      L.rescaling({ scale: 2, offset: -0.5 }),
      L.activation({ activation: 'sigmoid' }),
    ],
  });
}

/**
 * Functional on a flat input: every activation side by side, Reshape of a vector to 4-D and back through
 * conv and global max pooling, Average/Maximum/Minimum, a nested functional Model called twice (its node
 * indices count its own input call) and a 4-D Concatenate on the height axis.
 */
function mixedModel(): tf.LayersModel {
  const inp = L.input({ shape: [12], name: 'vector' });
  const x = L.dense({ units: 8 }).apply(inp) as tf.SymbolicTensor;
  const acts = ['linear', 'relu', 'relu6', 'sigmoid', 'hardSigmoid', 'tanh', 'softmax', 'swish', 'elu', 'selu', 'softplus', 'softsign', 'gelu', 'mish'] as const; // tfjs cannot reload its own 'gelu_new'
  const all = L.concatenate().apply(acts.map((a) => L.activation({ activation: a }).apply(x) as tf.SymbolicTensor)) as tf.SymbolicTensor;
  const innerIn = L.input({ shape: [8] });
  const inner = tf.model({ inputs: innerIn, outputs: L.dense({ units: 4, activation: 'tanh' }).apply(innerIn) as tf.SymbolicTensor, name: 'inner' });
  const u = inner.apply(x) as tf.SymbolicTensor;
  const v = inner.apply(L.dense({ units: 8 }).apply(inp) as tf.SymbolicTensor) as tf.SymbolicTensor;
  const merged = L.concatenate().apply([
    L.average().apply([u, v]) as tf.SymbolicTensor,
    L.maximum().apply([u, v]) as tf.SymbolicTensor,
    L.minimum().apply([u, v]) as tf.SymbolicTensor,
  ]) as tf.SymbolicTensor;
  let img = L.reshape({ targetShape: [2, 3, 2] }).apply(inp) as tf.SymbolicTensor; // [N,2,3,2] NHWC
  img = L.concatenate({ axis: 1 }).apply([img, L.conv2d({ filters: 2, kernelSize: 1 }).apply(img) as tf.SymbolicTensor]) as tf.SymbolicTensor; // [N,4,3,2]
  const flat = L.reshape({ targetShape: [24] }).apply(img) as tf.SymbolicTensor;
  const gmp = L.globalMaxPooling2d({}).apply(img) as tf.SymbolicTensor;
  return tf.model({ inputs: inp, outputs: [all, merged, flat, gmp] });
}

/** Unknown height and width: 'same' padding with stride 2 must become auto_pad SAME_UPPER. */
function dynamicModel(): tf.LayersModel {
  return tf.sequential({
    layers: [
      L.conv2d({ filters: 4, kernelSize: 3, strides: 2, padding: 'same', activation: 'relu', inputShape: [null, null, 3] }),
      L.depthwiseConv2d({ kernelSize: 3, padding: 'same' }),
      L.maxPooling2d({ poolSize: 2, padding: 'same' }),
      L.globalAveragePooling2d({}),
      L.dense({ units: 3 }),
    ],
  });
}

describe('convertLayersModel on tfjs-built models with quantized weights', () => {
  let tmp: string;
  // `input` is the declared shape (null: unknown), `feed` the size fed.
  const models: Array<{ name: string; build: () => tf.LayersModel; input: (number | null)[]; feed: number[]; artifacts?: Artifacts }> = [
    { name: 'conv', build: convModel, input: [14, 14, 3], feed: [14, 14, 3] },
    { name: 'activations', build: activationsModel, input: [8, 8, 3], feed: [8, 8, 3] },
    { name: 'mixed', build: mixedModel, input: [12], feed: [12] },
    { name: 'dynamic', build: dynamicModel, input: [null, null, 3], feed: [13, 11, 3] },
  ];

  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'graft-tfjs-layers-'));
    for (const [i, m] of models.entries()) {
      const model = m.build();
      randomizeWeights(model, 10 + i);
      m.artifacts = await artifactsOf(model);
      model.dispose();
    }
  });
  after(() => rm(tmp, { recursive: true, force: true }));

  for (const storage of ['float32', 'uint8', 'uint16', 'float16'] as const) {
    for (const m of models) {
      it(`${m.name} model, ${storage} weights: the outputs and every layer's output match tfjs within 1e-4`, async () => {
        const dir = await mkdtemp(path.join(tmp, `${m.name}-${storage}-`));
        await writeModelDir(dir, m.artifacts!, storage);
        const reference = await tfjsFromDir(dir);
        // Every layer of the top model becomes an output too; nested models count their own input call as node 0.
        const layers = reference.layers.filter((l) => l.getClassName() !== 'InputLayer');
        const converted = convertLayersModel(await readTfjsModel(dir), { outputs: layers.map((l) => l.name) });
        const modelOutputs = reference.outputs.map((o) => o.sourceLayer.name);
        assert.deepEqual(converted.outputs.slice(0, modelOutputs.length), modelOutputs);
        assert.deepEqual(converted.inputShape, [-1, ...m.input.map((d) => d ?? -1)]);
        const probe = tf.model({ inputs: reference.inputs, outputs: layers.map((l) => l.getOutputAt(l instanceof tf.LayersModel ? 1 : 0) as tf.SymbolicTensor) });
        const names = layers.map((l) => l.name);
        assert.ok(modelOutputs.every((o) => names.includes(o)));
        try {
          const n = 3;
          const r = new Random(7);
          const x = Float32Array.from({ length: n * m.feed.reduce((a, b) => a * b, 1) }, () => 2 * r.next() - 1);
          const out = await runModel(converted.model, { [converted.inputName]: { data: x, dims: [n, ...m.feed] } });
          const xt = tf.tensor(x, [n, ...m.feed]);
          const ys = [probe.predict(xt)].flat() as tf.Tensor[];
          let worst = 0;
          for (const [i, name] of names.entries()) {
            assert.deepEqual(out[name]!.dims, ys[i]!.shape, `shape of ${name}`);
            const want = await ys[i]!.data();
            const diff = maxAbsDiff(out[name]!.data as Float32Array, want);
            assert.ok(diff <= TOL, `${name} differs by ${diff}`);
            worst = Math.max(worst, diff);
            if (modelOutputs.includes(name)) {
              // The outputs depend on the input: the three samples give different results.
              const size = want.length / n;
              assert.ok(maxAbsDiff(want.subarray(0, size), want.subarray(size, 2 * size)) > 1e-3, `${name} hardly depends on the input: a weak test`);
            }
          }
          tf.dispose([xt, ...ys]);
          console.log(`# ${m.name} (${storage}): max |Δ| ${worst.toExponential(2)} over ${names.length} layers`);
        } finally {
          reference.dispose();
        }
      });
    }
  }

  it('exposes extra layer outputs (4-D ones in NHWC) and maps every layer to its tensor', async () => {
    const dir = await mkdtemp(path.join(tmp, 'extra-'));
    await writeModelDir(dir, models[0]!.artifacts!, 'float32');
    const converted = convertLayersModel(await readTfjsModel(dir), { outputs: ['stem_bn', 'head'] });
    assert.deepEqual(converted.outputs, ['head', 'pooled', 'product', 'stem_bn']);
    // The feature map feeding the pooling is the NCHW output of `product`.
    assert.equal(findCut(converted.model).tensor, converted.layerOutputs.get('product'));
    assert.equal(converted.layerOutputs.get('image'), 'image_nchw');
    const reference = await tfjsFromDir(dir);
    const x = Float32Array.from({ length: 2 * 14 * 14 * 3 }, (_, i) => Math.sin(i));
    const out = await runModel(converted.model, { image: { data: x, dims: [2, 14, 14, 3] } });
    const probe = tf.model({ inputs: reference.inputs, outputs: reference.getLayer('stem_bn').output as tf.SymbolicTensor });
    const want = probe.predict(tf.tensor(x, [2, 14, 14, 3])) as tf.Tensor;
    assert.deepEqual(out.stem_bn!.dims, [2, 7, 7, 8]);
    assert.ok(maxAbsDiff(out.stem_bn!.data as Float32Array, await want.data()) <= TOL);
    reference.dispose();
  });
});

type JsonObject = Record<string, unknown>;

/** Rewrites a tfjs topology in Keras 3's syntax: inbound nodes as {args, kwargs} of keras tensors, single input refs flat. */
function toKeras3(model: JsonObject): JsonObject {
  const config = model.config as JsonObject;
  const tensor = (r: unknown[]) => ({ class_name: '__keras_tensor__', config: { shape: null, dtype: 'float32', keras_history: r.slice(0, 3) } });
  const layers = (config.layers as JsonObject[]).map((l) => ({
    ...(l.class_name === 'Model' ? toKeras3(l) : l),
    inbound_nodes: (l.inbound_nodes as unknown[][][]).map((node) => ({ args: [node.length === 1 ? tensor(node[0]!) : node.map(tensor)], kwargs: {} })),
  }));
  const refs = (key: string) => ((config[key] as unknown[][]).length === 1 ? (config[key] as unknown[][])[0] : config[key]);
  return { ...model, class_name: 'Functional', config: { ...config, layers, input_layers: refs('input_layers'), output_layers: refs('output_layers') } };
}

describe('convertLayersModel on Keras syntax and options that tfjs does not write', () => {
  let tmp: string;
  before(async () => (tmp = await mkdtemp(path.join(os.tmpdir(), 'graft-tfjs-layers-keras-'))));
  after(() => rm(tmp, { recursive: true, force: true }));

  it('reads Keras 3 inbound nodes and a {model_config} wrapper like the tfjs syntax', async () => {
    const model = mixedModel();
    randomizeWeights(model, 3);
    const a = await artifactsOf(model);
    model.dispose();
    const [dirA, dirB] = [await mkdtemp(path.join(tmp, 'tfjs-')), await mkdtemp(path.join(tmp, 'keras3-'))];
    await writeModelDir(dirA, a, 'float32');
    await writeModelDir(dirB, { ...a, modelTopology: { model_config: toKeras3(a.modelTopology as JsonObject), keras_version: '3.6.0' } }, 'float32');
    const [ca, cb] = [convertLayersModel(await readTfjsModel(dirA)), convertLayersModel(await readTfjsModel(dirB))];
    assert.deepEqual(cb.outputs, ca.outputs);
    const x = { data: Float32Array.from({ length: 24 }, (_, i) => Math.cos(i)), dims: [2, 12] };
    const [oa, ob] = [await runModel(ca.model, { vector: x }), await runModel(cb.model, { vector: x })];
    for (const name of ca.outputs) assert.deepEqual(ob[name]!.data, oa[name]!.data, name);
  });

  it("follows Keras's ReLU negative_slope and threshold", async () => {
    const a = await artifactsOf(tf.sequential({ layers: [L.reLU({ inputShape: [8], name: 'act' })] }));
    const x = Float32Array.from([-3, -1, -0.2, 0, 0.3, 0.5, 1.5, 4]);
    for (const [slope, threshold, max] of [[0.1, 0, null], [0, 0.5, null], [0.1, 0.5, 2], [0.2, 0, 1]] as const) {
      const topology = structuredClone(a.modelTopology) as { config: { layers: Array<{ config: JsonObject }> } };
      Object.assign(topology.config.layers[0]!.config, { negative_slope: slope, threshold, max_value: max });
      const dir = await mkdtemp(path.join(tmp, 'relu-'));
      await writeModelDir(dir, { ...a, modelTopology: topology }, 'float32');
      const converted = convertLayersModel(await readTfjsModel(dir));
      const out = await runModel(converted.model, { [converted.inputName]: { data: x, dims: [1, 8] } });
      const want = Array.from(x, (v) => Math.min(v >= threshold ? v : slope * (v - threshold), max ?? Infinity));
      assert.ok(maxAbsDiff(out.act!.data as Float32Array, want) < 1e-6, `slope ${slope} threshold ${threshold} max ${max}: ${out.act!.data} vs ${want}`);
    }
  });

  it("pads unknown sizes with auto_pad SAME_UPPER and known ones with TF's explicit end-heavy pads", async () => {
    const dir = await mkdtemp(path.join(tmp, 'pads-'));
    await writeModelDir(dir, await artifactsOf(dynamicModel()), 'float32');
    const dynamic = convertLayersModel(await readTfjsModel(dir));
    const convs = dynamic.model.graph!.node!.filter((n) => n.opType === 'Conv');
    const attr = (n: (typeof convs)[number], name: string) => n.attribute!.find((x) => x.name === name);
    assert.equal(new TextDecoder().decode(attr(convs[0]!, 'auto_pad')!.s!), 'SAME_UPPER'); // stride 2: depends on the size
    assert.deepEqual(attr(convs[1]!, 'pads')!.ints!.map(Number), [1, 1, 1, 1]); // stride 1: fixed
    const dir2 = await mkdtemp(path.join(tmp, 'pads-static-'));
    await writeModelDir(dir2, await artifactsOf(convModel()), 'float32');
    const stem = convertLayersModel(await readTfjsModel(dir2)).model.graph!.node!.find((n) => n.name === 'stem/Conv')!;
    assert.deepEqual(attr(stem, 'pads')!.ints!.map(Number), [0, 0, 1, 1]); // 14 → 7 with a 3x3 stride 2: one pixel, at the end
  });
});

describe('convertLayersModel errors', () => {
  let tmp: string;
  before(async () => (tmp = await mkdtemp(path.join(os.tmpdir(), 'graft-tfjs-layers-err-'))));
  after(() => rm(tmp, { recursive: true, force: true }));

  it('names the layer and class of an unsupported layer', async () => {
    const model = tf.sequential({ layers: [L.conv1d({ filters: 2, kernelSize: 3, inputShape: [8, 3], name: 'wave_conv' })] });
    await writeModelDir(tmp, await artifactsOf(model), 'float32');
    const tfjs = await readTfjsModel(tmp);
    assertGraftError(() => convertLayersModel(tfjs), 'MODEL', /model\.json/, /wave_conv/, /Conv1D/, /not supported/);
  });

  it('names a missing weight', async () => {
    const dir = await mkdtemp(path.join(tmp, 'missing-'));
    const model = convModel();
    await writeModelDir(dir, await artifactsOf(model), 'float32', 'stem_bn/moving_variance');
    const tfjs = await readTfjsModel(dir);
    assertGraftError(() => convertLayersModel(tfjs), 'MODEL', /model\.json/, /stem_bn \(BatchNormalization\)/, /stem_bn\/moving_variance is missing/);
  });

  it('rejects an unknown extra output and a graph model', async () => {
    const dir = await mkdtemp(path.join(tmp, 'extra-'));
    await writeModelDir(dir, await artifactsOf(activationsModel()), 'float32');
    const tfjs = await readTfjsModel(dir);
    assertGraftError(() => convertLayersModel(tfjs, { outputs: ['no_such_layer'] }), 'MODEL', /no layer named no_such_layer/);
    assertGraftError(() => convertLayersModel({ ...tfjs, json: { ...tfjs.json, modelTopology: { node: [] } } }), 'MODEL', /not a Keras layer config/);
  });
});

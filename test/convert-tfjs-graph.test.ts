/**
 * TensorFlow.js graph models → ONNX (src/convert/tfjs-graph.ts) and the models bundled in nsfwjs
 * (src/convert/nsfwjs.ts), checked numerically against TensorFlow.js itself (a devDependency, used only here):
 * nsfwjs's MobileNetV2 1.4 on real images, and small graphs written here covering each converted op, with
 * float32 and uint8-quantized weights.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as ort from 'onnxruntime-node';
import { NSFWJS_VERSION, nsfwjsAvailable, readNsfwjsModel, type NsfwjsModelName } from '../src/convert/nsfwjs.js';
import { convertGraphModel, type ConvertedModel } from '../src/convert/tfjs-graph.js';
import { readTfjsModel, type TfjsModel, type TfjsModelJson, type TfjsWeightEntry } from '../src/convert/tfjs-weights.js';
import { encodeModel, tensorToFloat32, valueInfoShape, type ModelProto } from '../src/onnx/proto.js';
import { findCut } from '../src/onnx/surgery.js';
import { resolveConfig } from '../src/preprocess/config.js';
import { decodeImage, normalizeInto } from '../src/preprocess/image.js';
import { Random } from '../src/util/random.js';
import { assertGraftError, maxAbsDiff, runModel } from './support/onnx.js';
import { requireShared, SHARED } from './support/paths.js';

type Tfjs = typeof import('@tensorflow/tfjs');
const require = createRequire(import.meta.url);
const tf = require('@tensorflow/tfjs') as Tfjs;

const VAL = `${SHARED}/data/hymenoptera/val`;
const PREDICT = 'StatefulPartitionedCall/sequential/keras_layer/StatefulPartitionedCall/StatefulPartitionedCall/StatefulPartitionedCall/predict';
const FEATURES = `${PREDICT}/feature_vector/SpatialSqueeze`;
const FEATURE_MAP = `${PREDICT}/MobilenetV2/Conv_1/Relu6`;

// ---- helpers ----

interface Batch {
  data: Float32Array;
  dims: number[];
}

function runOnnx(model: ModelProto, input: string, x: Batch, outputs: string[]): Promise<Record<string, ort.Tensor>> {
  return runModel(model, { [input]: x }, outputs);
}

/** Runs a graph model in TensorFlow.js (CPU backend) and fetches the named nodes. */
async function runTfjs(json: TfjsModelJson, weightData: Uint8Array, x: Batch, outputs: string[]): Promise<Float32Array[]> {
  const model = await tf.loadGraphModel(
    tf.io.fromMemory({
      modelTopology: json.modelTopology as object,
      weightSpecs: json.weightsManifest.flatMap((g) => g.weights) as Parameters<Tfjs['io']['fromMemory']>[1],
      weightData: new Uint8Array(weightData).buffer, // a copy: a Buffer may be a view into a shared pool
    }),
  );
  const input = tf.tensor(x.data, x.dims);
  try {
    const result = model.execute(input, outputs);
    const list = Array.isArray(result) ? result : [result];
    const data = await Promise.all(list.map(async (t) => Float32Array.from(await t.data())));
    tf.dispose(list);
    return data;
  } finally {
    input.dispose();
    model.dispose();
  }
}

// ---- writing small graph models ----

interface TfAttr {
  s?: string;
  i?: string;
  f?: number;
  b?: boolean;
  type?: string;
  shape?: { dim: { size: string }[] };
  list?: { s?: string[]; i?: string[] };
}

const str = (s: string): TfAttr => ({ s: Buffer.from(s).toString('base64') });
const strs = (list: string[]): TfAttr => ({ list: { s: list.map((s) => Buffer.from(s).toString('base64')) } });
const ints = (list: number[]): TfAttr => ({ list: { i: list.map(String) } });
const FLOAT: TfAttr = { type: 'DT_FLOAT' };

/** A GraphDef in tfjs's JSON form plus its weights, written as model.json + one .bin shard. */
class GraphSpec {
  readonly nodes: { name: string; op: string; input?: string[]; attr?: Record<string, TfAttr> }[] = [];
  readonly weights: { name: string; shape: number[]; data: Float32Array | Int32Array }[] = [];
  private readonly random: Random;

  constructor(seed: number) {
    this.random = new Random(seed);
  }

  placeholder(name: string, shape: number[]): string {
    this.nodes.push({ name, op: 'Placeholder', attr: { shape: { shape: { dim: shape.map((d) => ({ size: String(d) })) } }, dtype: FLOAT } });
    return name;
  }

  /** A float constant, uniform in [lo, hi]. */
  floats(name: string, shape: number[], [lo, hi]: [number, number] = [-1, 1]): string {
    const n = shape.reduce((a, b) => a * b, 1);
    return this.constant(name, shape, Float32Array.from({ length: n }, () => lo + (hi - lo) * this.random.next()));
  }

  scalar(name: string, value: number): string {
    return this.constant(name, [], Float32Array.of(value));
  }

  int32(name: string, shape: number[], values: number[]): string {
    return this.constant(name, shape, Int32Array.from(values));
  }

  private constant(name: string, shape: number[], data: Float32Array | Int32Array): string {
    const dtype = data instanceof Int32Array ? 'DT_INT32' : 'DT_FLOAT';
    this.nodes.push({
      name,
      op: 'Const',
      attr: { value: { tensorShape: { dim: shape.map((d) => ({ size: String(d) })) } } as TfAttr, dtype: { type: dtype } },
    });
    this.weights.push({ name, shape, data });
    return name;
  }

  op(name: string, op: string, input: string[], attr: Record<string, TfAttr> = {}): string {
    this.nodes.push({ name, op, input, attr: { T: FLOAT, ...attr } });
    return name;
  }

  /** Writes model.json and weights.bin into `dir`; float weights as uint8 (q·scale + min) when `quantize`. */
  write(dir: string, quantize = false): { json: TfjsModelJson; bin: Uint8Array } {
    const entries: TfjsWeightEntry[] = [];
    const chunks: Uint8Array[] = [];
    for (const w of this.weights) {
      if (w.data instanceof Int32Array) {
        entries.push({ name: w.name, shape: w.shape, dtype: 'int32' });
        chunks.push(new Uint8Array(w.data.slice().buffer));
      } else if (quantize) {
        const min = Math.min(...w.data);
        const scale = (Math.max(...w.data) - min) / 255 || 1;
        entries.push({ name: w.name, shape: w.shape, dtype: 'float32', quantization: { dtype: 'uint8', min, scale } });
        chunks.push(Uint8Array.from(w.data, (v) => Math.round((v - min) / scale)));
      } else {
        entries.push({ name: w.name, shape: w.shape, dtype: 'float32' });
        chunks.push(new Uint8Array(w.data.slice().buffer));
      }
    }
    const bin = new Uint8Array(Buffer.concat(chunks));
    const json: TfjsModelJson = {
      format: 'graph-model',
      generatedBy: 'graft test',
      convertedBy: null,
      modelTopology: { node: this.nodes, versions: { producer: 1 } },
      weightsManifest: [{ paths: ['weights.bin'], weights: entries }],
    };
    writeFileSync(join(dir, 'model.json'), JSON.stringify(json));
    writeFileSync(join(dir, 'weights.bin'), bin);
    return { json, bin };
  }
}

const conv = (padding: string, strides = [1, 1, 1, 1], extra: Record<string, TfAttr> = {}): Record<string, TfAttr> => ({
  padding: str(padding), strides: ints(strides), dilations: ints([1, 1, 1, 1]), data_format: str('NHWC'), ...extra,
});
const fused = (ops: string[], numArgs: number): Record<string, TfAttr> => ({ fused_ops: strs(ops), num_args: { i: String(numArgs) }, epsilon: { f: 0.001 } });
const pool = (k: number[], s: number[], padding: string): Record<string, TfAttr> => ({
  ksize: ints([1, ...k, 1]), strides: ints([1, ...s, 1]), padding: str(padding), data_format: str('NHWC'),
});

/**
 * Every op the converter handles, in one graph: convolutions (SAME with the odd pixel at the end, EXPLICIT,
 * dilated depthwise, fused), Pad/MirrorPad, ConcatV2 on channels, pools, batch norm, constants broadcast
 * against NCHW-held tensors, Mean (spatial and not), Reshape, MatMul, Softmax and the unary ops.
 */
function opsGraph(seed: number): { spec: GraphSpec; outputs: string[] } {
  const g = new GraphSpec(seed);
  const x = g.placeholder('x', [-1, 8, 10, 3]);
  const pre = g.op('pre/mul', 'Mul', [x, g.floats('pre/scale', [3], [0.5, 1.5])]);
  const c1 = g.op('conv1', 'Conv2D', [pre, g.floats('conv1/w', [3, 3, 3, 4])], conv('SAME', [1, 2, 2, 1])); // [N,4,5,4]
  const b1 = g.op('conv1/bias', 'BiasAdd', [c1, g.floats('conv1/b', [4])], { data_format: str('NHWC') });
  const r1 = g.op('conv1/relu6', 'Relu6', [b1]);
  const dw = g.op('dw', 'DepthwiseConv2dNative', [r1, g.floats('dw/w', [3, 3, 4, 2])], conv('SAME', [1, 1, 1, 1], { dilations: ints([1, 2, 2, 1]) }));
  const fc = g.op('fconv', '_FusedConv2D', [r1, g.floats('fconv/w', [1, 1, 4, 8]), g.floats('fconv/b', [8])], { ...conv('VALID'), ...fused(['BiasAdd', 'Relu'], 1) });
  const fdw = g.op('fdw', 'FusedDepthwiseConv2dNative', [fc, g.floats('fdw/w', [3, 3, 8, 1]), g.floats('fdw/b', [8])], {
    ...conv('SAME', [1, 1, 1, 1]), ...fused(['BiasAdd', 'Relu6'], 1),
  });
  const xc = g.op('xconv', 'Conv2D', [r1, g.floats('xconv/w', [2, 3, 4, 8])], conv('EXPLICIT', [1, 1, 1, 1], { explicit_paddings: ints([0, 0, 1, 0, 0, 2, 0, 0]) }));
  const cat = g.op('cat', 'ConcatV2', [dw, fdw, xc, g.int32('cat/axis', [], [-1])], { N: { i: '3' } }); // [N,4,5,24]
  const pad = g.op('pad', 'Pad', [cat, g.int32('pad/paddings', [4, 2], [0, 0, 1, 2, 2, 1, 0, 0])]); // [N,7,8,24]
  const mp = g.op('maxpool', 'MaxPool', [pad], pool([3, 3], [2, 2], 'SAME')); // [N,4,4,24]
  const bn = g.op('bn', 'FusedBatchNormV3', [mp, g.floats('bn/scale', [24], [0.5, 1.5]), g.floats('bn/offset', [24]), g.floats('bn/mean', [24]), g.floats('bn/var', [24], [0.5, 2])], {
    epsilon: { f: 0.001 }, data_format: str('NHWC'), is_training: { b: false },
  });
  const add = g.op('add', 'AddV2', [bn, g.floats('add/y', [1, 1, 1, 24])]);
  const sub = g.op('sub', 'Sub', [add, g.scalar('sub/y', 0.25)]);
  const ap = g.op('avgpool', 'AvgPool', [sub], pool([3, 3], [1, 1], 'SAME'));
  const mean = g.op('mean', 'Mean', [ap, g.int32('mean/axes', [2], [1, 2])], { keep_dims: { b: false } }); // [N,24]
  const mm = g.op('dense', 'MatMul', [mean, g.floats('dense/w', [24, 6])], { transpose_a: { b: false }, transpose_b: { b: false } });
  const mmb = g.op('dense/bias', 'BiasAdd', [mm, g.floats('dense/b', [6])]);
  const softmax = g.op('softmax', 'Softmax', [mmb]);
  const flat = g.op('flatten', 'Reshape', [mp, g.int32('flatten/shape', [2], [-1, 4 * 4 * 24])]);
  const fmm = g.op('fdense', '_FusedMatMul', [flat, g.floats('fdense/w', [5, 384]), g.floats('fdense/b', [5])], {
    transpose_a: { b: false }, transpose_b: { b: true }, ...fused(['BiasAdd', 'Relu'], 1),
  });
  const gp = g.op('gpool', 'AvgPool', [sub], pool([4, 4], [1, 1], 'VALID')); // [N,1,1,24]: global
  const sq = g.op('squeeze', 'Squeeze', [gp], { squeeze_dims: ints([1, 2]) });
  const maxo = g.op('maximum', 'Maximum', [sq, g.floats('maximum/y', [24], [-0.2, 0.2])]);
  const keep = g.op('meankeep', 'Mean', [sub, g.int32('meankeep/axes', [2], [1, 2])], { keep_dims: { b: true } });
  const prod = g.op('prod', 'Mul', [sub, keep]);
  const minimum = g.op('minimum', 'Minimum', [prod, g.scalar('minimum/y', 0.3)]);
  const fmap = g.op('fmap', 'RealDiv', [minimum, g.floats('fmap/y', [24], [1, 2])]); // 4-D output
  const mirror = g.op('mirror', 'MirrorPad', [r1, g.int32('mirror/paddings', [4, 2], [0, 0, 1, 1, 1, 2, 0, 0])], { mode: str('REFLECT') });
  const hmean = g.op('hmean', 'Mean', [mirror, g.int32('hmean/axes', [1], [2])], { keep_dims: { b: false } }); // [N,6,4]
  const elu = g.op('elu', 'Elu', [maxo]);
  const leaky = g.op('leaky', 'LeakyRelu', [elu], { alpha: { f: 0.1 } });
  const sqd = g.op('sqdiff', 'SquaredDifference', [leaky, g.floats('sqdiff/y', [24])]);
  const sq2 = g.op('square', 'Square', [sqd]);
  const rs = g.op('rsqrt', 'Rsqrt', [g.op('plus1', 'AddV2', [sq2, g.scalar('plus1/y', 1)])]);
  const decay = g.op('exp', 'Exp', [g.op('neg', 'Neg', [g.op('abs', 'Abs', [rs])])]);
  const unary = g.op('sigmoid', 'Sigmoid', [g.op('tanh', 'Tanh', [decay])]);
  return { spec: g, outputs: [softmax, fmm, fmap, hmean, unary] };
}

/**
 * A conv with a fused batch norm (tfjs cannot run it, so the reference is the same graph unfused) followed by
 * a depthwise conv with a fused bias and PReLU.
 */
function fusedBatchNormGraphs(seed: number): { fusedSpec: GraphSpec; plainSpec: GraphSpec } {
  const build = (fuse: boolean): GraphSpec => {
    const g = new GraphSpec(seed);
    const x = g.placeholder('x', [-1, 6, 6, 3]);
    const w = g.floats('conv/w', [3, 3, 3, 5]);
    const bnArgs = [g.floats('bn/scale', [5], [0.5, 1.5]), g.floats('bn/offset', [5]), g.floats('bn/mean', [5]), g.floats('bn/var', [5], [0.5, 2])];
    let y: string;
    if (fuse) y = g.op('conv', '_FusedConv2D', [x, w, ...bnArgs], { ...conv('SAME', [1, 2, 2, 1]), ...fused(['FusedBatchNorm', 'Relu'], 4) });
    else {
      const c = g.op('conv', 'Conv2D', [x, w], conv('SAME', [1, 2, 2, 1]));
      y = g.op('conv/relu', 'Relu', [g.op('conv/bn', 'FusedBatchNormV3', [c, ...bnArgs], { epsilon: { f: 0.001 }, data_format: str('NHWC') })]);
    }
    g.op('out', 'FusedDepthwiseConv2dNative', [y, g.floats('dw/w', [3, 3, 5, 2]), g.floats('dw/b', [10]), g.floats('dw/alpha', [10], [0, 0.5])], {
      ...conv('SAME'), ...fused(['BiasAdd', 'Prelu'], 2),
    });
    return g;
  };
  return { fusedSpec: build(true), plainSpec: build(false) };
}

function randomBatch(dims: number[], seed: number): Batch {
  const r = new Random(seed);
  return { data: Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, () => r.next() * 2 - 1), dims };
}

// ---- tests ----

describe('nsfwjs bundled models', () => {
  it('reads each bundled model with its weights decoded', () => {
    assert.ok(nsfwjsAvailable(), 'nsfwjs (a devDependency) is installed');
    assert.match(NSFWJS_VERSION, /^\d+\.\d+\.\d+/);
    const mid = readNsfwjsModel('mobilenet_v2_mid');
    assert.equal(mid.json.format, 'graph-model');
    assert.equal(mid.weights.size, 108);
    assert.deepEqual(mid.weights.get(`${PREDICT}/hub_input/Mul/y`)?.data, Float32Array.of(2));
    const layers = readNsfwjsModel('mobilenet_v2');
    assert.ok(JSON.stringify(layers.json.modelTopology).includes('model_config'), 'mobilenet_v2 is a layers model');
    assert.match(mid.source, /nsfwjs.*mobilenet_v2_mid.model\.min\.js$/);
  });

  it('rejects an unknown model name', () => {
    assertGraftError(() => readNsfwjsModel('mobilenet_v3' as NsfwjsModelName), 'USAGE', /"mobilenet_v3"/, /"mobilenet_v2_mid"/, /"inception_v3"/);
  });
});

describe('mobilenet_v2_mid converted to ONNX', () => {
  requireShared(VAL);
  let converted: ConvertedModel;
  let batch: Batch;
  let json: TfjsModelJson;
  let weightData: Uint8Array;

  before(async () => {
    const model = readNsfwjsModel('mobilenet_v2_mid');
    json = model.json;
    // tfjs gets the shard bytes straight from nsfwjs's files, as nsfwjs itself hands them over.
    const dir = model.source.replace(/model\.min\.js$/, '');
    weightData = new Uint8Array(Buffer.concat(json.weightsManifest[0]!.paths.map((p) => Buffer.from(require(`${dir}${p}.min.js`) as string, 'base64'))));
    const started = Date.now();
    converted = convertGraphModel(model, { outputs: [FEATURES] });
    const bytes = encodeModel(converted.model).length;
    console.log(`# converted mobilenet_v2_mid in ${Date.now() - started} ms, ONNX ${(bytes / 1e6).toFixed(1)} MB`);

    // nsfwjs's preprocessing: RGB / 255 resized to 224×224 (the graph maps [0, 1] to [-1, 1] itself).
    const config = resolveConfig({
      inputName: converted.inputName, inputSize: [224, 224], layout: 'NHWC', resize: 'squash', cropPct: 1, interpolation: 'bilinear',
      scale: 1 / 255, mean: [0, 0, 0], std: [1, 1, 1],
    });
    const files = ['ants', 'bees'].flatMap((c) => readdirSync(join(VAL, c)).sort().slice(0, 2).map((f) => join(VAL, c, f)));
    const per = 224 * 224 * 3;
    batch = { data: new Float32Array(files.length * per), dims: [files.length, 224, 224, 3] };
    for (const [i, file] of files.entries()) normalizeInto(await decodeImage(file, config), config, batch.data, i * per);
  });

  it('keeps the NHWC input and ends in the model outputs', () => {
    assert.equal(converted.inputName, 'input');
    assert.deepEqual(converted.inputShape, [-1, 224, 224, 3]);
    assert.deepEqual(converted.outputs, ['Identity', FEATURES]);
    const input = converted.model.graph!.input![0]!;
    assert.equal(input.name, 'input');
    assert.deepEqual(input.type!.tensorType!.shape!.dim!.map((d) => d.dimParam || Number(d.dimValue)), ['N', 224, 224, 3]);
    const ops = new Set(converted.model.graph!.node!.map((n) => n.opType));
    for (const op of ['Conv', 'Clip', 'GlobalAveragePool', 'Gemm', 'Softmax']) assert.ok(ops.has(op), `uses ${op}`);
    assert.equal(converted.model.graph!.node!.filter((n) => n.opType === 'Transpose').length, 1, 'one Transpose, after the input');
  });

  it('holds a GlobalAveragePool over the [N,1792,7,7] feature map, found by findCut', async () => {
    const graph = converted.model.graph!;
    const gap = graph.node!.filter((n) => n.opType === 'GlobalAveragePool');
    assert.equal(gap.length, 1);
    const mapName = gap[0]!.input![0]!;
    assert.equal(mapName, FEATURE_MAP);
    assert.equal(converted.layerOutputs.get(FEATURE_MAP), FEATURE_MAP);
    assert.equal(findCut(converted.model).tensor, FEATURE_MAP);
    const info = graph.valueInfo!.find((v) => v.name === FEATURE_MAP)!;
    assert.deepEqual(info.type!.tensorType!.shape!.dim!.map((d) => d.dimParam || Number(d.dimValue)), ['N', 1792, 7, 7]);
    const withMap = { ...converted.model, graph: { ...graph, output: [...graph.output!, { name: FEATURE_MAP }] } } as ModelProto;
    const out = await runOnnx(withMap, 'input', { data: batch.data.subarray(0, 224 * 224 * 3), dims: [1, 224, 224, 3] }, [FEATURE_MAP]);
    assert.deepEqual(out[FEATURE_MAP]!.dims, [1, 1792, 7, 7]);
    assert.deepEqual(valueInfoShape(graph.output!.find((o) => o.name === FEATURES)!), [-1, 1792]);
  });

  it('matches TensorFlow.js on real images: 1792-d features and softmax within 1e-4', async () => {
    const onnx = await runOnnx(converted.model, 'input', batch, converted.outputs);
    const [features, probs] = await runTfjs(json, weightData, batch, [FEATURES, 'Identity']);
    assert.deepEqual(onnx[FEATURES]!.dims, [4, 1792]);
    assert.deepEqual(onnx.Identity!.dims, [4, 5]);
    const dFeatures = maxAbsDiff(onnx[FEATURES]!.data as Float32Array, features!);
    const dProbs = maxAbsDiff(onnx.Identity!.data as Float32Array, probs!);
    console.log(`# max |onnx - tfjs|: features ${dFeatures.toExponential(2)}, softmax ${dProbs.toExponential(2)}`);
    assert.ok(dFeatures <= 1e-4, `features differ by ${dFeatures}`);
    assert.ok(dProbs <= 1e-4, `softmax differs by ${dProbs}`);
    assert.ok(Math.max(...features!) > 1, 'the features are not trivially small');
  });
});

describe('small graph models against TensorFlow.js', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'graft-tfjs-graph-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  /** Writes the spec, converts it from the files and compares the named outputs with tfjs on the same files. */
  async function compare(spec: GraphSpec, outputs: string[], quantize: boolean, x: Batch, reference: GraphSpec = spec): Promise<number> {
    const sub = mkdtempSync(join(dir, 'm'));
    spec.write(sub, quantize);
    const converted = convertGraphModel(await readTfjsModel(sub), { outputs });
    const refDir = reference === spec ? sub : mkdtempSync(join(dir, 'ref'));
    if (reference !== spec) reference.write(refDir, quantize);
    const refJson = JSON.parse(readFileSync(join(refDir, 'model.json'), 'utf8')) as TfjsModelJson;
    const expected = await runTfjs(refJson, readFileSync(join(refDir, 'weights.bin')), x, outputs);
    const onnx = await runOnnx(converted.model, 'x', x, converted.outputs.slice(-outputs.length));
    let worst = 0;
    outputs.forEach((name, i) => {
      const got = onnx[converted.outputs[converted.outputs.length - outputs.length + i]!]!;
      const d = maxAbsDiff(got.data as Float32Array, expected[i]!);
      assert.ok(d <= 1e-4, `${name}: max abs difference ${d}`);
      worst = Math.max(worst, d);
    });
    return worst;
  }

  it('converts every supported op in NCHW and matches tfjs (float32 weights)', async () => {
    const { spec, outputs } = opsGraph(1);
    const d = await compare(spec, outputs, false, randomBatch([2, 8, 10, 3], 11));
    console.log(`# ops graph, float32: max |onnx - tfjs| ${d.toExponential(2)}`);
  });

  it('matches tfjs with uint8-quantized weights', async () => {
    const { spec, outputs } = opsGraph(2);
    const d = await compare(spec, outputs, true, randomBatch([3, 8, 10, 3], 12));
    console.log(`# ops graph, uint8 weights: max |onnx - tfjs| ${d.toExponential(2)}`);
  });

  it('folds a fused batch norm into the convolution; fused PReLU', async () => {
    const { fusedSpec, plainSpec } = fusedBatchNormGraphs(3);
    await compare(fusedSpec, ['out'], false, randomBatch([2, 6, 6, 3], 13), plainSpec);
  });

  it('keeps 4-D activations NCHW inside and exposes outputs in TF layout', async () => {
    const { spec } = opsGraph(4);
    const sub = mkdtempSync(join(dir, 'layout'));
    spec.write(sub);
    const converted = convertGraphModel(await readTfjsModel(sub), { outputs: ['conv1/relu6'] });
    // The graph's own outputs are its sinks, in node order; a 4-D one comes back transposed to NHWC.
    assert.deepEqual(converted.outputs, ['softmax', 'fdense', 'fmap:nhwc', 'hmean', 'sigmoid', 'conv1/relu6:nhwc']);
    const shapes = new Map(converted.model.graph!.valueInfo!.map((v) => [v.name!, valueInfoShape(v)]));
    assert.deepEqual(shapes.get(converted.layerOutputs.get('cat')!), [-1, 24, 4, 5]);
    assert.deepEqual(shapes.get(converted.layerOutputs.get('pad')!), [-1, 24, 7, 8]);
    const fmap = converted.model.graph!.output!.find((o) => o.name === converted.outputs[2]);
    assert.deepEqual(valueInfoShape(fmap!), [-1, 4, 4, 24]);
    const relu = converted.model.graph!.output!.find((o) => o.name === converted.outputs.at(-1));
    assert.deepEqual(valueInfoShape(relu!), [-1, 4, 5, 4]);
    const graph = converted.model.graph!;
    const pools = graph.node!.filter((n) => n.opType === 'GlobalAveragePool').map((n) => n.name);
    assert.deepEqual(pools, ['mean:pool', 'meankeep', 'gpool'], 'AvgPool VALID over the whole map and Mean over H, W pool globally');
    // The Pad before MaxPool pads with −0, so that onnxruntime does not fold it into the pool's pads.
    const pad = graph.node!.find((n) => n.opType === 'Pad' && n.output![0] === converted.layerOutputs.get('pad'))!;
    const fill = graph.initializer!.find((t) => t.name === pad.input![2]);
    assert.ok(fill && Object.is(tensorToFloat32(fill)[0], -0), 'the Pad feeding MaxPool fills with -0');
  });
});

describe('conversion errors', () => {
  const tiny = (nodes: object[], weights: TfjsModel['weights'] = new Map()): TfjsModel => ({
    json: { format: 'graph-model', modelTopology: { node: nodes }, weightsManifest: [] },
    weights,
    source: 'tiny/model.json',
  });
  const input = { name: 'x', op: 'Placeholder', attr: { shape: { shape: { dim: [{ size: '-1' }, { size: '4' }] } }, dtype: FLOAT } };

  it('names the node and op it cannot convert', () => {
    const model = tiny([input, { name: 'weird/cumsum', op: 'Cumsum', input: ['x'] }]);
    assertGraftError(() => convertGraphModel(model), 'MODEL', /tiny\/model\.json/, /node "weird\/cumsum"/, /op Cumsum/);
  });

  it('names a Const without weights and an unknown output', () => {
    const model = tiny([input, { name: 'y', op: 'Const', attr: { dtype: FLOAT } }, { name: 'sum', op: 'AddV2', input: ['x', 'y'] }]);
    assertGraftError(() => convertGraphModel(model), 'MODEL', /node "y" \(Const\)/, /weightsManifest/);
    assertGraftError(() => convertGraphModel(tiny([input, { name: 'r', op: 'Relu', input: ['x'] }]), { outputs: ['nope'] }), 'MODEL', /output "nope"/);
  });

  it('rejects a layers model', () => {
    const model: TfjsModel = { json: { modelTopology: { model_config: {} }, weightsManifest: [] }, weights: new Map(), source: 'layers/model.json' };
    assertGraftError(() => convertGraphModel(model), 'MODEL', /layers\/model\.json/, /not a TensorFlow\.js graph model/);
  });
});

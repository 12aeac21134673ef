/**
 * test/support/bert.ts builds BERT graphs shaped like optimum's exports of BertModel: they run in
 * onnxruntime-node, compute BertModel (checked against a float64 JavaScript forward pass written from the
 * Hugging Face modelling code), ignore padding, and give the same output in every structural variant
 * (decomposed or fused LayerNorm, computed or constant head reshapes, sliced or Range position ids; ONNX
 * Runtime fuses the decomposed LayerNorm itself, so it is compared unoptimised too).
 *
 * Tolerances: float32 graphs against float64 arithmetic, outputs of LayerNorm (values of order 1):
 * ≤ 1e-5 absolute (observed ≈ 1e-6). Padding appended to a batch: masked keys get the bias
 * −3.4e38, so exp(·) of their scores is exactly 0 and the real tokens' outputs change only by the
 * summation order of the longer products (observed ≈ 1e-7).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as ort from 'onnxruntime-node';
import { encodeModel, type ModelProto, type ValueInfoProto } from '../src/onnx/proto.js';
import { Random } from '../src/util/random.js';
import { bertConfig, bertInitializerNames, bertParamShapes, bertWeights, buildBert, type BertOptions } from './support/bert.js';

const SMALL: BertOptions = { vocabSize: 50, hidden: 32, layers: 2, heads: 4, intermediate: 64, maxPosition: 16, seed: 7, initStd: 0.2 };

interface Batch {
  ids: number[][];
  mask: number[][];
  types: number[][];
}

async function run(model: ModelProto, batch: Batch, options: ort.InferenceSession.SessionOptions = {}): Promise<{ data: Float32Array; dims: number[] }> {
  const session = await ort.InferenceSession.create(encodeModel(model), options);
  try {
    const [n, l] = [batch.ids.length, batch.ids[0]!.length];
    const t = (rows: number[][]) => new ort.Tensor('int64', BigInt64Array.from(rows.flat(), (v) => BigInt(v)), [n, l]);
    const out = await session.run({ input_ids: t(batch.ids), attention_mask: t(batch.mask), token_type_ids: t(batch.types) });
    const y = out.last_hidden_state!;
    return { data: y.data as Float32Array, dims: [...y.dims] };
  } finally {
    await session.release();
  }
}

function randomBatch(rng: Random, n: number, l: number, vocab: number, lengths: number[] = Array<number>(n).fill(l)): Batch {
  return {
    ids: Array.from({ length: n }, () => Array.from({ length: l }, () => rng.int(vocab))),
    mask: lengths.map((len) => Array.from({ length: l }, (_, j) => (j < len ? 1 : 0))),
    types: Array.from({ length: n }, () => Array.from({ length: l }, (_, j) => (j >= l / 2 ? 1 : 0))),
  };
}

/** BertModel's last_hidden_state in float64, from the Hugging Face modelling code (eval mode). */
function referenceForward(options: BertOptions, batch: Batch): Float64Array {
  const cfg = bertConfig(options);
  const w = bertWeights(options);
  const { hidden: H, heads, headDim: D } = cfg;
  const [N, L] = [batch.ids.length, batch.ids[0]!.length];
  const row = (name: string, i: number) => w[name]!.subarray(i * H, (i + 1) * H);
  const ln = (x: Float64Array, name: string): Float64Array => {
    const [g, bias] = [w[`${name}.weight`]!, w[`${name}.bias`]!];
    const mean = x.reduce((a, b) => a + b, 0) / H;
    const v = x.reduce((a, b) => a + (b - mean) ** 2, 0) / H;
    return x.map((xi, j) => ((xi - mean) / Math.sqrt(v + cfg.eps)) * g[j]! + bias[j]!);
  };
  /** torch Linear: y = x Wᵀ + b, W [out, in]. */
  const lin = (x: Float64Array, name: string): Float64Array => {
    const [W, bias] = [w[`${name}.weight`]!, w[`${name}.bias`]!];
    const out = bias.length;
    return Float64Array.from({ length: out }, (_, o) => {
      let s = bias[o]!;
      for (let i = 0; i < x.length; i++) s += W[o * x.length + i]! * x[i]!;
      return s;
    });
  };
  const erf = (x: number) => {
    // erf by its Taylor series (|x| < 3 here) or 1 − erfc continued fraction beyond: accurate to ~1e-14.
    const a = Math.abs(x);
    if (a < 3) {
      let [term, sum] = [x, x];
      for (let n = 1; n < 60; n++) {
        term *= (-x * x) / n;
        sum += term / (2 * n + 1);
      }
      return (2 / Math.sqrt(Math.PI)) * sum;
    }
    let t = a;
    for (let k = 20; k > 0; k--) t = a + k / 2 / t;
    return Math.sign(x) * (1 - Math.exp(-a * a) / Math.sqrt(Math.PI) / t);
  };
  const out = new Float64Array(N * L * H);
  for (let n = 0; n < N; n++) {
    let h = Array.from({ length: L }, (_, t) => {
      const e = new Float64Array(H);
      const [word, pos, type] = [row('embeddings.word_embeddings.weight', batch.ids[n]![t]!), row('embeddings.position_embeddings.weight', t), row('embeddings.token_type_embeddings.weight', batch.types[n]![t]!)];
      for (let j = 0; j < H; j++) e[j] = word[j]! + type[j]! + pos[j]!;
      return ln(e, 'embeddings.LayerNorm');
    });
    const bias = batch.mask[n]!.map((m) => (1 - m) * cfg.maskValue);
    for (let layer = 0; layer < cfg.layers; layer++) {
      const p = `encoder.layer.${layer}`;
      const [q, k, v] = ['query', 'key', 'value'].map((m) => h.map((x) => lin(x, `${p}.attention.self.${m}`)));
      const ctx = h.map(() => new Float64Array(H));
      for (let hd = 0; hd < heads; hd++) {
        for (let i = 0; i < L; i++) {
          const s = Array.from({ length: L }, (_, j) => {
            let dot = 0;
            for (let d = 0; d < D; d++) dot += q[i]![hd * D + d]! * k[j]![hd * D + d]!;
            return dot / Math.sqrt(D) + bias[j]!;
          });
          const max = Math.max(...s);
          const e = s.map((x) => Math.exp(x - max));
          const z = e.reduce((a, b) => a + b, 0);
          for (let j = 0; j < L; j++) for (let d = 0; d < D; d++) ctx[i]![hd * D + d]! += (e[j]! / z) * v[j]![hd * D + d]!;
        }
      }
      const attended = h.map((x, i) => ln(lin(ctx[i]!, `${p}.attention.output.dense`).map((y, j) => y + x[j]!), `${p}.attention.output.LayerNorm`));
      h = attended.map((a) => {
        const f = lin(a, `${p}.intermediate.dense`).map((x) => 0.5 * x * (1 + erf(x / Math.SQRT2)));
        return ln(lin(f, `${p}.output.dense`).map((y, j) => y + a[j]!), `${p}.output.LayerNorm`);
      });
    }
    h.forEach((x, t) => out.set(x, (n * L + t) * H));
  }
  return out;
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

test('buildBert: the inputs, output and node names of an optimum export; every parameter an initializer', () => {
  const model = buildBert(SMALL);
  const g = model.graph!;
  assert.equal(model.opsetImport[0]!.version, 14);
  const dims = (v: ValueInfoProto) => v.type!.tensorType!.shape!.dim!.map((d) => d.dimParam || Number(d.dimValue));
  assert.deepEqual(g.input!.map((v) => [v.name, v.type!.tensorType!.elemType, dims(v)]), [
    ['input_ids', 7, ['batch_size', 'sequence_length']],
    ['attention_mask', 7, ['batch_size', 'sequence_length']],
    ['token_type_ids', 7, ['batch_size', 'sequence_length']],
  ]);
  assert.deepEqual(g.output!.map((v) => [v.name, v.type!.tensorType!.elemType, dims(v)]), [['last_hidden_state', 1, ['batch_size', 'sequence_length', 32]]]);
  const names = new Set(g.node!.map((n) => n.name));
  for (const n of ['/encoder/layer.0/attention/self/query/MatMul', '/encoder/layer.1/attention/self/Softmax', '/encoder/layer.1/intermediate/intermediate_act_fn/Erf', '/embeddings/LayerNorm/Sqrt', '/encoder/layer.0/output/LayerNorm/Pow']) {
    assert.ok(names.has(n), n);
  }
  assert.equal(names.size, g.node!.length, 'node names are unique');
  const inits = new Map(g.initializer!.map((t) => [t.name!, t.dims!.map(Number)]));
  const hf = bertInitializerNames(SMALL);
  for (const [name, shape] of Object.entries(bertParamShapes(SMALL))) {
    const graphName = hf[name]!;
    assert.ok(inits.has(graphName), name);
    assert.deepEqual(inits.get(graphName), name.endsWith('dense.weight') || /\.(query|key|value)\.weight$/.test(name) ? [shape[1], shape[0]] : shape, name);
  }
  assert.match(hf['encoder.layer.0.attention.self.query.weight']!, /^onnx::MatMul_\d+$/);
  assert.equal(hf['encoder.layer.0.attention.self.query.bias'], 'encoder.layer.0.attention.self.query.bias');
  const ops = new Set(g.node!.map((n) => n.opType));
  for (const op of ['Shape', 'Gather', 'Unsqueeze', 'Concat', 'Reshape', 'Slice', 'Cast', 'Erf', 'ReduceMean', 'Pow']) assert.ok(ops.has(op), op);
  assert.ok(!ops.has('LayerNormalization'));
  const maskMul = g.node!.find((n) => n.name === '/Mul')!;
  const value = g.initializer!.find((t) => t.name === maskMul.input![1])!;
  assert.equal(new Float32Array(value.rawData!.slice().buffer)[0], -3.4028234663852886e38);
});

test('buildBert computes BertModel: last_hidden_state matches a float64 forward pass of the HF modelling code', async () => {
  const batch = randomBatch(new Random(1), 3, 6, 50, [6, 4, 2]);
  const got = await run(buildBert(SMALL), batch);
  assert.deepEqual(got.dims, [3, 6, 32]);
  const want = referenceForward(SMALL, batch);
  // Padded positions too: they are computed (and ignored by the real tokens).
  if (process.env.GRAFT_BERT_VERBOSE) console.log(`against the float64 forward: ${maxDiff(got.data, want).toExponential(2)}`);
  assert.ok(maxDiff(got.data, want) < 1e-5, `max diff ${maxDiff(got.data, want)}`);
  // Explicit weights give the same model as the seed they came from.
  const explicit = await run(buildBert({ ...SMALL, seed: 99, weights: bertWeights(SMALL) }), batch);
  assert.deepEqual([...explicit.data], [...got.data]);
});

test('buildBert: padding appended to the batch leaves the real tokens of every row unchanged', async () => {
  const model = buildBert(SMALL);
  const rng = new Random(2);
  const lengths = [5, 3, 4];
  const padded = randomBatch(rng, 3, 8, 50, lengths);
  const all = await run(model, padded);
  let worst = 0;
  for (let n = 0; n < 3; n++) {
    const len = lengths[n]!;
    const alone: Batch = { ids: [padded.ids[n]!.slice(0, len)], mask: [Array<number>(len).fill(1)], types: [padded.types[n]!.slice(0, len)] };
    const single = await run(model, alone);
    const row = all.data.subarray(n * 8 * 32, (n * 8 + len) * 32);
    worst = Math.max(worst, maxDiff(row, single.data));
  }
  if (process.env.GRAFT_BERT_VERBOSE) console.log(`padding: ${worst.toExponential(2)}`);
  assert.ok(worst < 1e-5, `real tokens moved by ${worst}`);
});

test('buildBert: fused or decomposed LayerNorm, computed or constant reshapes, sliced or Range position ids agree', async () => {
  const batch = randomBatch(new Random(3), 2, 7, 50, [7, 5]);
  const base = await run(buildBert(SMALL), batch);
  const variants: BertOptions[] = [
    { opset: 17 },
    { opset: 17, layerNorm: 'fused' },
    { reshape: 'constant' },
    { positionIds: 'range' },
    { opset: 17, layerNorm: 'fused', reshape: 'constant', positionIds: 'range' },
  ];
  for (const v of variants) {
    const model = buildBert({ ...SMALL, ...v });
    const ops = model.graph!.node!.map((n) => n.opType);
    assert.equal(ops.includes('LayerNormalization'), v.layerNorm === 'fused', JSON.stringify(v));
    assert.equal(ops.includes('Range'), v.positionIds === 'range', JSON.stringify(v));
    const got = await run(model, batch);
    const d = maxDiff(got.data, base.data);
    if (process.env.GRAFT_BERT_VERBOSE) console.log(`${JSON.stringify(v)}: ${d.toExponential(2)}`);
    assert.ok(d < 1e-5, `${JSON.stringify(v)}: differs by ${d}`);
  }
  // ONNX Runtime fuses the decomposed LayerNorm into its LayerNormalization kernel: unfused, it agrees too.
  const unfused = await run(buildBert(SMALL), batch, { graphOptimizationLevel: 'disabled' });
  if (process.env.GRAFT_BERT_VERBOSE) console.log(`unoptimised decomposed LayerNorm: ${maxDiff(unfused.data, base.data).toExponential(2)}`);
  assert.ok(maxDiff(unfused.data, base.data) < 1e-5);
  // The older mask bias −10000 gives the same real-token outputs here (masked scores underflow either way).
  const older = await run(buildBert({ ...SMALL, maskValue: -10000 }), batch);
  assert.ok(maxDiff(older.data, base.data) < 1e-5);
});

test('bertParamShapes: Hugging Face names and torch layouts', () => {
  const shapes = bertParamShapes({ hidden: 32, layers: 3, heads: 4, intermediate: 64, vocabSize: 10, maxPosition: 20, typeVocab: 2 });
  assert.equal(Object.keys(shapes).length, 5 + 3 * 16);
  assert.deepEqual(shapes['embeddings.word_embeddings.weight'], [10, 32]);
  assert.deepEqual(shapes['embeddings.position_embeddings.weight'], [20, 32]);
  assert.deepEqual(shapes['encoder.layer.2.intermediate.dense.weight'], [64, 32]); // Linear: [out, in]
  assert.deepEqual(shapes['encoder.layer.2.output.dense.weight'], [32, 64]);
  assert.deepEqual(shapes['encoder.layer.0.attention.output.LayerNorm.bias'], [32]);
});

/**
 * Gradient rules for text encoders (BERT-family exports, a converted Universal Sentence Encoder lite) and what
 * they need beyond test/autodiff.test.ts and test/autodiff-cnn.test.ts: Where, elementwise Max/Min, Sin, Cos,
 * Tile, Split (input and attribute forms), ReduceL2, LpNormalization; the forms a BERT graph gives the
 * existing rules (4-D batched MatMul, Softmax over the last of 4 axes, Reshape with 0 entries or with a shape
 * computed from Shape/Gather/Unsqueeze/Concat, Div by a constant, Pow with exponent 2, ReduceMean keepdims,
 * Gather of an embedding matrix, MatMul with an operand whose rank the shape propagation cannot tell); and the
 * last two layers of a small BERT (test/support/bert.ts) end to end.
 *
 * Method: the harness of test/support/gradcheck.ts (central differences of the forward graph in
 * onnxruntime-node, every element of every wrt input, static-shape and dynamic-shape gradient graphs).
 * Precision: float64 (ε = 1e-6, max |g − fd| / max(|fd|, 1e-3) < 1e-5) for every case but the BERT one,
 * whose exact GELU needs Erf, which ORT 1.30 runs in float32 only. That case runs the real float32 graph
 * for the analytic gradients and takes the finite differences in float64 on a reference graph of the same
 * function (the same builder with elemType DOUBLE and erf written with elementary ops: its Taylor series
 * below |u| = 3, 1 − erfc by a continued fraction above, accurate to 4e-14, derivative to 3e-8), checked
 * against the float32 graph to 1e-5 first. The float32 gradients carry float32 rounding relative to each
 * tensor's scale: errors are taken against max(|fd|, 1e-2·max|fd| of the tensor, 1e-6), tolerance 2e-3.
 *
 * Ties of Max/Min split the gradient evenly among the inputs equal to the output (torch.maximum and
 * torch.minimum give half to each of two; checked on exact values below, since a difference across a tie is
 * no derivative); ReduceMax/ReduceMin split ties the same way (torch.amax; torch.max(dim) picks one).
 *
 * GRAFT_GRAD_VERBOSE=1 prints each case's worst error.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as ort from 'onnxruntime-node';
import { appendGradients, GRAD_RULES } from '../src/onnx/autodiff.js';
import { GraphBuilder } from '../src/onnx/builder.js';
import { DataType, encodeModel } from '../src/onnx/proto.js';
import { checkGradients, opTypesOf, type GradCase, type GradInput } from './support/gradcheck.js';
import { Random } from '../src/util/random.js';
import { bertConfig, bertGraph, bertParamShapes, bertWeights, graphShape, initializerParams, isLinearWeight, maskedMeanPool, transpose2d, type BertOptions, type ParamTensor } from './support/bert.js';

const ints = (b: GraphBuilder, v: number[]) => b.int64('ints', v);
const I = (name: string, dims: number[], extra: Partial<GradInput> = {}): GradInput => ({ name, dims, wrt: true, ...extra });
const C = (name: string, dims: number[], extra: Partial<GradInput> = {}): GradInput => ({ name, dims, ...extra });
const f64 = (b: GraphBuilder, v: number[], dims: number[]) => b.constant('k', Float64Array.from(v), dims);
/** A boolean condition from a frozen float input: c > 0. */
const positive = (b: GraphBuilder, t: string) => b.op('Greater', [t, f64(b, [0], [])]);

/** The rules this file adds and checks (the coverage test below asserts each is exercised). */
const RULES_CHECKED_HERE = ['Where', 'Max', 'Min', 'Sin', 'Cos', 'Tile', 'Split', 'ReduceL2', 'LpNormalization'];

const CASES: GradCase[] = [
  // Where: gradient to X and Y, none to the condition
  {
    name: 'Where same shapes',
    inputs: [C('c', [3, 4]), I('x', [3, 4]), I('y', [3, 4])],
    build: (b, v) => b.op('Where', [positive(b, v.c!), v.x!, v.y!]),
  },
  {
    name: 'Where broadcasting: cond [3,1], X [4], Y [3,4]',
    inputs: [C('c', [3, 1]), I('x', [4]), I('y', [3, 4])],
    build: (b, v) => b.op('Where', [positive(b, v.c!), v.x!, v.y!]),
  },
  {
    name: 'Where as an attention mask: scores [2,3,4,4], mask [2,1,1,4] (int64 → bool), −1e9 elsewhere, Softmax',
    inputs: [I('s', [2, 3, 4, 4]), C('m', [2, 4], { kind: 'int', values: [1, 1, 1, 0, 1, 1, 0, 0] })],
    build: (b, v) => {
      const keep = b.op('Cast', [b.op('Unsqueeze', [v.m!, ints(b, [1, 2])])], { to: DataType.BOOL });
      return b.op('Softmax', [b.op('Where', [keep, v.s!, f64(b, [-1e9], [])])], { axis: -1 });
    },
  },
  // Max / Min: variadic, broadcasting (inputs apart from ties: random normals)
  { name: 'Max of two', inputs: [I('a', [3, 4]), I('b', [3, 4])], build: (b, v) => b.op('Max', [v.a!, v.b!]) },
  {
    name: 'Max of three with broadcast [3,4], [4], [3,1]',
    inputs: [I('a', [3, 4]), I('b', [4]), I('c', [3, 1])],
    build: (b, v) => b.op('Max', [v.a!, v.b!, v.c!]),
  },
  { name: 'Max(x, 0) against a constant', inputs: [I('x', [4, 5], { avoid: [0] })], build: (b, v) => b.op('Max', [v.x!, f64(b, [0], [])]) },
  { name: 'Max of one', inputs: [I('x', [2, 3])], build: (b, v) => b.op('Max', [v.x!]) },
  { name: 'Min of two with broadcast [2,3,4], [3,1]', inputs: [I('a', [2, 3, 4]), I('b', [3, 1])], build: (b, v) => b.op('Min', [v.a!, v.b!]) },
  { name: 'Max(x, 1e-9) as a division guard', inputs: [I('x', [3, 2], { kind: 'positive' })], build: (b, v) => b.op('Div', [f64(b, [1], []), b.op('Max', [v.x!, f64(b, [1e-9], [])])]) },
  // Sin, Cos
  { name: 'Sin', inputs: [I('x', [3, 4], { scale: 2 })], build: (b, v) => b.op('Sin', [v.x!]) },
  { name: 'Cos', inputs: [I('x', [3, 4], { scale: 2 })], build: (b, v) => b.op('Cos', [v.x!]) },
  // Tile
  { name: 'Tile constant repeats [2,1,3]', inputs: [I('x', [2, 3, 2])], build: (b, v) => b.op('Tile', [v.x!, ints(b, [2, 1, 3])]) },
  {
    name: 'Tile with computed repeats, symbolic batch',
    inputs: [I('x', [2, 3], { decl: ['N', 3] })],
    build: (b, v) => b.op('Tile', [v.x!, b.op('Concat', [ints(b, [3]), ints(b, [2])], { axis: 0 })]),
  },
  // Split
  {
    name: 'Split opset 13+ (split input [2,3,1] on axis 1), one output unused',
    inputs: [I('x', [2, 6, 2])],
    build: (b, v) => {
      const [s0, , s2] = b.node('Split', [v.x!, ints(b, [2, 3, 1])], { axis: 1 }, { outputs: 3 });
      return b.op('Concat', [s2!, b.op('Mul', [s0!, s0!])], { axis: 1 });
    },
  },
  {
    name: 'Split opset 18 (num_outputs), equal parts',
    opset: 18,
    inputs: [I('x', [3, 4])],
    build: (b, v) => {
      const [s0, s1] = b.node('Split', [v.x!], { axis: 1, num_outputs: 2 }, { outputs: 2 });
      return b.op('Mul', [s0!, s1!]);
    },
  },
  // ReduceL2 / LpNormalization (L2-normalised pooling)
  { name: 'ReduceL2 axes [1] keepdims 0', inputs: [I('x', [2, 3, 4])], build: (b, v) => b.op('ReduceL2', [v.x!], { axes: [1], keepdims: 0 }) },
  { name: 'ReduceL2 all, keepdims 1', inputs: [I('x', [2, 3])], build: (b, v) => b.op('ReduceL2', [v.x!]) },
  { name: 'LpNormalization p 2 axis -1', inputs: [I('x', [3, 5])], build: (b, v) => b.op('LpNormalization', [v.x!], { axis: -1, p: 2 }) },
  { name: 'LpNormalization p 1 axis 1 of 3-D', inputs: [I('x', [2, 3, 4], { avoid: [0] })], build: (b, v) => b.op('LpNormalization', [v.x!], { axis: 1, p: 1 }) },
  // Existing rules in the forms BERT exports give them
  { name: 'MatMul 4-D batched Q·Kᵀ [2,3,4,5] @ [2,3,5,4]', inputs: [I('q', [2, 3, 4, 5]), I('k', [2, 3, 5, 4])], build: (b, v) => b.op('MatMul', [v.q!, v.k!]) },
  { name: 'MatMul 4-D @ 2-D weight', inputs: [I('x', [2, 3, 4, 5]), I('w', [5, 2])], build: (b, v) => b.op('MatMul', [v.x!, v.w!]) },
  { name: 'Softmax axis -1 of 4-D', inputs: [I('x', [2, 2, 3, 4])], build: (b, v) => b.op('Softmax', [v.x!], { axis: -1 }) },
  { name: 'Reshape [0, 0, 2, 3] (0 entries copy)', inputs: [I('x', [2, 4, 6], { decl: ['N', 'L', 6] })], build: (b, v) => b.op('Reshape', [v.x!, ints(b, [0, 0, 2, 3])]) },
  {
    name: 'Reshape to a shape computed from Shape/Gather/Unsqueeze/Concat, then Transpose and 4-D MatMul',
    inputs: [I('x', [2, 4, 6], { decl: ['N', 'L', 6] }), I('w', [6, 6])],
    build: (b, v) => {
      const h = b.op('MatMul', [v.x!, v.w!]);
      const shape = b.op('Shape', [h]);
      const dim = (i: number) => b.op('Unsqueeze', [b.op('Gather', [shape, b.constant('i', BigInt64Array.of(BigInt(i)), [])], { axis: 0 }), ints(b, [0])]);
      const heads = b.op('Transpose', [b.op('Reshape', [h, b.op('Concat', [dim(0), dim(1), ints(b, [2, 3])], { axis: 0 })])], { perm: [0, 2, 1, 3] });
      const kt = b.op('Transpose', [heads], { perm: [0, 1, 3, 2] });
      const merged = b.op('Transpose', [b.op('MatMul', [b.op('Softmax', [b.op('MatMul', [heads, kt])], { axis: -1 }), heads])], { perm: [0, 2, 1, 3] });
      return b.op('Reshape', [merged, b.op('Concat', [dim(0), dim(1), ints(b, [-1])], { axis: 0 })]);
    },
  },
  { name: 'Div by a constant √d', inputs: [I('x', [2, 3, 4])], build: (b, v) => b.op('Div', [v.x!, f64(b, [Math.sqrt(8)], [])]) },
  { name: 'Pow exponent 2 (negative bases)', inputs: [I('x', [3, 4])], build: (b, v) => b.op('Pow', [v.x!, f64(b, [2], [])]) },
  { name: 'Pow exponent 1', inputs: [I('x', [3, 4])], build: (b, v) => b.op('Pow', [v.x!, f64(b, [1], [])]) },
  { name: 'Pow exponent 0.5', inputs: [I('x', [3, 4], { kind: 'positive' })], build: (b, v) => b.op('Pow', [v.x!, f64(b, [0.5], [])]) },
  { name: 'ReduceMean axes [-1] keepdims 1 on 3-D', inputs: [I('x', [2, 3, 4])], build: (b, v) => b.op('ReduceMean', [v.x!], { axes: [-1], keepdims: 1 }) },
  {
    name: 'Gather rows of an embedding matrix [V, H] by ids [N, L] (repeated ids summed)',
    inputs: [I('e', [6, 4]), C('ids', [2, 5], { kind: 'int', values: [0, 3, 3, 5, 1, 2, 3, 0, 0, 4] })],
    build: (b, v) => b.op('Gather', [v.e!, v.ids!]),
  },
  {
    name: 'MatMul: A of unknown rank (through Tile) @ a 2-D weight',
    inputs: [I('x', [2, 3, 4]), I('w', [4, 5])],
    build: (b, v) => b.op('MatMul', [b.op('Tile', [v.x!, ints(b, [1, 1, 1])]), v.w!]),
  },
  {
    name: 'MatMul: a 2-D weight @ B of unknown rank (through Tile)',
    inputs: [I('w', [3, 4]), I('x', [2, 4, 5])],
    build: (b, v) => b.op('MatMul', [v.w!, b.op('Tile', [v.x!, ints(b, [1, 1, 1])])]),
  },
  {
    // A Universal-Sentence-Encoder-lite-style block: masked attention by Where, rsqrt layer norm, ReLU
    // feed-forward, masked max and sum pooling, tanh.
    name: 'USE-lite-style block: Where mask, Expand, Slice, Squeeze, Concat, Reciprocal/Sqrt, ReduceMax/Sum, Relu, Tanh',
    inputs: [I('x', [2, 5, 4]), C('m', [2, 5], { kind: 'int', values: [1, 1, 1, 1, 0, 1, 1, 0, 0, 0] }), I('wq', [4, 4]), I('wf', [4, 6]), I('bf', [6]), I('wo', [6, 4])],
    build: (b, v) => {
      const k = (x: number) => f64(b, [x], []);
      const keep = b.op('Cast', [b.op('Unsqueeze', [v.m!, ints(b, [1])])], { to: DataType.BOOL }); // [2,1,5]
      const q = b.op('MatMul', [v.x!, v.wq!]);
      const scores = b.op('Mul', [b.op('MatMul', [q, b.op('Transpose', [v.x!], { perm: [0, 2, 1] })]), k(0.5)]);
      const masked = b.op('Where', [b.op('Expand', [keep, ints(b, [2, 5, 5])]), scores, k(-1e9)]);
      const attended = b.op('Add', [v.x!, b.op('MatMul', [b.op('Softmax', [masked], { axis: -1 }), v.x!])]);
      const mean = b.op('ReduceMean', [attended], { axes: [-1] });
      const centred = b.op('Sub', [attended, mean]);
      const variance = b.op('ReduceMean', [b.op('Mul', [centred, centred])], { axes: [-1] });
      const normed = b.op('Mul', [centred, b.op('Reciprocal', [b.op('Sqrt', [b.op('Add', [variance, k(1e-6)])])])]);
      const ff = b.op('MatMul', [b.op('Relu', [b.op('Add', [b.op('MatMul', [normed, v.wf!]), v.bf!])]), v.wo!]);
      const h = b.op('Add', [normed, ff]);
      const tokenMask = b.op('Unsqueeze', [b.op('Cast', [v.m!], { to: DataType.DOUBLE }), ints(b, [-1])]); // [2,5,1]
      const maxPooled = b.op('ReduceMax', [b.op('Where', [b.op('Cast', [tokenMask], { to: DataType.BOOL }), h, k(-1e9)])], { axes: [1], keepdims: 0 });
      const sumPooled = b.op('ReduceSum', [b.op('Mul', [h, tokenMask]), ints(b, [1])], { keepdims: 0 });
      const first = b.op('Squeeze', [b.op('Slice', [h, ints(b, [0]), ints(b, [1]), ints(b, [1])]), ints(b, [1])]);
      return b.op('Tanh', [b.op('Concat', [maxPooled, sumPooled, first], { axis: -1 })]);
    },
  },
];

CASES.forEach((c, i) => {
  test(`gradient: ${c.name}`, async () => {
    await checkGradients(c, 3000 + i);
  });
});

test('every rule this file adds is in GRAD_RULES and exercised by a case above', () => {
  const covered = opTypesOf(CASES);
  assert.deepEqual(RULES_CHECKED_HERE.filter((op) => !Object.hasOwn(GRAD_RULES, op) || !covered.has(op)), []);
});

/** Runs loss = Σ R·op(inputs) with a gradient and returns the gradients (float64). */
async function gradientsAt(op: string, values: number[][], weights: number[]): Promise<number[][]> {
  const b = new GraphBuilder('ties');
  const xs = values.map((v, i) => b.input(`x${i}`, DataType.DOUBLE, [v.length]));
  const y = b.op(op, xs);
  const loss = b.op('ReduceSum', [b.op('Mul', [y, f64(b, weights, [weights.length])])], { keepdims: 0 });
  const grads = appendGradients(b, { loss, wrt: xs });
  for (const x of xs) b.output(grads.get(x)!, DataType.DOUBLE, [values[0]!.length]);
  const session = await ort.InferenceSession.create(encodeModel(b.model()));
  const out = await session.run(Object.fromEntries(values.map((v, i) => [`x${i}`, new ort.Tensor('float64', Float64Array.from(v), [v.length])])));
  await session.release();
  return xs.map((x) => [...(out[grads.get(x)!]!.data as Float64Array)]);
}

test('Max and Min split a tie evenly among the inputs equal to the output (torch.maximum/minimum: half each of two)', async () => {
  // torch 1.13: maximum([1,2,3], [1,1,3]).sum().backward() → [0.5, 1, 0.5] and [0.5, 0, 0.5].
  assert.deepEqual(await gradientsAt('Max', [[1, 2, 3], [1, 1, 3]], [1, 1, 1]), [[0.5, 1, 0.5], [0.5, 0, 0.5]]);
  assert.deepEqual(await gradientsAt('Min', [[1, 2, 3], [1, 1, 3]], [1, 1, 1]), [[0.5, 0, 0.5], [0.5, 1, 0.5]]);
  // Three-way: a third each where all three tie, half where two do.
  const [a, b, c] = await gradientsAt('Max', [[2, 5, 0], [2, 5, 1], [2, 4, 1]], [3, 2, 6]);
  assert.deepEqual([a, b, c], [[1, 1, 0], [1, 1, 3], [1, 0, 3]]);
});

test('Where gives the condition no gradient, and X/Y only where selected', async () => {
  const b = new GraphBuilder('where');
  const x = b.input('x', DataType.DOUBLE, [4]);
  const y = b.input('y', DataType.DOUBLE, [4]);
  const cond = b.op('Greater', [x, y]);
  const loss = b.op('ReduceSum', [b.op('Mul', [b.op('Where', [cond, x, y]), f64(b, [1, 2, 3, 4], [4])])], { keepdims: 0 });
  const grads = appendGradients(b, { loss, wrt: [x, y] });
  b.output(grads.get(x)!, DataType.DOUBLE, [4]);
  b.output(grads.get(y)!, DataType.DOUBLE, [4]);
  const session = await ort.InferenceSession.create(encodeModel(b.model()));
  const out = await session.run({ x: new ort.Tensor('float64', Float64Array.of(1, 0, 3, 0), [4]), y: new ort.Tensor('float64', Float64Array.of(0, 1, 0, 5), [4]) });
  await session.release();
  assert.deepEqual([...(out[grads.get(x)!]!.data as Float64Array)], [1, 0, 3, 0]);
  assert.deepEqual([...(out[grads.get(y)!]!.data as Float64Array)], [0, 2, 0, 4]);
});

// ---------------------------------------------------------------------------------------------------
// The last two layers of a small BERT, end to end
// ---------------------------------------------------------------------------------------------------

/** erf in float64 from ops that ORT has float64 kernels for (see the header): Taylor below |u| = 3, erfc's continued fraction above. */
function erfByElementaryOps(b: GraphBuilder, u: string): string {
  const k = (v: number) => f64(b, [v], []);
  const z = b.op('Mul', [u, u]);
  const terms = 50;
  let sum = k((-1) ** (terms - 1) / (factorial(terms - 1) * (2 * terms - 1)));
  for (let n = terms - 2; n >= 0; n--) sum = b.op('Add', [b.op('Mul', [sum, z]), k((-1) ** n / (factorial(n) * (2 * n + 1)))]);
  const taylor = b.op('Mul', [b.op('Mul', [u, sum]), k(2 / Math.sqrt(Math.PI))]);
  const a = b.op('Max', [b.op('Abs', [u]), k(3)]);
  let t = a;
  for (let j = 20; j > 0; j--) t = b.op('Add', [a, b.op('Div', [k(j / 2), t])]);
  const erfc = b.op('Div', [b.op('Exp', [b.op('Neg', [b.op('Mul', [a, a])])]), b.op('Mul', [t, k(Math.sqrt(Math.PI))])]);
  const tail = b.op('Mul', [b.op('Sign', [u]), b.op('Sub', [k(1), erfc])]);
  return b.op('Where', [b.op('Less', [b.op('Abs', [u]), k(3)]), taylor, tail]);
}

function factorial(n: number): number {
  let f = 1;
  for (let i = 2; i <= n; i++) f *= i;
  return f;
}

const BERT: BertOptions = { vocabSize: 30, hidden: 32, layers: 3, heads: 4, intermediate: 64, maxPosition: 16, seed: 11, initStd: 0.2 };
const TRAINED = /^encoder\.layer\.[12]\./;
const [N, L] = [3, 7];
const IDS = { input_ids: [3, 14, 7, 7, 29, 1, 0, 12, 5, 9, 22, 17, 2, 2, 8, 4, 16, 0, 0, 0, 0], attention_mask: [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0], token_type_ids: [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1] };
const LABELS = [2, 0, 1];

/**
 * The BERT loss graph: embeddings and layer 0 frozen (initializers), layers 1 and 2 and the head taking their
 * weights from graph inputs (in the graph's layouts, see graphShape), masked mean → Gemm → cross-entropy.
 */
function bertLoss(b: GraphBuilder, double: boolean, weights: Record<string, Float32Array>, trained: readonly { name: string; dims: number[] }[]): string {
  const options: BertOptions = double ? { ...BERT, elemType: DataType.DOUBLE, erf: erfByElementaryOps } : BERT;
  const fType = double ? DataType.DOUBLE : DataType.FLOAT;
  const seq = ['batch_size', 'sequence_length'];
  const inputs = { inputIds: b.input('input_ids', DataType.INT64, seq), attentionMask: b.input('attention_mask', DataType.INT64, seq), tokenTypeIds: b.input('token_type_ids', DataType.INT64, seq) };
  const labels = b.input('labels', DataType.INT64, ['batch_size']);
  const declared = Object.fromEntries(trained.map((p) => [p.name, b.input(p.name, fType, p.dims)]));
  const frozen = initializerParams(b, bertConfig(options), weights);
  const param: ParamTensor = (name) => declared[name] ?? frozen(name);
  const { hidden, attentionMask, emitter } = bertGraph(b, options, { param, inputs });
  const logits = b.op('Gemm', [maskedMeanPool(emitter, hidden, attentionMask), declared['head.weight']!, declared['head.bias']!], { transB: 1 });
  return b.op('SoftmaxCrossEntropyLoss', [logits, labels]);
}

test('gradient: BERT, the last 2 of 3 layers → masked mean → Gemm → cross-entropy, every weight (float32 graph, float64 reference)', async () => {
  // What is checked (a difference for each of the 17 000 weights one by one would take ~25 s here):
  // - every element of every vector (biases, LayerNorm γ/β: 704) and of the head (99), and 128 seeded elements
  //   of each of the 12 matrices, against central differences (ε = 1e-6) of the float64 reference;
  // - every tensor as a whole: the directional derivative along 3 seeded random directions (all elements at
  //   once) against Σ g·v, relative to ‖g‖·‖v‖ (tolerance 1e-4);
  // - both gradient graphs (static shapes, and useStaticShapes: false), with no Einsum fallback left.
  // Element errors are relative to max(|fd|, 1e-2·max|g| of the tensor, 1e-3·max|g| of all tensors)
  // (tolerance 5e-4, float32 rounding). The key biases' gradient is exactly 0 (a key bias adds q·b to a whole
  // row of scores, which softmax ignores): asserted ≤ 1e-6 of the largest gradient, their float32 noise.
  const weights = bertWeights(BERT);
  const shapes = bertParamShapes(BERT);
  const rng = new Random(5);
  const trained = [
    ...Object.keys(shapes).filter((n) => TRAINED.test(n)).map((name) => {
      const s = shapes[name]!;
      return { name, dims: graphShape(name, s), data: Float64Array.from(isLinearWeight(name) ? transpose2d(weights[name]!, s[0]!, s[1]!) : weights[name]!) };
    }),
    { name: 'head.weight', dims: [3, 32], data: Float64Array.from({ length: 96 }, () => Math.fround(0.5 * rng.normal())) },
    { name: 'head.bias', dims: [3], data: Float64Array.from({ length: 3 }, () => Math.fround(0.1 * rng.normal())) },
  ];
  const fixed = (double: boolean): Record<string, ort.Tensor> => ({
    ...Object.fromEntries(Object.entries(IDS).map(([k, v]) => [k, new ort.Tensor('int64', BigInt64Array.from(v, (x) => BigInt(x)), [N, L])])),
    labels: new ort.Tensor('int64', BigInt64Array.from(LABELS, (x) => BigInt(x)), [N]),
    ...Object.fromEntries(trained.map((p) => [p.name, double ? new ort.Tensor('float64', p.data, p.dims) : new ort.Tensor('float32', Float32Array.from(p.data), p.dims)])),
  });
  const single = { intraOpNumThreads: 1, interOpNumThreads: 1 }; // tiny graphs: threads only add overhead

  // The float64 reference (its finite differences) and the float32 graph agree.
  const ref = new GraphBuilder('reference');
  const refLoss = bertLoss(ref, true, weights, trained);
  ref.output(refLoss, DataType.DOUBLE, []);
  const refSession = await ort.InferenceSession.create(encodeModel(ref.model(17)), single);
  const lossAt = async (feeds: Record<string, ort.Tensor>) => (await refSession.run(feeds))[refLoss]!.data[0] as number;
  const base = fixed(true);
  const loss0 = await lossAt(base);

  // Analytic gradients, from the static-shape and the dynamic-shape gradient graphs.
  const analytic: Array<Map<string, Float64Array>> = [];
  for (const useStaticShapes of [true, false]) {
    const b = new GraphBuilder('grad');
    const loss = bertLoss(b, false, weights, trained);
    const grads = appendGradients(b, { loss, wrt: trained.map((p) => p.name), useStaticShapes });
    assert.ok(!b.nodes.some((n) => n.opType === 'Einsum'), 'every MatMul operand has a known rank');
    b.output(loss, DataType.FLOAT, []);
    for (const p of trained) b.output(grads.get(p.name)!, DataType.FLOAT, p.dims);
    const session = await ort.InferenceSession.create(encodeModel(b.model(17)), single);
    const out = await session.run(fixed(false));
    await session.release();
    const loss32 = out[loss]!.data[0] as number;
    assert.ok(Math.abs(loss32 - loss0) < 1e-5 * Math.max(1, Math.abs(loss0)), `float32 loss ${loss32}, float64 reference ${loss0}`);
    analytic.push(new Map(trained.map((p) => [p.name, Float64Array.from(out[grads.get(p.name)!]!.data as Float32Array)])));
  }

  const largest = (v: Float64Array) => v.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
  const overall = Math.max(...trained.map((p) => largest(analytic[0]!.get(p.name)!)));
  const eps = 1e-6;
  const moved = async (name: string, dir: (i: number) => number, h: number) => {
    const p = trained.find((t) => t.name === name)!;
    const data = p.data.map((v, i) => v + h * dir(i));
    return lossAt({ ...base, [name]: new ort.Tensor('float64', data, p.dims) });
  };
  const worst = { element: 0, direction: 0 };
  for (const p of trained) {
    const n = p.data.length;
    const picks = n <= 96 ? Array.from({ length: n }, (_, i) => i) : Array.from({ length: 128 }, () => rng.int(n));
    const directions = [0, 1, 2].map(() => Float64Array.from({ length: n }, () => rng.normal()));
    const numeric = new Map<number, number>();
    for (const i of picks) numeric.set(i, ((await moved(p.name, (j) => (j === i ? 1 : 0), eps)) - (await moved(p.name, (j) => (j === i ? 1 : 0), -eps))) / (2 * eps));
    const along: number[] = [];
    for (const v of directions) along.push(((await moved(p.name, (j) => v[j]!, eps)) - (await moved(p.name, (j) => v[j]!, -eps))) / (2 * eps));
    for (const [k, g] of analytic.entries()) {
      const label = `${p.name} (${k === 0 ? 'static' : 'dynamic'} shapes)`;
      const floor = Math.max(1e-2 * largest(g.get(p.name)!), 1e-3 * overall);
      const grad = g.get(p.name)!;
      if (/attention\.self\.key\.bias$/.test(p.name)) assert.ok(largest(grad) < 1e-6 * overall, `${label}: a key bias gets no gradient (softmax ignores a per-row shift), got ${largest(grad)}`);
      for (const [i, fd] of numeric) {
        const e = Math.abs(grad[i]! - fd) / Math.max(Math.abs(fd), floor);
        worst.element = Math.max(worst.element, e);
        assert.ok(e < 5e-4, `${label}[${i}]: autodiff ${grad[i]}, numeric ${fd} (relative error ${e.toExponential(2)})`);
      }
      const norm = Math.sqrt(grad.reduce((a, x) => a + x * x, 0));
      directions.forEach((v, d) => {
        const dot = grad.reduce((a, x, j) => a + x * v[j]!, 0);
        const e = Math.abs(dot - along[d]!) / (Math.max(norm, 1e-3 * overall) * Math.sqrt(v.reduce((a, x) => a + x * x, 0)));
        worst.direction = Math.max(worst.direction, e);
        if (process.env.GRAFT_GRAD_VERBOSE === '2') console.log(`  ${label} direction ${d}: ${e.toExponential(2)} (‖g‖ ${norm.toExponential(2)})`);
        assert.ok(e < 1e-4, `${label} along direction ${d}: autodiff ${dot}, numeric ${along[d]} (error ${e.toExponential(2)} of ‖g‖‖v‖)`);
      });
    }
  }
  await refSession.release();
  if (process.env.GRAFT_GRAD_VERBOSE) console.log(`BERT: worst element error ${worst.element.toExponential(2)}, worst directional error ${worst.direction.toExponential(2)} (${trained.length} tensors)`);
});

test('gradient: Split in the attribute form of opset < 13 (static shapes; the gradient graph needs opset 13 for dynamic ones)', async () => {
  // Checked against central differences like the harness, by hand: the harness's dynamic-shape run
  // unbroadcasts with ReduceSum's axes input, which opset 12 does not have.
  const build = (b: GraphBuilder, x: string) => {
    const [s0, s1] = b.node('Split', [x], { axis: -1, split: [3, 2] }, { outputs: 2 });
    return b.op('Concat', [s1!, b.op('Tanh', [s0!])], { axis: 1 });
  };
  const rng = new Random(6);
  const x0 = Float64Array.from({ length: 10 }, () => rng.normal());
  const r = Float64Array.from({ length: 10 }, () => rng.normal());
  const b = new GraphBuilder('split11');
  const x = b.input('x', DataType.DOUBLE, [2, 5]);
  const y = build(b, x);
  const loss = b.op('ReduceSum', [b.op('Mul', [y, f64(b, [...r], [2, 5])])], { keepdims: 0 });
  const grads = appendGradients(b, { loss, wrt: [x] });
  b.output(loss, DataType.DOUBLE, []);
  b.output(grads.get(x)!, DataType.DOUBLE, [2, 5]);
  const session = await ort.InferenceSession.create(encodeModel(b.model(12)));
  const at = async (v: Float64Array) => session.run({ x: new ort.Tensor('float64', v, [2, 5]) });
  const g = (await at(x0))[grads.get(x)!]!.data as Float64Array;
  for (let i = 0; i < 10; i++) {
    const f = async (h: number) => (await at(x0.map((v, j) => (j === i ? v + h : v))))[loss]!.data[0] as number;
    const fd = ((await f(1e-6)) - (await f(-1e-6))) / 2e-6;
    assert.ok(Math.abs(g[i]! - fd) / Math.max(Math.abs(fd), 1e-3) < 1e-5, `element ${i}: autodiff ${g[i]}, numeric ${fd}`);
  }
  await session.release();
});

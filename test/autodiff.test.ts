/**
 * Every gradient rule checked against central finite differences of the forward graph, in onnxruntime-node,
 * with the harness in test/support/gradcheck.ts (method, ε and tolerances described there).
 *
 * Each case builds loss = ReduceSum(op(...) · R) with a fixed random weighting R (so that the gradient is
 * not all ones), appends the gradients, and compares them with (f(x+ε) − f(x−ε)) / 2ε for every element of
 * every wrt input. float64 graphs: ε = 1e-6, max |g − fd| / max(|fd|, 1e-3) < 1e-5. ORT has no float64
 * kernel for GlobalAveragePool: that case runs in float32 with ε = 1e-3 and a tolerance of 1e-2 relative
 * (absolute floor 1e-1). Each case is run twice: with static shapes (constant-folded unbroadcast, the normal
 * path) and with `useStaticShapes: false` (every unbroadcast/reshape done with Shape ops), so both forms of
 * every rule are verified.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as ort from 'onnxruntime-node';
import { appendGradients, GRAD_RULES } from '../src/onnx/autodiff.js';
import { GraphBuilder } from '../src/onnx/builder.js';
import { DataType, encodeModel } from '../src/onnx/proto.js';
import { GraftError } from '../src/errors.js';
import { checkGradients, opTypesOf, type GradCase } from './support/gradcheck.js';

const ints = (b: GraphBuilder, v: number[]) => b.int64('axes', v);

const CASES: GradCase[] = [
  // Broadcasting arithmetic
  { name: 'Add [N,C] + [C]', inputs: [{ name: 'a', dims: [3, 4], wrt: true }, { name: 'b', dims: [4], wrt: true }], build: (b, x) => b.op('Add', [x.a!, x.b!]) },
  { name: 'Add same shape', inputs: [{ name: 'a', dims: [2, 3], wrt: true }, { name: 'b', dims: [2, 3], wrt: true }], build: (b, x) => b.op('Add', [x.a!, x.b!]) },
  { name: 'Sub [N,C] - [N,1]', inputs: [{ name: 'a', dims: [3, 4], wrt: true }, { name: 'b', dims: [3, 1], wrt: true }], build: (b, x) => b.op('Sub', [x.a!, x.b!]) },
  { name: 'Sub [C] - [N,C]', inputs: [{ name: 'a', dims: [4], wrt: true }, { name: 'b', dims: [3, 4], wrt: true }], build: (b, x) => b.op('Sub', [x.a!, x.b!]) },
  { name: 'Mul [N,1] * [N,C]', inputs: [{ name: 'a', dims: [3, 1], wrt: true }, { name: 'b', dims: [3, 4], wrt: true }], build: (b, x) => b.op('Mul', [x.a!, x.b!]) },
  { name: 'Mul by scalar', inputs: [{ name: 'a', dims: [3, 4], wrt: true }, { name: 's', dims: [], wrt: true }], build: (b, x) => b.op('Mul', [x.a!, x.s!]) },
  { name: 'Mul x*x (branches summed)', inputs: [{ name: 'a', dims: [2, 3], wrt: true }], build: (b, x) => b.op('Mul', [x.a!, x.a!]) },
  { name: 'Mul [2,1,4] * [3,1] (both broadcast)', inputs: [{ name: 'a', dims: [2, 1, 4], wrt: true }, { name: 'b', dims: [3, 1], wrt: true }], build: (b, x) => b.op('Mul', [x.a!, x.b!]) },
  { name: 'Div [N,C] / [C]', inputs: [{ name: 'a', dims: [3, 4], wrt: true }, { name: 'b', dims: [4], kind: 'positive', wrt: true }], build: (b, x) => b.op('Div', [x.a!, x.b!]) },
  { name: 'Div scalar / [N,C]', inputs: [{ name: 's', dims: [], wrt: true }, { name: 'b', dims: [2, 3], kind: 'positive', wrt: true }], build: (b, x) => b.op('Div', [x.s!, x.b!]) },
  {
    name: 'Sum of three with broadcast',
    inputs: [{ name: 'a', dims: [2, 3], wrt: true }, { name: 'b', dims: [3], wrt: true }, { name: 'c', dims: [2, 1], wrt: true }],
    build: (b, x) => b.op('Sum', [x.a!, x.b!, x.c!]),
  },
  // Elementwise
  ...(['Relu', 'Sigmoid', 'Tanh', 'Identity', 'Neg', 'Exp', 'Abs'] as const).map((op): GradCase => ({
    name: op,
    inputs: [{ name: 'x', dims: [3, 4], wrt: true }],
    build: (b, x) => b.op(op, [x.x!]),
  })),
  ...(['Log', 'Sqrt', 'Reciprocal'] as const).map((op): GradCase => ({
    name: op,
    inputs: [{ name: 'x', dims: [3, 4], kind: 'positive', wrt: true }],
    build: (b, x) => b.op(op, [x.x!]),
  })),
  { name: 'LeakyRelu', inputs: [{ name: 'x', dims: [3, 4], wrt: true }], build: (b, x) => b.op('LeakyRelu', [x.x!], { alpha: 0.2 }) },
  { name: 'Cast double→double', inputs: [{ name: 'x', dims: [3, 4], wrt: true }], build: (b, x) => b.op('Cast', [x.x!], { to: DataType.DOUBLE }) },
  { name: 'Dropout (inference)', inputs: [{ name: 'x', dims: [3, 4], wrt: true }], build: (b, x) => b.op('Dropout', [x.x!]) },
  {
    name: 'Dropout (training_mode = false, ratio given)',
    inputs: [{ name: 'x', dims: [3, 4], wrt: true }],
    build: (b, x) => {
      const training = b.initializer({ name: 'training_mode', dataType: DataType.BOOL, dims: [], rawData: Uint8Array.of(0) });
      return b.node('Dropout', [x.x!, b.constant('ratio', Float64Array.of(0.5), []), training], {}, { outputs: 2 })[0]!;
    },
  },
  { name: 'Clip min/max', inputs: [{ name: 'x', dims: [4, 5], wrt: true }], build: (b, x) => b.op('Clip', [x.x!, b.constant('lo', Float64Array.of(-0.5), []), b.constant('hi', Float64Array.of(0.7), [])]) },
  { name: 'Clip min only', inputs: [{ name: 'x', dims: [4, 5], wrt: true }], build: (b, x) => b.op('Clip', [x.x!, b.constant('lo', Float64Array.of(-0.3), [])]) },
  {
    name: 'Clip with differentiable bounds',
    inputs: [{ name: 'x', dims: [4, 5], wrt: true }, { name: 'lo', dims: [], values: [-0.4], wrt: true }, { name: 'hi', dims: [], values: [0.6], wrt: true }],
    build: (b, x) => b.op('Clip', [x.x!, x.lo!, x.hi!]),
  },
  { name: 'Pow constant exponent 2.5', inputs: [{ name: 'x', dims: [3, 4], kind: 'positive', wrt: true }], build: (b, x) => b.op('Pow', [x.x!, b.constant('p', Float64Array.of(2.5), [])]) },
  { name: 'Pow int64 exponent 3 (negative base)', inputs: [{ name: 'x', dims: [3, 4], wrt: true }], build: (b, x) => b.op('Pow', [x.x!, b.constant('p', BigInt64Array.of(3n), [])]) },
  {
    name: 'Pow base and exponent',
    inputs: [{ name: 'x', dims: [3, 4], kind: 'positive', wrt: true }, { name: 'p', dims: [4], wrt: true }],
    build: (b, x) => b.op('Pow', [x.x!, x.p!]),
  },
  // Shapes
  { name: 'Flatten axis 1', inputs: [{ name: 'x', dims: [2, 3, 2], wrt: true }], build: (b, x) => b.op('Flatten', [x.x!], { axis: 1 }) },
  { name: 'Reshape', inputs: [{ name: 'x', dims: [2, 3, 2], wrt: true }], build: (b, x) => b.op('Reshape', [x.x!, ints(b, [3, -1])]) },
  { name: 'Transpose perm', inputs: [{ name: 'x', dims: [2, 3, 4], wrt: true }], build: (b, x) => b.op('Transpose', [x.x!], { perm: [1, 2, 0] }) },
  { name: 'Transpose default', inputs: [{ name: 'x', dims: [2, 3, 4], wrt: true }], build: (b, x) => b.op('Transpose', [x.x!]) },
  { name: 'Squeeze', inputs: [{ name: 'x', dims: [2, 1, 3], wrt: true }], build: (b, x) => b.op('Squeeze', [x.x!, ints(b, [1])]) },
  { name: 'Unsqueeze', inputs: [{ name: 'x', dims: [2, 3], wrt: true }], build: (b, x) => b.op('Unsqueeze', [x.x!, ints(b, [0, 2])]) },
  { name: 'Expand [3,1] → [2,3,4]', inputs: [{ name: 'x', dims: [3, 1], wrt: true }], build: (b, x) => b.op('Expand', [x.x!, ints(b, [2, 3, 4])]) },
  {
    name: 'Concat axis 1',
    inputs: [{ name: 'a', dims: [2, 3], wrt: true }, { name: 'b', dims: [2, 1], wrt: true }, { name: 'c', dims: [2, 2], wrt: true }],
    build: (b, x) => b.op('Concat', [x.a!, x.b!, x.c!], { axis: 1 }),
  },
  {
    name: 'Concat axis -1, frozen middle input',
    inputs: [{ name: 'a', dims: [2, 3], wrt: true }, { name: 'b', dims: [2, 1] }, { name: 'c', dims: [2, 2], wrt: true }],
    build: (b, x) => b.op('Concat', [x.a!, x.b!, x.c!], { axis: -1 }),
  },
  // Softmax family and reductions
  { name: 'Softmax axis -1', inputs: [{ name: 'x', dims: [3, 5], wrt: true }], build: (b, x) => b.op('Softmax', [x.x!], { axis: -1 }) },
  { name: 'Softmax axis 1 of 3-D', inputs: [{ name: 'x', dims: [2, 3, 4], wrt: true }], build: (b, x) => b.op('Softmax', [x.x!], { axis: 1 }) },
  { name: 'LogSoftmax', inputs: [{ name: 'x', dims: [3, 5], wrt: true }], build: (b, x) => b.op('LogSoftmax', [x.x!], { axis: -1 }) },
  { name: 'ReduceSum axes [1] keepdims 0', inputs: [{ name: 'x', dims: [2, 3, 4], wrt: true }], build: (b, x) => b.op('ReduceSum', [x.x!, ints(b, [1])], { keepdims: 0 }) },
  { name: 'ReduceSum axes [0,-1] keepdims 1', inputs: [{ name: 'x', dims: [2, 3, 4], wrt: true }], build: (b, x) => b.op('ReduceSum', [x.x!, ints(b, [0, -1])], { keepdims: 1 }) },
  { name: 'ReduceSum all', inputs: [{ name: 'x', dims: [2, 3], wrt: true }], build: (b, x) => b.op('ReduceSum', [x.x!], { keepdims: 0 }) },
  { name: 'ReduceMean axes [0,2] keepdims 0', inputs: [{ name: 'x', dims: [2, 3, 4], wrt: true }], build: (b, x) => b.op('ReduceMean', [x.x!], { axes: [0, 2], keepdims: 0 }) },
  { name: 'ReduceMean axes [-1] keepdims 1', inputs: [{ name: 'x', dims: [2, 3, 4], wrt: true }], build: (b, x) => b.op('ReduceMean', [x.x!], { axes: [-1] }) },
  { name: 'ReduceMean all', inputs: [{ name: 'x', dims: [2, 3], wrt: true }], build: (b, x) => b.op('ReduceMean', [x.x!], { keepdims: 0 }) },
  { name: 'GlobalAveragePool (float32)', float32: true, inputs: [{ name: 'x', dims: [2, 3, 4, 5], wrt: true }], build: (b, x) => b.op('GlobalAveragePool', [x.x!]) },
  // Gemm and MatMul
  {
    name: 'Gemm plain with 1-D bias',
    inputs: [{ name: 'a', dims: [3, 4], wrt: true }, { name: 'w', dims: [4, 5], wrt: true }, { name: 'c', dims: [5], wrt: true }],
    build: (b, x) => b.op('Gemm', [x.a!, x.w!, x.c!]),
  },
  {
    name: 'Gemm transB=1 with bias',
    inputs: [{ name: 'a', dims: [3, 4], wrt: true }, { name: 'w', dims: [5, 4], wrt: true }, { name: 'c', dims: [5], wrt: true }],
    build: (b, x) => b.op('Gemm', [x.a!, x.w!, x.c!], { transB: 1 }),
  },
  {
    name: 'Gemm transA=1 alpha beta C[M,1]',
    inputs: [{ name: 'a', dims: [4, 3], wrt: true }, { name: 'w', dims: [4, 5], wrt: true }, { name: 'c', dims: [3, 1], wrt: true }],
    build: (b, x) => b.op('Gemm', [x.a!, x.w!, x.c!], { transA: 1, alpha: 0.7, beta: 1.3 }),
  },
  {
    name: 'Gemm transA=1 transB=1 scalar C',
    inputs: [{ name: 'a', dims: [4, 3], wrt: true }, { name: 'w', dims: [5, 4], wrt: true }, { name: 'c', dims: [], wrt: true }],
    build: (b, x) => b.op('Gemm', [x.a!, x.w!, x.c!], { transA: 1, transB: 1, alpha: 2 }),
  },
  { name: 'Gemm without C', inputs: [{ name: 'a', dims: [3, 4], wrt: true }, { name: 'w', dims: [4, 2], wrt: true }], build: (b, x) => b.op('Gemm', [x.a!, x.w!]) },
  { name: 'MatMul 2-D', inputs: [{ name: 'a', dims: [3, 4], wrt: true }, { name: 'b', dims: [4, 5], wrt: true }], build: (b, x) => b.op('MatMul', [x.a!, x.b!]) },
  { name: 'MatMul batched [2,3,4] @ [4,5]', inputs: [{ name: 'a', dims: [2, 3, 4], wrt: true }, { name: 'b', dims: [4, 5], wrt: true }], build: (b, x) => b.op('MatMul', [x.a!, x.b!]) },
  { name: 'MatMul batched [2,2,3,4] @ [4,5] (weight gradient as one product)', inputs: [{ name: 'a', dims: [2, 2, 3, 4], wrt: true }, { name: 'b', dims: [4, 5], wrt: true }], build: (b, x) => b.op('MatMul', [x.a!, x.b!]) },
  {
    name: 'MatMul broadcast [2,1,3,4] @ [3,4,2]',
    inputs: [{ name: 'a', dims: [2, 1, 3, 4], wrt: true }, { name: 'b', dims: [3, 4, 2], wrt: true }],
    build: (b, x) => b.op('MatMul', [x.a!, x.b!]),
  },
  { name: 'MatMul [4] @ [2,4,5]', inputs: [{ name: 'a', dims: [4], wrt: true }, { name: 'b', dims: [2, 4, 5], wrt: true }], build: (b, x) => b.op('MatMul', [x.a!, x.b!]) },
  { name: 'MatMul [2,3,4] @ [4]', inputs: [{ name: 'a', dims: [2, 3, 4], wrt: true }, { name: 'b', dims: [4], wrt: true }], build: (b, x) => b.op('MatMul', [x.a!, x.b!]) },
  {
    name: 'MatMul with an operand of unknown rank (Einsum fallback)',
    inputs: [{ name: 'a', dims: [2, 3, 4], wrt: true }, { name: 'c', dims: [2, 4, 5] }],
    // Tile is not in the static shape propagation, so B's rank is unknown here.
    build: (b, x) => b.op('MatMul', [x.a!, b.op('Tile', [x.c!, ints(b, [1, 1, 1])])]),
  },
  { name: 'MatMul [4] @ [4]', inputs: [{ name: 'a', dims: [4], wrt: true }, { name: 'b', dims: [4], wrt: true }], build: (b, x) => b.op('MatMul', [x.a!, x.b!]) },
  // SoftmaxCrossEntropyLoss: the loss itself, seeded with 1 (isLoss), or weighted by R (gradient dLoss ≠ 1)
  ...(['mean', 'sum'] as const).map((reduction): GradCase => ({
    name: `SoftmaxCrossEntropyLoss ${reduction}`,
    inputs: [{ name: 'z', dims: [5, 4], wrt: true }, { name: 'y', dims: [5], kind: 'int', max: 4 }],
    build: (b, x) => b.op('SoftmaxCrossEntropyLoss', [x.z!, x.y!], { reduction }),
    isLoss: true,
  })),
  {
    name: 'SoftmaxCrossEntropyLoss mean, scaled (dLoss ≠ 1)',
    inputs: [{ name: 'z', dims: [5, 4], wrt: true }, { name: 'y', dims: [5], kind: 'int', max: 4 }],
    build: (b, x) => b.op('SoftmaxCrossEntropyLoss', [x.z!, x.y!], { reduction: 'mean' }),
  },
  {
    name: 'SoftmaxCrossEntropyLoss none',
    inputs: [{ name: 'z', dims: [5, 4], wrt: true }, { name: 'y', dims: [5], kind: 'int', max: 4 }],
    build: (b, x) => b.op('SoftmaxCrossEntropyLoss', [x.z!, x.y!], { reduction: 'none' }),
  },
  {
    name: 'SoftmaxCrossEntropyLoss mean, class weights, ignore_index',
    inputs: [{ name: 'z', dims: [6, 4], wrt: true }, { name: 'y', dims: [6], kind: 'int', values: [0, 3, -1, 2, 1, 3] }, { name: 'cw', dims: [4], kind: 'positive' }],
    build: (b, x) => b.op('SoftmaxCrossEntropyLoss', [x.z!, x.y!, x.cw!], { reduction: 'mean', ignore_index: -1 }),
    isLoss: true,
  },
  {
    name: 'SoftmaxCrossEntropyLoss [N,C,d] sum',
    inputs: [{ name: 'z', dims: [2, 3, 4], wrt: true }, { name: 'y', dims: [2, 4], kind: 'int', max: 3 }],
    build: (b, x) => b.op('SoftmaxCrossEntropyLoss', [x.z!, x.y!], { reduction: 'sum' }),
  },
  {
    name: 'SoftmaxCrossEntropyLoss with log_prob used downstream',
    inputs: [{ name: 'z', dims: [5, 4], wrt: true }, { name: 'y', dims: [5], kind: 'int', max: 4 }],
    build: (b, x) => {
      const [loss, logp] = b.node('SoftmaxCrossEntropyLoss', [x.z!, x.y!], { reduction: 'mean' }, { outputs: 2 });
      return b.op('Add', [b.op('Mul', [logp!, b.constant('k', Float64Array.of(0.3), [])]), loss!]);
    },
  },
  // Composites
  {
    name: 'Non-differentiable side paths (Shape, Greater) are skipped',
    inputs: [{ name: 'x', dims: [2, 6], wrt: true }],
    build: (b, x) => {
      const shape = b.op('Shape', [b.op('Transpose', [b.op('Reshape', [x.x!, ints(b, [3, 4])])])]);
      const mask = b.op('Cast', [b.op('Greater', [x.x!, b.constant('z', Float64Array.of(0), [])])], { to: DataType.DOUBLE });
      return b.op('Mul', [b.op('Reshape', [b.op('Tanh', [x.x!]), shape]), b.op('Reshape', [mask, shape])]);
    },
  },
  {
    name: 'Attention-like block (MatMul, Transpose, Softmax, Div, symbolic batch)',
    inputs: [
      { name: 'q', dims: [2, 3, 4], decl: ['B', 3, 4], wrt: true },
      { name: 'k', dims: [2, 3, 4], decl: ['B', 3, 4], wrt: true },
      { name: 'v', dims: [2, 3, 4], decl: ['B', 3, 4], wrt: true },
    ],
    build: (b, x) => {
      const s = b.op('Div', [b.op('MatMul', [x.q!, b.op('Transpose', [x.k!], { perm: [0, 2, 1] })]), b.constant('sq', Float64Array.of(2), [])]);
      return b.op('MatMul', [b.op('Softmax', [s], { axis: -1 }), x.v!]);
    },
  },
  {
    // The trainer's head: X[N,D] → Gemm(W1,b1) → Relu → Mul(mask) → Gemm(W2,b2) → SoftmaxCrossEntropyLoss.
    name: 'MLP head with dropout mask and softmax cross-entropy',
    inputs: [
      { name: 'X', dims: [6, 5], decl: ['N', 5] },
      { name: 'labels', dims: [6], decl: ['N'], kind: 'int', max: 3 },
      { name: 'mask', dims: [6, 8], decl: ['N', 8], kind: 'mask' },
      { name: 'W1', dims: [5, 8], wrt: true },
      { name: 'b1', dims: [8], wrt: true },
      { name: 'W2', dims: [8, 3], wrt: true },
      { name: 'b2', dims: [3], wrt: true },
    ],
    build: (b, x) => {
      const h = b.op('Mul', [b.op('Relu', [b.op('Gemm', [x.X!, x.W1!, x.b1!], { transB: 0 })]), x.mask!]);
      return b.op('SoftmaxCrossEntropyLoss', [b.op('Gemm', [h, x.W2!, x.b2!]), x.labels!], { reduction: 'mean' });
    },
    isLoss: true,
  },
];

CASES.forEach((c, i) => {
  test(`gradient: ${c.name}`, async () => {
    await checkGradients(c, 1000 + i);
  });
});

test('every rule in GRAD_RULES is exercised by a case above (or in autodiff-cnn.test.ts)', () => {
  // Checked in test/autodiff-cnn.test.ts, which asserts that it exercises each of these.
  const covered = new Set<string>([
    'Conv', 'MaxPool', 'AveragePool', 'BatchNormalization', 'LayerNormalization', 'HardSigmoid', 'HardSwish', 'Erf', 'Gelu',
    'Slice', 'Gather', 'Pad', 'ReduceMax', 'ReduceMin',
    // Checked in test/autodiff-text.test.ts (RULES_CHECKED_HERE there asserts each is exercised).
    'Sin', 'Cos', 'Max', 'Min', 'Where', 'Split', 'ReduceL2', 'LpNormalization',
    ...opTypesOf(CASES),
  ]);
  assert.deepEqual(Object.keys(GRAD_RULES).filter((op) => !covered.has(op)), []);
});

test('an op without a rule on the path throws before anything is built', () => {
  const b = new GraphBuilder('unknown');
  const x = b.input('x', DataType.DOUBLE, [2, 3]);
  const y = b.op('Atan', [b.op('Relu', [x])], {}, { name: 'my_atan' });
  const loss = b.op('ReduceSum', [y], { keepdims: 0 });
  const before = { nodes: b.nodes.length, inits: b.initializers.length };
  assert.throws(
    () => appendGradients(b, { loss, wrt: [x] }),
    (e: unknown) => e instanceof GraftError && e.code === 'MODEL' && e.message === 'no gradient rule for op Atan (node my_atan)' && e.context.node === 'my_atan' && e.context.op === 'Atan',
  );
  assert.deepEqual({ nodes: b.nodes.length, inits: b.initializers.length }, before);
});

test('Dropout in training mode: the gradient passes exactly the kept elements, scaled as the forward pass', async () => {
  // A random op cannot be finite-differenced; its gradient is checked against the mask the same run drew.
  const b = new GraphBuilder('dropout');
  const x = b.input('x', DataType.FLOAT, [6, 50]);
  const r = b.input('r', DataType.FLOAT, [6, 50]);
  const training = b.bool('training_mode', true);
  const [y, mask] = b.node('Dropout', [b.op('Mul', [x, b.constant('two', Float32Array.of(2), [])]), b.constant('ratio', Float32Array.of(0.25), []), training], { seed: 7 }, { outputs: 2, name: 'drop' });
  const loss = b.op('ReduceSum', [b.op('Mul', [y!, r])], { keepdims: 0 });
  const grads = appendGradients(b, { loss, wrt: [x] });
  b.output(y!, DataType.FLOAT, [6, 50]);
  b.output(mask!, DataType.BOOL, [6, 50]);
  b.op('Identity', [grads.get(x)!], {}, { outputs: ['dx'] });
  b.output('dx', DataType.FLOAT, [6, 50]);
  const session = await ort.InferenceSession.create(encodeModel(b.model(17)));
  const xs = Float32Array.from({ length: 300 }, (_, i) => Math.sin(i) + 0.1);
  const rs = Float32Array.from({ length: 300 }, (_, i) => Math.cos(3 * i));
  const out = await session.run({ x: new ort.Tensor('float32', xs, [6, 50]), r: new ort.Tensor('float32', rs, [6, 50]) });
  const kept = out[mask!]!.data as Uint8Array;
  const ys = out[y!]!.data as Float32Array;
  const dx = out.dx!.data as Float32Array;
  const keptCount = Array.from(kept).filter(Boolean).length;
  assert.ok(keptCount > 180 && keptCount < 270, `kept ${keptCount} of 300 at ratio 0.25`);
  for (let i = 0; i < 300; i++) {
    const k = kept[i] ? 1 : 0;
    assert.ok(Math.abs(ys[i]! - (2 * xs[i]! * k) / 0.75) < 1e-5, `y[${i}]`);
    assert.ok(Math.abs(dx[i]! - (2 * rs[i]! * k) / 0.75) < 1e-5, `dx[${i}] = ${dx[i]}, expected ${(2 * rs[i]! * k) / 0.75}`);
  }
  // A second run draws another mask (the generator advances), and the gradient follows it.
  const again = await session.run({ x: new ort.Tensor('float32', xs, [6, 50]), r: new ort.Tensor('float32', rs, [6, 50]) });
  const kept2 = again[mask!]!.data as Uint8Array;
  assert.ok(Array.from(kept2).some((v, i) => Boolean(v) !== Boolean(kept[i])), 'a second step draws a fresh mask');
  const dx2 = again.dx!.data as Float32Array;
  for (let i = 0; i < 300; i++) assert.ok(Math.abs(dx2[i]! - (2 * rs[i]! * (kept2[i] ? 1 : 0)) / 0.75) < 1e-5);
  await session.release();
});

test('Dropout in training mode without its mask output, or with a ratio fed at run time, is refused up front', () => {
  for (const variant of ['no mask', 'fed ratio'] as const) {
    const b = new GraphBuilder('dropout');
    const x = b.input('x', DataType.DOUBLE, [2, 3]);
    const training = b.input('training_mode', DataType.BOOL, []);
    const ratio = variant === 'fed ratio' ? b.input('ratio', DataType.DOUBLE, []) : b.constant('ratio', Float64Array.of(0.5), []);
    const [y] = b.node('Dropout', [x, ratio, training], {}, { outputs: variant === 'no mask' ? 1 : 2, name: 'drop' });
    const loss = b.op('ReduceSum', [y!], { keepdims: 0 });
    const count = b.nodes.length;
    assert.throws(() => appendGradients(b, { loss, wrt: [x] }), (e: unknown) => e instanceof GraftError && e.code === 'MODEL' && /Dropout node drop in training mode needs its mask output and a constant scalar ratio/.test(e.message), variant);
    assert.equal(b.nodes.length, count);
  }
});

test('an op without a rule off the path (frozen, or only feeding a shape) needs no rule', async () => {
  // Sin has no gradient rule
  const b = new GraphBuilder('frozen');
  const x = b.input('x', DataType.FLOAT, [2, 3]);
  const w = b.input('w', DataType.FLOAT, [3]);
  const frozen = b.op('Sin', [x]); // upstream of the loss, but not downstream of w
  const shape = b.op('Shape', [b.op('Sin', [w])]); // downstream of w, but only through Shape
  const loss = b.op('ReduceSum', [b.op('Mul', [frozen, b.op('Reshape', [w, shape])])], { keepdims: 0 });
  const grads = appendGradients(b, { loss, wrt: [w] });
  b.output(grads.get(w)!, DataType.FLOAT, [3]);
  b.output(frozen, DataType.FLOAT, [2, 3]);
  const session = await ort.InferenceSession.create(encodeModel(b.model()));
  const out = await session.run({
    x: new ort.Tensor('float32', Float32Array.of(0.1, -0.2, 0.3, 0.4, 0.5, -0.6), [2, 3]),
    w: new ort.Tensor('float32', Float32Array.of(1, 2, 3), [3]),
  });
  const g = out[grads.get(w)!]!.data as Float32Array;
  const e = out[frozen]!.data as Float32Array;
  for (let j = 0; j < 3; j++) assert.ok(Math.abs(g[j]! - (e[j]! + e[j + 3]!)) < 1e-6); // d/dw_j Σ_i sin(x_ij)·w_j
  await session.release();
});

test('labels and masks get no gradient; a wrt the loss does not depend on gets zeros', async () => {
  const b = new GraphBuilder('nograd');
  const z = b.input('z', DataType.DOUBLE, ['N', 3]);
  const labels = b.input('labels', DataType.INT64, ['N']);
  const unused = b.input('unused', DataType.DOUBLE, [2, 2]);
  const loss = b.op('SoftmaxCrossEntropyLoss', [z, labels], { reduction: 'mean' });
  const grads = appendGradients(b, { loss, wrt: [z, unused] });
  assert.deepEqual([...grads.keys()], [z, unused]);
  b.output(grads.get(unused)!, DataType.DOUBLE, [2, 2]);
  b.output(grads.get(z)!, DataType.DOUBLE, ['N', 3]);
  const session = await ort.InferenceSession.create(encodeModel(b.model()));
  const out = await session.run({
    z: new ort.Tensor('float64', Float64Array.of(1, 2, 3, 0, 0, 0), [2, 3]),
    labels: new ort.Tensor('int64', BigInt64Array.of(2n, 0n), [2]),
    unused: new ort.Tensor('float64', Float64Array.of(1, 2, 3, 4), [2, 2]),
  });
  assert.deepEqual([...(out[grads.get(unused)!]!.data as Float64Array)], [0, 0, 0, 0]);
  const gz = out[grads.get(z)!]!.data as Float64Array;
  assert.ok(Math.abs(gz[0]! + gz[1]! + gz[2]!) < 1e-12 && gz[2]! < 0 && gz[3]! < 0);
  await session.release();
});

test('the loss tensor as wrt gets its own tensor holding 1; float32 is inferred', async () => {
  const b = new GraphBuilder('self');
  const x = b.input('x', DataType.FLOAT, [2]);
  const loss = b.op('ReduceSum', [x], { keepdims: 0 });
  const grads = appendGradients(b, { loss, wrt: [loss, x] });
  assert.ok(!b.initializers.some((t) => t.name === grads.get(loss)));
  b.output(grads.get(loss)!, DataType.FLOAT, []);
  b.output(grads.get(x)!, DataType.FLOAT, [2]);
  const session = await ort.InferenceSession.create(encodeModel(b.model()));
  const out = await session.run({ x: new ort.Tensor('float32', Float32Array.of(3, 4), [2]) });
  assert.deepEqual([...(out[grads.get(loss)!]!.data as Float32Array)], [1]);
  assert.deepEqual([...(out[grads.get(x)!]!.data as Float32Array)], [1, 1]);
  await session.release();
});

test('bad loss or wrt names are usage errors', () => {
  const b = new GraphBuilder('bad');
  const x = b.input('x', DataType.FLOAT, [2]);
  const loss = b.op('ReduceSum', [x], { keepdims: 0 });
  assert.throws(() => appendGradients(b, { loss: 'nope', wrt: [x] }), (e: unknown) => e instanceof GraftError && e.code === 'USAGE');
  assert.throws(() => appendGradients(b, { loss, wrt: ['nope'] }), (e: unknown) => e instanceof GraftError && e.code === 'USAGE');
});

test('Clip passes the gradient strictly inside its bounds (as torch ReLU6 / hardtanh), read off its output', async () => {
  const b = new GraphBuilder('clip_bounds', '');
  const x = b.input('x', DataType.FLOAT, [8]);
  const y = b.op('Clip', [x, b.constant('lo', new Float32Array([0]), []), b.constant('hi', new Float32Array([6]), [])]);
  const loss = b.op('ReduceSum', [y, b.int64('axes', [0])], { keepdims: 0 });
  const grads = appendGradients(b, { loss, wrt: [x] });
  b.output(grads.get(x)!, DataType.FLOAT, [8]);
  const session = await ort.InferenceSession.create(encodeModel(b.model()));
  const out = await session.run({ x: new ort.Tensor('float32', new Float32Array([-1, 0, 3, 6, 7, 5.999, 1.2e-38, 6 - 4.8e-7]), [8]) });
  await session.release();
  // The smallest normal float and the float just below 6 are inside.
  assert.deepEqual([...(out[grads.get(x)!]!.data as Float32Array)], [0, 0, 1, 0, 0, 1, 1, 1]);
  assert.ok(!b.nodes.some((n) => n.opType === 'Equal' || n.opType === 'Cast'), 'the mask is a number made from y');
});

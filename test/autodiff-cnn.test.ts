/**
 * Gradient rules for CNN backbones and transformer encoders (Conv, pooling, BatchNormalization,
 * LayerNormalization, hard activations, GELU, Slice, Gather, Pad, ReduceMax/Min), checked against central
 * finite differences of the forward graph in onnxruntime-node, with the harness of test/autodiff.test.ts
 * (test/support/gradcheck.ts): each case builds loss = ReduceSum(op(...) · R) with a fixed random R, and each
 * case runs with static shapes and with `useStaticShapes: false` (the Shape-based forms of the rules).
 *
 * Precision. float64 where ORT has float64 kernels for the forward op (BatchNormalization,
 * LayerNormalization, MaxPool, Slice, Gather, Pad, ReduceMax/Min): ε = 1e-6, max |g − fd| / max(|fd|, 1e-3)
 * < 1e-5. ORT 1.30 has float32-only CPU kernels for Conv, ConvTranspose, AveragePool, HardSigmoid,
 * HardSwish, Erf and Gelu (Gelu from opset 20 only), so those cases run in float32, with float32-exact
 * data, and the finite differences sum Σ R·y in float64 in JS (only y's own float32 rounding remains):
 * - ops linear in the perturbed tensor (Conv in X, W and B; AveragePool): central differences are exact
 *   for any ε, so ε = 1 and tolerance 1e-4 relative (absolute floor 1e-2); observed ≤ 3.2e-5;
 * - smooth or piecewise-polynomial activations (Erf, Gelu, HardSigmoid, HardSwish; inputs kept 0.05 away
 *   from the kinks): ε = 1e-2, tolerance 2e-3 relative (floor 1e-2); observed ≤ 2.1e-4;
 * - the MobileNetV2 inverted-residual blocks: the differences are taken in float64 on a reference forward
 *   graph with the same weights, its convolutions written as MatMul and shifted slices (checked against
 *   the Conv graph to 1e-5 first): ε = 1e-6, tolerance 1e-4 relative (floor 1e-1), observed ≤ 1.9e-5;
 *   differences that move a ReLU6 input across 0 or 6 are left out (see Typed.watch);
 * - the transformer block twice: in float64 with the tanh GELU written as elementwise ops (tolerance 1e-5,
 *   floor 1e-2), and in float32 with the exact Erf GELU (fourth-order differences, ε = 3e-2, tolerance
 *   3e-3 relative, floor 1e-1; observed 3.9e-4).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendGradients, GRAD_RULES } from '../src/onnx/autodiff.js';
import { GraphBuilder } from '../src/onnx/builder.js';
import { DataType } from '../src/onnx/proto.js';
import { GraftError } from '../src/errors.js';
import { checkGradients, opTypesOf, type GradCase, type GradInput, type Typed } from './support/gradcheck.js';

const LINEAR32 = { float32: true, eps: 1, tol: 1e-4, floor: 1e-2 };
const SMOOTH32 = { float32: true, eps: 1e-2, tol: 2e-3, floor: 1e-2 };
const BLOCK32 = { float32: true, fourthOrder: true, eps: 3e-2, tol: 3e-3, floor: 1e-1 };
const REFERENCE32 = { float32: true, eps: 1e-6, tol: 1e-4, floor: 1e-1 };

const ints = (b: GraphBuilder, v: number[]) => b.int64('ints', v);
const I = (name: string, dims: number[], extra: Partial<GradInput> = {}): GradInput => ({ name, dims, wrt: true, ...extra });
const C = (name: string, dims: number[], extra: Partial<GradInput> = {}): GradInput => ({ name, dims, ...extra });

function convCase(name: string, x: number[], w: number[], attrs: Record<string, number | number[] | string>, opts: { bias?: boolean; decl?: Array<number | string>; staticOnly?: boolean; tol?: number } = {}): GradCase {
  return {
    name,
    ...LINEAR32,
    ...(opts.tol ? { tol: opts.tol } : {}),
    staticOnly: opts.staticOnly,
    inputs: [I('x', x, { decl: opts.decl }), I('w', w), ...(opts.bias ? [I('b', [w[0]!])] : [])],
    build: (b, v) => b.op('Conv', opts.bias ? [v.x!, v.w!, v.b!] : [v.x!, v.w!], attrs),
  };
}

/**
 * Convolutions written with ops that have float64 kernels (for reference forward graphs): 1x1 as MatMul,
 * depthwise 3x3 (pads 1, stride 1) as the sum of nine shifted slices times per-channel weights.
 */
function pointwiseByMatMul(b: GraphBuilder, x: string, w: string, dims: { m: number; c: number; h: number; w: number }): string {
  const flat = b.op('Reshape', [x, ints(b, [0, dims.c, dims.h * dims.w])]);
  const y = b.op('MatMul', [b.op('Reshape', [w, ints(b, [dims.m, dims.c])]), flat]);
  return b.op('Reshape', [y, ints(b, [0, dims.m, dims.h, dims.w])]);
}

function depthwise3x3BySlices(b: GraphBuilder, x: string, w: string, dims: { c: number; h: number; w: number }): string {
  const padded = b.op('Pad', [x, ints(b, [0, 0, 1, 1, 0, 0, 1, 1])]);
  const taps: string[] = [];
  for (let i = 0; i < 3; i++) {
    for (let j = 0; j < 3; j++) {
      const shifted = b.op('Slice', [padded, ints(b, [i, j]), ints(b, [i + dims.h, j + dims.w]), ints(b, [2, 3])]);
      const tap = b.op('Transpose', [b.op('Slice', [w, ints(b, [i, j]), ints(b, [i + 1, j + 1]), ints(b, [2, 3])])], { perm: [1, 0, 2, 3] }); // (1, C, 1, 1)
      taps.push(b.op('Mul', [shifted, tap]));
    }
  }
  return b.op('Sum', taps);
}

/** MobileNetV2 inverted residual: 1x1 expand → BN → ReLU6 → depthwise 3x3 → BN → ReLU6 → 1x1 project → BN → + x. */
function invertedResidual(training: boolean): GradCase {
  const [c, e, hw] = [4, 8, 6];
  const bnInputs = (p: string, n: number) => [I(`${p}s`, [n], { shift: 2.2, scale: 0.5 }), I(`${p}b`, [n], { shift: 2, scale: 1 }), C(`${p}m`, [n], { scale: 0.3 }), C(`${p}v`, [n], { kind: 'positive' })];
  const block = (reference: boolean) => (b: GraphBuilder, x: Record<string, string>, t: Typed) => {
    const bn = (h: string, p: string) => {
      const ins = [h, x[`${p}s`]!, x[`${p}b`]!, x[`${p}m`]!, x[`${p}v`]!];
      return training ? b.node('BatchNormalization', ins, { training_mode: 1 }, { outputs: 3 })[0]! : b.op('BatchNormalization', ins);
    };
    const relu6 = (h: string) => b.op('Clip', [t.watch(b, h, [0, 6]), t.scalar(b, 0), t.scalar(b, 6)]);
    const pointwise = (h: string, w: string, m: number, cin: number) => (reference ? pointwiseByMatMul(b, h, w, { m, c: cin, h: hw, w: hw }) : b.op('Conv', [h, w]));
    const depthwise = (h: string, w: string) =>
      reference ? depthwise3x3BySlices(b, h, w, { c: e, h: hw, w: hw }) : b.op('Conv', [h, w], { group: e, pads: [1, 1, 1, 1], kernel_shape: [3, 3] });
    let h = relu6(bn(pointwise(x.x!, x.w1!, e, c), 'n1'));
    h = relu6(bn(depthwise(h, x.wd!), 'n2'));
    h = bn(pointwise(h, x.w3!, c, e), 'n3');
    return b.op('Add', [h, x.x!]);
  };
  return {
    name: `MobileNetV2 inverted residual block, BatchNormalization ${training ? 'training' : 'inference'} mode (all weights and x)`,
    ...REFERENCE32,
    inputs: [
      I('x', [2, c, hw, hw], { decl: ['N', c, hw, hw] }),
      I('w1', [e, c, 1, 1], { scale: 0.5 }), ...bnInputs('n1', e),
      I('wd', [e, 1, 3, 3], { scale: 0.4 }), ...bnInputs('n2', e),
      I('w3', [c, e, 1, 1], { scale: 0.4 }), ...bnInputs('n3', c),
    ],
    build: block(false),
    reference: block(true),
  };
}

/**
 * Pre-norm transformer encoder block, one head: LN → QKV → softmax attention → Wo → +x → LN → W1 → GELU →
 * W2 → +. GELU exact (Erf, float32 only in ORT) or its tanh approximation from elementwise ops (float64).
 */
function transformerBlock(erf: boolean): GradCase {
  return {
    name: `Transformer encoder block (LayerNorm, attention, ${erf ? 'Erf-GELU' : 'tanh-GELU'} MLP; all weights and x)`,
    // float64: ORT's extended graph optimisations move float64 results by ~1e-8 absolute (fusions differ
    // between the static and Shape-based graphs; with optimisations off both agree exactly), hence floor 1e-2.
    ...(erf ? BLOCK32 : { floor: 1e-2 }),
    inputs: [
      I('x', [2, 4, 8], { decl: ['B', 4, 8] }),
      I('g1', [8], { shift: 1, scale: 0.2 }), I('c1', [8], { scale: 0.2 }),
      I('wq', [8, 8], { scale: 0.35 }), I('wk', [8, 8], { scale: 0.35 }), I('wv', [8, 8], { scale: 0.35 }), I('wo', [8, 8], { scale: 0.35 }),
      I('g2', [8], { shift: 1, scale: 0.2 }), I('c2', [8], { scale: 0.2 }),
      I('w1', [8, 16], { scale: 0.35 }), I('b1', [16], { scale: 0.2 }), I('w2', [16, 8], { scale: 0.25 }), I('b2', [8], { scale: 0.2 }),
    ],
    build: (b, x, t) => {
      const ln = (h: string, g: string, c: string) => b.op('LayerNormalization', [h, g, c], { axis: -1, epsilon: 1e-5 });
      const h = ln(x.x!, x.g1!, x.c1!);
      const [q, k, v] = [x.wq!, x.wk!, x.wv!].map((w) => b.op('MatMul', [h, w]));
      const scores = b.op('Mul', [b.op('MatMul', [q!, b.op('Transpose', [k!], { perm: [0, 2, 1] })]), t.scalar(b, 1 / Math.sqrt(8))]);
      const attended = b.op('MatMul', [b.op('Softmax', [scores], { axis: -1 }), v!]);
      const r1 = b.op('Add', [x.x!, b.op('MatMul', [attended, x.wo!])]);
      const f = b.op('Add', [b.op('MatMul', [ln(r1, x.g2!, x.c2!), x.w1!]), x.b1!]);
      const half = b.op('Mul', [f, t.scalar(b, 0.5)]);
      let gate: string;
      if (erf) gate = b.op('Erf', [b.op('Mul', [f, t.scalar(b, Math.SQRT1_2)])]);
      else {
        const cubic = b.op('Mul', [b.op('Mul', [b.op('Mul', [f, f]), f]), t.scalar(b, 0.044715)]);
        gate = b.op('Tanh', [b.op('Mul', [b.op('Add', [f, cubic]), t.scalar(b, Math.sqrt(2 / Math.PI))])]);
      }
      const gelu = b.op('Mul', [half, b.op('Add', [gate, t.scalar(b, 1)])]);
      return b.op('Add', [b.op('Add', [b.op('MatMul', [gelu, x.w2!]), x.b2!]), r1]);
    },
  };
}

/** ReLU6 then GlobalAveragePool then a linear map: the pooling gradient's Expand is folded into the mask's Mul. */
function relu6PoolCase(): GradCase {
  return {
    name: 'ReLU6 → GlobalAveragePool → MatMul (the pooled gradient broadcast, not expanded)',
    float32: true,
    eps: 1e-3,
    tol: 1e-4,
    floor: 1e-2,
    inputs: [I('x', [2, 6, 4, 4], { scale: 4, shift: 2, avoid: [0, 6] }), I('w', [6, 3])],
    build: (b, v, t) => {
      const r = b.op('Clip', [t.watch(b, v.x!, [0, 6]), t.scalar(b, 0), t.scalar(b, 6)]);
      return b.op('MatMul', [b.op('Flatten', [b.op('GlobalAveragePool', [r])]), v.w!]);
    },
    // Differences in float64 (ORT's GlobalAveragePool is float32-only: ReduceMean over H and W instead).
    reference: (b, v, t) => {
      const r = b.op('Clip', [t.watch(b, v.x!, [0, 6]), t.scalar(b, 0), t.scalar(b, 6)]);
      return b.op('MatMul', [b.op('Flatten', [b.op('ReduceMean', [r], { axes: [2, 3], keepdims: 1 })]), v.w!]);
    },
  };
}

const CASES: GradCase[] = [
  relu6PoolCase(),
  // Conv (float32: ORT has no float64 Conv/ConvTranspose)
  convCase('Conv 3x3 stride 2, pads 1, dilation 2, bias', [2, 3, 7, 7], [4, 3, 3, 3], { strides: [2, 2], pads: [1, 1, 1, 1], dilations: [2, 2] }, { bias: true }),
  convCase('Conv asymmetric pads [0,1,2,1], strides [1,2], 2x3 kernel', [2, 3, 6, 7], [5, 3, 2, 3], { strides: [1, 2], pads: [0, 1, 2, 1] }),
  convCase('Conv stride 3 (rows the windows never reach), pads 1', [2, 2, 8, 7], [3, 2, 3, 3], { strides: [3, 3], pads: [1, 1, 1, 1] }, { bias: true }),
  convCase('Conv grouped (group 2, C 4), stride 2, pads 1, symbolic batch', [2, 4, 6, 6], [6, 2, 3, 3], { group: 2, strides: [2, 2], pads: [1, 1, 1, 1] }, { bias: true, decl: ['N', 4, 6, 6] }),
  convCase('Conv depthwise 3x3 stride 2 pad 1 (MobileNetV2)', [2, 4, 7, 7], [4, 1, 3, 3], { group: 4, strides: [2, 2], pads: [1, 1, 1, 1] }, { bias: true }),
  convCase('Conv 3x3 stride 1 pads 1, bias (flipped-kernel input gradient)', [2, 3, 6, 5], [4, 3, 3, 3], { pads: [1, 1, 1, 1] }, { bias: true }),
  convCase('Conv 2x3 stride 1 asymmetric pads [1,0,0,2] (flipped kernel)', [2, 2, 5, 6], [3, 2, 2, 3], { pads: [1, 0, 0, 2] }),
  convCase('Conv depthwise 3x3 stride 1 pads [1,1,0,1] (flipped kernel)', [2, 4, 6, 6], [4, 1, 3, 3], { group: 4, pads: [1, 1, 0, 1] }, { bias: true, decl: ['N', 4, 6, 6] }),
  convCase('Conv 1x1 pointwise, symbolic batch (MatMul/Gemm gradients)', [3, 5, 4, 4], [6, 5, 1, 1], {}, { bias: true, decl: ['N', 5, 4, 4] }),
  convCase('Conv depthwise with channel multiplier 2', [2, 3, 5, 5], [6, 1, 3, 3], { group: 3, pads: [1, 1, 1, 1] }),
  convCase('Conv 1x1 pointwise', [2, 8, 4, 4], [4, 8, 1, 1], {}, { bias: true }),
  convCase('Conv auto_pad SAME_UPPER stride 2', [2, 2, 6, 5], [3, 2, 3, 3], { strides: [2, 2], auto_pad: 'SAME_UPPER' }, { staticOnly: true }),
  convCase('Conv auto_pad SAME_LOWER 2x2 kernel', [2, 2, 5, 5], [3, 2, 2, 2], { auto_pad: 'SAME_LOWER' }, { staticOnly: true }),
  convCase('Conv 1-D stride 2 pads [1,0]', [2, 3, 9], [4, 3, 3], { strides: [2], pads: [1, 0] }, { bias: true }),
  // Pooling
  { name: 'MaxPool 3x3 stride 2 pads 1 (overlapping windows)', inputs: [I('x', [2, 3, 7, 7])], build: (b, x) => b.op('MaxPool', [x.x!], { kernel_shape: [3, 3], strides: [2, 2], pads: [1, 1, 1, 1] }) },
  {
    name: 'MaxPool 2x2 with its Indices output, ceil_mode 1',
    inputs: [I('x', [2, 2, 5, 5])],
    build: (b, x) => b.node('MaxPool', [x.x!], { kernel_shape: [2, 2], strides: [2, 2], ceil_mode: 1 }, { outputs: 2 })[0]!,
  },
  { name: 'AveragePool 3x3 stride 2 pads 1, count_include_pad 0', ...LINEAR32, inputs: [I('x', [2, 3, 7, 7])], build: (b, x) => b.op('AveragePool', [x.x!], { kernel_shape: [3, 3], strides: [2, 2], pads: [1, 1, 1, 1] }) },
  {
    name: 'AveragePool 2x3 pads [0,1,1,0], count_include_pad 1',
    ...LINEAR32,
    inputs: [I('x', [2, 2, 5, 6])],
    build: (b, x) => b.op('AveragePool', [x.x!], { kernel_shape: [2, 3], pads: [0, 1, 1, 0], count_include_pad: 1 }),
  },
  { name: 'AveragePool 2x2 stride 2, symbolic batch', ...LINEAR32, inputs: [I('x', [2, 3, 6, 6], { decl: ['N', 3, 6, 6] })], build: (b, x) => b.op('AveragePool', [x.x!], { kernel_shape: [2, 2], strides: [2, 2] }) },
  // Normalisation (float64)
  {
    name: 'BatchNormalization inference mode',
    inputs: [I('x', [2, 3, 4, 4]), I('s', [3]), I('c', [3]), C('m', [3]), C('v', [3], { kind: 'positive' })],
    build: (b, x) => b.op('BatchNormalization', [x.x!, x.s!, x.c!, x.m!, x.v!], { epsilon: 1e-3 }),
  },
  {
    name: 'BatchNormalization training mode (running statistics outputs unused)',
    inputs: [I('x', [2, 3, 3, 3], { decl: ['N', 3, 3, 3] }), I('s', [3]), I('c', [3]), C('m', [3]), C('v', [3], { kind: 'positive' })],
    build: (b, x) => b.node('BatchNormalization', [x.x!, x.s!, x.c!, x.m!, x.v!], { training_mode: 1 }, { outputs: 3 })[0]!,
  },
  {
    name: 'BatchNormalization training mode on [N, C]',
    inputs: [I('x', [6, 4]), I('s', [4]), I('c', [4]), C('m', [4]), C('v', [4], { kind: 'positive' })],
    build: (b, x) => b.node('BatchNormalization', [x.x!, x.s!, x.c!, x.m!, x.v!], { training_mode: 1, epsilon: 1e-2 }, { outputs: 3 })[0]!,
  },
  {
    name: 'BatchNormalization training mode, input of unknown rank (via Expand to its own Shape)',
    inputs: [I('x', [2, 3, 2, 3]), I('s', [3]), I('c', [3]), C('m', [3]), C('v', [3], { kind: 'positive' })],
    build: (b, x) => b.node('BatchNormalization', [b.op('Expand', [x.x!, b.op('Shape', [x.x!])]), x.s!, x.c!, x.m!, x.v!], { training_mode: 1 }, { outputs: 3 })[0]!,
  },
  {
    name: 'LayerNormalization axis -1',
    inputs: [I('x', [2, 3, 5]), I('s', [5]), I('c', [5])],
    build: (b, x) => b.op('LayerNormalization', [x.x!, x.s!, x.c!], { axis: -1, epsilon: 1e-5 }),
  },
  {
    name: 'LayerNormalization axis 1 over [3, 4], no bias, symbolic batch',
    inputs: [I('x', [2, 3, 4], { decl: ['N', 3, 4] }), I('s', [3, 4])],
    build: (b, x) => b.op('LayerNormalization', [x.x!, x.s!], { axis: 1 }),
  },
  // Activations (float32: ORT has no float64 kernels for these)
  { name: 'HardSigmoid alpha 0.3 beta 0.4', ...SMOOTH32, inputs: [I('x', [3, 8], { scale: 2.5, avoid: [-4 / 3, 2] })], build: (b, x) => b.op('HardSigmoid', [x.x!], { alpha: 0.3, beta: 0.4 }) },
  { name: 'HardSwish', ...SMOOTH32, inputs: [I('x', [3, 8], { scale: 3, avoid: [-3, 3] })], build: (b, x) => b.op('HardSwish', [x.x!]) },
  { name: 'Erf', ...SMOOTH32, inputs: [I('x', [3, 5])], build: (b, x) => b.op('Erf', [x.x!]) },
  { name: 'Gelu (opset 20)', ...SMOOTH32, opset: 20, inputs: [I('x', [3, 6], { scale: 2 })], build: (b, x) => b.op('Gelu', [x.x!]) },
  { name: 'Gelu approximate tanh (opset 20)', ...SMOOTH32, opset: 20, inputs: [I('x', [3, 6], { scale: 2 })], build: (b, x) => b.op('Gelu', [x.x!], { approximate: 'tanh' }) },
  // Indexing and padding (float64)
  {
    name: 'Slice unit steps, constant bounds (negative start, end past the end)',
    inputs: [I('x', [3, 5, 4])],
    build: (b, x) => b.op('Slice', [x.x!, ints(b, [1, -3]), ints(b, [3, 1000]), ints(b, [0, 1])]),
  },
  {
    name: 'Slice steps 2 and -2',
    inputs: [I('x', [4, 6])],
    build: (b, x) => b.op('Slice', [x.x!, ints(b, [0, -1]), ints(b, [4, -7]), ints(b, [0, 1]), ints(b, [2, -2])]),
  },
  {
    name: 'Slice with bounds computed from Shape (dynamic)',
    inputs: [I('x', [3, 6])],
    build: (b, x) => {
      const end = b.op('Div', [b.op('Slice', [b.op('Shape', [x.x!]), ints(b, [1]), ints(b, [2])]), ints(b, [2])]);
      return b.op('Slice', [x.x!, ints(b, [1]), end, ints(b, [-1])]);
    },
  },
  {
    name: 'Gather axis 0 (embedding) with repeated and negative indices',
    inputs: [I('e', [5, 3]), C('i', [2, 4], { kind: 'int', values: [0, 3, 3, -1, 4, 0, 2, 3] })],
    build: (b, x) => b.op('Gather', [x.e!, x.i!]),
  },
  {
    name: 'Gather axis 1 with 2-D indices',
    inputs: [I('d', [2, 4, 3]), C('i', [2, 2], { kind: 'int', values: [3, 1, 1, 0] })],
    build: (b, x) => b.op('Gather', [x.d!, x.i!], { axis: 1 }),
  },
  {
    name: 'Gather axis -1 with a scalar index',
    inputs: [I('d', [2, 3, 4]), C('i', [], { kind: 'int', values: [2] })],
    build: (b, x) => b.op('Gather', [x.d!, x.i!], { axis: -1 }),
  },
  {
    name: 'Pad constant, pads and value as inputs (value differentiated)',
    inputs: [I('x', [2, 3, 4]), I('v', [], { values: [0.7] })],
    build: (b, x) => b.op('Pad', [x.x!, ints(b, [0, 1, 2, 1, 0, 1]), x.v!]),
  },
  { name: 'Pad with negative pads (crop)', inputs: [I('x', [2, 5])], build: (b, x) => b.op('Pad', [x.x!, ints(b, [0, -1, 1, 2])]) },
  { name: 'Pad with axes (opset 18)', opset: 18, inputs: [I('x', [2, 3, 4])], build: (b, x) => b.op('Pad', [x.x!, ints(b, [1, 2, 0, 1]), '', ints(b, [-1, 0])]) },
  { name: 'ReduceMax axes [1] keepdims 0', inputs: [I('x', [2, 3, 4])], build: (b, x) => b.op('ReduceMax', [x.x!], { axes: [1], keepdims: 0 }) },
  { name: 'ReduceMin all keepdims 1', inputs: [I('x', [2, 3])], build: (b, x) => b.op('ReduceMin', [x.x!]) },
  // Blocks, end to end
  invertedResidual(false),
  invertedResidual(true),
  transformerBlock(false),
  transformerBlock(true),
];

CASES.forEach((c, i) => {
  test(`gradient: ${c.name}`, async () => {
    await checkGradients(c, 2000 + i);
  });
});

/** The rules this file verifies (test/autodiff.test.ts covers the others). */
const RULES_CHECKED_HERE = [
  'Conv', 'MaxPool', 'AveragePool', 'BatchNormalization', 'LayerNormalization', 'HardSigmoid', 'HardSwish', 'Erf', 'Gelu',
  'Slice', 'Gather', 'Pad', 'ReduceMax', 'ReduceMin',
];

test('every CNN/transformer rule is in GRAD_RULES and exercised by a case above', () => {
  const covered = opTypesOf(CASES);
  assert.deepEqual(RULES_CHECKED_HERE.filter((op) => !Object.hasOwn(GRAD_RULES, op) || !covered.has(op)), []);
});

test('auto_pad SAME without static spatial sizes is refused with a clear error', () => {
  const b = new GraphBuilder('same');
  const x = b.input('x', DataType.FLOAT, ['N', 2, 'H', 'W']);
  const w = b.input('w', DataType.FLOAT, [3, 2, 3, 3]);
  const y = b.op('Conv', [x, w], { auto_pad: 'SAME_UPPER', strides: [2, 2] }, { name: 'conv_same' });
  const loss = b.op('ReduceSum', [y], { keepdims: 0 });
  assert.throws(
    () => appendGradients(b, { loss, wrt: [x, w] }),
    (e: unknown) => e instanceof GraftError && e.code === 'MODEL' && e.context.node === 'conv_same' && /^Conv node conv_same: auto_pad SAME_UPPER needs the static spatial size/.test(e.message),
  );
});

test('Pad in reflect mode is refused', () => {
  const b = new GraphBuilder('reflect');
  const x = b.input('x', DataType.DOUBLE, [2, 3]);
  const y = b.op('Pad', [x, ints(b, [0, 1, 0, 1])], { mode: 'reflect' }, { name: 'pad_reflect' });
  const loss = b.op('ReduceSum', [y], { keepdims: 0 });
  assert.throws(() => appendGradients(b, { loss, wrt: [x] }), (e: unknown) => e instanceof GraftError && /Pad node pad_reflect: mode reflect is not supported/.test(e.message));
});

test('a pooled gradient reaches the ReLU6 mask by broadcasting: no Expand is left', () => {
  const c = relu6PoolCase();
  const b = new GraphBuilder('pool');
  const x = b.input('x', DataType.FLOAT, [2, 6, 4, 4]);
  const w = b.input('w', DataType.FLOAT, [6, 3]);
  const y = c.build(b, { x, w }, { scalar: (bb, v) => bb.constant('k', Float32Array.of(v), []), tensor: (bb, v, d) => bb.constant('k', Float32Array.from(v), d), watch: (_bb, name) => name });
  const loss = b.op('ReduceSum', [y], { keepdims: 0 });
  const grads = appendGradients(b, { loss, wrt: [x, w] });
  const producer = (t: string) => b.nodes.find((n) => n.output?.includes(t));
  const mask = producer(grads.get(x)!)!;
  assert.equal(mask.opType, 'Mul');
  assert.ok(!mask.input!.some((t) => producer(t)?.opType === 'Expand'), 'the pooled gradient is still expanded before the mask');
});

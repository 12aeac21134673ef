/**
 * Gradient rules for CNN backbones and transformer encoders (Conv, pooling, BatchNormalization,
 * LayerNormalization, hard activations, GELU, Slice, Gather, Pad, ReduceMax/Min), checked against central
 * finite differences of the forward graph in onnxruntime-node, like test/autodiff.test.ts: each case builds
 * loss = ReduceSum(op(...) · R) with a fixed random R, and each case runs with static shapes and with
 * `useStaticShapes: false` (the Shape-based forms of the rules).
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
import * as ort from 'onnxruntime-node';
import { appendGradients, GRAD_RULES } from '../src/onnx/autodiff.js';
import { GraphBuilder } from '../src/onnx/builder.js';
import { DataType, encodeModel } from '../src/onnx/proto.js';
import { GraftError } from '../src/errors.js';
import { Random } from '../src/util/random.js';

type Kind = 'normal' | 'positive' | 'int';

interface InputSpec {
  name: string;
  dims: number[];
  /** Declared shape, when it should differ from dims (symbolic sizes). */
  decl?: Array<number | string>;
  kind?: Kind;
  /** For 'int': values drawn from [0, max). */
  max?: number;
  /** Fixed values instead of random ones. */
  values?: number[];
  /** Multiplies random values (normal or positive). */
  scale?: number;
  /** Offset added to random values. */
  shift?: number;
  /** Kinks of the op: random values closer than 0.05 to one are moved 0.1 away from it. */
  avoid?: number[];
  wrt?: boolean;
}

/** Constants of the case's float type, and kink watching for piecewise-smooth blocks. */
interface Typed {
  scalar(b: GraphBuilder, v: number): string;
  tensor(b: GraphBuilder, values: number[], dims: number[]): string;
  /**
   * Marks t as the input of a piecewise op with kinks at `at` (ReLU6: 0 and 6); returns t. A finite
   * difference whose two evaluations put an element of t on different sides of a kink is not a derivative
   * and is left out of the comparison (at most 10% of a tensor's elements may be left out).
   */
  watch(b: GraphBuilder, t: string, at: number[]): string;
}

interface Case {
  name: string;
  inputs: InputSpec[];
  build(b: GraphBuilder, x: Record<string, string>, t: Typed): string;
  isLoss?: boolean;
  /** ORT has no float64 kernel for the op: run in float32 (see the header for ε and tolerances). */
  float32?: boolean;
  eps?: number;
  tol?: number;
  floor?: number;
  opset?: number;
  /**
   * A float64 forward graph of the same function built from ops that ORT has float64 kernels for: the
   * finite differences of a float32 case are then taken on it (ε, tolerances as given).
   */
  reference?(b: GraphBuilder, x: Record<string, string>, t: Typed): string;
  /** Fourth-order differences (f(x±ε), f(x±2ε)): larger ε for smooth float32 cases, less rounding noise. */
  fourthOrder?: boolean;
  /** The rule needs static sizes (auto_pad SAME): the dynamic run must refuse it with a GraftError. */
  staticOnly?: boolean;
}

const LINEAR32 = { float32: true, eps: 1, tol: 1e-4, floor: 1e-2 };
const SMOOTH32 = { float32: true, eps: 1e-2, tol: 2e-3, floor: 1e-2 };
const BLOCK32 = { float32: true, fourthOrder: true, eps: 3e-2, tol: 3e-3, floor: 1e-1 };
const REFERENCE32 = { float32: true, eps: 1e-6, tol: 1e-4, floor: 1e-1 };

const ints = (b: GraphBuilder, v: number[]) => b.int64('ints', v);
const I = (name: string, dims: number[], extra: Partial<InputSpec> = {}): InputSpec => ({ name, dims, wrt: true, ...extra });
const C = (name: string, dims: number[], extra: Partial<InputSpec> = {}): InputSpec => ({ name, dims, ...extra });

function convCase(name: string, x: number[], w: number[], attrs: Record<string, number | number[] | string>, opts: { bias?: boolean; decl?: Array<number | string>; staticOnly?: boolean; tol?: number } = {}): Case {
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
function invertedResidual(training: boolean): Case {
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
function transformerBlock(erf: boolean): Case {
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

const CASES: Case[] = [
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

// ---------------------------------------------------------------------------------------------------

type Feeds = Record<string, ort.Tensor>;

function makeData(spec: InputSpec, rng: Random): Float64Array | BigInt64Array {
  const size = spec.dims.reduce((a, b) => a * b, 1);
  if (spec.kind === 'int') return BigInt64Array.from(spec.values ?? Array.from({ length: size }, () => rng.int(spec.max ?? 2)), (v) => BigInt(v));
  if (spec.values) return Float64Array.from(spec.values);
  return Float64Array.from({ length: size }, () => {
    let v = (spec.shift ?? 0) + (spec.scale ?? 1) * (spec.kind === 'positive' ? 0.5 + rng.next() * 1.5 : rng.normal());
    for (const k of spec.avoid ?? []) if (Math.abs(v - k) < 0.05) v = k + (v < k ? -0.1 : 0.1);
    return v;
  });
}

function toTensor(data: Float64Array | BigInt64Array, dims: number[], float32: boolean): ort.Tensor {
  if (data instanceof BigInt64Array) return new ort.Tensor('int64', data, dims);
  return float32 ? new ort.Tensor('float32', Float32Array.from(data), dims) : new ort.Tensor('float64', data, dims);
}

function typed(float32: boolean, watched?: Array<{ name: string; at: number[] }>): Typed {
  const arr = (v: number[]) => (float32 ? Float32Array.from(v) : Float64Array.from(v));
  return {
    scalar: (b, v) => b.constant('k', arr([v]), []),
    tensor: (b, v, dims) => b.constant('k', arr(v), dims),
    watch: (_b, t, at) => {
      watched?.push({ name: t, at });
      return t;
    },
  };
}

function declare(b: GraphBuilder, c: Case, fType: number): Record<string, string> {
  const names: Record<string, string> = {};
  for (const s of c.inputs) names[s.name] = b.input(s.name, s.kind === 'int' ? DataType.INT64 : fType, s.decl ?? s.dims);
  return names;
}

async function checkCase(c: Case, seed: number): Promise<void> {
  const f32 = c.float32 ?? false;
  const fType = f32 ? DataType.FLOAT : DataType.DOUBLE;
  const t = typed(f32);
  const opset = c.opset ?? 17;
  const rng = new Random(seed);
  // float32 cases get float32-representable data, so that a float64 reference sees the same point.
  const data = Object.fromEntries(c.inputs.map((s) => {
    const d = makeData(s, rng);
    return [s.name, f32 && d instanceof Float64Array ? d.map(Math.fround) : d];
  }));
  const feedsOf = (d: typeof data, asF32 = f32): Feeds => Object.fromEntries(c.inputs.map((s) => [s.name, toTensor(d[s.name]!, s.dims, asF32)]));

  // The forward graph outputs op(...) itself (and the watched kink inputs); Σ R·y is summed in float64 here.
  // With a reference, the differences are taken on it in float64, after checking that it matches build.
  const fwd = new GraphBuilder('forward');
  const watched: Array<{ name: string; at: number[] }> = [];
  const ref = c.reference !== undefined;
  const out = (c.reference ?? c.build)(fwd, declare(fwd, c, ref ? DataType.DOUBLE : fType), typed(f32 && !ref, watched));
  fwd.outputs.push({ name: out }, ...watched.map((w) => ({ name: w.name })));
  const fwdSession = await ort.InferenceSession.create(encodeModel(fwd.model(opset)));
  const fwdFeeds = (d: typeof data) => feedsOf(d, f32 && !ref);
  const first = (await fwdSession.run(fwdFeeds(data)))[out]!;
  const dims = [...first.dims];
  if (ref) {
    const b = new GraphBuilder('build');
    const y = c.build(b, declare(b, c, fType), t);
    b.outputs.push({ name: y });
    const session = await ort.InferenceSession.create(encodeModel(b.model(opset)));
    const got = (await session.run(feedsOf(data)))[y]!;
    await session.release();
    assert.deepEqual([...got.dims], dims);
    const want = first.data as Float64Array;
    const diff = Math.max(...Array.from(got.data as Float32Array, (v, i) => Math.abs(v - want[i]!) / Math.max(1, Math.abs(want[i]!))));
    assert.ok(diff < 1e-5, `${c.name}: the float64 reference differs from the graph by ${diff.toExponential(2)}`);
  }
  if (process.env.GRAFT_GRAD_VERBOSE && watched.length) {
    const r = await fwdSession.run(fwdFeeds(data));
    for (const w of watched) {
      const v = r[w.name]!.data as Float64Array;
      console.log(`${c.name}: ${w.name} below/inside/above the kinks: ${w.at.map((_, k) => v.filter((x) => w.at.filter((a) => x > a).length === k).length).join('/')}/${v.filter((x) => x > w.at[w.at.length - 1]!).length}`);
    }
  }
  const weights = c.isLoss ? Float64Array.of(1) : Float64Array.from({ length: first.data.length }, () => rng.normal());
  /** Σ R·y, and for every watched element the number of kinks below it. */
  const lossAt = async (d: typeof data): Promise<{ loss: number; sides: number[] }> => {
    const result = await fwdSession.run(fwdFeeds(d));
    const y = result[out]!.data as Float32Array | Float64Array;
    let loss = 0;
    for (let i = 0; i < y.length; i++) loss += y[i]! * weights[i]!;
    const sides: number[] = [];
    for (const w of watched) for (const v of result[w.name]!.data as Float32Array) sides.push(w.at.filter((k) => v > k).length);
    return { loss, sides };
  };

  const wrt = c.inputs.filter((s) => s.wrt);
  const eps = c.eps ?? (f32 ? 1e-2 : 1e-6);
  const numeric = new Map<string, Float64Array>(); // NaN: a kink was crossed
  for (const s of wrt) {
    const base = data[s.name] as Float64Array;
    const g = new Float64Array(base.length);
    for (let i = 0; i < base.length; i++) {
      const at = (h: number) => {
        const moved = Float64Array.from(base);
        moved[i]! += h;
        return lossAt({ ...data, [s.name]: moved });
      };
      const [hi, lo] = [await at(eps), await at(-eps)];
      if (!hi.sides.every((v, j) => v === lo.sides[j])) g[i] = NaN;
      else if (!c.fourthOrder) g[i] = (hi.loss - lo.loss) / (2 * eps);
      else g[i] = (8 * (hi.loss - lo.loss) - ((await at(2 * eps)).loss - (await at(-2 * eps)).loss)) / (12 * eps);
    }
    const crossed = g.filter((v) => Number.isNaN(v)).length;
    assert.ok(crossed <= 0.1 * g.length, `${c.name}: ${crossed} of ${g.length} differences in ${s.name} cross a kink`);
    if (process.env.GRAFT_GRAD_VERBOSE && crossed) console.log(`${c.name}: ${crossed}/${g.length} differences in ${s.name} cross a kink`);
    numeric.set(s.name, g);
  }
  await fwdSession.release();

  const tol = c.tol ?? 1e-5;
  const floor = c.floor ?? 1e-3;
  for (const useStaticShapes of [true, false]) {
    const b = new GraphBuilder('grad');
    const y = c.build(b, declare(b, c, fType), t);
    const loss = c.isLoss ? y : b.op('ReduceSum', [b.op('Mul', [y, t.tensor(b, [...weights], dims)])], { keepdims: 0 });
    if (c.staticOnly && !useStaticShapes) {
      assert.throws(() => appendGradients(b, { loss, wrt: wrt.map((s) => s.name), useStaticShapes }), (e: unknown) => e instanceof GraftError && e.code === 'MODEL' && /auto_pad/.test(e.message));
      continue;
    }
    const grads = appendGradients(b, { loss, wrt: wrt.map((s) => s.name), useStaticShapes });
    b.output(loss, fType, []);
    for (const s of wrt) b.output(grads.get(s.name)!, fType, s.dims);
    const session = await ort.InferenceSession.create(encodeModel(b.model(opset)));
    const result = await session.run(feedsOf(data), wrt.map((s) => grads.get(s.name)!));
    await session.release();
    let worstAll = 0;
    for (const s of wrt) {
      const a = Float64Array.from(result[grads.get(s.name)!]!.data as Float64Array | Float32Array);
      const n = numeric.get(s.name)!;
      assert.equal(a.length, n.length, `${c.name}: gradient of ${s.name} has ${a.length} values, expected ${n.length}`);
      let worst = 0;
      // In float32 the differences carry the loss's rounding error, which scales with the whole tensor, not
      // with each entry: entries far below the tensor's largest are compared against 1% of it.
      let largest = 0;
      for (const v of n) if (!Number.isNaN(v)) largest = Math.max(largest, Math.abs(v));
      const tensorFloor = c.float32 ? Math.max(floor, 1e-2 * largest) : floor;
      for (let i = 0; i < a.length; i++) if (!Number.isNaN(n[i]!)) worst = Math.max(worst, Math.abs(a[i]! - n[i]!) / Math.max(Math.abs(n[i]!), tensorFloor));
      worstAll = Math.max(worstAll, worst);
      if (process.env.GRAFT_GRAD_VERBOSE === '2') {
        const k = a.findIndex((v, i) => Math.abs(v - n[i]!) / Math.max(Math.abs(n[i]!), tensorFloor) === worst);
        console.log(`  ${s.name}: worst ${worst.toExponential(2)} at ${k}: autodiff ${a[k]} numeric ${n[k]}`);
      }
      assert.ok(worst < tol, `${c.name} (static shapes ${useStaticShapes}): d/d${s.name} max relative error ${worst.toExponential(2)}\n  autodiff ${[...a].map((v) => v.toFixed(6))}\n  numeric  ${[...n].map((v) => v.toFixed(6))}`);
    }
    if (process.env.GRAFT_GRAD_VERBOSE) console.log(`${c.name} static=${useStaticShapes}: worst ${worstAll.toExponential(2)} (tol ${tol})`);
  }
}

CASES.forEach((c, i) => {
  test(`gradient: ${c.name}`, async () => {
    await checkCase(c, 2000 + i);
  });
});

/** The rules this file verifies (test/autodiff.test.ts covers the others). */
const RULES_CHECKED_HERE = [
  'Conv', 'MaxPool', 'AveragePool', 'BatchNormalization', 'LayerNormalization', 'HardSigmoid', 'HardSwish', 'Erf', 'Gelu',
  'Slice', 'Gather', 'Pad', 'ReduceMax', 'ReduceMin',
];

test('every CNN/transformer rule is in GRAD_RULES and exercised by a case above', () => {
  const covered = new Set<string>();
  for (const c of CASES) {
    const b = new GraphBuilder('ops');
    c.build(b, declare(b, c, DataType.DOUBLE), typed(false));
    for (const n of b.nodes) covered.add(n.opType!);
  }
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

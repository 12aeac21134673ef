/**
 * Reverse-mode autodiff over ONNX nodes. The backward pass is emitted as standard ONNX ops into the same
 * GraphBuilder, so the ordinary ONNX Runtime inference build executes training.
 *
 * Shaped like tinygrad's `gradient.py`: prune the graph to the nodes on a path from a `wrt` tensor to the
 * loss, walk them in reverse topological order, and look every op up in one table (`GRAD_RULES`) whose
 * rules return one gradient (or null) per input. Gradients that meet at a tensor are summed.
 */
import { GraftError } from '../errors.js';
import type { AttrValue, GraphBuilder } from './builder.js';
import { attrInt, attrInts, constantInts, DataType, tensor, tensorToFloat32, toNumber, type AttributeProto, type NodeProto, type TensorProto, type ValueInfoProto } from './proto.js';
import { declaredShapes, inferShapes, isSize, provablyEqual, topologicalOrder, type Dim, type StaticShape } from './shapes.js';

export type { Dim, StaticShape } from './shapes.js';

export interface GradientOptions {
  /** Name of the scalar loss tensor. */
  loss: string;
  /** Tensors (usually weight inputs or initializers) to differentiate the loss with respect to. */
  wrt: readonly string[];
  /**
   * Known static shapes of tensors, added to those read from the builder's inputs and initializers. They
   * let the backward pass skip `Shape`-based work (e.g. an unbroadcast that is provably a no-op); a
   * gradient graph built without them is equally correct. Ranks also pick MatMul's gradient form: an
   * operand of unknown rank falls back to Einsum, which handles equal batch ranks only.
   */
  shapes?: ReadonlyMap<string, StaticShape> | Readonly<Record<string, StaticShape>>;
  /** Element type of the gradients (DataType.FLOAT or DataType.DOUBLE); inferred from `wrt` by default. */
  elemType?: number;
  /**
   * Use static sizes where they are known (default true); false emits the dynamic form (Shape ops)
   * everywhere, for any batch size. Ranks are used either way.
   */
  useStaticShapes?: boolean;
}

/** What a gradient rule sees: the forward node, the gradients of its outputs, and emitting helpers. */
export interface GradContext {
  readonly node: NodeProto;
  readonly op: string;
  /** The node's inputs; '' for an omitted optional input. */
  readonly inputs: readonly string[];
  readonly outputs: readonly string[];
  /** Gradient of each output, null where no gradient reaches that output. */
  readonly dys: readonly (string | null)[];
  /** Gradient of output 0 (throws if none reaches it; only multi-output rules need to check `dys`). */
  readonly dy: string;
  readonly builder: GraphBuilder;
  readonly elemType: number;
  /** Whether input i needs a gradient (it depends on a `wrt` tensor); rules skip work for the others. */
  needs(i: number): boolean;
  attrInt(name: string, fallback: number): number;
  attrFloat(name: string, fallback: number): number;
  attrInts(name: string): number[] | undefined;
  attrString(name: string, fallback: string): string;
  /** Emits a single-output node; returns its output name. */
  emit(op: string, inputs: readonly string[], attrs?: Record<string, AttrValue | undefined>): string;
  /** A scalar constant of the gradient element type. */
  scalar(value: number): string;
  /** A 1-D int64 constant. */
  ints(values: readonly number[]): string;
  /** `Shape(t)`, emitted once per tensor. */
  shapeOf(t: string): string;
  /** Static shape of a forward tensor, if known. */
  staticShape(t: string): StaticShape | undefined;
  /** Element type of a forward tensor, if known. */
  typeOf(t: string): number | undefined;
  /** The initializer named t, if t is one. */
  initializer(t: string): TensorProto | undefined;
  /**
   * Sums `grad` over the axes along which `input` was broadcast, then reshapes it to `input`'s shape.
   * `gradShape` is grad's static shape (default: that of the node's output 0; null: unknown).
   */
  unbroadcast(grad: string, input: string, gradShape?: StaticShape | null): string;
  /** `Reshape(grad, Shape(t))`, with a constant shape when t's is known. */
  reshapeLike(grad: string, t: string): string;
}

/** One gradient name (or null) per input of the node. */
export type GradRule = (ctx: GradContext) => (string | null)[];

const FLOAT_TYPES = new Set<number>([DataType.FLOAT, DataType.DOUBLE, DataType.FLOAT16, DataType.BFLOAT16]);

/** Ops whose outputs never carry a gradient (comparisons, shapes, indices). */
const NON_DIFFERENTIABLE_OPS = new Set([
  'Shape', 'Size', 'Equal', 'Greater', 'Less', 'GreaterOrEqual', 'LessOrEqual', 'Not', 'And', 'Or', 'Xor',
  'ArgMax', 'ArgMin', 'NonZero', 'ConstantOfShape', 'Range', 'Constant', 'IsNaN', 'IsInf', 'Sign', 'Floor', 'Ceil', 'Round',
]);

/** Input positions that are shapes, axes, indices or labels: no gradient flows through them. */
const INDEX_INPUTS: Readonly<Record<string, readonly number[]>> = {
  Reshape: [1], Expand: [1], Squeeze: [1], Unsqueeze: [1], ReduceSum: [1], ReduceMean: [1],
  SoftmaxCrossEntropyLoss: [1], Dropout: [1, 2], Tile: [1], Slice: [1, 2, 3, 4], Gather: [1], OneHot: [0, 1],
  ReduceMax: [1], ReduceMin: [1], ReduceL2: [1], Pad: [1, 3], Split: [1],
  Where: [0], // the condition
  // Running statistics: in inference mode they are frozen buffers, in training mode they do not reach Y.
  BatchNormalization: [3, 4],
};

/** Output positions that carry no gradient. */
const INDEX_OUTPUTS: Readonly<Record<string, readonly number[]>> = {
  Dropout: [1],
  MaxPool: [1], // Indices
  BatchNormalization: [1, 2], // running_mean / running_var updates (training mode)
};

function isDifferentiableNode(node: NodeProto): boolean {
  const op = node.opType ?? '';
  if (NON_DIFFERENTIABLE_OPS.has(op)) return false;
  if (op === 'Cast') {
    const to = node.attribute?.find((a) => a.name === 'to');
    return FLOAT_TYPES.has(toNumber(to?.i as number | undefined));
  }
  return true;
}

const diffInput = (node: NodeProto, i: number) => !(INDEX_INPUTS[node.opType ?? '']?.includes(i) ?? false);
const diffOutput = (node: NodeProto, i: number) => !(INDEX_OUTPUTS[node.opType ?? '']?.includes(i) ?? false);

// ---------------------------------------------------------------------------------------------------
// The rules
// ---------------------------------------------------------------------------------------------------

const unary = (f: (c: GradContext, x: string, y: string) => string): GradRule => (c) => [f(c, c.inputs[0]!, c.outputs[0]!)];
const passThrough: GradRule = (c) => [c.dy];
/** Rules for ops whose extra inputs (shape, axes) are not differentiable: grad reshaped back to x. */
const reshapeBack: GradRule = (c) => [c.reshapeLike(c.dy, c.inputs[0]!), ...c.inputs.slice(1).map(() => null)];

/** Grad of a Reduce* node broadcast back to x's shape (before the ReduceMean scale). */
function expandReduced(c: GradContext, dy: string): string {
  const x = c.inputs[0]!;
  let g = dy;
  if (c.attrInt('keepdims', 1) === 0) {
    // keepdims=0 removed the reduced axes; Unsqueeze restores them (negative axes count from x's rank in
    // both ops). With no axes everything was reduced to a scalar, which Expand broadcasts directly.
    const axesAttr = c.attrInts('axes');
    const axes = c.inputs[1] || (axesAttr && axesAttr.length > 0 ? c.ints(axesAttr) : undefined);
    if (axes) g = c.emit('Unsqueeze', [g, axes]);
  }
  return c.emit('Expand', [g, c.shapeOf(x)]);
}

function reducesNothing(c: GradContext): boolean {
  const noAxes = !c.inputs[1] && !(c.attrInts('axes')?.length);
  return noAxes && c.attrInt('noop_with_empty_axes', 0) === 1;
}

/** Number of elements of a forward tensor as a scalar of the gradient type. */
function countOf(c: GradContext, t: string): string {
  const s = c.staticShape(t);
  if (s && s.every((d) => typeof d === 'number' && d >= 0)) return c.scalar((s as number[]).reduce((a, b) => a * b, 1));
  return c.emit('Cast', [c.emit('Size', [t])], { to: c.elemType });
}

/**
 * A scalar shaped as ones of t's rank, to multiply t-shaped tensors with: ONNX Runtime multiplies an
 * (N, C, 1, 1) tensor by a rank-0 scalar 40x slower than by a (1, 1, 1, 1) one (0.6 ms vs 17 µs, 32×1280).
 */
function ofRank(c: GradContext, scalar: string, t: string): string {
  const rank = c.staticShape(t)?.length;
  return rank ? c.emit('Reshape', [scalar, c.ints(Array<number>(rank).fill(1))]) : scalar;
}

const lastTwoSwapped = (rank: number) => [...Array.from({ length: rank - 2 }, (_, i) => i), rank - 1, rank - 2];

function softmaxBackward(c: GradContext, dy: string, y: string, axis: number): string {
  const s = c.emit('ReduceSum', [c.emit('Mul', [dy, y]), c.ints([axis])], { keepdims: 1 });
  return c.emit('Mul', [y, c.emit('Sub', [dy, s])]);
}

function logSoftmaxBackward(c: GradContext, dy: string, logp: string, axis: number): string {
  const s = c.emit('ReduceSum', [dy, c.ints([axis])], { keepdims: 1 });
  return c.emit('Sub', [dy, c.emit('Mul', [c.emit('Exp', [logp]), s])]);
}

// ---------------------------------------------------------------------------------------------------
// Helpers for convolution, pooling, normalisation and indexing rules
// ---------------------------------------------------------------------------------------------------

const range = (from: number, to: number) => Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i);

function refuse(c: GradContext, why: string): never {
  throw new GraftError('MODEL', `${c.op} node ${c.node.name}: ${why}`, { node: c.node.name, op: c.op });
}

/**
 * A 1-D int64 shape tensor from constant sizes and dynamic parts (1-D int64 tensors): a constant when all
 * parts are numbers, else a Concat.
 */
function shapeVec(c: GradContext, parts: ReadonlyArray<number | string>): string {
  if (parts.every((p) => typeof p === 'number')) return c.ints(parts as number[]);
  const pieces: string[] = [];
  let run: number[] = [];
  for (const p of parts) {
    if (typeof p === 'number') {
      run.push(p);
      continue;
    }
    if (run.length) pieces.push(c.ints(run));
    run = [];
    pieces.push(p);
  }
  if (run.length) pieces.push(c.ints(run));
  return c.emit('Concat', pieces, { axis: 0 });
}

/** Dims [from, to) of forward tensor t: numbers when all are static, else one 1-D slice of Shape(t). */
function dimsOf(c: GradContext, t: string, from: number, to: number): number[] | string {
  const part = c.staticShape(t)?.slice(from, to);
  if (part && part.length === to - from && part.every(isSize)) return part as number[];
  return c.emit('Slice', [c.shapeOf(t), c.ints([from]), c.ints([to]), c.ints([0])]);
}

const parts = (d: number[] | string): Array<number | string> => (typeof d === 'string' ? [d] : d);

/** A tensor of the gradient type filled with `value`, shaped by a 1-D int64 shape tensor. */
function filled(c: GradContext, shape: string, value: number): string {
  const v = c.elemType === DataType.DOUBLE ? Float64Array.of(value) : Float32Array.of(value);
  return c.emit('ConstantOfShape', [shape], { value: tensor('', v, [1]) });
}

function int64Scalar(c: GradContext, v: number): string {
  return c.builder.constant('grad_i64', BigInt64Array.of(BigInt(v)), []);
}

/** Σ over `axes` (keepdims) divided by the number of elements summed: a ReduceMean that needs no opset 18. */
function meanOver(c: GradContext, t: string, axes: readonly number[], count: string): string {
  return c.emit('Div', [c.emit('ReduceSum', [t, c.ints(axes)], { keepdims: 1 }), count]);
}

/** How many elements of forward tensor x a reduction over `axes` sums into each output element. */
function countOver(c: GradContext, x: string, axes: readonly number[], reduced: string): string {
  const s = c.staticShape(x);
  if (s) {
    const ds = axes.map((a) => s[a < 0 ? a + s.length : a]);
    if (ds.every(isSize)) return c.scalar((ds as number[]).reduce((a, b) => a * b, 1));
  }
  const size = (t: string) => c.emit('Cast', [c.emit('Size', [t])], { to: c.elemType });
  return c.emit('Div', [size(x), size(reduced)]);
}

/**
 * Scatters `updates` into zeros shaped like forward tensor x, at flat (row-major) element indices `flatIdx`
 * (any shape, same element count as updates); `add` sums duplicates.
 */
function scatterFlat(c: GradContext, x: string, flatIdx: string, updates: string, add: boolean): string {
  const s = c.staticShape(x);
  const size = s && s.every(isSize) ? c.ints([(s as number[]).reduce((a, b) => a * b, 1)]) : c.emit('Reshape', [c.emit('Size', [x]), c.ints([1])]);
  const flat = (t: string) => c.emit('Reshape', [t, c.ints([-1])]);
  const out = c.emit('ScatterElements', [filled(c, size, 0), flat(flatIdx), flat(updates)], { axis: 0, reduction: add ? 'add' : undefined });
  return c.reshapeLike(out, x);
}

/** Geometry of a convolution or pooling window over the spatial axes of x. */
interface Window {
  rank: number;
  /** Kernel sizes, undefined where unknown (a Conv weight of unknown shape without kernel_shape). */
  kernel: Array<number | undefined>;
  strides: number[];
  dilations: number[];
  /** Explicit pads [begin…, end…] (auto_pad resolved). */
  pads: number[];
}

function windowOf(c: GradContext, x: string, kernel: Array<number | undefined>): Window {
  const rank = kernel.length;
  const strides = c.attrInts('strides') ?? kernel.map(() => 1);
  const dilations = c.attrInts('dilations') ?? kernel.map(() => 1);
  const autoPad = c.attrString('auto_pad', 'NOTSET');
  let pads = c.attrInts('pads') ?? Array<number>(2 * rank).fill(0);
  if (autoPad === 'VALID') pads = Array<number>(2 * rank).fill(0);
  else if (autoPad === 'SAME_UPPER' || autoPad === 'SAME_LOWER') {
    const spatial = c.staticShape(x)?.slice(2);
    pads = Array<number>(2 * rank).fill(0);
    for (let i = 0; i < rank; i++) {
      const [h, k] = [spatial?.[i], kernel[i]];
      if (!isSize(h) || k === undefined) {
        refuse(c, `auto_pad ${autoPad} needs the static spatial size of input ${x} and of the kernel to compute its gradient; export the model with explicit pads or give appendGradients its shape`);
      }
      const total = Math.max(0, (Math.ceil(h / strides[i]!) - 1) * strides[i]! + (k - 1) * dilations[i]! + 1 - h);
      const head = autoPad === 'SAME_UPPER' ? Math.floor(total / 2) : Math.ceil(total / 2);
      pads[i] = head;
      pads[i + rank] = total - head;
    }
  } else if (autoPad !== 'NOTSET') refuse(c, `unknown auto_pad ${autoPad}`);
  return { rank, kernel, strides, dilations, pads };
}

/**
 * Spatial sizes a window's input had, and its output has, when static; and `taps`, how many kernel positions
 * the weight gradient's correlation of X with dY covers: (H + pads − (out−1)·s − 1) / d + 1 ≥ k.
 */
function windowSizes(c: GradContext, x: string, win: Window): { h: number; span: number; out: number; taps: number }[] | undefined {
  const spatial = c.staticShape(x)?.slice(2);
  if (!spatial || spatial.length !== win.rank || !spatial.every(isSize) || !win.kernel.every((k) => k !== undefined)) return undefined;
  return (spatial as number[]).map((h, i) => {
    const [k, s, d] = [win.kernel[i]!, win.strides[i]!, win.dilations[i]!];
    const span = h + win.pads[i]! + win.pads[i + win.rank]! - ((k - 1) * d + 1);
    const out = Math.floor(span / s) + 1;
    return { h, span, out, taps: Math.floor((span + (k - 1) * d - (out - 1) * s) / d) + 1 };
  });
}

/**
 * The input gradient of a convolution: ConvTranspose(dy, w) cropped or zero-extended to x's spatial size.
 * With x's spatial sizes static, ConvTranspose's own pads and output_padding do it; otherwise a Pad with
 * negative begin pads (crop) and end pads computed from Shape(x) follows an unpadded ConvTranspose.
 */
function convTransposeTo(c: GradContext, dy: string, w: string, x: string, win: Window, group: number): string {
  const attrs = { strides: win.strides, dilations: win.dilations, group: group === 1 ? undefined : group };
  const sizes = windowSizes(c, x, win);
  if (sizes) {
    // The rows the strided windows never reach get output_padding: (H + pads − dk) mod stride.
    const outputPadding = sizes.map((s, i) => s.span - (s.out - 1) * win.strides[i]!);
    return c.emit('ConvTranspose', [dy, w], { ...attrs, pads: win.pads, output_padding: outputPadding.some((v) => v) ? outputPadding : undefined });
  }
  const r = win.rank;
  const full = c.emit('ConvTranspose', [dy, w], attrs);
  const begin = win.pads.slice(0, r);
  const fullSpatial = c.emit('Slice', [c.emit('Shape', [full]), c.ints([2]), c.ints([2 + r]), c.ints([0])]);
  const xSpatial = dimsOf(c, x, 2, 2 + r);
  const end = c.emit('Add', [c.emit('Sub', [typeof xSpatial === 'string' ? xSpatial : c.ints(xSpatial), fullSpatial]), c.ints(begin)]);
  return c.emit('Pad', [full, shapeVec(c, [0, 0, ...begin.map((p) => -p), 0, 0, end])]);
}

/**
 * The weight gradient of a convolution, dW[m, c', k] = Σ_n Σ_o dY[n, m, o]·Xpad[n, g(m)·Cg + c', o·s + k·d],
 * as one Conv that swaps the roles of batch and channels: X regrouped to (Cg, g·N, spatial) is the input,
 * dY transposed to (M, N, out) the weights (group = g), with strides and dilations exchanged. The result
 * (Cg, M, kk) is cropped to the kernel and transposed to (M, Cg, k). Only `group` must be static.
 */
function convWeightGrad(c: GradContext, x: string, dy: string, w: string, win: Window, group: number): string {
  const r = win.rank;
  const swap01 = [1, 0, ...range(2, 2 + r)];
  let xt: string;
  if (group === 1) xt = c.emit('Transpose', [x], { perm: swap01 });
  else {
    const spatial = parts(dimsOf(c, x, 2, 2 + r));
    const x5 = c.emit('Reshape', [x, shapeVec(c, [0, group, -1, ...spatial])]); // (N, g, Cg, sp)
    const t5 = c.emit('Transpose', [x5], { perm: [2, 1, 0, ...range(3, 3 + r)] }); // (Cg, g, N, sp)
    xt = c.emit('Reshape', [t5, shapeVec(c, [0, -1, ...spatial])]); // (Cg, g·N, sp)
  }
  const dyt = c.emit('Transpose', [dy], { perm: swap01 }); // (M, N, out)
  const full = c.emit('Conv', [xt, dyt], { strides: win.dilations, dilations: win.strides, pads: win.pads, group: group === 1 ? undefined : group });
  // The correlation may cover more than k taps: keep the first k.
  const exact = windowSizes(c, x, win)?.every((s, i) => s.taps === win.kernel[i]);
  let cropped = full;
  if (!exact) {
    const k = win.kernel.every((v) => v !== undefined) ? (win.kernel as number[]) : dimsOf(c, w, 2, 2 + r);
    cropped = c.emit('Slice', [full, c.ints(Array<number>(r).fill(0)), typeof k === 'string' ? k : c.ints(k), c.ints(range(2, 2 + r))]);
  }
  return c.emit('Transpose', [cropped], { perm: swap01 });
}

/**
 * The weight gradient of a depthwise convolution (one input channel per group) with a static input shape:
 * every (sample, channel) pair is its own group of one Conv over X viewed as (1, N·C, spatial) with dY viewed
 * as the (N·C, 1, out) kernels; reshaped to (N, C, taps) and summed over N. Only reshapes (no transposes)
 * around one depthwise Conv, a shape that ONNX Runtime's NCHWc kernels run fast (see nchwc.ts).
 * Returns undefined where the shapes are not static.
 */
function depthwiseWeightGrad(c: GradContext, x: string, dy: string, w: string, win: Window, group: number): string | undefined {
  const [xs, ws] = [c.staticShape(x), c.staticShape(w)];
  const sizes = windowSizes(c, x, win);
  if (!xs || !xs.every(isSize) || !ws || !ws.every(isSize) || !sizes) return undefined;
  const [n, ch] = xs as number[];
  if (group <= 1 || ws[0] !== group || ws[1] !== 1 || ch !== group) return undefined;
  const r = win.rank;
  const kernel = win.kernel as number[];
  const nc = n! * ch!;
  const xv = c.emit('Reshape', [x, c.ints([1, nc, ...sizes.map((s) => s.h)])]);
  const dyv = c.emit('Reshape', [dy, c.ints([nc, 1, ...sizes.map((s) => s.out)])]);
  const full = c.emit('Conv', [xv, dyv], { strides: win.dilations, dilations: win.strides, pads: win.pads, group: nc });
  // The correlation may cover more than k taps: keep the first k.
  const taps = sizes.map((s) => s.taps);
  let summed = c.emit('ReduceSum', [c.emit('Reshape', [full, c.ints([n!, ch!, ...taps])]), c.ints([0])], { keepdims: 0 }); // (C, taps)
  if (taps.some((t, i) => t !== kernel[i])) summed = c.emit('Slice', [summed, c.ints(Array<number>(r).fill(0)), c.ints(kernel), c.ints(range(1, 1 + r))]);
  return c.emit('Reshape', [summed, c.ints(ws as number[])]);
}

/**
 * A 1×1 convolution (stride 1, no padding, one group) is a matrix product over channels at every position,
 * and so are its gradients, which are far cheaper in that form than as ConvTranspose and the
 * batch-channel-swapped Conv (MobileNet-style backbones are mostly 1×1 convolutions).
 * dX = the 1×1 convolution of dY with Wᵀ, W viewed as (M, C): ONNX Runtime's Conv runs it 4-8% faster
 * (MobileNetV2 fine-tuning steps) than the equivalent batched MatMul Wᵀ·dY[n].
 */
function pointwiseInputGrad(c: GradContext, dy: string, w: string, rank: number): string {
  const wt = c.emit('Transpose', [c.emit('Reshape', [w, c.ints([0, -1])])], { perm: [1, 0] }); // (C, M)
  return c.emit('Conv', [dy, c.emit('Unsqueeze', [wt, c.ints(range(2, 2 + rank))])]);
}

/**
 * With stride 1 and dilation 1, a convolution's input gradient is the convolution of dY with the kernel
 * flipped in space (and, for one group, with input and output channels exchanged), padded by k−1−p. ONNX
 * Runtime runs that Conv, depthwise ones above all, much faster than the equivalent ConvTranspose.
 * Returns undefined where this form does not apply (strides, dilations, grouped non-depthwise, unknown kernel).
 */
function flippedConvInputGrad(c: GradContext, dy: string, w: string, win: Window, group: number): string | undefined {
  const r = win.rank;
  const ws = c.staticShape(w);
  if (!win.strides.every((v) => v === 1) || !win.dilations.every((v) => v === 1)) return undefined;
  if (!win.kernel.every((k) => k !== undefined) || !ws || !ws.every(isSize)) return undefined;
  const kernel = win.kernel as number[];
  const [m, cg] = ws as number[];
  const depthwise = group > 1 && cg === 1 && m === group;
  if (group !== 1 && !depthwise) return undefined;
  const pads = [...kernel.map((k, i) => k - 1 - win.pads[i]!), ...kernel.map((k, i) => k - 1 - win.pads[i + r]!)];
  if (pads.some((p) => p < 0)) return undefined;
  const axes = range(2, 2 + r);
  const flipped = c.emit('Slice', [w, c.ints(axes.map(() => -1)), c.ints(kernel.map((k) => -k - 1)), c.ints(axes), c.ints(axes.map(() => -1))]);
  const kernelT = depthwise ? flipped : c.emit('Transpose', [flipped], { perm: [1, 0, ...axes] });
  return c.emit('Conv', [dy, kernelT], { pads, group: depthwise ? group : undefined });
}

/**
 * dW = dY·Xᵀ summed over batch and positions: both viewed as (channels, N·positions), one Gemm. Returns dY's
 * rows too: the bias gradient sums them (contiguous rows: faster than a ReduceSum over N, H and W).
 */
function pointwiseWeightGrad(c: GradContext, x: string, dy: string, w: string): { grad: string; dyRows: string } {
  const rows = (t: string) => {
    const rank = c.staticShape(t)?.length ?? 4;
    return c.emit('Reshape', [c.emit('Transpose', [t], { perm: [1, 0, ...range(2, rank)] }), c.ints([0, -1])]);
  };
  const dyRows = rows(dy);
  return { grad: c.reshapeLike(c.emit('Gemm', [dyRows, rows(x)], { transB: 1 }), w), dyRows };
}

/**
 * 1 where t > 0, 0 where t = 0, for t ≥ 0 (a gradient mask as a number, to multiply by). float: HardSigmoid
 * of t·3e38, multithreaded in ONNX Runtime (Sign and Where are not, and Cast(bool) neither): exact for every
 * normal float; a subnormal t (below 1.2e-38) gets a fraction. Other types: Sign, exact.
 */
function positive(c: GradContext, t: string): string {
  return c.elemType === DataType.FLOAT ? c.emit('HardSigmoid', [t], { alpha: 3e38, beta: 0 }) : c.emit('Sign', [t]);
}

/** A [C] vector reshaped to broadcast along axis 1 of a rank-`rank` tensor. */
function perChannel(c: GradContext, v: string, rank: number): string {
  return rank <= 2 ? v : c.emit('Unsqueeze', [v, c.ints(range(1, rank - 1))]);
}

function batchNormGrad(c: GradContext): (string | null)[] {
  const [x0, scale] = [c.inputs[0]!, c.inputs[1]!];
  const eps = c.attrFloat('epsilon', 1e-5);
  const training = c.attrInt('training_mode', 0) === 1;
  // Rank unknown: work on an (N, C, L) view and reshape dX back at the end.
  const known = c.staticShape(x0)?.length;
  const rank = known ?? 3;
  const view = (t: string) => (known === undefined ? c.emit('Reshape', [t, c.ints([0, 0, -1])]) : t);
  const x = view(x0);
  const dy = view(c.dy);
  const axes = [0, ...range(2, rank)];
  const nulls = [null, null].slice(0, c.inputs.length - 3);
  let rstd: string; // broadcastable along axis 1
  let count = '';
  let centered: string;
  if (training) {
    // Batch statistics (population variance), recomputed: opset 15's node does not output them.
    const mu0 = c.emit('ReduceSum', [x, c.ints(axes)], { keepdims: 1 });
    count = countOver(c, x0, axes, mu0);
    const mu = c.emit('Div', [mu0, count]);
    centered = c.emit('Sub', [x, mu]);
    const variance = meanOver(c, c.emit('Mul', [centered, centered]), axes, count);
    rstd = c.emit('Reciprocal', [c.emit('Sqrt', [c.emit('Add', [variance, c.scalar(eps)])])]);
  } else {
    const [mean, variance] = [c.inputs[3]!, c.inputs[4]!];
    rstd = perChannel(c, c.emit('Reciprocal', [c.emit('Sqrt', [c.emit('Add', [variance, c.scalar(eps)])])]), rank);
    centered = c.emit('Sub', [x, perChannel(c, mean, rank)]);
  }
  const xhat = c.emit('Mul', [centered, rstd]);
  const needXhat = c.needs(1) || (training && c.needs(0));
  const sumDyXhat = needXhat ? c.emit('ReduceSum', [c.emit('Mul', [dy, xhat]), c.ints(axes)], { keepdims: 1 }) : '';
  const sumDy = c.needs(2) || (training && c.needs(0)) ? c.emit('ReduceSum', [dy, c.ints(axes)], { keepdims: 1 }) : '';
  let dx: string | null = null;
  if (c.needs(0)) {
    const gain = c.emit('Mul', [perChannel(c, scale, rank), rstd]);
    if (training) {
      // dX = scale·rstd·(dY − mean(dY) − x̂·mean(dY·x̂))
      const inner = c.emit('Sub', [c.emit('Sub', [dy, c.emit('Div', [sumDy, count])]), c.emit('Mul', [xhat, c.emit('Div', [sumDyXhat, count])])]);
      dx = c.emit('Mul', [inner, gain]);
    } else dx = c.emit('Mul', [dy, gain]);
    if (known === undefined) dx = c.reshapeLike(dx, x0);
  }
  const vec = (t: string) => c.emit('Reshape', [t, c.ints([-1])]);
  return [dx, c.needs(1) ? vec(sumDyXhat) : null, c.needs(2) ? vec(sumDy) : null, ...nulls];
}

function layerNormGrad(c: GradContext): (string | null)[] {
  if (c.dys[1] || c.dys[2]) refuse(c, 'gradients through the Mean and InvStdDev outputs are not supported');
  const [x, scale, bias] = [c.inputs[0]!, c.inputs[1]!, c.inputs[2]];
  const axis = c.attrInt('axis', -1);
  const eps = c.attrFloat('epsilon', 1e-5);
  const rank = c.staticShape(x)?.length;
  if (axis >= 0 && rank === undefined) refuse(c, `axis ${axis} needs the rank of input ${x}`);
  const axes = axis < 0 ? range(axis, 0) : range(axis, rank!);
  const mu0 = c.emit('ReduceSum', [x, c.ints(axes)], { keepdims: 1 });
  const count = countOver(c, x, axes, mu0);
  const centered = c.emit('Sub', [x, c.emit('Div', [mu0, count])]);
  const variance = meanOver(c, c.emit('Mul', [centered, centered]), axes, count);
  const rstd = c.emit('Reciprocal', [c.emit('Sqrt', [c.emit('Add', [variance, c.scalar(eps)])])]);
  const xhat = c.emit('Mul', [centered, rstd]);
  let dx: string | null = null;
  if (c.needs(0)) {
    // dX = rstd·(g − mean(g) − x̂·mean(g·x̂)) with g = dY·scale
    const g = c.emit('Mul', [c.dy, scale]);
    const inner = c.emit('Sub', [c.emit('Sub', [g, meanOver(c, g, axes, count)]), c.emit('Mul', [xhat, meanOver(c, c.emit('Mul', [g, xhat]), axes, count)])]);
    dx = c.emit('Mul', [inner, rstd]);
  }
  const out: (string | null)[] = [dx, c.needs(1) ? c.unbroadcast(c.emit('Mul', [c.dy, xhat]), scale) : null];
  if (bias !== undefined) out.push(bias && c.needs(2) ? c.unbroadcast(c.dy, bias) : null);
  return out;
}

/** ReduceMax / ReduceMin: the gradient goes to the elements equal to the extreme, split evenly among ties. */
const reduceExtremeGrad: GradRule = (c) => {
  const rest = c.inputs.slice(1).map(() => null);
  if (reducesNothing(c)) return [c.dy, ...rest];
  const x = c.inputs[0]!;
  const axesAttr = c.attrInts('axes');
  const axes = c.inputs[1] || (axesAttr && axesAttr.length > 0 ? c.ints(axesAttr) : '');
  const keep = (t: string) => (c.attrInt('keepdims', 1) === 0 && axes ? c.emit('Unsqueeze', [t, axes]) : t);
  const mask = c.emit('Cast', [c.emit('Equal', [x, keep(c.outputs[0]!)])], { to: c.elemType });
  const ties = c.emit('ReduceSum', axes ? [mask, axes] : [mask], { keepdims: 1 });
  return [c.emit('Mul', [mask, c.emit('Div', [keep(c.dy), ties])]), ...rest];
};

/**
 * Max / Min (variadic, broadcasting): the gradient goes to the inputs equal to the output, split evenly among
 * ties, as torch.maximum / torch.minimum do for two (half each) and as ReduceMax does here.
 */
const elementwiseExtremeGrad: GradRule = (c) => {
  if (c.inputs.length === 1) return [c.dy];
  const y = c.outputs[0]!;
  const masks = c.inputs.map((x) => c.emit('Cast', [c.emit('Equal', [x, y])], { to: c.elemType }));
  const share = c.emit('Div', [c.dy, c.emit('Sum', masks)]);
  return c.inputs.map((x, i) => (c.needs(i) ? c.unbroadcast(c.emit('Mul', [share, masks[i]!]), x) : null));
};

/** The reduced axes of a ReduceL2-style node (input or attribute), or '' for all of them. */
function reducedAxes(c: GradContext): string {
  const axesAttr = c.attrInts('axes');
  return c.inputs[1] || (axesAttr && axesAttr.length > 0 ? c.ints(axesAttr) : '');
}

export const GRAD_RULES: Record<string, GradRule> = {
  Identity: passThrough,
  // Inference mode: identity. Training mode (its mask output and a constant ratio, checked up front): the
  // kept elements, scaled by 1 / (1 - ratio) as the forward pass scaled them.
  Dropout: (c) => {
    const training = c.inputs[2];
    if (!training || isConstantFalse(c.initializer(training))) return [c.dy, null, null].slice(0, c.inputs.length);
    const kept = c.emit('Cast', [c.outputs[1]!], { to: c.elemType });
    return [c.emit('Mul', [c.emit('Mul', [c.dy, kept]), c.scalar(1 / (1 - dropoutRatio(c.inputs[1], (t) => c.initializer(t))!))]), null, null].slice(0, c.inputs.length);
  },
  Cast: (c) => [c.emit('Cast', [c.dy], { to: c.typeOf(c.inputs[0]!) ?? c.elemType })],
  Neg: (c) => [c.emit('Neg', [c.dy])],
  Exp: unary((c, _x, y) => c.emit('Mul', [c.dy, y])),
  Log: unary((c, x) => c.emit('Div', [c.dy, x])),
  Sqrt: unary((c, _x, y) => c.emit('Div', [c.emit('Mul', [c.dy, c.scalar(0.5)]), y])),
  Reciprocal: unary((c, _x, y) => c.emit('Neg', [c.emit('Mul', [c.dy, c.emit('Mul', [y, y])])])),
  Abs: unary((c, x) => c.emit('Mul', [c.dy, c.emit('Sign', [x])])),
  // From the output (y > 0), as Clip's: the op before can fuse the Relu.
  Relu: unary((c, _x, y) => c.emit('Mul', [c.dy, positive(c, y)])),
  LeakyRelu: unary((c, x) =>
    c.emit('Where', [c.emit('Greater', [x, c.scalar(0)]), c.dy, c.emit('Mul', [c.dy, c.scalar(c.attrFloat('alpha', 0.01))])])),
  Sigmoid: unary((c, _x, y) => c.emit('Mul', [c.dy, c.emit('Mul', [y, c.emit('Sub', [c.scalar(1), y])])])),
  Tanh: unary((c, _x, y) => c.emit('Mul', [c.dy, c.emit('Sub', [c.scalar(1), c.emit('Mul', [y, y])])])),
  Sin: unary((c, x) => c.emit('Mul', [c.dy, c.emit('Cos', [x])])),
  Cos: unary((c, x) => c.emit('Neg', [c.emit('Mul', [c.dy, c.emit('Sin', [x])])])),

  Add: (c) => [c.needs(0) ? c.unbroadcast(c.dy, c.inputs[0]!) : null, c.needs(1) ? c.unbroadcast(c.dy, c.inputs[1]!) : null],
  Sum: (c) => c.inputs.map((x, i) => (c.needs(i) ? c.unbroadcast(c.dy, x) : null)),
  Sub: (c) => [c.needs(0) ? c.unbroadcast(c.dy, c.inputs[0]!) : null, c.needs(1) ? c.unbroadcast(c.emit('Neg', [c.dy]), c.inputs[1]!) : null],
  Mul: (c) => {
    const [a, b] = [c.inputs[0]!, c.inputs[1]!];
    return [c.needs(0) ? c.unbroadcast(c.emit('Mul', [c.dy, b]), a) : null, c.needs(1) ? c.unbroadcast(c.emit('Mul', [c.dy, a]), b) : null];
  },
  Div: (c) => {
    // y = a / b: da = dy / b, db = -dy·a/b² = -(dy / b)·y
    const [a, b] = [c.inputs[0]!, c.inputs[1]!];
    const q = c.emit('Div', [c.dy, b]);
    return [c.needs(0) ? c.unbroadcast(q, a) : null, c.needs(1) ? c.unbroadcast(c.emit('Neg', [c.emit('Mul', [q, c.outputs[0]!])]), b) : null];
  },
  Pow: (c) => {
    // y = x^p: dx = dy·p·x^(p-1), dp = dy·y·ln(x) (only defined for x > 0)
    const [x, p0] = [c.inputs[0]!, c.inputs[1]!];
    const init = c.initializer(p0);
    const constant = init && !c.needs(1) ? tensorToFloat32(init) : undefined;
    if (constant && constant.length === 1) {
      // A constant scalar exponent (LayerNorm's variance squares, decomposed as exports write it): folded;
      // x² → 2x, with no Pow (exact for every x, negative ones included).
      const pv = constant[0]!;
      const slope = pv === 2 ? c.emit('Mul', [x, c.scalar(2)]) : pv === 1 ? undefined : c.emit('Mul', [c.emit('Pow', [x, c.scalar(pv - 1)]), c.scalar(pv)]);
      return [c.needs(0) ? c.unbroadcast(slope ? c.emit('Mul', [c.dy, slope]) : c.dy, x) : null, null];
    }
    const pType = c.typeOf(p0);
    const p = pType !== undefined && pType !== c.elemType ? c.emit('Cast', [p0], { to: c.elemType }) : p0;
    const dx = c.needs(0) ? c.unbroadcast(c.emit('Mul', [c.dy, c.emit('Mul', [p, c.emit('Pow', [x, c.emit('Sub', [p, c.scalar(1)])])])]), x) : null;
    const dp = c.needs(1) ? c.unbroadcast(c.emit('Mul', [c.dy, c.emit('Mul', [c.outputs[0]!, c.emit('Log', [x])])]), p0) : null;
    return [dx, dp];
  },
  Clip: (c) => {
    // Gradient passes where min < x < max, read off the output alone: (y − min)·(max − y) > 0. Not the forward
    // input: so the op before the Clip (a Conv) can run it as its fused activation, keeping nothing else.
    // (A mask from x and y, Cast(Equal(x, y)), costs a single-threaded Cast in ONNX Runtime; 2x slower.)
    // A bound that was passed receives the rest.
    const [x, y] = [c.inputs[0]!, c.outputs[0]!];
    const lo = c.inputs[1] || (hasAttr(c.node, 'min') ? c.scalar(c.attrFloat('min', 0)) : ''); // attributes before opset 11
    const hi = c.inputs[2] || (hasAttr(c.node, 'max') ? c.scalar(c.attrFloat('max', 0)) : '');
    const zero = c.scalar(0);
    const isZero = (t: string) => {
      const init = c.initializer(t);
      return !!init && tensorToFloat32(init).every((v) => v === 0);
    };
    const above = lo ? (isZero(lo) ? y : c.emit('Sub', [y, lo])) : undefined;
    const below = hi ? c.emit('Sub', [hi, y]) : undefined;
    const margin = above && below ? c.emit('Mul', [above, below]) : (above ?? below);
    const dx = !c.needs(0) ? null : margin ? c.emit('Mul', [c.dy, positive(c, margin)]) : c.dy;
    const dlo = c.needs(1) ? c.unbroadcast(c.emit('Where', [c.emit('Less', [x, lo]), c.dy, zero]), c.inputs[1]!) : null;
    const dhi = c.needs(2) ? c.unbroadcast(c.emit('Where', [c.emit('Greater', [x, hi]), c.dy, zero]), c.inputs[2]!) : null;
    return [dx, dlo, dhi].slice(0, c.inputs.length);
  },

  Max: elementwiseExtremeGrad,
  Min: elementwiseExtremeGrad,
  Where: (c) => {
    // y = cond ? X : Y: dX = dY where cond, dY = dY elsewhere (each summed over its broadcast axes).
    const [cond, x, y] = [c.inputs[0]!, c.inputs[1]!, c.inputs[2]!];
    const zero = c.scalar(0);
    return [
      null,
      c.needs(1) ? c.unbroadcast(c.emit('Where', [cond, c.dy, zero]), x) : null,
      c.needs(2) ? c.unbroadcast(c.emit('Where', [cond, zero, c.dy]), y) : null,
    ];
  },

  Flatten: reshapeBack,
  Reshape: reshapeBack,
  Squeeze: reshapeBack,
  Unsqueeze: reshapeBack,
  Expand: (c) => [c.unbroadcast(c.dy, c.inputs[0]!), null],
  Transpose: (c) => {
    const perm = c.attrInts('perm');
    if (!perm) return [c.emit('Transpose', [c.dy])]; // reversed axes are their own inverse
    const inverse: number[] = [];
    perm.forEach((p, i) => (inverse[p] = i));
    return [c.emit('Transpose', [c.dy], { perm: inverse })];
  },
  Concat: (c) => {
    const axis = c.attrInt('axis', 0);
    const sizes = c.inputs.map((x) => {
      const s = c.staticShape(x);
      const d = s?.[axis < 0 ? s.length + axis : axis];
      return typeof d === 'number' && d >= 0 ? d : undefined;
    });
    const axes = c.ints([axis]);
    let start: string | number = 0;
    return c.inputs.map((x, i) => {
      const size = sizes[i];
      const end: string | number =
        typeof start === 'number' && size !== undefined ? start + size
        : c.emit('Add', [typeof start === 'number' ? c.ints([start]) : start, c.emit('Gather', [c.shapeOf(x), axes], { axis: 0 })]);
      const g = c.needs(i) ? c.emit('Slice', [c.dy, typeof start === 'number' ? c.ints([start]) : start, typeof end === 'number' ? c.ints([end]) : end, axes]) : null;
      start = end;
      return g;
    });
  },

  Tile: (c) => {
    // y = x tiled r_i times along axis i: dY viewed as [r0, d0, r1, d1, …] summed over the r axes.
    const [x, repeats] = [c.inputs[0]!, c.inputs[1]!];
    const reps = c.initializer(repeats) ? Array.from(tensorToFloat32(c.initializer(repeats)!)) : undefined;
    const rank = reps?.length ?? c.staticShape(x)?.length;
    if (rank === undefined) refuse(c, `the rank of ${x} is needed`);
    const xs = c.staticShape(x);
    let split: string;
    if (reps && xs && xs.every(isSize)) split = c.ints(reps.flatMap((r, i) => [r, xs[i] as number]));
    else {
      const column = (t: string) => c.emit('Unsqueeze', [t, c.ints([1])]);
      split = c.emit('Reshape', [c.emit('Concat', [column(reps ? c.ints(reps) : repeats), column(c.shapeOf(x))], { axis: 1 }), c.ints([-1])]);
    }
    const summed = c.emit('ReduceSum', [c.emit('Reshape', [c.dy, split]), c.ints(range(0, rank).map((i) => 2 * i))], { keepdims: 0 });
    return [summed, null];
  },
  Split: (c) => {
    // The outputs' gradients concatenated back (zeros for an output that none reaches).
    const axis = c.attrInt('axis', 0);
    const parts = c.outputs.map((o, i) => {
      const g = c.dys[i];
      if (g) return g;
      const s = c.staticShape(o);
      return filled(c, s && s.every(isSize) ? c.ints(s as number[]) : c.shapeOf(o), 0);
    });
    return [c.emit('Concat', parts, { axis }), ...c.inputs.slice(1).map(() => null)];
  },

  Softmax: (c) => [softmaxBackward(c, c.dy, c.outputs[0]!, c.attrInt('axis', -1))],
  LogSoftmax: (c) => [logSoftmaxBackward(c, c.dy, c.outputs[0]!, c.attrInt('axis', -1))],

  ReduceSum: (c) => [reducesNothing(c) ? c.dy : expandReduced(c, c.dy), ...c.inputs.slice(1).map(() => null)],
  ReduceMean: (c) => {
    if (reducesNothing(c)) return [c.dy, ...c.inputs.slice(1).map(() => null)];
    const scale = ofRank(c, c.emit('Div', [countOf(c, c.outputs[0]!), countOf(c, c.inputs[0]!)]), c.outputs[0]!);
    return [expandReduced(c, c.emit('Mul', [c.dy, scale])), ...c.inputs.slice(1).map(() => null)];
  },
  GlobalAveragePool: (c) => {
    const x = c.inputs[0]!;
    const scale = ofRank(c, c.emit('Div', [countOf(c, c.outputs[0]!), countOf(c, x)]), c.outputs[0]!);
    return [c.emit('Expand', [c.emit('Mul', [c.dy, scale]), c.shapeOf(x)])];
  },

  Gemm: (c) => {
    // Y = alpha·A'·B' + beta·C with A' = transA ? Aᵀ : A and B' = transB ? Bᵀ : B
    const [a, b, cc] = [c.inputs[0]!, c.inputs[1]!, c.inputs[2]];
    const alpha = c.attrFloat('alpha', 1);
    const beta = c.attrFloat('beta', 1);
    const tA = c.attrInt('transA', 0);
    const tB = c.attrInt('transB', 0);
    const al = alpha === 1 ? undefined : alpha;
    const da = !c.needs(0) ? null
      : tA ? c.emit('Gemm', [b, c.dy], { alpha: al, transA: tB || undefined, transB: 1 }) // dA = alpha·B'·dYᵀ
      : c.emit('Gemm', [c.dy, b], { alpha: al, transB: tB ? undefined : 1 }); // dA = alpha·dY·B'ᵀ
    const db = !c.needs(1) ? null
      : tB ? c.emit('Gemm', [c.dy, a], { alpha: al, transA: 1, transB: tA || undefined }) // dB = alpha·dYᵀ·A'
      : c.emit('Gemm', [a, c.dy], { alpha: al, transA: tA ? undefined : 1 }); // dB = alpha·A'ᵀ·dY
    const out: (string | null)[] = [da, db];
    if (cc !== undefined) out.push(cc && c.needs(2) ? c.unbroadcast(beta === 1 ? c.dy : c.emit('Mul', [c.dy, c.scalar(beta)]), cc) : null);
    return out;
  },
  MatMul: (c) => {
    const [a, b] = [c.inputs[0]!, c.inputs[1]!];
    const sa = c.staticShape(a);
    const sb = c.staticShape(b);
    const so = c.staticShape(c.outputs[0]!);
    if (!sa && sb?.length === 2) {
      // A's rank unknown, B a matrix [K, N] (a weight): dA = dY·Bᵀ for any rank of A (1-D included), and
      // dB = Σ over A's leading axes of Aᵀ·dY, with A and dY viewed as rows [-1, K] and [-1, N].
      const rows = (t: string, d: string | number) => c.emit('Reshape', [t, typeof d === 'number' ? c.ints([-1, d]) : c.emit('Concat', [c.ints([-1]), d], { axis: 0 })]);
      const dim = (i: number) => (isSize(sb[i]) ? (sb[i] as number) : c.emit('Slice', [c.shapeOf(b), c.ints([i]), c.ints([i + 1]), c.ints([0])]));
      return [
        c.needs(0) ? c.emit('MatMul', [c.dy, c.emit('Transpose', [b], { perm: [1, 0] })]) : null,
        c.needs(1) ? c.emit('MatMul', [c.emit('Transpose', [rows(a, dim(0))], { perm: [1, 0] }), rows(c.dy, dim(1))]) : null,
      ];
    }
    if (sa?.length === 2 && !sb) {
      // A a matrix [M, K], B's rank unknown: dB = Aᵀ·dY has B's shape (A has no batch axes to broadcast B
      // over); dA = Σ over the batch of dY·Bᵀ: batched products viewed as [-1, M, K], summed over axis 0.
      const bt = c.emit('Einsum', [c.dy, b], { equation: '...mn,...kn->...mk' });
      const flat = c.emit('Reshape', [bt, shapeVec(c, [-1, ...parts(dimsOf(c, a, 0, 2))])]);
      return [
        c.needs(0) ? c.emit('ReduceSum', [flat, c.ints([0])], { keepdims: 0 }) : null,
        c.needs(1) ? c.emit('MatMul', [c.emit('Transpose', [a], { perm: [1, 0] }), c.dy]) : null,
      ];
    }
    if (!sa || !sb) {
      // Ranks unknown (an operand from an op the shape propagation does not know): assume both have the
      // same rank ≥ 2 (ORT's Einsum does not broadcast ellipses) and let Einsum swap the last two axes.
      return [
        c.needs(0) ? c.unbroadcast(c.emit('Einsum', [c.dy, b], { equation: '...mn,...kn->...mk' }), a, null) : null,
        c.needs(1) ? c.unbroadcast(c.emit('Einsum', [a, c.dy], { equation: '...mk,...mn->...kn' }), b, null) : null,
      ];
    }
    const [ra, rb] = [sa.length, sb.length];
    if (ra === 1 && rb === 1) {
      return [c.needs(0) ? c.emit('Mul', [c.dy, b]) : null, c.needs(1) ? c.emit('Mul', [c.dy, a]) : null];
    }
    // Promote 1-D operands the way MatMul does ([K] → [1, K] for A, [K] → [K, 1] for B), so both branches
    // below are plain batched matrix products; unbroadcast then drops the promoted axis again.
    const dy = ra === 1 ? c.emit('Unsqueeze', [c.dy, c.ints([-2])]) : rb === 1 ? c.emit('Unsqueeze', [c.dy, c.ints([-1])]) : c.dy;
    const a2 = ra === 1 ? c.emit('Unsqueeze', [a, c.ints([0])]) : a;
    const b2 = rb === 1 ? c.emit('Unsqueeze', [b, c.ints([1])]) : b;
    const [ra2, rb2] = [Math.max(ra, 2), Math.max(rb, 2)];
    const batch = so ? so.slice(0, so.length - (ra === 1 || rb === 1 ? 1 : 2)) : undefined;
    const m = ra === 1 ? 1 : sa[ra - 2]!;
    const k = sa[ra - 1]!;
    const n = sb[rb - 1]!;
    const da = c.needs(0) ? c.unbroadcast(c.emit('MatMul', [dy, c.emit('Transpose', [b2], { perm: lastTwoSwapped(rb2) })]), a, batch ? [...batch, m, k] : null) : null;
    let db: string | null = null;
    if (c.needs(1) && rb === 2 && ra >= 3 && isSize(k) && isSize(n)) {
      // A weight matrix applied to every row of a batch ([..., M, K] · [K, N]): dB = Aᵀ·dY over all rows at
      // once, as one [K, rows] · [rows, N] product, instead of one product per batch entry summed afterwards.
      db = c.emit('MatMul', [c.emit('Transpose', [c.emit('Reshape', [a, c.ints([-1, k as number])])], { perm: [1, 0] }), c.emit('Reshape', [c.dy, c.ints([-1, n as number])])]);
    } else if (c.needs(1)) {
      const full = c.emit('MatMul', [c.emit('Transpose', [a2], { perm: lastTwoSwapped(ra2) }), dy]);
      // [..., K, 1] for a 1-D B: drop the promoted axis so that K lines up with B's only axis.
      db = rb === 1 ? c.unbroadcast(c.emit('Squeeze', [full, c.ints([-1])]), b, batch ? [...batch, k] : null) : c.unbroadcast(full, b, batch ? [...batch, k, n] : null);
    }
    return [da, db];
  },

  SoftmaxCrossEntropyLoss: (c) => {
    // loss_i = -w[y_i]·log softmax(z_i)[y_i]; dz_i = (softmax(z_i) − onehot(y_i))·w[y_i]·scale, where
    // scale = dLoss / Σw (mean), dLoss (sum) or dLoss_i (none); w = class weight × (y_i ≠ ignore_index).
    const [scores, labels, weights] = [c.inputs[0]!, c.inputs[1]!, c.inputs[2]];
    const [dLoss, dLogp] = [c.dys[0] ?? null, c.dys[1] ?? null];
    const logp = c.outputs[1];
    const probs = logp ? c.emit('Exp', [logp]) : c.emit('Softmax', [scores], { axis: 1 });
    const parts: string[] = [];
    if (dLoss) {
      const reduction = c.attrString('reduction', 'mean');
      const ignore = hasAttr(c.node, 'ignore_index') ? c.attrInt('ignore_index', 0) : undefined;
      let safe = labels;
      let w: string | undefined;
      if (ignore !== undefined) {
        const ignored = c.emit('Equal', [labels, c.builder.constant('ignore_index', BigInt64Array.of(BigInt(ignore)), [])]);
        safe = c.emit('Where', [ignored, c.builder.constant('zero_label', BigInt64Array.of(0n), []), labels]);
        w = c.emit('Cast', [c.emit('Not', [ignored])], { to: c.elemType });
      }
      if (weights) {
        const cw = c.emit('Gather', [weights, safe]);
        w = w ? c.emit('Mul', [w, cw]) : cw;
      }
      const sc = c.staticShape(scores);
      const depth = typeof sc?.[1] === 'number' && sc[1] > 0 ? c.ints([sc[1]]) : c.emit('Gather', [c.shapeOf(scores), c.ints([1])], { axis: 0 });
      let onehot = c.emit('OneHot', [safe, depth, c.builder.constant('onehot_values', Float32Array.of(0, 1), [2])], { axis: 1 });
      if (c.elemType !== DataType.FLOAT) onehot = c.emit('Cast', [onehot], { to: c.elemType }); // ORT has no double OneHot
      let scale: string;
      if (reduction === 'none') scale = w ? c.emit('Mul', [dLoss, w]) : dLoss;
      else if (reduction === 'sum') scale = w ? c.emit('Mul', [w, dLoss]) : dLoss;
      else if (reduction === 'mean') {
        const s = c.emit('Div', [dLoss, w ? c.emit('ReduceSum', [w], { keepdims: 0 }) : countOf(c, labels)]);
        scale = w ? c.emit('Mul', [w, s]) : s;
      } else throw new GraftError('MODEL', `SoftmaxCrossEntropyLoss node ${c.node.name}: unknown reduction ${reduction}`, { node: c.node.name, reduction });
      // A per-sample scale has the labels' shape [N, d1…]; insert the class axis to broadcast over it.
      if (w || reduction === 'none') scale = c.emit('Unsqueeze', [scale, c.ints([1])]);
      parts.push(c.emit('Mul', [c.emit('Sub', [probs, onehot]), scale]));
    }
    if (dLogp && logp) parts.push(logSoftmaxBackward(c, dLogp, logp, 1));
    const dz = parts.length === 1 ? parts[0]! : c.emit('Sum', parts);
    return [dz, ...c.inputs.slice(1).map(() => null)];
  },
  // Convolution and pooling (2-D and any other spatial rank)
  Conv: (c) => {
    const [x, w, b] = [c.inputs[0]!, c.inputs[1]!, c.inputs[2]];
    const kernelAttr = c.attrInts('kernel_shape');
    const ws = c.staticShape(w);
    const rank = kernelAttr?.length ?? (ws ? ws.length - 2 : (c.staticShape(x)?.length ?? 0) - 2);
    if (rank < 1) refuse(c, `the ranks of ${x} and ${w} are unknown`);
    const kernel = kernelAttr ?? range(0, rank).map((i) => (isSize(ws?.[i + 2]) ? (ws![i + 2] as number) : undefined));
    const win = windowOf(c, x, kernel);
    const group = c.attrInt('group', 1);
    const pointwise = group === 1 && kernel.every((k) => k === 1) && win.strides.every((v) => v === 1) && win.pads.every((v) => v === 0);
    const inputGrad = () => (pointwise ? pointwiseInputGrad(c, c.dy, w, rank) : (flippedConvInputGrad(c, c.dy, w, win, group) ?? convTransposeTo(c, c.dy, w, x, win, group)));
    const pointwiseGrads = pointwise && c.needs(1) ? pointwiseWeightGrad(c, x, c.dy, w) : undefined;
    const out: (string | null)[] = [
      c.needs(0) ? inputGrad() : null,
      c.needs(1) ? (pointwiseGrads?.grad ?? depthwiseWeightGrad(c, x, c.dy, w, win, group) ?? convWeightGrad(c, x, c.dy, w, win, group)) : null,
    ];
    const biasGrad = () =>
      pointwiseGrads ? c.emit('ReduceSum', [pointwiseGrads.dyRows, c.ints([1])], { keepdims: 0 }) : c.emit('ReduceSum', [c.dy, c.ints([0, ...range(2, 2 + rank)])], { keepdims: 0 });
    if (b !== undefined) out.push(b && c.needs(2) ? biasGrad() : null);
    return out;
  },
  MaxPool: (c) => {
    // The forward's Indices (flat positions in x, batch and channel included) route dY back; duplicates
    // (overlapping windows) are summed.
    const x = c.inputs[0]!;
    if (c.attrInt('storage_order', 0) !== 0) refuse(c, 'storage_order 1 (column-major Indices) is not supported');
    let indices = c.outputs[1];
    if (!indices) {
      indices = c.builder.node('MaxPool', [x], {}, { outputs: 2 })[1]!;
      c.builder.nodes[c.builder.nodes.length - 1]!.attribute = [...(c.node.attribute ?? [])];
    }
    return [scatterFlat(c, x, indices, c.dy, true)];
  },
  AveragePool: (c) => {
    // dX = ConvTranspose of dY/count with a ones kernel, one channel at a time: dY viewed as (N·C, 1, out).
    const x = c.inputs[0]!;
    const kernel = c.attrInts('kernel_shape');
    if (!kernel) refuse(c, 'kernel_shape is missing');
    const win = windowOf(c, x, kernel);
    if (c.attrInt('ceil_mode', 0) === 1) {
      const sizes = windowSizes(c, x, win);
      const same = sizes?.every((s, i) => s.span % win.strides[i]! === 0);
      if (!same) refuse(c, 'ceil_mode 1 is only supported where it gives the same output size as ceil_mode 0 (static shapes)');
    }
    const taps = kernel.reduce((a, b) => a * b, 1);
    let g: string;
    if (c.attrInt('count_include_pad', 0) === 0 && win.pads.some((p) => p > 0)) {
      // Divisor = taps inside the input: taps·AveragePool(ones) with padding counted.
      const ones = filled(c, shapeVec(c, [1, 1, ...parts(dimsOf(c, x, 2, 2 + win.rank))]), 1);
      const fraction = c.emit('AveragePool', [ones], {
        kernel_shape: kernel, strides: win.strides, pads: win.pads, count_include_pad: 1, dilations: c.attrInts('dilations'),
      });
      g = c.emit('Div', [c.dy, c.emit('Mul', [fraction, c.scalar(taps)])]);
    } else g = c.emit('Mul', [c.dy, c.scalar(1 / taps)]);
    const perPlane = c.emit('Reshape', [g, c.ints([-1, 1, ...kernel.map(() => 0)])]);
    const onesKernel = c.builder.constant('avgpool_kernel', c.elemType === DataType.DOUBLE ? new Float64Array(taps).fill(1) : new Float32Array(taps).fill(1), [1, 1, ...kernel]);
    return [c.reshapeLike(convTransposeTo(c, perPlane, onesKernel, x, win, 1), x)];
  },

  // Normalisation
  BatchNormalization: batchNormGrad,
  LayerNormalization: layerNormGrad,

  // Activations
  HardSigmoid: unary((c, _x, y) => {
    // y = clip(alpha·x + beta, 0, 1): slope alpha strictly inside
    const inside = c.emit('And', [c.emit('Greater', [y, c.scalar(0)]), c.emit('Less', [y, c.scalar(1)])]);
    return c.emit('Where', [inside, c.emit('Mul', [c.dy, c.scalar(c.attrFloat('alpha', 0.2))]), c.scalar(0)]);
  }),
  HardSwish: unary((c, x) => {
    // y = x·clip(x/6 + 1/2, 0, 1): 0 below −3, 1 above 3, x/3 + 1/2 between
    const mid = c.emit('Mul', [c.dy, c.emit('Add', [c.emit('Mul', [x, c.scalar(1 / 3)]), c.scalar(0.5)])]);
    const upper = c.emit('Where', [c.emit('Greater', [x, c.scalar(3)]), c.dy, mid]);
    return c.emit('Where', [c.emit('Less', [x, c.scalar(-3)]), c.scalar(0), upper]);
  }),
  Erf: unary((c, x) => c.emit('Mul', [c.dy, c.emit('Mul', [c.scalar(2 / Math.sqrt(Math.PI)), c.emit('Exp', [c.emit('Neg', [c.emit('Mul', [x, x])])])])])),
  Gelu: unary((c, x) => {
    const approximate = c.attrString('approximate', 'none');
    const x2 = c.emit('Mul', [x, x]);
    if (approximate === 'tanh') {
      // y = x/2·(1 + tanh(u)), u = √(2/π)·(x + 0.044715·x³): y' = (1 + t)/2 + x/2·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²)
      const k = Math.sqrt(2 / Math.PI);
      const u = c.emit('Mul', [c.emit('Mul', [x, c.emit('Add', [c.scalar(1), c.emit('Mul', [x2, c.scalar(0.044715)])])]), c.scalar(k)]);
      const t = c.emit('Tanh', [u]);
      const du = c.emit('Mul', [c.emit('Add', [c.scalar(1), c.emit('Mul', [x2, c.scalar(3 * 0.044715)])]), c.scalar(k)]);
      const sech2 = c.emit('Sub', [c.scalar(1), c.emit('Mul', [t, t])]);
      const d = c.emit('Add', [c.emit('Mul', [c.emit('Add', [c.scalar(1), t]), c.scalar(0.5)]), c.emit('Mul', [c.emit('Mul', [x, c.scalar(0.5)]), c.emit('Mul', [sech2, du])])]);
      return c.emit('Mul', [c.dy, d]);
    }
    if (approximate !== 'none') refuse(c, `unknown approximate ${approximate}`);
    // y = x·Φ(x): y' = Φ(x) + x·φ(x)
    const cdf = c.emit('Mul', [c.emit('Add', [c.emit('Erf', [c.emit('Mul', [x, c.scalar(Math.SQRT1_2)])]), c.scalar(1)]), c.scalar(0.5)]);
    const pdf = c.emit('Mul', [c.emit('Exp', [c.emit('Mul', [x2, c.scalar(-0.5)])]), c.scalar(1 / Math.sqrt(2 * Math.PI))]);
    return c.emit('Mul', [c.dy, c.emit('Add', [cdf, c.emit('Mul', [x, pdf])])]);
  }),

  // Indexing and padding
  Slice: (c) => {
    const [x, starts, ends, axes, steps] = [c.inputs[0]!, c.inputs[1], c.inputs[2], c.inputs[3], c.inputs[4]];
    const rest = c.inputs.slice(1).map(() => null);
    if (!starts || !ends) refuse(c, 'Slice with starts/ends attributes (opset < 10) is not supported');
    const constant = (t: string | undefined) => {
      const init = t ? c.initializer(t) : undefined;
      return init ? Array.from(tensorToFloat32(init)) : undefined;
    };
    const [st, en] = [constant(starts), constant(ends)];
    const ax = axes ? constant(axes) : st?.map((_, i) => i);
    const sp = steps ? constant(steps) : st?.map(() => 1);
    const shape = c.staticShape(x);
    if (st && en && ax && sp && shape && sp.every((v) => v === 1)) {
      // Unit steps, constant bounds, static sizes: the gradient is dY zero-padded back to x's shape.
      const rank = shape.length;
      const pads = Array<number>(2 * rank).fill(0);
      const ok = ax.every((a0, i) => {
        const a = a0 < 0 ? a0 + rank : a0;
        const d = shape[a];
        if (!isSize(d)) return false;
        const clamp = (v: number) => Math.min(Math.max(v < 0 ? v + d : v, 0), d);
        const s = clamp(st[i]!);
        pads[a] = s;
        pads[a + rank] = d - Math.max(clamp(en[i]!), s);
        return true;
      });
      if (ok) return [c.emit('Pad', [c.dy, c.ints(pads)]), ...rest];
    }
    // General (any steps, dynamic bounds): slice a grid of flat indices the same way and scatter dY there.
    const grid = c.emit('Reshape', [c.emit('Range', [int64Scalar(c, 0), c.emit('Size', [x]), int64Scalar(c, 1)]), c.shapeOf(x)]);
    const picked = c.emit('Slice', [grid, ...c.inputs.slice(1)]);
    return [scatterFlat(c, x, picked, c.dy, false), ...rest];
  },
  Gather: (c) => {
    // dData = ScatterND(zeros, indices[..., None], dY, reduction add), with the gathered axis moved first.
    const [data, indices] = [c.inputs[0]!, c.inputs[1]!];
    if (!c.needs(0)) return [null, null];
    const ds = c.staticShape(data);
    const is = c.staticShape(indices);
    if (!ds || !is) refuse(c, `the ranks of ${data} and ${indices} are needed`);
    const [rd, q] = [ds.length, is.length];
    const a = c.attrInt('axis', 0) < 0 ? c.attrInt('axis', 0) + rd : c.attrInt('axis', 0);
    let idx = c.typeOf(indices) === DataType.INT32 ? c.emit('Cast', [indices], { to: DataType.INT64 }) : indices;
    idx = c.emit('Unsqueeze', [idx, c.ints([-1])]);
    const moved = [a, ...range(0, a), ...range(a + 1, rd)]; // data's axes with the gathered one first
    const zerosShape = ds.every(isSize) ? c.ints(moved.map((i) => ds[i] as number)) : a === 0 ? c.shapeOf(data) : c.emit('Gather', [c.shapeOf(data), c.ints(moved)], { axis: 0 });
    const dyPerm = [...range(a, a + q), ...range(0, a), ...range(a + q, rd + q - 1)];
    const identity = (p: number[]) => p.every((v, i) => v === i);
    const updates = identity(dyPerm) ? c.dy : c.emit('Transpose', [c.dy], { perm: dyPerm });
    const scattered = c.emit('ScatterND', [filled(c, zerosShape, 0), idx, updates], { reduction: 'add' });
    if (identity(moved)) return [scattered, null];
    const inverse: number[] = [];
    moved.forEach((p, i) => (inverse[p] = i));
    return [c.emit('Transpose', [scattered], { perm: inverse }), null];
  },
  Pad: (c) => {
    // Constant mode: the adjoint of padding by p is padding by −p (crop where it padded, zeros where it cropped).
    const [pads, value, axes] = [c.inputs[1], c.inputs[2], c.inputs[3]];
    const mode = c.attrString('mode', 'constant');
    if (mode !== 'constant') refuse(c, `mode ${mode} is not supported (constant only)`);
    const init = pads ? c.initializer(pads) : undefined;
    const negated =
      init ? c.ints(Array.from(tensorToFloat32(init), (v) => -v))
      : pads ? c.emit('Neg', [pads])
      : c.ints((c.attrInts('pads') ?? []).map((v) => -v)); // opset < 11: pads attribute
    const dx = c.emit('Pad', axes ? [c.dy, negated, '', axes] : [c.dy, negated]);
    const out: (string | null)[] = [c.needs(0) ? dx : null];
    if (pads !== undefined) out.push(null);
    if (value !== undefined) {
      // The padding value received everything that did not land on x.
      const total = (t: string) => c.emit('ReduceSum', [t], { keepdims: 0 });
      out.push(value && c.needs(2) ? c.reshapeLike(c.emit('Sub', [total(c.dy), total(dx)]), value) : null);
    }
    if (axes !== undefined) out.push(null);
    return out;
  },

  ReduceMax: reduceExtremeGrad,
  ReduceMin: reduceExtremeGrad,
  ReduceL2: (c) => {
    // y = √Σx²: dx = x·dy/y, and 0 where y = 0 (as torch's norm: the subgradient 0 at the origin).
    const rest = c.inputs.slice(1).map(() => null);
    if (reducesNothing(c)) return [c.emit('Mul', [c.dy, c.emit('Sign', [c.inputs[0]!])]), ...rest]; // |x|
    const axes = reducedAxes(c);
    const keep = (t: string) => (c.attrInt('keepdims', 1) === 0 && axes ? c.emit('Unsqueeze', [t, axes]) : t);
    const y = keep(c.outputs[0]!);
    const ratio = c.emit('Where', [c.emit('Equal', [y, c.scalar(0)]), c.scalar(0), c.emit('Div', [keep(c.dy), y])]);
    return [c.emit('Mul', [c.inputs[0]!, ratio]), ...rest];
  },
  LpNormalization: (c) => {
    // y = x/‖x‖ along axis: p = 2: dx = (dy − y·Σ dy·y)/‖x‖₂; p = 1: dx = (dy − sign(x)·Σ dy·y)/‖x‖₁.
    const x = c.inputs[0]!;
    const axis = c.attrInt('axis', -1);
    const p = c.attrInt('p', 2);
    if (p !== 1 && p !== 2) refuse(c, `p ${p} is not supported (1 or 2)`);
    const y = c.outputs[0]!;
    // The norm recomputed with ReduceSum (axes as an input at every opset from 13).
    const summed = c.emit('ReduceSum', [p === 2 ? c.emit('Mul', [x, x]) : c.emit('Abs', [x]), c.ints([axis])], { keepdims: 1 });
    const norm = p === 2 ? c.emit('Sqrt', [summed]) : summed;
    const dot = c.emit('ReduceSum', [c.emit('Mul', [c.dy, y]), c.ints([axis])], { keepdims: 1 });
    const along = p === 2 ? y : c.emit('Sign', [x]);
    return [c.emit('Div', [c.emit('Sub', [c.dy, c.emit('Mul', [along, dot])]), norm])];
  },
};

/** A Dropout node's ratio: its constant scalar input, 0.5 when the input is omitted, undefined when not a constant. */
function dropoutRatio(input: string | undefined, initializer: (name: string) => TensorProto | undefined): number | undefined {
  if (!input) return 0.5;
  const t = initializer(input);
  if (!t || (t.dims ?? []).length > 0) return undefined;
  const v = tensorToFloat32(t)[0];
  return v !== undefined && v >= 0 && v < 1 ? v : undefined;
}

function isConstantFalse(t: TensorProto | undefined): boolean {
  if (!t) return false;
  return t.rawData && t.rawData.length > 0 ? t.rawData.every((v) => v === 0) : (t.int32Data ?? []).every((v) => v === 0);
}

function hasAttr(node: NodeProto, name: string): boolean {
  return node.attribute?.some((a) => a.name === name) ?? false;
}

// ---------------------------------------------------------------------------------------------------
// The walk
// ---------------------------------------------------------------------------------------------------

/** A value of a shape tensor: a size, a symbolic size, or null where unknown. */
type DimValue = number | string | null;

const INT_TYPES = new Set<number>([DataType.INT64, DataType.INT32]);

/**
 * inferShapes, plus the shape arithmetic that exported graphs do at run time. The values of the small int
 * tensors that compute shapes (Shape, and Gather, Unsqueeze, Squeeze, Concat, Slice, Cast of them, constants)
 * are followed as dims, so that a Reshape, Expand or ConstantOfShape to a computed shape (a transformer's
 * [N, L, heads, headDim] from Shape(x), as Hugging Face exports write it) gets its static shape, symbolic
 * sizes included: shapes.ts's propagation knows constant targets only, and without this everything after the
 * first head reshape of a BERT layer would have no rank. Repeated until a round learns nothing (a round's
 * reshapes unlock the next ones).
 */
function shapesThroughShapeOps(
  nodes: readonly NodeProto[],
  inputs: readonly ValueInfoProto[],
  initializers: readonly TensorProto[],
  given: ReadonlyMap<string, StaticShape>,
): Map<string, StaticShape> {
  const extra = new Map(given);
  const inits = new Map(initializers.map((t) => [t.name!, t]));
  for (;;) {
    const shapes = inferShapes(nodes, inputs, initializers, extra);
    const values = new Map<string, DimValue[]>();
    const valueOf = (t: string | undefined): DimValue[] | undefined => (t ? values.get(t) ?? constantInts(inits.get(t)) : undefined);
    const numbers = (t: string | undefined): number[] | undefined => {
      const v = valueOf(t);
      return v && v.every((d) => typeof d === 'number') ? (v as number[]) : undefined;
    };
    let learnt = false;
    const learn = (t: string, s: StaticShape) => {
      if (shapes.has(t)) return;
      extra.set(t, s);
      learnt = true;
    };
    const asDims = (v: readonly DimValue[]): Dim[] => v.map((d) => (d === null ? -1 : d));
    for (const n of nodes) {
      const ins = n.input ?? [];
      const out = n.output?.[0];
      if (!out) continue;
      switch (n.opType) {
        case 'Shape': {
          const x = shapes.get(ins[0] ?? '');
          if (!x) break;
          const r = x.length;
          const clamp = (a: number) => Math.min(Math.max(a < 0 ? a + r : a, 0), r);
          const dims = x.slice(clamp(attrInt(n, 'start', 0)), clamp(attrInt(n, 'end', r))).map((d) => (typeof d === 'string' || d >= 0 ? d : null));
          values.set(out, dims);
          learn(out, [dims.length]);
          break;
        }
        case 'Constant': {
          const c = constantInts(n.attribute?.find((a) => a.name === 'value')?.t ?? undefined);
          if (c) values.set(out, c);
          break;
        }
        case 'Cast':
        case 'Identity':
        case 'Squeeze':
        case 'Unsqueeze': {
          const v = valueOf(ins[0]);
          if (v && (n.opType !== 'Cast' || INT_TYPES.has(attrInt(n, 'to', 0)))) values.set(out, v);
          break;
        }
        case 'Gather': {
          const [v, idx] = [valueOf(ins[0]), numbers(ins[1])];
          if (v && idx && attrInt(n, 'axis', 0) === 0) values.set(out, idx.map((i) => v[i < 0 ? i + v.length : i] ?? null));
          break;
        }
        case 'Concat': {
          const parts = ins.map(valueOf);
          if (parts.every((p) => p !== undefined)) values.set(out, (parts as DimValue[][]).flat());
          break;
        }
        case 'Slice': {
          const [v, starts, ends] = [valueOf(ins[0]), numbers(ins[1]), numbers(ins[2])];
          const axes = ins[3] ? numbers(ins[3]) : [0];
          const steps = ins[4] ? numbers(ins[4]) : [1];
          if (!v || starts?.length !== 1 || ends?.length !== 1 || axes?.length !== 1 || (axes[0] !== 0 && axes[0] !== -1) || steps?.length !== 1 || steps[0] === 0) break;
          const [d, st] = [v.length, steps[0]!];
          const at = (e: number, lo: number, hi: number) => Math.min(Math.max(e < 0 ? e + d : e, lo), hi);
          const [lo, hi] = st > 0 ? [0, d] : [-1, d - 1];
          const picked: DimValue[] = [];
          for (let i = at(starts[0]!, lo, hi); st > 0 ? i < at(ends[0]!, lo, hi) : i > at(ends[0]!, lo, hi); i += st) picked.push(v[i]!);
          values.set(out, picked);
          break;
        }
        case 'Reshape': {
          const target = valueOf(ins[1]);
          if (!target) break;
          const x = shapes.get(ins[0] ?? '');
          const dims = target.map((d, i): Dim => (d === 0 && attrInt(n, 'allowzero', 0) === 0 ? x?.[i] ?? -1 : d === null ? -1 : d));
          const minus = target.indexOf(-1);
          if (minus >= 0 && x) dims[minus] = inferredDim(x, dims.filter((_, i) => i !== minus));
          learn(out, dims);
          break;
        }
        case 'Expand': {
          const [x, target] = [shapes.get(ins[0] ?? ''), valueOf(ins[1])];
          if (!x || !target) break;
          const rank = Math.max(x.length, target.length);
          const pad = <T>(a: readonly T[], fill: T) => [...Array<T>(rank - a.length).fill(fill), ...a];
          const [xs, ts] = [pad<Dim>(x, 1), pad<DimValue>(target, 1)];
          learn(out, xs.map((d, i) => {
            const t = ts[i]!;
            if (t === 1 || t === d) return d;
            if (d === 1) return t ?? -1;
            return typeof t === 'number' && t > 1 ? t : typeof d === 'number' && d > 1 ? d : -1;
          }));
          break;
        }
        case 'ConstantOfShape': {
          const target = valueOf(ins[0]);
          if (target) learn(out, asDims(target));
          break;
        }
        case 'Split': {
          // Every output (shapes.ts follows output 0 of a node only): sizes from the split input (opset 13+),
          // the split attribute (before), or equal parts (the last smaller, opset 18's num_outputs).
          const x = shapes.get(ins[0] ?? '');
          const outs = n.output ?? [];
          if (!x) break;
          const axis = attrInt(n, 'axis', 0) < 0 ? attrInt(n, 'axis', 0) + x.length : attrInt(n, 'axis', 0);
          const d = x[axis];
          let sizes: Dim[] | undefined = ins[1] ? numbers(ins[1]) : attrInts(n, 'split');
          if (!sizes && isSize(d)) {
            const part = Math.ceil(d / outs.length);
            sizes = outs.map((_, i) => Math.max(0, Math.min(part, d - i * part)));
          }
          outs.forEach((o, i) => o && learn(o, x.map((dim, j) => (j === axis ? sizes?.[i] ?? -1 : dim))));
          break;
        }
        default:
          break;
      }
    }
    if (!learnt) return shapes;
  }
}

/** The size a Reshape's -1 stands for: x's elements over the other target dims', where symbols cancel. */
function inferredDim(x: StaticShape, rest: readonly Dim[]): Dim {
  if (x.some((d) => d === -1) || rest.some((d) => d === -1)) return -1;
  const symbols = x.filter((d): d is string => typeof d === 'string');
  for (const d of rest) {
    if (typeof d !== 'string') continue;
    const at = symbols.indexOf(d);
    if (at < 0) return -1;
    symbols.splice(at, 1);
  }
  if (symbols.length > 0) return symbols.length === 1 && (x.filter((d) => typeof d === 'number') as number[]).reduce((a, b) => a * b, 1) === (rest.filter((d) => typeof d === 'number') as number[]).reduce((a, b) => a * b, 1) ? symbols[0]! : -1;
  const num = (ds: readonly Dim[]) => (ds.filter((d) => typeof d === 'number') as number[]).reduce((a, b) => a * b, 1);
  const r = num(rest);
  return r > 0 && num(x) % r === 0 ? num(x) / r : -1;
}

/**
 * An Expand in the backward pass (GlobalAveragePool's gradient spread over H×W) whose every reader is a binary
 * elementwise op against a tensor of the Expand's full shape is redundant: broadcasting gives those readers
 * the same result without writing the expanded tensor (1.4 ms for 32×1280×7×7). Readers take its input instead.
 */
function dropBroadcastExpands(builder: GraphBuilder, given: ReadonlyMap<string, StaticShape>): void {
  const expands = builder.nodes.filter((n) => n.opType === 'Expand');
  if (expands.length === 0) return;
  const shapes = inferShapes(builder.nodes, builder.inputs, builder.initializers, new Map([...given, ...declaredShapes(builder.valueInfos)]));
  const readers = new Map<string, NodeProto[]>();
  for (const n of builder.nodes) for (const i of n.input ?? []) if (i) readers.set(i, [...(readers.get(i) ?? []), n]);
  const outputs = new Set(builder.outputs.map((o) => o.name));
  const full = (t: string, target: StaticShape) => {
    const s = shapes.get(t);
    return !!s && s.length === target.length && s.every((d, i) => d === target[i]);
  };
  const dropped = new Set<NodeProto>();
  for (const e of expands) {
    const out = e.output![0]!;
    const target = shapes.get(out);
    const rs = readers.get(out) ?? [];
    if (!target || !target.every((d) => typeof d === 'number' && d >= 0) || outputs.has(out) || rs.length === 0) continue;
    const foldable = rs.every((r) => ['Mul', 'Add', 'Sub', 'Div'].includes(r.opType!) && r.input!.length === 2 && r.input!.some((i) => i !== out && full(i, target)));
    if (!foldable) continue;
    for (const r of rs) r.input = r.input!.map((i) => (i === out ? e.input![0]! : i));
    dropped.add(e);
  }
  if (dropped.size === 0) return;
  const gone = new Set([...dropped].map((e) => e.output![0]!));
  builder.nodes.splice(0, builder.nodes.length, ...builder.nodes.filter((n) => !dropped.has(n)));
  builder.valueInfos.splice(0, builder.valueInfos.length, ...builder.valueInfos.filter((v) => !gone.has(v.name!)));
}

/**
 * Reshape(Reshape(a, s1), s2) in the backward pass becomes Reshape(a, s2) (a reshape depends only on the element
 * order, which reshapes keep) where s2 has no 0 entries (which would copy dims of the inner Reshape's output):
 * a Shape output or a constant. The pair comes from a dynamic unbroadcast (which ends in a Reshape to the
 * input's shape) followed by a rule's reshape back; ONNX Runtime 1.30's basic graph optimizations fail on it
 * when s1 is a Shape output ("Attempting to get index by a name which does not exist"). Inner Reshapes left
 * without readers are removed, unless `keep` (the returned gradients) or the graph outputs name them.
 */
function foldReshapeChains(builder: GraphBuilder, from: number, keep: ReadonlySet<string>): void {
  const backward = new Set(builder.nodes.slice(from).filter((n) => n.opType === 'Reshape' && !attrInt(n, 'allowzero', 0)));
  if (backward.size < 2) return;
  const producer = new Map<string, NodeProto>();
  for (const n of builder.nodes) for (const o of n.output ?? []) if (o) producer.set(o, n);
  const initializers = new Map(builder.initializers.map((t) => [t.name!, t]));
  const noZeros = (shape: string) => {
    const c = constantInts(initializers.get(shape));
    return c ? !c.includes(0) : producer.get(shape)?.opType === 'Shape';
  };
  let folded = false;
  for (const n of backward) {
    if (!noZeros(n.input![1]!)) continue;
    for (let inner = producer.get(n.input![0]!); inner && backward.has(inner); inner = producer.get(n.input![0]!)) {
      n.input![0] = inner.input![0]!;
      folded = true;
    }
  }
  if (!folded) return;
  const read = new Set<string>([...keep, ...builder.outputs.map((o) => o.name!)]);
  for (const n of builder.nodes) for (const i of n.input ?? []) if (i) read.add(i);
  const dead = new Set([...backward].filter((n) => !read.has(n.output![0]!)));
  if (dead.size === 0) return;
  const gone = new Set([...dead].map((n) => n.output![0]!));
  builder.nodes.splice(0, builder.nodes.length, ...builder.nodes.filter((n) => !dead.has(n)));
  builder.valueInfos.splice(0, builder.valueInfos.length, ...builder.valueInfos.filter((v) => !gone.has(v.name!)));
}

/**
 * Appends the gradients of `loss` with respect to each `wrt` tensor to the builder's graph and returns
 * wrt name → gradient tensor name. A `wrt` tensor that the loss does not depend on gets zeros. Tensors
 * that are not downstream of a `wrt` tensor (labels, masks, frozen weights) get no gradient, and their
 * nodes need no rule. An op on a path from `wrt` to the loss without a rule throws before anything is built.
 */
export function appendGradients(builder: GraphBuilder, options: GradientOptions): Map<string, string> {
  const { loss, wrt } = options;
  const forward = topologicalOrder(builder.nodes);
  const graphInputs = new Map<string, ValueInfoProto>(builder.inputs.map((v) => [v.name!, v]));
  const initializers = new Map(builder.initializers.map((t) => [t.name!, t]));
  const produced = new Set(forward.flatMap((n) => n.output ?? []));
  const exists = (t: string) => produced.has(t) || graphInputs.has(t) || initializers.has(t);
  if (!exists(loss)) throw new GraftError('USAGE', `Expected a tensor of the graph for loss but received ${JSON.stringify(loss)}`, { name: 'loss', actual: loss });
  for (const w of wrt) if (!exists(w)) throw new GraftError('USAGE', `Expected a tensor of the graph for wrt but received ${JSON.stringify(w)}`, { name: 'wrt', actual: w });

  const typeOf = (t: string): number | undefined => {
    const v = graphInputs.get(t);
    if (v) return v.type?.tensorType?.elemType ?? undefined;
    const init = initializers.get(t);
    return init ? init.dataType ?? undefined : undefined;
  };
  const elemType =
    options.elemType ??
    wrt.map(typeOf).find((t) => t !== undefined && FLOAT_TYPES.has(t)) ??
    [...builder.inputs.map((v) => v.type?.tensorType?.elemType), ...builder.initializers.map((t) => t.dataType)].find((t) => t != null && FLOAT_TYPES.has(t)) ??
    DataType.FLOAT;
  if (elemType !== DataType.FLOAT && elemType !== DataType.DOUBLE) {
    throw new GraftError('USAGE', `Expected DataType.FLOAT or DataType.DOUBLE for elemType but received ${elemType}`, { name: 'elemType', actual: elemType });
  }

  // Prune: tensors downstream of wrt, tensors upstream of the loss, both along differentiable edges only.
  const downstream = new Set(wrt);
  for (const n of forward) {
    if (!isDifferentiableNode(n)) continue;
    if ((n.input ?? []).some((t, i) => t && diffInput(n, i) && downstream.has(t))) (n.output ?? []).forEach((t, i) => t && diffOutput(n, i) && downstream.add(t));
  }
  const upstream = new Set([loss]);
  for (let k = forward.length - 1; k >= 0; k--) {
    const n = forward[k]!;
    if (!isDifferentiableNode(n)) continue;
    if ((n.output ?? []).some((t, i) => t && diffOutput(n, i) && upstream.has(t))) (n.input ?? []).forEach((t, i) => t && diffInput(n, i) && upstream.add(t));
  }
  const onPath = (t: string) => downstream.has(t) && upstream.has(t);
  const path = forward.filter((n) => isDifferentiableNode(n) && (n.output ?? []).some((t, i) => t && diffOutput(n, i) && onPath(t)));

  // Every op on the path needs a rule: fail before building anything.
  for (const n of path) {
    if (!Object.hasOwn(GRAD_RULES, n.opType ?? '')) {
      throw new GraftError('MODEL', `no gradient rule for op ${n.opType} (node ${n.name})`, { node: n.name, op: n.opType });
    }
    const training = n.opType === 'Dropout' ? n.input?.[2] : undefined;
    if (training && !isConstantFalse(initializers.get(training))) {
      const ratio = dropoutRatio(n.input?.[1], (t) => initializers.get(t));
      if (!n.output?.[1] || ratio === undefined) {
        throw new GraftError('MODEL', `Dropout node ${n.name} in training mode needs its mask output and a constant scalar ratio in [0, 1) for its gradient`, { node: n.name, op: n.opType });
      }
    }
  }

  const firstBackward = builder.nodes.length;
  const firstConstant = builder.initializers.length;
  // Reserve every name of the forward graph so that fresh gradient names cannot collide with one.
  for (const n of forward) for (const t of [...(n.input ?? []), ...(n.output ?? [])]) if (t) builder.fresh(t);

  // Static shapes.
  const useStatic = options.useStaticShapes ?? true;
  const given = options.shapes instanceof Map ? options.shapes : new Map(Object.entries(options.shapes ?? {}));
  const shapes = shapesThroughShapeOps(forward, builder.inputs, builder.initializers, given);
  // Without static shapes, ranks stay known (rules need them) but every size is treated as unknown.
  if (!useStatic) for (const [k, v] of shapes) shapes.set(k, v.map(() => -1));

  // Helpers shared by all rules.
  const scalars = new Map<number, string>();
  const scalar = (v: number): string => {
    let name = scalars.get(v);
    if (!name) {
      name = builder.constant('grad_const', elemType === DataType.DOUBLE ? Float64Array.of(v) : Float32Array.of(v), []);
      scalars.set(v, name);
    }
    return name;
  };
  const intConsts = new Map<string, string>();
  const ints = (values: readonly number[]): string => {
    const key = values.join(',');
    let name = intConsts.get(key);
    if (!name) {
      name = builder.int64('grad_ints', values);
      intConsts.set(key, name);
    }
    return name;
  };
  const emit = (op: string, inputs: readonly string[], attrs: Record<string, AttrValue | undefined> = {}) => builder.op(op, inputs, attrs);
  const shapeCache = new Map<string, string>();
  const shapeOf = (t: string): string => {
    let s = shapeCache.get(t);
    if (!s) {
      s = emit('Shape', [t]);
      shapeCache.set(t, s);
    }
    return s;
  };
  const staticShape = (t: string) => shapes.get(t);
  const numericShape = (t: string): number[] | undefined => {
    const s = shapes.get(t);
    return s && s.every((d) => typeof d === 'number' && d >= 0) ? (s as number[]) : undefined;
  };
  const reshapeLike = (grad: string, t: string): string => {
    const s = numericShape(t);
    return emit('Reshape', [grad, s ? ints(s) : shapeOf(t)]);
  };
  const dynamicUnbroadcast = (grad: string, input: string): string => {
    // Left-pad input's shape with ones to grad's rank; sum over the axes where it is 1; reshape back.
    // (Ranks come from Shape(Shape(t)): ORT's shape inference mistakes Size(Shape(t)) for Size(t).)
    const gShape = emit('Shape', [grad]);
    const iShape = shapeOf(input);
    const pad = emit('Sub', [emit('Shape', [gShape]), emit('Shape', [iShape])]);
    const ones = emit('ConstantOfShape', [pad], { value: tensor('', BigInt64Array.of(1n), [1]) });
    const padded = emit('Concat', [ones, iShape], { axis: 0 });
    const axes = emit('Reshape', [emit('NonZero', [emit('Equal', [padded, ints([1])])]), ints([-1])]);
    const summed = emit('ReduceSum', [grad, axes], { keepdims: 1, noop_with_empty_axes: 1 });
    return emit('Reshape', [summed, iShape]);
  };
  const unbroadcastWith = (outShape: StaticShape | undefined) => (grad: string, input: string, gradShape?: StaticShape | null): string => {
    const is = shapes.get(input);
    const gs = gradShape === undefined ? outShape : gradShape ?? undefined;
    if (!is || !gs || is.length > gs.length) return dynamicUnbroadcast(grad, input);
    const lead = gs.length - is.length;
    const axes = Array.from({ length: lead }, (_, i) => i);
    for (let j = 0; j < is.length; j++) {
      const [id, gd] = [is[j]!, gs[lead + j]!];
      if (id === 1) {
        if (gd !== 1) axes.push(lead + j); // summing a size-1 axis is harmless if gd turns out to be 1
      } else if (!(typeof id === 'number' && id > 1) && !provablyEqual(id, gd)) {
        return dynamicUnbroadcast(grad, input);
      }
    }
    if (axes.length === 0) return grad;
    // Only leading axes (a bias [C] against [N, C]): keepdims=0 leaves exactly the input's shape.
    if (axes.length === lead) return emit('ReduceSum', [grad, ints(axes)], { keepdims: 0 });
    const summed = emit('ReduceSum', [grad, ints(axes)], { keepdims: 1 });
    return lead === 0 ? summed : reshapeLike(summed, input);
  };

  // Walk in reverse topological order, summing the gradients that meet at a tensor.
  const pending = new Map<string, string[]>();
  const seed = scalar(1);
  pending.set(loss, [seed]);
  const summed = new Map<string, string | null>();
  const gradOf = (t: string): string | null => {
    if (summed.has(t)) return summed.get(t)!;
    const parts = pending.get(t) ?? [];
    const g = parts.length === 0 ? null : parts.length === 1 ? parts[0]! : emit('Sum', parts);
    summed.set(t, g);
    return g;
  };

  for (let k = path.length - 1; k >= 0; k--) {
    const node = path[k]!;
    const outputs = node.output ?? [];
    const dys = outputs.map((t, i) => (t && diffOutput(node, i) && onPath(t) ? gradOf(t) : null));
    if (dys.every((g) => g === null)) continue;
    const inputs = (node.input ?? []).map((t) => t ?? '');
    const needs = (i: number) => !!inputs[i] && diffInput(node, i) && downstream.has(inputs[i]!);
    const attrOf = (name: string): AttributeProto | undefined => node.attribute?.find((a) => a.name === name) ?? undefined;
    const ctx: GradContext = {
      node,
      op: node.opType!,
      inputs,
      outputs,
      dys,
      get dy() {
        if (!dys[0]) throw new GraftError('MODEL', `node ${node.name}: no gradient reaches output 0`, { node: node.name, op: node.opType });
        return dys[0];
      },
      builder,
      elemType,
      needs,
      attrInt: (name, fallback) => attrInt(node, name, fallback),
      attrFloat: (name, fallback) => (attrOf(name) ? attrOf(name)!.f ?? fallback : fallback),
      attrInts: (name) => attrInts(node, name),
      attrString: (name, fallback) => {
        const s = attrOf(name)?.s;
        return s ? new TextDecoder().decode(s) : fallback;
      },
      emit,
      scalar,
      ints,
      shapeOf,
      staticShape,
      typeOf,
      unbroadcast: unbroadcastWith(shapes.get(outputs[0] ?? '')),
      reshapeLike,
      initializer: (t) => initializers.get(t),
    };
    const grads = GRAD_RULES[node.opType!]!(ctx);
    if (grads.length !== inputs.length) {
      throw new GraftError('MODEL', `gradient rule for op ${node.opType} returned ${grads.length} gradients for ${inputs.length} inputs (node ${node.name})`, { node: node.name, op: node.opType });
    }
    grads.forEach((g, i) => {
      if (g && needs(i)) {
        const list = pending.get(inputs[i]!) ?? [];
        list.push(g);
        pending.set(inputs[i]!, list);
      }
    });
  }

  // A gradient has its tensor's shape: recorded as value_info for later rewrites (nchwc.ts) to read.
  const declared = new Set([...builder.inputs, ...builder.outputs, ...builder.valueInfos].map((v) => v.name!));
  for (const [t, g] of summed) {
    const s = shapes.get(t);
    if (!g || g === seed || declared.has(g) || initializers.has(g) || !s || !s.every((d) => typeof d === 'string' || d >= 0)) continue;
    builder.annotate(g, elemType, s);
    declared.add(g);
  }

  dropBroadcastExpands(builder, given);

  const result = new Map<string, string>();
  const returned = new Set<string>();
  for (const w of wrt) {
    let g = gradOf(w);
    if (g === null) {
      g = emit('ConstantOfShape', [shapeOf(w)], { value: tensor('', elemType === DataType.DOUBLE ? Float64Array.of(0) : Float32Array.of(0), [1]) });
    } else if (g === seed || returned.has(g)) {
      g = emit('Identity', [g]); // every wrt gets its own tensor, never an initializer
    }
    returned.add(g);
    result.set(w, g);
  }
  foldReshapeChains(builder, firstBackward, returned);
  dropUnreadConstants(builder, firstConstant);
  return result;
}

/** Removes the constants the backward pass made that no node reads any more (folded reshapes' shapes). */
function dropUnreadConstants(builder: GraphBuilder, from: number): void {
  const read = new Set<string>(builder.outputs.map((o) => o.name!));
  for (const n of builder.nodes) for (const i of n.input ?? []) if (i) read.add(i);
  const kept = builder.initializers.filter((t, i) => i < from || read.has(t.name!));
  if (kept.length !== builder.initializers.length) builder.initializers.splice(0, builder.initializers.length, ...kept);
}

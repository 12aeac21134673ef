/**
 * Training graphs on ONNX Runtime's NCHWc kernels.
 *
 * ONNX Runtime's CPU provider has convolution kernels for a blocked layout, NCHWc (channels in blocks of 8
 * or 16: an (N, C, H, W) tensor stored as (N, C/B, H, W, B)), which its graph optimizer uses only where the
 * weights are constant. They are much faster than its NCHW convolutions for what fine-tuning a MobileNet
 * runs: a depthwise Conv in NCHW goes through im2col and one tiny matrix product per channel (5 ms for
 * 32×576×14×14, 19-32 ms for the batch-grouped Conv of its weight gradient; NCHWc: 0.9 and 1.8 ms), and a
 * pointwise (1×1) Conv, forward or input gradient, runs 20-30% faster blocked. This rewrite puts them in
 * place for weights that are fed or computed (training graphs), and keeps tensors blocked between them:
 *
 * - a 1×1 or depthwise Conv whose channel counts the block divides runs as `com.microsoft.nchwc` Conv on the
 *   blocked copy of its input; its output stays blocked; a Relu or constant-bound Clip that alone reads it
 *   becomes the Conv's fused activation (the gradient rules read activations' outputs only);
 * - the input gradient of a stride-2 depthwise Conv (a ConvTranspose) runs as four stride-1 phase convs whose
 *   outputs two Concats interleave;
 * - elementwise ops (the activations, ReLU6 masks, residual sums, gradient sums) on blocked inputs run on
 *   them as they are (same shape) or through a 5-D (N, C/B, H, W, B) view (broadcasting (N, C, 1, 1));
 * - a bias gradient (ReduceSum over N, H, W) and GlobalAveragePool read blocked tensors through that view;
 * - a Reshape of (N, C, …) to (1, N·C, …) (how a depthwise weight gradient views X and dY) is a view of the
 *   same blocked bytes when B divides C;
 * - anything else (the Transposes of 1×1 weight gradients, a strided input gradient's ConvTranspose) gets an
 *   NCHW copy (`ReorderOutput`), made once per tensor and only where something reads it; likewise a tensor
 *   enters the blocked layout (`ReorderInput`) once.
 * Weights: a 1×1 weight (Co, Ci, 1, 1) is reordered to the kernels' (Co/B, Ci/B, B, B) layout by one
 * `ReorderInput` of its (1, Co, Ci, 1) view, and the transposed weight of an input gradient by one
 * channels-last `ReorderInput` of the untransposed weight; a depthwise weight (C, 1, kh, kw) through its
 * (1, C, kh, kw) view.
 *
 * The ops exist only in ONNX Runtime's CPU provider, and their block size depends on the CPU (AVX-512: 16,
 * AVX2: 8, none: no NCHWc); ask the runtime for it (`nchwcBlockSize` in `train/runtime.ts`) and leave graphs
 * alone where it has none. Results equal the plain graph's up to float rounding.
 */
import { GraphBuilder, makeAttribute } from './builder.js';
import { attr, attrInt, attrInts, constantInts, DataType, onnx, tensorToFloat32, toNumber, type ModelProto, type NodeProto, type TensorProto } from './proto.js';
import { declaredShapes, inferShapes, isSize, provablyEqual, topologicalOrder, type StaticShape } from './shapes.js';

export const NCHWC_DOMAIN = 'com.microsoft.nchwc';

/** Ops that act element by element (with ONNX broadcasting): they run on blocked tensors unchanged. */
const ELEMENTWISE = new Set([
  'Add', 'Sub', 'Mul', 'Div', 'Sum', 'Max', 'Min', 'Clip', 'Relu', 'Neg', 'Abs', 'Sigmoid', 'HardSigmoid', 'HardSwish',
  'Identity', 'Cast', 'Where', 'Equal', 'Greater', 'Less', 'GreaterOrEqual', 'LessOrEqual', 'Not', 'And', 'Or',
]);
const BOOLEAN_RESULT = new Set(['Equal', 'Greater', 'Less', 'GreaterOrEqual', 'LessOrEqual', 'Not', 'And', 'Or']);

/**
 * Rewrites the model's 1×1 and depthwise 2-D Convs whose channel counts the block size divides to NCHWc,
 * with the elementwise work between them on blocked tensors; returns how many Convs it rewrote.
 */
export function useNchwc(model: ModelProto, block: number): { model: ModelProto; rewritten: number } {
  const graph = model.graph!;
  if (block <= 1) return { model, rewritten: 0 };
  const nodes = topologicalOrder(graph.node ?? []);
  const initializers = graph.initializer ?? [];
  const shapes = inferShapes(nodes, graph.input ?? [], initializers, declaredShapes(graph.valueInfo ?? []));
  const types = elementTypes(model, nodes);
  const producer = new Map<string, NodeProto>();
  for (const n of nodes) for (const o of n.output ?? []) if (o) producer.set(o, n);
  const readers = new Map<string, NodeProto[]>();
  for (const n of nodes) for (const t of n.input ?? []) if (t) (readers.get(t) ?? readers.set(t, []).get(t)!).push(n);
  const graphOutputs = new Set((graph.output ?? []).map((o) => o.name!));
  const initializerByName = new Map(initializers.map((t) => [t.name!, t]));
  const constFloat = (t: string | undefined): number | undefined => {
    const init = t ? initializerByName.get(t) : undefined;
    const values = init && (init.dataType === DataType.FLOAT || init.dataType === DataType.DOUBLE) ? tensorToFloat32(init) : undefined;
    return values?.length === 1 ? values[0] : undefined;
  };
  const constInts = (t: string | undefined) => constantInts(t ? initializerByName.get(t) : undefined);

  const opset = toNumber((model.opsetImport ?? []).find((o) => (o.domain ?? '') === '')?.version as number | undefined);
  const b = new GraphBuilder(graph.name ?? 'graph');
  for (const t of [...(graph.input ?? []), ...(graph.output ?? [])]) b.fresh(t.name!);
  for (const t of initializers) b.fresh(t.name!);
  for (const n of nodes) for (const t of [n.name, ...(n.input ?? []), ...(n.output ?? [])]) if (t) b.fresh(t);

  /** Tensors that exist in their plain layout: graph inputs, initializers, outputs of nodes left as they are. */
  const plain = new Set<string>([...(graph.input ?? []).map((i) => i.name!), ...initializers.map((t) => t.name!)]);
  /** Blocked copies: for t of shape (N, C, H, W) with B | C, a tensor of that shape holding t in NCHWc. */
  const copies = new Map<string, string>();
  const blockable = (s: StaticShape | undefined): s is StaticShape =>
    !!s && s.length === 4 && isSize(s[1]) && s[1] % block === 0 && isSize(s[2]) && isSize(s[3]);
  /** Reshape target dimensions: a symbolic batch is copied from the input (0). */
  const target = (s: StaticShape): number[] => s.map((d, i) => (isSize(d) ? d : i === 0 ? 0 : Number.NaN));
  const reshape = (t: string, dims: readonly number[], output?: string): string => {
    const shape = b.int64(`${t}_shape`, dims);
    if (!output) return b.op('Reshape', [t, shape]);
    b.nodes.push({ opType: 'Reshape', input: [t, shape], output: [output], name: b.fresh(`${output}/Reshape`), attribute: [] });
    return output;
  };
  const known = (t: string, s: StaticShape, type: number | undefined) => {
    shapes.set(t, s);
    if (type !== undefined) types.set(t, type);
    return t;
  };
  /** The 5-D (N, C/B, H, W, B) view of a blocked tensor of shape s. */
  const view5 = (t: string, s: StaticShape) => reshape(t, [...target([s[0]!]), (s[1] as number) / block, s[2] as number, s[3] as number, block]);

  /** The blocked copy of t, made once (floats by ReorderInput, others by a Transpose). */
  const toBlocked = (t: string): string => {
    const have = copies.get(t);
    if (have) return have;
    const s = shapes.get(t)!;
    let out: string;
    if (types.get(t) === DataType.FLOAT) out = b.op('ReorderInput', [t], {}, { domain: NCHWC_DOMAIN, name: b.fresh(`${t}/ReorderInput`) });
    else {
      const [n, c, h, w] = target(s) as [number, number, number, number];
      const moved = b.op('Transpose', [reshape(t, [n, c / block, block, h, w])], { perm: [0, 1, 3, 4, 2] });
      out = reshape(moved, [n, c, h, w]);
    }
    copies.set(t, known(out, s, types.get(t)));
    return out;
  };
  /** Defines t in its plain layout from its blocked copy (where something reads it so), once. */
  const toPlain = (t: string): void => {
    if (plain.has(t)) return;
    const src = copies.get(t)!;
    const s = shapes.get(t)!;
    if (types.get(t) === DataType.FLOAT) {
      b.nodes.push({ opType: 'ReorderOutput', domain: NCHWC_DOMAIN, input: [src], output: [t], name: b.fresh(`${t}/ReorderOutput`), attribute: [makeAttribute('channels', s[1] as number)] });
    } else {
      const moved = b.op('Transpose', [view5(src, s)], { perm: [0, 1, 4, 2, 3] });
      reshape(moved, target(s), t);
    }
    plain.add(t);
  };

  /**
   * A tensor of shape `view` holding t's values blocked. (N, C, h, w), (1, N·C, h, w) and, for a depthwise
   * weight, (N·C, 1, h, w) all have the same blocked bytes when B divides C: a reshape of one blocked copy.
   */
  const asBlocked = (t: string, view: StaticShape): string => {
    const own = shapes.get(t);
    const same = !!own && own.length === view.length && own.every((d, i) => provablyEqual(d, view[i]!) || d === view[i]);
    if (copies.has(t) && same) return copies.get(t)!;
    const src = producer.get(t);
    const srcShape = src?.opType === 'Reshape' ? shapes.get(src.input![0]!) : undefined;
    const fits = (s: StaticShape | undefined): s is StaticShape => blockable(s) && s[2] === view[2] && s[3] === view[3];
    if (src && view.every(isSize) && fits(srcShape)) return reshape(toBlocked(src.input![0]!), view as number[]);
    if (fits(own) && same) return toBlocked(t);
    const dims = view as number[]; // static from here: only the input x of a forward Conv may have a symbolic batch
    if (fits(own)) return reshape(toBlocked(t), dims);
    // A depthwise weight (C, 1, kh, kw): through its (1, C, kh, kw) view.
    const flat = known(reshape(t, [1, dims[0]! * dims[1]!, dims[2]!, dims[3]!]), [1, dims[0]! * dims[1]!, dims[2]!, dims[3]!], DataType.FLOAT);
    return reshape(toBlocked(flat), dims);
  };

  /**
   * A 1×1 weight (Co, Ci, 1, 1) in the kernels' (Co/B, Ci/B, B, B) layout: ReorderInput of its (1, Co, Ci, 1)
   * view. The input gradient's weight, W transposed (Unsqueeze(Transpose(Reshape(W, [Ci, Co])))), comes
   * from W itself: a channels-last ReorderInput of W's (1, Ci, 1, Co) view lays it out the same.
   */
  const pointwiseWeights = new Map<string, string>();
  const pointwiseWeight = (w: string, co: number, ci: number): string => {
    const have = pointwiseWeights.get(w);
    if (have) return have;
    const unsqueeze = producer.get(w);
    const transpose = unsqueeze?.opType === 'Unsqueeze' ? producer.get(unsqueeze.input![0]!) : undefined;
    const perm = transpose?.opType === 'Transpose' ? attrInts(transpose, 'perm') : undefined;
    const source = perm?.length === 2 && perm[0] === 1 ? transpose!.input![0]! : undefined;
    const sourceShape = source ? shapes.get(source) : undefined;
    const out =
      source && sourceShape?.length === 2 && sourceShape[0] === ci && sourceShape[1] === co && plain.has(source)
        ? b.op('ReorderInput', [reshape(source, [1, ci, 1, co])], { channels_last: 1 }, { domain: NCHWC_DOMAIN })
        : b.op('ReorderInput', [reshape(w, [1, co, ci, 1])], {}, { domain: NCHWC_DOMAIN });
    pointwiseWeights.set(w, reshape(out, [co, ci, 1, 1]));
    return pointwiseWeights.get(w)!;
  };

  /**
   * The Relu or Clip (constant bounds) that alone reads a Conv's output, as the NCHWc Conv's fused activation:
   * the Conv's own output then never exists (gradient rules read such activations' outputs only).
   */
  const fused = new Set<NodeProto>();
  const activationOf = (conv: NodeProto): { node: NodeProto; attrs: Record<string, string | number[]> } | undefined => {
    const out = conv.output![0]!;
    const [reader, ...others] = readers.get(out) ?? [];
    if (!reader || others.length || graphOutputs.has(out) || (reader.domain ?? '') !== '') return undefined;
    if (reader.opType === 'Relu') return { node: reader, attrs: { activation: 'Relu' } };
    if (reader.opType !== 'Clip' || attr(reader, 'min') || attr(reader, 'max')) return undefined;
    const [, lo, hi] = reader.input ?? [];
    const bounds = [lo ? constFloat(lo) : -3.4028234663852886e38, hi ? constFloat(hi) : 3.4028234663852886e38];
    if (bounds.some((v) => v === undefined)) return undefined;
    return { node: reader, attrs: { activation: 'Clip', activation_params: bounds as number[] } };
  };

  /** The Conv as an NCHWc Conv with its output blocked, or false where the kernels cannot run it. */
  const convolution = (n: NodeProto): boolean => {
    const [x, w, bias] = n.input ?? [];
    const xs = x ? shapes.get(x) : undefined;
    const ws = w ? shapes.get(w) : undefined;
    const ys = shapes.get(n.output![0]!);
    const group = attrInt(n, 'group', 1);
    const autoPad = attr(n, 'auto_pad')?.s ? new TextDecoder().decode(attr(n, 'auto_pad')!.s!) : 'NOTSET';
    if ((n.domain ?? '') !== '' || !ws || ws.length !== 4 || !ws.every(isSize) || autoPad !== 'NOTSET' || (xs && xs.length !== 4)) return false;
    if (!ys || ys.length !== 4 || !isSize(ys[1])) return false;
    // Depthwise: a (C, 1, kh, kw) weight with C groups, so x has C channels too (ONNX: C_in = group · W.shape[1]).
    const depthwise = group > 1 && group % block === 0 && ws[0] === group && ws[1] === 1;
    const pointwise =
      group === 1 && ws[0] % block === 0 && ws[1] % block === 0 && ws[2] === 1 && ws[3] === 1 && blockable(xs) && blockable(ys) &&
      (attrInts(n, 'strides') ?? [1, 1]).every((v) => v === 1) && (attrInts(n, 'pads') ?? [0, 0, 0, 0]).every((v) => v === 0);
    if (!depthwise && !pointwise) return false;
    const weight = depthwise ? asBlocked(w!, ws) : pointwiseWeight(w!, ws[0], ws[1]);
    const input = xs ? asBlocked(x!, xs) : toBlocked(x!);
    const activation = activationOf(n);
    const sum = activation ? undefined : addendOf(n);
    const inputs = [input, weight, ...(bias || sum ? [bias ?? ''] : []), ...(sum ? [copies.get(sum.addend) ?? toBlocked(sum.addend)] : [])];
    const conv = b.op('Conv', inputs, { kernel_shape: [ws[2], ws[3]], ...activation?.attrs }, { domain: NCHWC_DOMAIN, name: `${n.name}/nchwc` });
    const own = b.nodes[b.nodes.length - 1]!;
    own.attribute = [...(n.attribute ?? []).filter((a) => a.name !== 'kernel_shape'), ...own.attribute!];
    const last = activation ?? sum;
    if (last) fused.add(last.node);
    copies.set((last?.node ?? n).output![0]!, known(conv, ys, DataType.FLOAT));
    return true;
  };

  /**
   * The Add (or two-input Sum) that alone reads a Conv's output, whose other addend is already computed and
   * of the same shape (a residual join, a gradient sum): the NCHWc Conv adds it (its Sum input).
   */
  const addendOf = (conv: NodeProto): { node: NodeProto; addend: string } | undefined => {
    const out = conv.output![0]!;
    const [reader, ...others] = readers.get(out) ?? [];
    if (!reader || others.length || graphOutputs.has(out) || (reader.domain ?? '') !== '' || !['Add', 'Sum'].includes(reader.opType!)) return undefined;
    const [first, second] = reader.input ?? [];
    if (reader.input!.length !== 2 || first === second) return undefined;
    const addend = first === out ? second! : first!;
    const [as, ys] = [shapes.get(addend), shapes.get(out)];
    if (!blockable(as) || !ys || as.length !== ys.length || !as.every((d, i) => provablyEqual(d, ys[i]!))) return undefined;
    if (!copies.has(addend) && !plain.has(addend)) return undefined; // computed later: the Add stays
    return types.get(addend) === DataType.FLOAT ? { node: reader, addend } : undefined;
  };

  /**
   * The input gradient of a stride-2 depthwise Conv (a ConvTranspose, slow in ONNX Runtime: 7.7 ms for
   * 32×576×7×7 → 14×14) in polyphase form: output rows and columns of each parity (qi, qj) are a stride-1
   * depthwise correlation of dY with the kernel taps of matching parity, on NCHWc; the four phases are then
   * interleaved by two Concats on the blocked layout (2.2 ms in all). Output row i = 2t + q receives
   * dY[t + d]·w[a] for the taps a ≡ q + p (mod 2), d = (q + p − a)/2, p the leading pad.
   * Only where the output is exactly twice dY's size; false elsewhere.
   */
  const stridedDepthwiseInputGrad = (n: NodeProto): boolean => {
    const [dy, w, bias] = n.input ?? [];
    const ds = dy ? shapes.get(dy) : undefined;
    const ws = w ? shapes.get(w) : undefined;
    const group = attrInt(n, 'group', 1);
    const pads = attrInts(n, 'pads') ?? [0, 0, 0, 0];
    const outputPadding = attrInts(n, 'output_padding') ?? [0, 0];
    if ((n.domain ?? '') !== '' || bias || attr(n, 'output_shape') || attr(n, 'auto_pad')) return false;
    if (!blockable(ds) || !ws || ws.length !== 4 || !ws.every(isSize) || ws[0] !== group || ws[1] !== 1 || ds[1] !== group) return false;
    if (!(attrInts(n, 'strides') ?? [1, 1]).every((v) => v === 2) || !(attrInts(n, 'dilations') ?? [1, 1]).every((v) => v === 1)) return false;
    const [hy, wy] = [ds[2] as number, ds[3] as number];
    // The output size: (in − 1)·stride + kernel − pads + output_padding must be twice the input's.
    if ([hy, wy].some((size, i) => (size - 1) * 2 + ws[2 + i]! - pads[i]! - pads[i + 2]! + outputPadding[i]! !== 2 * size)) return false;
    /** For one axis and parity q: the taps a (by increasing offset d) and the offsets' range. */
    const phase = (k: number, p: number, q: number) => {
      const taps = Array.from({ length: k }, (_, a) => a).filter((a) => (a - q - p) % 2 === 0).reverse();
      const offsets = taps.map((a) => (q + p - a) / 2);
      return { taps, first: offsets[0]!, last: offsets[offsets.length - 1]! };
    };
    const phases = [0, 1].map((q) => [phase(ws[2], pads[0]!, q), phase(ws[3], pads[1]!, q)] as const);
    if (phases.flat().some((ph) => !ph.taps.length || ph.first > 0 || ph.last < 0)) return false;
    const dyBlocked = asBlocked(dy!, ds);
    type Phase = (typeof phases)[number][number];
    const phaseConv = (rowPhase: Phase, colPhase: Phase): string => {
      const kernel = b.op('Gather', [b.op('Gather', [w!, b.int64('taps', rowPhase.taps)], { axis: 2 }), b.int64('taps', colPhase.taps)], { axis: 3 });
      const kernelShape = [group, 1, rowPhase.taps.length, colPhase.taps.length];
      const conv = b.op('Conv', [dyBlocked, asBlocked(kernel, kernelShape)], {
        group, kernel_shape: kernelShape.slice(2), pads: [-rowPhase.first, -colPhase.first, rowPhase.last, colPhase.last],
      }, { domain: NCHWC_DOMAIN, name: b.fresh(`${n.name}/phase`) });
      return reshape(conv, [0, group / block, hy, wy, 1, block]);
    };
    // Columns interleave along a new axis after W, then rows along one after H.
    const rows = phases.map(([rowPhase]) => b.op('Concat', phases.map(([, colPhase]) => phaseConv(rowPhase, colPhase)), { axis: 4 }));
    const both = b.op('Concat', rows.map((r) => reshape(r, [0, group / block, hy, 1, 2 * wy * block])), { axis: 3 });
    const outShape = [ds[0]!, group, 2 * hy, 2 * wy];
    copies.set(known(n.output![0]!, outShape, DataType.FLOAT), known(reshape(both, target(outShape)), outShape, DataType.FLOAT));
    return true;
  };

  /** An elementwise op with a blocked input, on blocked inputs; false where broadcasting forbids it. */
  const elementwise = (n: NodeProto): boolean => {
    const out = n.output?.[0];
    const os = out ? shapes.get(out) : undefined;
    const inputs = n.input ?? [];
    if ((n.domain ?? '') !== '' || n.output!.length !== 1 || !blockable(os) || !inputs.some((t) => t && copies.has(t))) return false;
    const kinds = inputs.map((t) => {
      if (!t) return 'none';
      const s = shapes.get(t);
      if (!s) return undefined;
      if (s.every((d) => d === 1)) return 'scalar';
      if (s.length !== 4 || s[1] !== os[1]) return undefined;
      if (s.every((d, i) => provablyEqual(d, os[i]!))) return 'full';
      return s.every((d, i) => d === 1 || provablyEqual(d, os[i]!)) && (s[2] === 1) === (s[3] === 1) ? 'broadcast' : undefined;
    });
    if (kinds.includes(undefined)) return false;
    // Broadcasting (N, C, 1, 1) over H and W through the 5-D view repeats 16-float rows, which ONNX Runtime's
    // Mul does 2x slower than an Expand to the full size and a plain Mul: with static sizes, expand first.
    const expand = os.every(isSize);
    const broadcast = kinds.includes('broadcast') && !expand;
    const blockedInputs = inputs.map((t, i) => {
      if (kinds[i] === 'none' || kinds[i] === 'scalar') return t;
      const s = shapes.get(t)!;
      // (N, C, 1, 1) has the same bytes in both layouts.
      const own = copies.get(t) ?? (s[2] === 1 && s[3] === 1 && plain.has(t) ? t : toBlocked(t));
      if (kinds[i] === 'broadcast' && expand) {
        const full = b.op('Expand', [view5(own, s), b.int64('shape', [...(os as number[]).slice(0, 1), os[1] as number / block, os[2] as number, os[3] as number, block])]);
        return reshape(full, os as number[]);
      }
      return broadcast ? view5(own, s) : own;
    });
    const type = BOOLEAN_RESULT.has(n.opType!) ? DataType.BOOL : n.opType === 'Cast' ? attrInt(n, 'to', DataType.FLOAT) : types.get(n.opType === 'Where' ? inputs[1]! : inputs[0]!);
    const result = b.op(n.opType!, blockedInputs, {}, { name: `${n.name}/nchwc` });
    b.nodes[b.nodes.length - 1]!.attribute = [...(n.attribute ?? [])];
    copies.set(out!, known(broadcast ? reshape(result, target(os)) : result, os, type));
    return true;
  };

  /**
   * ReduceSum over (N, H, W) (a bias gradient) or GlobalAveragePool of a blocked tensor, read blocked (also
   * where an NCHW copy exists: that copy may have been made for a node that turns out dead).
   */
  const reduction = (n: NodeProto): boolean => {
    const [x, axesName] = n.input ?? [];
    const out = n.output?.[0];
    if ((n.domain ?? '') !== '' || !x || !out || !copies.has(x)) return false;
    const s = shapes.get(x)!;
    const os = shapes.get(out);
    // Over the positions first, (N·C/B, H·W, B) → (N·C/B, B): ONNX Runtime sums a middle axis of contiguous
    // rows 5x faster than axes 0, 2 and 3 of the 5-D view (0.25 vs 1.24 ms for 32×576×14×14).
    const [c, h, w] = [s[1] as number, s[2] as number, s[3] as number];
    const perPosition = (op: 'ReduceSum' | 'ReduceMean') => {
      const rows = reshape(copies.get(x)!, [-1, h * w, block]);
      // Axes are an attribute before opset 13 (ReduceSum) or 18 (ReduceMean), an input since.
      return opset < (op === 'ReduceSum' ? 13 : 18)
        ? b.op(op, [rows], { axes: [1], keepdims: 0 })
        : b.op(op, [rows, b.int64('axes', [1])], { keepdims: 0 });
    };
    if (n.opType === 'GlobalAveragePool') {
      reshape(perPosition('ReduceMean'), [-1, c, 1, 1], out); // (-1: the batch, whose rows were merged with the channel blocks)
      plain.add(out);
      return true;
    }
    const axes = constInts(axesName)?.map((a) => (a < 0 ? a + 4 : a)).sort();
    if (n.opType !== 'ReduceSum' || axes?.join() !== '0,2,3' || !os?.every(isSize)) return false;
    const sum = b.op('ReduceSum', [reshape(perPosition('ReduceSum'), [-1, c]), b.int64('axes', [0])], { keepdims: 0 });
    reshape(sum, os as number[], out);
    plain.add(out);
    return true;
  };

  /** A Reshape of a blocked (N, C, H, W) to (N', C', H, W) with B | C': a view of the same blocked bytes. */
  const view = (n: NodeProto): boolean => {
    const [x] = n.input ?? [];
    const out = n.output?.[0];
    if ((n.domain ?? '') !== '' || !x || !out || !copies.has(x)) return false;
    const [s, os] = [shapes.get(x)!, shapes.get(out)];
    if (!s.every(isSize) || !blockable(os) || !os.every(isSize) || os[2] !== s[2] || os[3] !== s[3] || os[0]! * os[1]! !== (s[0] as number) * (s[1] as number)) return false;
    copies.set(out, known(reshape(copies.get(x)!, os as number[]), os, types.get(x)));
    return true;
  };

  let rewritten = 0;
  const emitted: NodeProto[] = [];
  for (const n of nodes) {
    const op = n.opType ?? '';
    if (fused.has(n)) continue; // the Conv before it ran it
    const done =
      op === 'Conv' ? convolution(n) && ++rewritten > 0
      : op === 'ConvTranspose' ? stridedDepthwiseInputGrad(n) && ++rewritten > 0
      : ELEMENTWISE.has(op) ? elementwise(n)
      : op === 'ReduceSum' || op === 'GlobalAveragePool' ? reduction(n)
      : op === 'Reshape' ? view(n)
      : false;
    if (op === 'Shape' && copies.has(n.input?.[0] ?? '') && !plain.has(n.input![0]!)) {
      // A blocked tensor has its plain shape.
      b.nodes.push({ ...n, input: [copies.get(n.input![0]!)!, ...(n.input ?? []).slice(1)] });
      plain.add(n.output![0]!);
    } else if (!done) {
      for (const t of n.input ?? []) if (t && copies.has(t)) toPlain(t);
      b.nodes.push(n);
      for (const o of n.output ?? []) if (o) plain.add(o);
    }
    // The builder's nodes so far (reorders, the rewritten op) go in this node's place, keeping topological order.
    emitted.push(...b.nodes.splice(0));
  }
  if (rewritten === 0) return { model, rewritten };
  for (const o of graph.output ?? []) if (copies.has(o.name!)) toPlain(o.name!);
  emitted.push(...b.nodes.splice(0));

  const opsetImport = [...(model.opsetImport ?? []).filter((o) => o.domain !== NCHWC_DOMAIN), { domain: NCHWC_DOMAIN, version: 1 }];
  const shapeConstants = new Map([...initializers, ...b.initializers].map((t) => [t.name!, t]));
  const live = withoutDeadNodes(withoutReshapeChains(emitted, shapeConstants), (graph.output ?? []).map((o) => o.name!));
  const read = new Set(live.flatMap((n) => n.input ?? []));
  return {
    model: onnx.ModelProto.create({
      ...model,
      opsetImport,
      graph: { ...graph, node: live, initializer: [...initializers, ...b.initializers].filter((t) => read.has(t.name!)) },
    }),
    rewritten,
  };
}

/**
 * A Reshape of a Reshape's output to an explicit shape (no 0 entries, which would copy the middle tensor's
 * dimensions) reads the first Reshape's input instead: the rewrite's views chain (weights, 5-D views), and
 * every node costs ONNX Runtime a dispatch. The first Reshape then goes if nothing else reads it.
 */
function withoutReshapeChains(nodes: readonly NodeProto[], constants: ReadonlyMap<string, TensorProto>): NodeProto[] {
  const reshapeOf = new Map<string, NodeProto>();
  for (const n of nodes) if (n.opType === 'Reshape' && (n.domain ?? '') === '') reshapeOf.set(n.output![0]!, n);
  return nodes.map((n) => {
    const inner = n.opType === 'Reshape' && (n.domain ?? '') === '' ? reshapeOf.get(n.input![0]!) : undefined;
    const shape = n.input?.[1] ? constants.get(n.input[1]) : undefined;
    if (!inner || !shape || !Array.from(tensorToFloat32(shape)).every((d) => d !== 0)) return n;
    let source = inner;
    while (reshapeOf.has(source.input![0]!)) source = reshapeOf.get(source.input![0]!)!;
    return { ...n, input: [source.input![0]!, n.input![1]!] };
  });
}

/** Drops nodes none of whose outputs is read (what the rewrite made unnecessary), in one backward sweep. */
function withoutDeadNodes(nodes: readonly NodeProto[], outputs: readonly string[]): NodeProto[] {
  const read = new Set(outputs);
  const kept: NodeProto[] = [];
  for (let i = nodes.length - 1; i >= 0; i--) {
    const n = nodes[i]!;
    if (!(n.output ?? []).some((o) => o && read.has(o))) continue;
    kept.push(n);
    for (const t of n.input ?? []) if (t) read.add(t);
  }
  return kept.reverse();
}

/** Element types of the graph's tensors, as far as the rewrite needs them (which tensors are floats). */
function elementTypes(model: ModelProto, nodes: readonly NodeProto[]): Map<string, number> {
  const graph = model.graph!;
  const types = new Map<string, number>();
  for (const v of [...(graph.input ?? []), ...(graph.valueInfo ?? []), ...(graph.output ?? [])]) {
    const t = v.type?.tensorType?.elemType;
    if (t) types.set(v.name!, t);
  }
  for (const t of graph.initializer ?? []) types.set(t.name!, t.dataType!);
  for (const n of nodes) {
    const out = n.output?.[0];
    if (!out || types.has(out)) continue;
    const op = n.opType ?? '';
    const t =
      BOOLEAN_RESULT.has(op) ? DataType.BOOL
      : op === 'Cast' ? toNumber(attr(n, 'to')!.i as number)
      : op === 'Shape' || op === 'NonZero' ? DataType.INT64
      : types.get(op === 'Where' ? n.input![1]! : n.input?.[0] ?? '');
    if (t) types.set(out, t);
  }
  return types;
}

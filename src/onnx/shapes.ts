/**
 * Static shapes of an ONNX graph's tensors: a little propagation, only for the ops whose shapes graft's
 * rewrites want to know (autodiff's rules, the NCHWc rewrite). Unknown sizes are -1; symbolic batch
 * dimensions ('N') are carried along.
 */
import { GraftError } from '../errors.js';
import { attr as attrOf, attrInt as intAttr, attrInts as intsAttr, constantInts, toNumber, type NodeProto, type TensorProto, type ValueInfoProto } from './proto.js';

/** A static dimension: a size, a symbolic name (`'N'`), or -1 when unknown. */
export type Dim = number | string;
export type StaticShape = readonly Dim[];

/** A known, non-negative size. */
export const isSize = (d: unknown): d is number => typeof d === 'number' && d >= 0;

export function shapeFromValueInfo(v: ValueInfoProto): StaticShape | undefined {
  const dims = v.type?.tensorType?.shape?.dim;
  if (!dims) return undefined;
  return dims.map((d) => {
    const n = toNumber(d.dimValue as number | undefined);
    if (n > 0) return n;
    return d.dimParam ? d.dimParam : -1;
  });
}

function broadcastDim(a: Dim, b: Dim): Dim {
  if (a === 1) return b;
  if (b === 1 || a === b) return a;
  if (typeof a === 'number' && a > 1) return a; // b must be a (or 1)
  if (typeof b === 'number' && b > 1) return b;
  return -1;
}

function broadcastShapes(shapes: StaticShape[]): StaticShape {
  const rank = Math.max(...shapes.map((s) => s.length));
  return Array.from({ length: rank }, (_, i) =>
    shapes.reduce<Dim>((acc, s) => {
      const j = i - (rank - s.length);
      return j < 0 ? acc : broadcastDim(acc, s[j]!);
    }, 1));
}

const SAME_SHAPE_OPS = new Set([
  'Identity', 'Relu', 'LeakyRelu', 'Sigmoid', 'Tanh', 'Neg', 'Exp', 'Log', 'Sqrt', 'Abs', 'Reciprocal', 'Softmax', 'LogSoftmax',
  'Clip', 'Dropout', 'Cast', 'Sign', 'Erf', 'BatchNormalization', 'LayerNormalization', 'HardSigmoid', 'HardSwish', 'Gelu',
]);
const BROADCAST_OPS = new Set(['Add', 'Sub', 'Mul', 'Div', 'Pow', 'Sum', 'Where', 'Greater', 'Less', 'Equal', 'And', 'Or']);

/** Output 0's static shape from the inputs' (dimensions it cannot tell become -1). */
function inferOutputShape(node: NodeProto, get: (t: string) => StaticShape | undefined, constInts: (t: string) => number[] | undefined): StaticShape | undefined {
  const op = node.opType ?? '';
  const inputs = node.input ?? [];
  const ins = inputs.map((t) => (t ? get(t) : undefined));
  const attr = (name: string) => attrOf(node, name);
  const attrInt = (name: string, fallback: number) => intAttr(node, name, fallback);
  const attrInts = (name: string) => intsAttr(node, name);
  const norm = (axis: number, rank: number) => (axis < 0 ? axis + rank : axis);
  const x = ins[0];
  if (SAME_SHAPE_OPS.has(op)) return x;
  if (BROADCAST_OPS.has(op)) return ins.every((s) => s !== undefined) ? broadcastShapes(ins as StaticShape[]) : undefined;
  if (op === 'Gemm') {
    const [a, b] = ins;
    if (!a || !b || a.length !== 2 || b.length !== 2) return undefined;
    return [attrInt('transA', 0) ? a[1]! : a[0]!, attrInt('transB', 0) ? b[0]! : b[1]!];
  }
  if (op === 'MatMul') {
    const [a, b] = ins;
    if (!a || !b) return undefined;
    if (a.length === 1 && b.length === 1) return [];
    if (a.length === 1) return [...b.slice(0, -2), b[b.length - 1]!];
    if (b.length === 1) return a.slice(0, -1);
    return [...broadcastShapes([a.slice(0, -2), b.slice(0, -2)]), a[a.length - 2]!, b[b.length - 1]!];
  }
  if (op === 'Reshape') {
    // An explicit target (no 0, no -1) needs no input shape.
    const target = constInts(inputs[1] ?? '');
    if (!target) return undefined;
    const dims: Dim[] = target.map((d, i) => (d === 0 && attrInt('allowzero', 0) === 0 ? x?.[i] ?? -1 : d));
    const known = (ds: readonly Dim[]) => ds.every((d) => typeof d === 'number' && d >= 0);
    const minus = dims.indexOf(-1);
    if (minus >= 0 && target[minus] === -1 && x && known(x) && known(dims.filter((_, i) => i !== minus))) {
      const total = (x as number[]).reduce((a, b) => a * b, 1);
      const rest = (dims.filter((_, i) => i !== minus) as number[]).reduce((a, b) => a * b, 1);
      dims[minus] = rest > 0 ? total / rest : -1;
    }
    return dims;
  }
  if (!x) return undefined;
  switch (op) {
    case 'Transpose': {
      const perm = attrInts('perm') ?? x.map((_, i) => x.length - 1 - i);
      return perm.map((p) => x[p]!);
    }
    case 'Flatten': {
      const axis = norm(attrInt('axis', 1), x.length);
      const prod = (ds: StaticShape) => ds.reduce<Dim>((acc, d) => (typeof acc === 'number' && acc >= 0 && typeof d === 'number' && d >= 0 ? acc * d : -1), 1);
      return [prod(x.slice(0, axis)), prod(x.slice(axis))];
    }
    case 'Unsqueeze': {
      const axes = constInts(inputs[1] ?? '') ?? attrInts('axes');
      if (!axes) return undefined;
      const rank = x.length + axes.length;
      const at = new Set(axes.map((a) => norm(a, rank)));
      const rest = [...x];
      return Array.from({ length: rank }, (_, i) => (at.has(i) ? 1 : rest.shift()!));
    }
    case 'Squeeze': {
      const axes = constInts(inputs[1] ?? '') ?? attrInts('axes');
      // Without axes every size-1 axis goes, which is only known when every size is.
      if (!axes) return x.every((d) => typeof d === 'number' && d >= 0) ? x.filter((d) => d !== 1) : undefined;
      const at = new Set(axes.map((a) => norm(a, x.length)));
      return x.filter((_, i) => !at.has(i));
    }
    case 'ReduceSum':
    case 'ReduceMean':
    case 'ReduceMax':
    case 'ReduceMin': {
      const axes = (inputs[1] ? constInts(inputs[1]) : attrInts('axes')) ?? (inputs[1] ? undefined : []);
      if (!axes) return undefined;
      if (axes.length === 0 && attrInt('noop_with_empty_axes', 0) === 1) return x;
      const at = new Set(axes.length === 0 ? x.map((_, i) => i) : axes.map((a) => norm(a, x.length)));
      return attrInt('keepdims', 1) ? x.map((d, i) => (at.has(i) ? 1 : d)) : x.filter((_, i) => !at.has(i));
    }
    case 'GlobalAveragePool':
    case 'GlobalMaxPool':
      return x.map((d, i) => (i < 2 ? d : 1));
    case 'Concat': {
      if (!ins.every((s) => s !== undefined)) return undefined;
      const axis = norm(attrInt('axis', 0), x.length);
      return x.map((d, i) => {
        if (i !== axis) return d;
        const sizes = (ins as StaticShape[]).map((s) => s[i]!);
        return sizes.every((v) => typeof v === 'number' && v >= 0) ? (sizes as number[]).reduce((a, b) => a + b, 0) : -1;
      });
    }
    case 'Expand': {
      const target = constInts(inputs[1] ?? '');
      return target ? broadcastShapes([x, target]) : undefined;
    }
    case 'Conv':
    case 'MaxPool':
    case 'AveragePool': {
      const w = op === 'Conv' ? ins[1] : undefined;
      const kernel = attrInts('kernel_shape') ?? w?.slice(2);
      if (!kernel || kernel.length !== x.length - 2) return undefined;
      const r = kernel.length;
      const strides = attrInts('strides') ?? kernel.map(() => 1);
      const dilations = attrInts('dilations') ?? kernel.map(() => 1);
      const pads = attrInts('pads') ?? Array<number>(2 * r).fill(0);
      const autoPad = attr('auto_pad') ? new TextDecoder().decode(attr('auto_pad')!.s ?? new Uint8Array()) : 'NOTSET';
      const ceil = attrInt('ceil_mode', 0) === 1;
      const spatial = x.slice(2).map((h, i) => {
        const k = kernel[i]!;
        if (typeof h !== 'number' || h < 0 || typeof k !== 'number' || k < 0) return -1;
        const s = strides[i]!;
        if (autoPad === 'SAME_UPPER' || autoPad === 'SAME_LOWER') return Math.ceil(h / s);
        const span = h + (autoPad === 'VALID' ? 0 : pads[i]! + pads[i + r]!) - ((k - 1) * dilations[i]! + 1);
        // ceil_mode: a last window that would start in the end padding is dropped; left unknown unless exact.
        if (ceil && span % s !== 0) return -1;
        return Math.floor(span / s) + 1;
      });
      return [x[0]!, w ? w[0]! : x[1]!, ...spatial];
    }
    case 'Gather': {
      const idx = ins[1];
      if (!idx) return undefined;
      const a = norm(attrInt('axis', 0), x.length);
      return [...x.slice(0, a), ...idx, ...x.slice(a + 1)];
    }
    case 'Pad': {
      const pads = inputs[1] ? constInts(inputs[1]) : attrInts('pads');
      if (!pads || inputs[3] || pads.length !== 2 * x.length) return x.map(() => -1);
      return x.map((d, i) => (typeof d === 'number' && d >= 0 ? d + pads[i]! + pads[i + x.length]! : -1));
    }
    case 'Slice': {
      // Constant starts/ends/axes/steps on static sizes give the size (ONNX's clamping rules); otherwise the
      // sliced axes are unknown and the others keep theirs.
      const [starts, ends] = [constInts(inputs[1] ?? ''), constInts(inputs[2] ?? '')];
      const axes = (inputs[3] ? constInts(inputs[3]) : starts?.map((_, i) => i))?.map((a) => norm(a, x.length));
      const steps = inputs[4] ? constInts(inputs[4]) : starts?.map(() => 1);
      if (!axes) return x.map(() => -1);
      const out = [...x];
      axes.forEach((a, j) => {
        const d = x[a];
        const [b, e, st] = [starts?.[j], ends?.[j], steps?.[j]];
        if (typeof d !== 'number' || d < 0 || b === undefined || e === undefined || !st) {
          out[a] = -1;
          return;
        }
        const clamp = (v: number, lo: number, hi: number) => Math.min(Math.max(v, lo), hi);
        const at = (v: number) => (v < 0 ? v + d : v);
        const [lo, hi] = st > 0 ? [0, d] : [-1, d - 1];
        const [from, to] = [clamp(at(b), lo, hi), clamp(at(e), lo, hi)];
        out[a] = Math.max(0, Math.ceil((to - from) / st));
      });
      return out;
    }
    case 'SoftmaxCrossEntropyLoss':
      return attr('reduction') && new TextDecoder().decode(attr('reduction')!.s ?? new Uint8Array()) === 'none' ? ins[1] : [];
    default:
      return undefined;
  }
}

/** Shapes recorded as value_info (by autodiff for its gradients, say), by tensor name. */
export function declaredShapes(valueInfos: readonly ValueInfoProto[]): Map<string, StaticShape> {
  const out = new Map<string, StaticShape>();
  for (const v of valueInfos) {
    const s = shapeFromValueInfo(v);
    if (s) out.set(v.name!, s);
  }
  return out;
}

export function provablyEqual(a: Dim, b: Dim): boolean {
  return (typeof a === 'number' && a >= 0 && a === b) || (typeof a === 'string' && a === b);
}

/** Orders nodes so that every node comes after the producers of its inputs. */
export function topologicalOrder(nodes: readonly NodeProto[]): NodeProto[] {
  const producer = new Map<string, number>();
  nodes.forEach((n, i) => n.output?.forEach((o) => o && producer.set(o, i)));
  const state = new Uint8Array(nodes.length); // 0 new, 1 visiting, 2 done
  const order: NodeProto[] = [];
  const visit = (start: number) => {
    const stack: Array<[number, number]> = [[start, 0]];
    state[start] = 1;
    while (stack.length) {
      const top = stack[stack.length - 1]!;
      const [i, k] = top;
      const inputs = nodes[i]!.input ?? [];
      if (k < inputs.length) {
        top[1]++;
        const p = inputs[k] ? producer.get(inputs[k]!) : undefined;
        if (p === undefined || state[p] === 2) continue;
        if (state[p] === 1) throw new GraftError('MODEL', `graph has a cycle through node ${nodes[p]!.name}`, { node: nodes[p]!.name });
        state[p] = 1;
        stack.push([p, 0]);
      } else {
        state[i] = 2;
        order.push(nodes[i]!);
        stack.pop();
      }
    }
  };
  nodes.forEach((_, i) => state[i] === 0 && visit(i));
  return order;
}


/**
 * Static shapes of every tensor that graph inputs, initializers, `given` shapes and the nodes (walked in
 * topological order) determine.
 */
export function inferShapes(
  nodes: readonly NodeProto[],
  inputs: readonly ValueInfoProto[],
  initializers: readonly TensorProto[],
  given: ReadonlyMap<string, StaticShape> = new Map(),
): Map<string, StaticShape> {
  const shapes = new Map<string, StaticShape>();
  for (const v of inputs) {
    const s = shapeFromValueInfo(v);
    if (s) shapes.set(v.name!, s);
  }
  const byName = new Map(initializers.map((t) => [t.name!, t]));
  for (const t of initializers) shapes.set(t.name!, (t.dims ?? []).map((d) => toNumber(d as number)));
  for (const [k, v] of given) shapes.set(k, v);
  const constInts = (t: string): number[] | undefined => constantInts(byName.get(t));
  for (const n of topologicalOrder(nodes)) {
    const out = n.output?.[0];
    if (!out || shapes.has(out)) continue;
    const s = inferOutputShape(n, (t) => shapes.get(t), constInts);
    if (s) shapes.set(out, s);
  }
  return shapes;
}

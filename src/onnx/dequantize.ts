/**
 * Int8 → float: turns a quantized ONNX model (QOperator format: QLinearConv, com.microsoft QLinearAdd, …; or
 * QDQ format: QuantizeLinear/DequantizeLinear pairs around float ops) into an equivalent float model, so that
 * it can be fine-tuned. Weights are dequantized, quantized ops become their float ops, and Q/DQ nodes vanish
 * (their tensors are renamed so that the model's float tensor names, e.g. a DequantizeLinear output used as
 * the cut point, survive).
 *
 * Activations: a quantizer folds a ReLU/ReLU6 into the preceding op by giving that op's output a range that
 * starts at 0 (uint8 zero point 0, int8 zero point −128). The float graph must get the nonlinearity back, or
 * every fused activation is silently lost. Each QLinearConv/QLinearAdd/QLinearMatMul output (and each
 * QuantizeLinear of a computed activation, for QDQ models) whose real range [(qmin − zp)·s, (qmax − zp)·s]
 * starts at 0 is followed by a Clip:
 *  - `'range'` (default): Clip(0, (qmax − zp)·s), exactly the saturation the int8 model applies;
 *  - `'relu6'`: Clip(0, 6) when the upper bound is below 6, else Clip(0) (a ReLU): the activation of the float
 *    network the model was quantized from, ignoring ranges that calibration clipped below 6.
 * Either way an upper bound within one quantization step of 6 becomes 6. Measurements: see DEFAULT_CLIP. Outputs
 * whose range includes negatives get no activation (linear bottlenecks, residual adds); their int8 saturation is
 * not reproduced.
 *
 * Pure function over ModelProto; nothing here runs a model.
 */
import { GraftError } from '../errors.js';
import { pruneTo } from './surgery.js';
import {
  DataType,
  attr,
  defaultOpset,
  onnx,
  tensor,
  tensorToFloat32,
  toNumber,
  type AttributeProto,
  type ModelProto,
  type NodeProto,
  type TensorProto,
  type ValueInfoProto,
} from './proto.js';

export type ClipPolicy = 'range' | 'relu6';

export interface DequantizeOptions {
  /** How a fused activation (an output range starting at 0) is restored; see the module comment. */
  clip?: ClipPolicy;
}

export interface DequantizeReport {
  /** Number of nodes converted, by original op type (QLinearConv, QuantizeLinear, …). */
  converted: Record<string, number>;
  /** Number of Clip nodes inserted to restore fused activations. */
  activations: number;
}

/**
 * 'range' by default: it is exactly the function the int8 model computes (each converted MobileNetV2-12-int8 layer,
 * fed the int8 layer's input, lands within half a quantization step of its output), and on real images it predicts
 * like 'relu6': on the 153 hymenoptera val images both agree with the int8 top-1 on 140/153 (mean |Δlogit| 0.4581
 * for both; the two float models differ by at most 0.07 in any logit), because calibrated bounds below 6 are almost
 * never exceeded (≤ 469 of 61 M values in any layer). Plain ReLU (no upper bound) also gives 140/153 at 0.479; no
 * Clip at all gives 0/153. Prefer 'relu6' when fine-tuning early layers, so that activations may outgrow the
 * calibration range.
 */
export const DEFAULT_CLIP: ClipPolicy = 'range';

/** Quantized ops converted here, by their op type (domain '' or com.microsoft). */
const COMPUTE_OPS = new Set(['QLinearConv', 'QLinearAdd', 'QLinearMatMul', 'QLinearGlobalAveragePool']);
/** Ops that only move, select or reshape data: on a quantized input they give a quantized output of the same scale. */
const PASS_THROUGH = new Set([
  'Reshape', 'Transpose', 'Flatten', 'Squeeze', 'Unsqueeze', 'Concat', 'Slice', 'Gather', 'Split', 'Identity',
  'MaxPool', 'GlobalMaxPool', 'Resize', 'DepthToSpace', 'SpaceToDepth', 'Tile', 'Expand',
]);
/** Ops that read only the shape of their input. */
const SHAPE_ONLY = new Set(['Shape', 'Size']);
/** Ops whose output is already bounded below: a following non-negative quantization range is no fused activation. */
const BOUNDED = new Set(['Relu', 'Clip', 'Sigmoid', 'HardSigmoid', 'Softmax', 'Abs', 'Exp', 'Softplus']);
/** Looks quantized: QLinear*, QGemm, QAttention, DynamicQuantize*, MatMulInteger, ConvInteger, … */
const QUANTIZED_OP = /^(Q[A-Z]|QLinear|DynamicQuantize|Dequantize|Quantize)|Integer(ToFloat)?$|^(DynamicQuantizeMatMul|MatMulNBits|QOrdered)/;

const QUANT_RANGE: Record<number, [number, number]> = {
  [DataType.UINT8]: [0, 255],
  [DataType.INT8]: [-128, 127],
  [DataType.UINT16]: [0, 65535],
  [DataType.INT16]: [-32768, 32767],
};

interface QParams {
  scale: Float32Array;
  zeroPoint: Float32Array;
  /** Element type of the quantized tensor (from the zero point; uint8 when it is omitted). */
  elemType: number;
}

export function dequantizeModel(model: ModelProto, options: DequantizeOptions = {}): { model: ModelProto; report: DequantizeReport } {
  const clip = options.clip ?? DEFAULT_CLIP;
  if (clip !== 'range' && clip !== 'relu6') {
    throw new GraftError('USAGE', `Expected "range" or "relu6" for options.clip but received ${JSON.stringify(clip)}`, { name: 'clip', actual: clip });
  }
  const graph = model.graph;
  if (!graph) throw new GraftError('MODEL', 'the model has no graph', {});
  const nodes = graph.node ?? [];
  const opset = defaultOpset(model);
  const fail = (message: string, context: Record<string, unknown> = {}): never => {
    throw new GraftError('MODEL', `dequantize: ${message}`, context);
  };

  // ---- what is what -------------------------------------------------------------------------------------
  const initializers = new Map<string, TensorProto>();
  for (const t of graph.initializer ?? []) initializers.set(t.name!, t);
  /** Initializers and Constant-node outputs. */
  const constants = new Map(initializers);
  for (const n of nodes) {
    if (n.opType === 'Constant' && !n.domain) {
      const t = attr(n, 'value')?.t;
      if (t) constants.set(n.output![0]!, { ...t, name: n.output![0]! });
    }
  }
  const graphInputs = new Set((graph.input ?? []).map((i) => i.name!).filter((n) => !initializers.has(n)));
  const graphOutputs = (graph.output ?? []).map((o) => o.name!);
  const graphOutputSet = new Set(graphOutputs);
  const producer = new Map<string, NodeProto>();
  for (const n of nodes) for (const o of n.output ?? []) if (o) producer.set(o, n);

  const used = new Set<string>();
  for (const name of graphInputs) used.add(name);
  for (const t of graph.initializer ?? []) used.add(t.name!);
  for (const n of nodes) for (const o of n.output ?? []) if (o) used.add(o);
  for (const v of graph.valueInfo ?? []) used.add(v.name!);
  for (const o of graphOutputs) used.add(o);
  let counter = 0;
  const fresh = (base: string): string => {
    let name = base;
    while (used.has(name)) name = `${base}_${++counter}`;
    used.add(name);
    return name;
  };

  const nodeLabel = (n: NodeProto) => `node ${n.name || '(unnamed)'} (${n.domain ? `${n.domain}.` : ''}${n.opType})`;
  const constant = (n: NodeProto, name: string | undefined, what: string): TensorProto => {
    const t = name ? constants.get(name) : undefined;
    if (!t) fail(`${nodeLabel(n)}: ${what} ${name ? `"${name}" ` : ''}must be a constant`, { node: n.name, op: n.opType, tensor: name });
    return t!;
  };
  const qparams = (n: NodeProto, scaleName: string | undefined, zpName: string | undefined): QParams => {
    const scale = tensorToFloat32(constant(n, scaleName, 'scale'));
    const zpTensor = zpName ? constant(n, zpName, 'zero point') : undefined;
    const zeroPoint = zpTensor ? tensorToFloat32(zpTensor) : new Float32Array(scale.length);
    return { scale, zeroPoint, elemType: zpTensor?.dataType ?? DataType.UINT8 };
  };

  // Quantized activations: outputs of quantizing ops, and of data-movement ops on quantized inputs.
  const quantized = new Set<string>();
  for (const n of nodes) {
    const op = n.opType!;
    const ins = (n.input ?? []).filter((i) => i);
    for (const i of ins) if (graphInputs.has(i) && isQuantizedType(graph.input!.find((g) => g.name === i)!)) {
      fail(`graph input "${i}" is quantized; only models with float inputs can be dequantized`, { tensor: i });
    }
    if (op === 'Constant' && !n.domain) continue;
    if (op === 'QuantizeLinear' || (COMPUTE_OPS.has(op) && (!n.domain || n.domain === 'com.microsoft'))) {
      quantized.add(n.output![0]!);
    } else if (op === 'DequantizeLinear') {
      continue;
    } else if (PASS_THROUGH.has(op) && !n.domain && ins.some((i) => quantized.has(i))) {
      for (const o of n.output ?? []) if (o) quantized.add(o);
    } else if (SHAPE_ONLY.has(op) && !n.domain) {
      continue;
    } else if (n.domain === 'com.microsoft' || QUANTIZED_OP.test(op)) {
      fail(`${nodeLabel(n)} is a quantized op that cannot be converted to float yet`, { node: n.name, op, domain: n.domain ?? '' });
    } else {
      const q = ins.find((i) => quantized.has(i));
      if (q) fail(`${nodeLabel(n)} reads the quantized tensor "${q}" and has no float equivalent here`, { node: n.name, op, tensor: q });
    }
  }

  // ---- activation inference -----------------------------------------------------------------------------
  /** The Clip bounds that restore a fused activation for an output quantized with `p`, or undefined. */
  const activation = (p: QParams): [number, number | undefined] | undefined => {
    const range = QUANT_RANGE[p.elemType];
    if (!range || p.scale.length !== 1) return undefined;
    const [qmin, qmax] = range;
    const scale = p.scale[0]!;
    const zp = p.zeroPoint[0] ?? 0;
    if (zp > qmin) return undefined; // the range includes negatives: linear output
    const upper = (qmax - zp) * scale;
    // ReLU6 outputs calibrate to exactly 6 up to float rounding (255 · 0.023529 = 5.99999): use 6 itself.
    if (Math.abs(upper - 6) <= scale) return [0, 6];
    if (clip === 'range') return [0, upper];
    return upper < 6 ? [0, 6] : [0, undefined];
  };
  /** QuantizeLinear nodes of computed activations whose range restores an activation (QDQ models). */
  const qdqActivation = new Map<NodeProto, [number, number | undefined]>();
  for (const n of nodes) {
    if (n.opType !== 'QuantizeLinear') continue;
    const x = n.input![0]!;
    if (constants.has(x) || graphInputs.has(x)) continue;
    const from = producer.get(x);
    if (!from || BOUNDED.has(from.opType!) || quantized.has(x)) continue;
    const act = activation(qparams(n, n.input![1], n.input![2]));
    if (act) qdqActivation.set(n, act);
  }

  // ---- float names: one per class of tensors that hold the same real values ----------------------------
  const parent = new Map<string, string>();
  const find = (a: string): string => {
    let r = a;
    while (parent.has(r)) r = parent.get(r)!;
    return r;
  };
  const union = (a: string, b: string) => {
    const ra = find(a), rb = find(b);
    if (ra !== rb) parent.set(rb, ra);
  };
  const dqOutputs = new Set<string>();
  for (const n of nodes) {
    const x = n.input?.[0];
    if (!x) continue;
    if (n.opType === 'DequantizeLinear' && !constants.has(x)) {
      union(x, n.output![0]!);
      dqOutputs.add(n.output![0]!);
    } else if (n.opType === 'QuantizeLinear' && !constants.has(x) && !qdqActivation.has(n)) {
      union(x, n.output![0]!);
    }
  }
  const members = new Map<string, string[]>();
  const aliased = new Set<string>([...quantized, ...dqOutputs]);
  for (const n of nodes) if (n.opType === 'QuantizeLinear' && n.input?.[0]) aliased.add(n.input[0]);
  for (const name of aliased) {
    const r = find(name);
    if (!members.has(r)) members.set(r, []);
    members.get(r)!.push(name);
  }
  const canonical = new Map<string, string>();
  const extraOutputs: [from: string, to: string][] = [];
  for (const list of members.values()) {
    const outs = list.filter((m) => graphOutputSet.has(m));
    const input = list.find((m) => graphInputs.has(m));
    const floatRoot = list.find((m) => !quantized.has(m) && !dqOutputs.has(m));
    const dq = list.find((m) => dqOutputs.has(m));
    const quantRoot = list.find((m) => quantized.has(m))!;
    const name = input ?? outs[0] ?? floatRoot ?? dq ?? fresh(stripQuantSuffix(quantRoot));
    for (const o of outs) if (o !== name) extraOutputs.push([name, o]);
    for (const m of list) canonical.set(m, name);
  }
  const rename = (name: string): string => (name ? canonical.get(name) ?? name : name);

  // ---- emit ---------------------------------------------------------------------------------------------
  const out: NodeProto[] = [];
  const newInits: TensorProto[] = [];
  const converted: Record<string, number> = {};
  let activations = 0;
  const count = (op: string) => (converted[op] = (converted[op] ?? 0) + 1);
  const scalarCache = new Map<number, string>();
  const scalar = (v: number): string => {
    let name = scalarCache.get(v);
    if (!name) {
      name = fresh(v === 0 ? 'dequantize/zero' : `dequantize/clip_${+v.toPrecision(6)}`);
      newInits.push(tensor(name, Float32Array.of(v), []));
      scalarCache.set(v, name);
    }
    return name;
  };
  const emitClip = (x: string, y: string, bounds: [number, number | undefined], name: string) => {
    const [lo, hi] = bounds;
    if (opset >= 11) {
      out.push({ opType: 'Clip', name, input: hi === undefined ? [x, scalar(lo)] : [x, scalar(lo), scalar(hi)], output: [y] });
    } else {
      const attrs: AttributeProto[] = [{ name: 'min', type: onnx.AttributeProto.AttributeType.FLOAT, f: lo }];
      if (hi !== undefined) attrs.push({ name: 'max', type: onnx.AttributeProto.AttributeType.FLOAT, f: hi });
      out.push({ opType: 'Clip', name, input: [x], output: [y], attribute: attrs });
    }
    activations++;
  };
  /** Writes node output `q` (quantized with `p`): directly, or through a Clip when its range restores an activation. */
  const emitWithActivation = (node: NodeProto, make: (output: string) => NodeProto, q: string, p: QParams) => {
    const y = rename(q);
    const act = activation(p);
    if (!act) {
      out.push(make(y));
      return;
    }
    const pre = fresh(`${y}/preact`);
    out.push(make(pre));
    emitClip(pre, y, act, `${floatNodeName(node)}/Clip`);
  };

  const dequantized = new Map<string, string>();
  /** A float tensor for quantized input `name`: a dequantized initializer, or the float name of an activation. */
  const floatInput = (n: NodeProto, name: string, p: QParams, axis: number): string => {
    const t = constants.get(name);
    if (t) {
      const key = `${name}\u0000${axis}\u0000${p.scale.join(',')}\u0000${p.zeroPoint.join(',')}`;
      let fname = dequantized.get(key);
      if (!fname) {
        fname = fresh(stripQuantSuffix(name));
        newInits.push(dequantizeTensor(fname, t, p, axis, n));
        dequantized.set(key, fname);
      }
      return fname;
    }
    if (!quantized.has(name)) {
      fail(`${nodeLabel(n)}: input "${name}" is neither a constant nor a quantized activation`, { node: n.name, op: n.opType, tensor: name });
    }
    return rename(name);
  };
  const floatNodeName = (n: NodeProto) => (n.name ? n.name.replace(/_quant$/, '') : fresh(n.opType!));

  for (const n of nodes) {
    const op = n.opType!;
    const ins = n.input ?? [];
    const name = floatNodeName(n);
    if (op === 'Constant' && !n.domain) {
      out.push(n);
      continue;
    }
    switch (op) {
      case 'QuantizeLinear': {
        count(op);
        const act = qdqActivation.get(n);
        if (act) emitClip(ins[0]!, rename(n.output![0]!), act, `${name}/Clip`);
        else if (constants.has(ins[0]!)) fail(`${nodeLabel(n)} quantizes a constant; fold it first`, { node: n.name, op });
        break;
      }
      case 'DequantizeLinear': {
        count(op);
        const x = ins[0]!;
        if (constants.has(x)) {
          const p = qparams(n, ins[1], ins[2]);
          const axisAttr = attr(n, 'axis');
          const axis = axisAttr ? toNumber(axisAttr.i as number) : 1;
          newInits.push(dequantizeTensor(n.output![0]!, constants.get(x)!, p, axis, n));
        }
        break;
      }
      case 'QLinearConv': {
        count(op);
        const xp = qparams(n, ins[1], ins[2]);
        const wp = qparams(n, ins[4], ins[5]);
        const yp = qparams(n, ins[6], ins[7]);
        const x = floatInput(n, ins[0]!, xp, 1);
        const w = floatInput(n, ins[3]!, wp, 0);
        const inputs = [x, w];
        if (ins[8]) {
          const b = constant(n, ins[8], 'bias');
          const values = tensorToFloat32(b);
          const xs = xp.scale[0]!;
          const bias = values.map((v, c) => v * xs * (wp.scale.length === 1 ? wp.scale[0]! : wp.scale[c]!));
          const bname = fresh(stripQuantSuffix(ins[8]));
          newInits.push(tensor(bname, bias, [values.length]));
          inputs.push(bname);
        }
        emitWithActivation(n, (y) => ({ opType: 'Conv', name, input: inputs, output: [y], attribute: n.attribute ?? [] }), n.output![0]!, yp);
        break;
      }
      case 'QLinearAdd': {
        count(op);
        const a = floatInput(n, ins[0]!, qparams(n, ins[1], ins[2]), 1);
        const b = floatInput(n, ins[3]!, qparams(n, ins[4], ins[5]), 1);
        emitWithActivation(n, (y) => ({ opType: 'Add', name, input: [a, b], output: [y] }), n.output![0]!, qparams(n, ins[6], ins[7]));
        break;
      }
      case 'QLinearMatMul': {
        count(op);
        const ap = qparams(n, ins[1], ins[2]);
        const bp = qparams(n, ins[4], ins[5]);
        // Per-row scales of A (axis rank−2) and per-column scales of B (axis rank−1).
        const rank = (t: string) => (constants.get(t)?.dims ?? [0, 0]).length;
        const a = floatInput(n, ins[0]!, ap, rank(ins[0]!) - 2);
        const b = floatInput(n, ins[3]!, bp, rank(ins[3]!) - 1);
        emitWithActivation(n, (y) => ({ opType: 'MatMul', name, input: [a, b], output: [y] }), n.output![0]!, qparams(n, ins[6], ins[7]));
        break;
      }
      case 'QLinearGlobalAveragePool': {
        count(op);
        const x = floatInput(n, ins[0]!, qparams(n, ins[1], ins[2]), 1);
        const y = rename(n.output![0]!);
        const channelsLast = toNumber(attr(n, 'channels_last')?.i as number | undefined) !== 0;
        if (!channelsLast) {
          out.push({ opType: 'GlobalAveragePool', name, input: [x], output: [y] });
        } else {
          // NHWC: mean over the spatial axes of a 4-D tensor, keeping them as 1s like the quantized op.
          const axes = [1, 2];
          if (opset >= 18) {
            const axesName = fresh(`${y}/axes`);
            newInits.push(tensor(axesName, BigInt64Array.from(axes.map(BigInt)), [2]));
            out.push({ opType: 'ReduceMean', name, input: [x, axesName], output: [y], attribute: [{ name: 'keepdims', type: onnx.AttributeProto.AttributeType.INT, i: 1 }] });
          } else {
            out.push({
              opType: 'ReduceMean',
              name,
              input: [x],
              output: [y],
              attribute: [
                { name: 'axes', type: onnx.AttributeProto.AttributeType.INTS, ints: axes },
                { name: 'keepdims', type: onnx.AttributeProto.AttributeType.INT, i: 1 },
              ],
            });
          }
        }
        break;
      }
      default:
        // Validated above: a float op, a data-movement op, or a shape reader; rewire quantized names.
        out.push({ ...n, input: ins.map(rename), output: (n.output ?? []).map(rename) });
    }
  }
  for (const [from, to] of extraOutputs) out.push({ opType: 'Identity', name: fresh(`${to}/Identity`), input: [from], output: [to] });

  // ---- assemble -----------------------------------------------------------------------------------------
  const toFloat = (v: ValueInfoProto, name: string): ValueInfoProto => ({
    ...v,
    name,
    type: v.type?.tensorType ? { ...v.type, tensorType: { ...v.type.tensorType, elemType: DataType.FLOAT } } : v.type,
  });
  const keptInits = (graph.initializer ?? []).filter((t) => !quantized.has(t.name!));
  const valueInfo: ValueInfoProto[] = [];
  const seen = new Set<string>();
  for (const v of graph.valueInfo ?? []) {
    const name = rename(v.name!);
    if (seen.has(name) || graphOutputSet.has(name)) continue;
    seen.add(name);
    valueInfo.push(aliased.has(v.name!) ? toFloat(v, name) : v);
  }
  const outputs = (graph.output ?? []).map((o) => (quantized.has(o.name!) || dqOutputs.has(o.name!) ? toFloat(o, o.name!) : o));
  const full = { ...graph, node: out, initializer: [...keptInits, ...newInits], valueInfo };
  const pruned = pruneTo(full, graphOutputs);
  const liveInits = new Set((pruned.initializer ?? []).map((t) => t.name!));
  const usedDomains = new Set(pruned.node!.map((n) => n.domain ?? ''));
  const opsetImport = model.opsetImport.filter((o) => !o.domain || o.domain === 'ai.onnx' || usedDomains.has(o.domain));
  const result = onnx.ModelProto.create({
    ...model,
    opsetImport,
    graph: {
      ...pruned,
      // Graph inputs keep their order; inputs that named (now dead) initializers go with them.
      input: (graph.input ?? []).filter((i) => graphInputs.has(i.name!) || liveInits.has(i.name!)),
      output: outputs,
    },
  });
  const remaining = result.graph!.node!.find((n) => n.domain === 'com.microsoft' || QUANTIZED_OP.test(n.opType!));
  if (remaining) fail(`${nodeLabel(remaining)} is still quantized after conversion`, { node: remaining.name, op: remaining.opType });
  return { model: result, report: { converted, activations } };
}

/** `556_quantized` → `556`; `w_QuantizeLinear_Output` → `w`; other names get a `_float` suffix. */
function stripQuantSuffix(name: string): string {
  const m = /^(.+?)(_quantized|_QuantizeLinear_Output|_quant|_q)$/.exec(name);
  return m ? m[1]! : `${name}_float`;
}

function isQuantizedType(v: ValueInfoProto): boolean {
  const t = v.type?.tensorType?.elemType;
  return t === DataType.UINT8 || t === DataType.INT8 || t === DataType.UINT16 || t === DataType.INT16;
}

/** (q − zp)·scale, per tensor or per slice along `axis`, as a float initializer named `name`. */
function dequantizeTensor(name: string, t: TensorProto, p: QParams, axis: number, n: NodeProto): TensorProto {
  const dims = (t.dims ?? []).map((d) => toNumber(d as number));
  const q = tensorToFloat32(t);
  const out = new Float32Array(q.length);
  if (p.scale.length <= 1) {
    const s = p.scale[0] ?? 1;
    const zp = p.zeroPoint[0] ?? 0;
    for (let i = 0; i < q.length; i++) out[i] = (q[i]! - zp) * s;
  } else {
    const ax = axis < 0 ? axis + dims.length : axis;
    const channels = dims[ax];
    if (channels !== p.scale.length) {
      throw new GraftError(
        'MODEL',
        `dequantize: node ${n.name} (${n.opType}): ${p.scale.length} scales for tensor ${t.name} of dims [${dims}] along axis ${axis}`,
        { node: n.name, op: n.opType, tensor: t.name },
      );
    }
    const inner = dims.slice(ax + 1).reduce((a, b) => a * b, 1);
    for (let i = 0; i < q.length; i++) {
      const c = Math.floor(i / inner) % channels;
      out[i] = (q[i]! - (p.zeroPoint.length > 1 ? p.zeroPoint[c]! : p.zeroPoint[0] ?? 0)) * p.scale[c]!;
    }
  }
  return tensor(name, out, dims);
}

/** Whether a model holds quantized operators (and so must be converted before it can be trained). */
export function isQuantized(model: ModelProto): boolean {
  return (model.graph!.node ?? []).some((n) => QUANTIZED_OP.test(n.opType ?? '') || (n.domain ?? '') === 'com.microsoft');
}

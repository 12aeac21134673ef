/**
 * TensorFlow.js graph models (model.json with `format: "graph-model"`: a frozen TF GraphDef) → ONNX.
 *
 * TF graphs are NHWC; ONNX's Conv, pooling and BatchNormalization are NCHW. The converter keeps every 4-D
 * activation in NCHW inside the ONNX graph: the NHWC image input is transposed once, convolution weights are
 * transposed when they are written, constants broadcast against an NCHW tensor are permuted, and the axis
 * arguments of Squeeze, Mean, ConcatV2, Pad and Softmax are remapped. Ops that need TF's own layout
 * (Reshape, MatMul, Transpose, ...) transpose back first. The result uses only plain ONNX ops (opset 17) that
 * graft's autodiff can differentiate, so a converted backbone can be fine-tuned.
 *
 * Shapes are tracked statically in TF order (NHWC), with 'N' for the symbolic batch size and -1 for unknown
 * sizes: TF's SAME padding puts the odd pixel at the end, so it becomes explicit ONNX pads.
 */
import { GraftError } from '../errors.js';
import { GraphBuilder, type AttrValue } from '../onnx/builder.js';
import { DataType, tensor, type ValueInfoProto } from '../onnx/proto.js';
import { permute, samePadding } from './tf-layout.js';
import type { ConvertedModel, TfjsModel, TfjsWeight } from './tfjs-weights.js';

/** An ONNX model converted from TensorFlow.js. */
export type { ConvertedModel };

export interface ConvertGraphOptions {
  /** Extra TF node names to expose as graph outputs. */
  outputs?: string[];
}

// ---------------------------------------------------------------------------------------------------------
// The GraphDef JSON of a graph model.

interface TfShapeJson {
  dim?: { size?: string | number }[];
  unknownRank?: boolean;
}

interface TfAttrJson {
  s?: string;
  i?: string | number;
  f?: string | number;
  b?: boolean;
  type?: string;
  shape?: TfShapeJson;
  list?: { s?: string[]; i?: (string | number)[]; f?: (string | number)[]; b?: boolean[] };
}

interface TfNodeJson {
  name: string;
  op: string;
  input?: string[];
  attr?: Record<string, TfAttrJson>;
}

// ---------------------------------------------------------------------------------------------------------
// Values: what a TF tensor has become in the ONNX graph.

/** A static dimension: a size, 'N' for the batch, -1 when unknown. */
type Dim = number | string;

interface Constant {
  data: Float32Array | Int32Array;
  dtype: 'float32' | 'int32';
}

interface Value {
  /** The TF node (for names of derived tensors and error messages). */
  tf: string;
  /** Shape in TF order (NHWC for 4-D), or undefined when even the rank is unknown. */
  shape: Dim[] | undefined;
  /** Whether the ONNX tensor is a 4-D activation held as NCHW. */
  nchw: boolean;
  /** ONNX tensor in the held layout; absent for a constant not yet written as an initializer. */
  name?: string;
  constant?: Constant;
}

/** TF axis of a 4-D tensor → its position in NCHW. */
const NCHW_POS = [0, 2, 3, 1] as const;
/** NCHW position → TF axis (also the Transpose perm NHWC → NCHW). */
const TO_NCHW = [0, 3, 1, 2] as const;
const TO_NHWC = [0, 2, 3, 1] as const;

const UNARY: Readonly<Record<string, string>> = {
  Relu: 'Relu', Sigmoid: 'Sigmoid', Tanh: 'Tanh', Exp: 'Exp', Log: 'Log', Sqrt: 'Sqrt', Neg: 'Neg', Abs: 'Abs',
  Reciprocal: 'Reciprocal', Softplus: 'Softplus', Selu: 'Selu', Floor: 'Floor', Ceil: 'Ceil',
};
const BINARY: Readonly<Record<string, string>> = {
  Add: 'Add', AddV2: 'Add', BiasAdd: 'Add', Sub: 'Sub', Mul: 'Mul', RealDiv: 'Div', Div: 'Div', Maximum: 'Max', Minimum: 'Min', Pow: 'Pow',
};
const ALIASES = new Set(['Identity', 'StopGradient', 'PreventGradient', 'Snapshot']);
const SPECIAL = [
  'Placeholder', 'Const', 'Relu6', 'Elu', 'LeakyRelu', 'Rsqrt', 'Square', 'SquaredDifference', 'Prelu', 'Conv2D', 'DepthwiseConv2dNative',
  '_FusedConv2D', 'FusedDepthwiseConv2dNative', 'FusedBatchNorm', 'FusedBatchNormV2', 'FusedBatchNormV3', 'AvgPool', 'MaxPool', 'Mean',
  'Squeeze', 'Reshape', 'Transpose', 'Pad', 'PadV2', 'MirrorPad', 'ConcatV2', 'MatMul', '_FusedMatMul', 'Softmax',
];
const SUPPORTED = [...ALIASES, ...Object.keys(UNARY), ...Object.keys(BINARY), ...SPECIAL].sort();

const size = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

function base64Text(s: string): string {
  return Buffer.from(s, 'base64').toString('utf8');
}

/** Numpy broadcasting of two static shapes; undefined when a rank is unknown. */
function broadcastShapes(a: Dim[] | undefined, b: Dim[] | undefined): Dim[] | undefined | null {
  if (!a || !b) return undefined;
  const rank = Math.max(a.length, b.length);
  const out: Dim[] = [];
  for (let i = 0; i < rank; i++) {
    const x = a[a.length - rank + i] ?? 1;
    const y = b[b.length - rank + i] ?? 1;
    if (x === y || y === 1) out.push(x);
    else if (x === 1) out.push(y);
    else if (x === -1 || y === -1) out.push(typeof x === 'number' && x !== -1 ? x : typeof y === 'number' && y !== -1 ? y : -1);
    else return null;
  }
  return out;
}

/** SAME padding of one axis of static size (undefined when the size is unknown). */
function samePads(inSize: Dim, kernel: number, stride: number, dilation: number): [number, number] | undefined {
  return typeof inSize === 'number' && inSize >= 0 ? samePadding(inSize, kernel, stride, dilation) : undefined;
}

function outSize(inSize: Dim, kernel: number, stride: number, dilation: number, pads: readonly [number, number] | undefined, same: boolean): Dim {
  if (typeof inSize !== 'number' || inSize < 0) return -1;
  if (same) return Math.ceil(inSize / stride);
  const extent = (kernel - 1) * dilation + 1;
  return Math.floor((inSize + pads![0] + pads![1] - extent) / stride) + 1;
}

function valueInfoOf(name: string, elemType: number, shape: readonly Dim[] | undefined): ValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType,
        ...(shape ? { shape: { dim: shape.map((d) => (typeof d === 'string' ? { dimParam: d } : d >= 0 ? { dimValue: d } : {})) } } : {}),
      },
    },
  };
}

// ---------------------------------------------------------------------------------------------------------

class GraphConverter {
  private readonly b = new GraphBuilder('tfjs_graph');
  private readonly nodes = new Map<string, TfNodeJson>();
  private readonly values = new Map<string, Value>();
  /** Tensors already transposed or materialized, by held name + variant. */
  private readonly derived = new Map<string, string>();
  /** Held-layout shapes of the tensors made, for the graph's value_info. */
  private readonly shapes = new Map<string, Dim[]>();
  private readonly scalars = new Map<number, string>();
  private negativeZero: string | undefined;
  /** Every ONNX tensor name given out (graft's GraphBuilder rejects a name used twice). */
  private readonly taken = new Set<string>();
  private inputName = '';
  private inputShape: number[] = [];

  constructor(private readonly model: TfjsModel) {
    const topology = model.json.modelTopology as { node?: TfNodeJson[] } | null;
    if (!topology || !Array.isArray(topology.node))
      throw this.fail(`modelTopology has no node list: not a TensorFlow.js graph model (format ${JSON.stringify(model.json.format)})`);
    for (const n of topology.node) this.nodes.set(n.name, n);
  }

  private fail(message: string, context: Record<string, unknown> = {}): GraftError {
    return new GraftError('MODEL', `${this.model.source}: ${message}`, { file: this.model.source, ...context });
  }

  private nodeFail(node: TfNodeJson, message: string): GraftError {
    return this.fail(`node "${node.name}" (${node.op}): ${message}`, { node: node.name, op: node.op });
  }

  convert(extra: readonly string[]): ConvertedModel {
    const own = this.modelOutputs();
    const wanted = [...own, ...extra.filter((e) => !own.includes(e))];
    for (const name of wanted) if (!this.nodes.has(name)) throw this.fail(`output "${name}" is not a node of the graph`, { node: name });
    for (const node of this.order(wanted)) this.convertNode(node);
    if (!this.inputName) throw this.fail('the graph has no Placeholder input on the path to its outputs');

    const outputs = wanted.map((name) => this.exposeOutput(name));
    const layerOutputs = new Map<string, string>();
    for (const [tf, v] of this.values) if (v.name) layerOutputs.set(tf, v.name);

    const model = this.b.model(17);
    const skip = new Set([...this.b.inputs, ...this.b.outputs].map((v) => v.name!));
    model.graph!.valueInfo = [...this.shapes].filter(([n]) => !skip.has(n)).map(([n, s]) => valueInfoOf(n, DataType.FLOAT, s));
    return { model, inputName: this.inputName, inputShape: this.inputShape, outputs, layerOutputs };
  }

  /** The signature's outputs when the model.json has one, else the nodes nothing consumes (as tfjs does). */
  private modelOutputs(): string[] {
    const json = this.model.json;
    const signature = (json.signature ?? json.userDefinedMetadata?.signature) as { outputs?: Record<string, { name?: string }> } | undefined;
    if (signature?.outputs) {
      const names = Object.entries(signature.outputs).map(([key, t]) => (t?.name ?? key).replace(/:0$/, ''));
      if (names.length && names.every((n) => this.nodes.has(n))) return names;
    }
    const consumed = new Set<string>();
    for (const n of this.nodes.values()) for (const i of n.input ?? []) consumed.add(this.ref(i).node);
    return [...this.nodes.values()].filter((n) => !consumed.has(n.name) && n.op !== 'Const' && n.op !== 'Placeholder' && n.op !== 'NoOp').map((n) => n.name);
  }

  /** "name:k" / "^name" → the node and output index; "^" marks a control dependency. */
  private ref(input: string): { node: string; index: number; control: boolean } {
    if (input.startsWith('^')) return { node: input.slice(1), index: 0, control: true };
    const m = /^(.*):(\d+)$/.exec(input);
    return m ? { node: m[1]!, index: Number(m[2]), control: false } : { node: input, index: 0, control: false };
  }

  /** The nodes that `outputs` depend on, inputs before consumers (control dependencies are dropped). */
  private order(outputs: readonly string[]): TfNodeJson[] {
    const out: TfNodeJson[] = [];
    const state = new Map<string, 'open' | 'done'>();
    const stack: { name: string; expanded: boolean }[] = outputs.map((name) => ({ name, expanded: false })).reverse();
    while (stack.length) {
      const top = stack.pop()!;
      if (state.get(top.name) === 'done') continue;
      const node = this.nodes.get(top.name);
      if (!node) throw this.fail(`an input refers to node "${top.name}", which is not in the graph`, { node: top.name });
      if (top.expanded) {
        state.set(top.name, 'done');
        out.push(node);
        continue;
      }
      if (state.get(top.name) === 'open') throw this.fail(`the graph has a cycle through node "${top.name}"`, { node: top.name });
      state.set(top.name, 'open');
      stack.push({ name: top.name, expanded: true });
      for (const i of [...(node.input ?? [])].reverse()) {
        const r = this.ref(i);
        if (!r.control && state.get(r.node) !== 'done') stack.push({ name: r.node, expanded: false });
      }
    }
    return out;
  }

  // ---- attributes and inputs ----

  private attr(node: TfNodeJson, key: string): TfAttrJson | undefined {
    return node.attr?.[key];
  }

  private attrString(node: TfNodeJson, key: string, fallback: string): string {
    const s = this.attr(node, key)?.s;
    return s === undefined ? fallback : base64Text(s);
  }

  private attrStrings(node: TfNodeJson, key: string): string[] {
    return (this.attr(node, key)?.list?.s ?? []).map(base64Text);
  }

  private attrInts(node: TfNodeJson, key: string, fallback: number[]): number[] {
    const list = this.attr(node, key)?.list?.i;
    return list && list.length ? list.map(Number) : fallback;
  }

  private attrFloat(node: TfNodeJson, key: string, fallback: number): number {
    const f = this.attr(node, key)?.f;
    return f === undefined ? fallback : Number(f);
  }

  private attrBool(node: TfNodeJson, key: string, fallback: boolean): boolean {
    return this.attr(node, key)?.b ?? fallback;
  }

  private inputs(node: TfNodeJson): Value[] {
    return (node.input ?? [])
      .map((i) => this.ref(i))
      .filter((r) => !r.control)
      .map((r) => {
        if (r.index !== 0) throw this.nodeFail(node, `reads output ${r.index} of "${r.node}"; only first outputs are supported`);
        const v = this.values.get(r.node);
        if (!v) throw this.nodeFail(node, `input "${r.node}" was not converted`);
        return v;
      });
  }

  private constant(node: TfNodeJson, v: Value | undefined, what: string): Constant & { shape: number[] } {
    if (!v?.constant || !v.shape) throw this.nodeFail(node, `${what} must be a constant`);
    return { ...v.constant, shape: v.shape as number[] };
  }

  private constInts(node: TfNodeJson, v: Value | undefined, what: string): number[] {
    return Array.from(this.constant(node, v, what).data, Number);
  }

  private requireNHWC(node: TfNodeJson): void {
    const format = this.attrString(node, 'data_format', 'NHWC');
    if (format !== 'NHWC') throw this.nodeFail(node, `data_format ${format} is not supported (only NHWC)`);
  }

  private rank4(node: TfNodeJson, v: Value): Dim[] {
    if (v.shape?.length !== 4) throw this.nodeFail(node, `expects a 4-D input, got shape ${v.shape ? `[${v.shape}]` : 'of unknown rank'}`);
    return v.shape;
  }

  // ---- emitting ----

  /**
   * A tensor name not used yet. Names derived from a TF node contain ':', which TF names cannot, so they never
   * take the name of a node converted later.
   */
  private unique(base: string): string {
    let name = base;
    for (let k = 1; this.taken.has(name); k++) name = `${base}_${k}`;
    this.taken.add(name);
    return name;
  }

  private constantTensor(base: string, data: Float32Array | Int32Array | BigInt64Array, dims: readonly number[]): string {
    return this.b.initializer(tensor(this.unique(base), data, dims));
  }

  private int64(base: string, values: readonly number[]): string {
    return this.constantTensor(base, BigInt64Array.from(values, BigInt), [values.length]);
  }

  /** One ONNX node with a single output named `out` (and the node named after it). */
  private emit(op: string, inputs: readonly string[], attrs: Record<string, AttrValue | undefined>, out: string): string {
    this.taken.add(out);
    return this.b.op(op, inputs, attrs, { outputs: [out], name: out });
  }

  private scalar(value: number): string {
    let name = this.scalars.get(value);
    if (!name) this.scalars.set(value, (name = this.constantTensor(`const:${value}`, Float32Array.of(value), [])));
    return name;
  }

  /** Records a TF node's result. */
  private set(tf: string, v: Omit<Value, 'tf'>): Value {
    const value = { tf, ...v };
    this.values.set(tf, value);
    if (v.name && v.shape && !v.constant) this.shapes.set(v.name, v.nchw ? TO_NCHW.map((a) => v.shape![a]!) : v.shape);
    return value;
  }

  private once(key: string, make: () => string): string {
    let name = this.derived.get(key);
    if (!name) this.derived.set(key, (name = make()));
    return name;
  }

  /**
   * Writes a constant as an initializer, once per variant (its TF layout, NCHW, a convolution's OIHW). The
   * first written keeps the Const node's name.
   */
  private initializer(v: Value, variant: string, data: Float32Array | Int32Array, dims: readonly number[]): string {
    return this.once(`${v.tf}\0${variant}`, () => {
      const name = this.unique(this.derived.has(`${v.tf}\0named`) ? `${v.tf}:${variant}` : v.tf);
      this.derived.set(`${v.tf}\0named`, name);
      return this.b.initializer(tensor(name, data, dims));
    });
  }

  /** The value's ONNX tensor in TF layout. */
  private tfLayout(v: Value): string {
    if (v.constant) return this.initializer(v, 'tf', v.constant.data, v.shape as number[]);
    if (!v.nchw) return v.name!;
    return this.once(`${v.name}\0nhwc`, () => {
      const out = this.emit('Transpose', [v.name!], { perm: [...TO_NHWC] }, this.unique(`${v.tf}:nhwc`));
      if (v.shape) this.shapes.set(out, v.shape);
      return out;
    });
  }

  /** A 4-D value's ONNX tensor in NCHW. */
  private nchw(v: Value): string {
    if (v.nchw) return v.name!;
    if (v.constant) {
      const shape = v.shape as number[];
      return this.initializer(v, 'nchw', permute(v.constant.data, shape, TO_NCHW), TO_NCHW.map((a) => shape[a]!));
    }
    return this.once(`${v.name}\0nchw`, () => {
      const out = this.emit('Transpose', [v.name!], { perm: [...TO_NCHW] }, this.unique(`${v.tf}:nchw`));
      if (v.shape) this.shapes.set(out, TO_NCHW.map((a) => v.shape![a]!));
      return out;
    });
  }

  /**
   * An operand broadcast against a 4-D NCHW tensor: TF aligns it to the NHWC axes from the right, so it is
   * padded to rank 4 and permuted like the tensor (a bias [C] becomes [1,C,1,1]).
   */
  private broadcastNCHW(node: TfNodeJson, v: Value): string {
    if (v.nchw) return v.name!;
    if (!v.shape || v.shape.length > 4) throw this.nodeFail(node, 'cannot broadcast an operand of unknown rank against a 4-D tensor');
    const shape4 = [...new Array<Dim>(4 - v.shape.length).fill(1), ...v.shape];
    if (v.constant) {
      if (v.constant.data.length === 1) return this.tfLayout(v);
      const dims = shape4 as number[];
      return this.initializer(v, 'nchw', permute(v.constant.data, dims, TO_NCHW), TO_NCHW.map((a) => dims[a]!));
    }
    if (v.shape.length === 4) return this.nchw(v);
    return this.once(`${v.name}\0bnchw`, () => {
      const axes = this.int64(`${v.tf}:axes`, Array.from({ length: 4 - v.shape!.length }, (_, i) => i));
      const up = this.emit('Unsqueeze', [v.name!, axes], {}, this.unique(`${v.tf}:rank4`));
      return this.emit('Transpose', [up], { perm: [...TO_NCHW] }, this.unique(`${v.tf}:nchw`));
    });
  }

  // ---- ops ----

  private convertNode(node: TfNodeJson): void {
    const X = node.name;
    const op = node.op;
    if (op === 'Placeholder') return this.placeholder(node);
    if (op === 'Const') return this.constNode(node);
    if (op === 'NoOp') return;
    const ins = this.inputs(node);
    const x = ins[0];
    if (!x) throw this.nodeFail(node, 'has no input');
    if (ALIASES.has(op)) return void this.values.set(X, x);
    if (UNARY[op]) return void this.unary(X, x, UNARY[op]!, {});
    if (op === 'BiasAdd') this.requireNHWC(node); // then an Add: the bias broadcasts over TF's last axis
    if (BINARY[op]) return void this.binary(node, X, BINARY[op]!, x, ins[1]);
    switch (op) {
      case 'Relu6':
      case 'Elu':
      case 'LeakyRelu':
      case 'Rsqrt':
      case 'Square':
        return void this.activation(node, op, x, X);
      case 'Prelu':
        return void this.binary(node, X, 'PRelu', x, ins[1]);
      case 'SquaredDifference': {
        const d = this.binary(node, X, 'Sub', x, ins[1], this.unique(`${X}:diff`));
        return void this.unary(X, d, 'Mul', {}, [d.name!, d.name!]);
      }
      case 'Conv2D':
      case '_FusedConv2D':
        return this.conv(node, x, ins.slice(1), false);
      case 'DepthwiseConv2dNative':
      case 'FusedDepthwiseConv2dNative':
        return this.conv(node, x, ins.slice(1), true);
      case 'FusedBatchNorm':
      case 'FusedBatchNormV2':
      case 'FusedBatchNormV3':
        return this.batchNorm(node, x, ins.slice(1));
      case 'AvgPool':
      case 'MaxPool':
        return this.pool(node, x, op === 'AvgPool' ? 'Average' : 'Max');
      case 'Mean':
        return this.mean(node, x, ins[1]);
      case 'Squeeze':
        return this.squeeze(node, x);
      case 'Reshape':
        return this.reshape(node, x, ins[1]);
      case 'Transpose':
        return this.transpose(node, x, ins[1]);
      case 'Pad':
      case 'PadV2':
      case 'MirrorPad':
        return this.pad(node, x, ins[1], ins[2]);
      case 'ConcatV2':
        return this.concat(node, ins.slice(0, -1), ins[ins.length - 1]);
      case 'MatMul':
      case '_FusedMatMul':
        return this.matmul(node, x, ins[1], ins.slice(2));
      case 'Softmax':
        return this.softmax(node, x);
      default:
        throw this.fail(`node "${X}" uses op ${op}, which graft cannot convert to ONNX (supported: ${SUPPORTED.join(', ')})`, { node: X, op });
    }
  }

  private placeholder(node: TfNodeJson): void {
    if (this.inputName) throw this.nodeFail(node, `a second input (after "${this.inputName}"); graft converts single-input graphs`);
    const dtype = this.attr(node, 'dtype')?.type ?? 'DT_FLOAT';
    if (dtype !== 'DT_FLOAT') throw this.nodeFail(node, `input type ${dtype} is not supported (only DT_FLOAT)`);
    const s = this.attr(node, 'shape')?.shape;
    if (!s || s.unknownRank || !s.dim) throw this.nodeFail(node, 'the input has no static rank');
    this.inputShape = s.dim.map((d) => Number(d.size ?? -1));
    const shape: Dim[] = this.inputShape.map((d, i) => (d >= 0 ? d : i === 0 ? 'N' : -1));
    this.inputName = node.name;
    this.taken.add(node.name);
    this.b.input(node.name, DataType.FLOAT, shape.map((d, i) => (d === -1 ? `${node.name}_dim${i}` : d)));
    if (shape.length === 4) {
      const name = this.emit('Transpose', [node.name], { perm: [...TO_NCHW] }, this.unique(`${node.name}:nchw`));
      this.set(node.name, { name, shape, nchw: true });
    } else {
      this.set(node.name, { name: node.name, shape, nchw: false });
    }
  }

  private constNode(node: TfNodeJson): void {
    const w: TfjsWeight | undefined = this.model.weights.get(node.name);
    if (!w) throw this.nodeFail(node, 'no weight of this name in weightsManifest');
    this.set(node.name, { shape: [...w.shape], nchw: false, constant: { data: w.data, dtype: w.dtype } });
  }

  private unary(X: string, x: Value, op: string, attrs: Record<string, AttrValue | undefined>, inputs?: string[], out = X): Value {
    const name = this.emit(op, inputs ?? [x.nchw ? x.name! : this.tfLayout(x)], attrs, out);
    return this.set(X, { name, shape: x.shape, nchw: x.nchw });
  }

  /** Activations that are not one ONNX op of the same name (also the activations fused into convolutions). */
  private activation(node: TfNodeJson, op: string, x: Value, out: string): Value {
    const X = node.name;
    const held = [x.nchw ? x.name! : this.tfLayout(x)];
    switch (op) {
      case 'Relu':
        return this.unary(X, x, 'Relu', {}, held, out);
      case 'Relu6':
        return this.unary(X, x, 'Clip', {}, [...held, this.scalar(0), this.scalar(6)], out);
      case 'Elu':
        return this.unary(X, x, 'Elu', { alpha: 1 }, held, out);
      case 'Sigmoid':
        return this.unary(X, x, 'Sigmoid', {}, held, out);
      case 'Tanh':
        return this.unary(X, x, 'Tanh', {}, held, out);
      case 'LeakyRelu': // a fused LeakyRelu keeps its slope in leakyrelu_alpha
        return this.unary(X, x, 'LeakyRelu', { alpha: this.attrFloat(node, node.op === 'LeakyRelu' ? 'alpha' : 'leakyrelu_alpha', 0.2) }, held, out);
      case 'Square':
        return this.unary(X, x, 'Mul', {}, [held[0]!, held[0]!], out);
      case 'Rsqrt': {
        const root = this.emit('Sqrt', held, {}, this.unique(`${X}:sqrt`));
        return this.unary(X, x, 'Reciprocal', {}, [root], out);
      }
      default:
        throw this.nodeFail(node, `fused activation ${op} is not supported`);
    }
  }

  private binary(node: TfNodeJson, X: string, op: string, a: Value, b: Value | undefined, out = X): Value {
    if (!b) throw this.nodeFail(node, 'needs two inputs');
    const shape = broadcastShapes(a.shape, b.shape);
    if (shape === null) throw this.nodeFail(node, `cannot broadcast shapes [${a.shape}] and [${b.shape}]`);
    if ((a.nchw || b.nchw) && shape?.length === 4) {
      const name = this.emit(op, [this.broadcastNCHW(node, a), this.broadcastNCHW(node, b)], {}, out);
      return this.set(X, { name, shape, nchw: true });
    }
    const name = this.emit(op, [this.tfLayout(a), this.tfLayout(b)], {}, out);
    return this.set(X, { name, shape, nchw: false });
  }

  /** Conv2D and depthwise convolutions, plain or with TF's fused bias, batch norm and activation. */
  private conv(node: TfNodeJson, x: Value, rest: Value[], depthwise: boolean): void {
    const X = node.name;
    this.requireNHWC(node);
    const [n, h, w, c] = this.rank4(node, x);
    const filter = this.constant(node, rest[0], 'the filter');
    if (filter.shape.length !== 4) throw this.nodeFail(node, `filter shape [${filter.shape}] is not 4-D`);
    const [kh, kw, fin, fout] = filter.shape as [number, number, number, number];
    const [, sh, sw] = this.attrInts(node, 'strides', [1, 1, 1, 1]);
    const [, dh, dw] = this.attrInts(node, 'dilations', [1, 1, 1, 1]);
    const padding = this.attrString(node, 'padding', 'VALID');

    // Weights: TF [kh, kw, in, out] → ONNX [out, in, kh, kw]; depthwise [kh, kw, in, mult] → [in·mult, 1, kh, kw]
    // (TF's output channel of input i and multiplier m is i·mult + m).
    const weights = permute(filter.data as Float32Array, filter.shape, depthwise ? [2, 3, 0, 1] : [3, 2, 0, 1]);
    const outC = depthwise ? fin * fout : fout;
    let group = depthwise ? fin : 1;
    if (!depthwise && typeof c === 'number' && c > 0 && c !== fin) {
      if (c % fin) throw this.nodeFail(node, `input has ${c} channels but the filter expects a multiple of ${fin}`);
      group = c / fin;
    }
    const wDims = depthwise ? [outC, 1, kh, kw] : [fout, fin, kh, kw];

    // Fused ops: each consumes its arguments (the inputs after the filter) in order.
    const fused = node.op === 'Conv2D' || node.op === 'DepthwiseConv2dNative' ? [] : this.attrStrings(node, 'fused_ops');
    const args = rest.slice(1);
    let bias: Value | undefined;
    let folded: Float32Array | undefined;
    const activations: { op: string; alpha?: Value }[] = [];
    for (const f of fused) {
      if (f === 'BiasAdd') {
        bias = args.shift();
        if (!bias) throw this.nodeFail(node, 'BiasAdd without a bias argument');
      } else if (f === 'FusedBatchNorm') {
        // Folded into the weights and bias: y = (conv − mean)·scale/√(var+ε) + offset.
        const [scale, offset, mean, variance] = [0, 1, 2, 3].map(() => this.constant(node, args.shift(), 'a fused batch-norm argument').data);
        const eps = this.attrFloat(node, 'epsilon', 1e-3);
        const b0 = bias ? this.constant(node, bias, 'a bias before a fused batch norm').data : undefined;
        const perOut = weights.length / outC;
        folded = new Float32Array(outC);
        for (let o = 0; o < outC; o++) {
          const k = scale![o]! / Math.sqrt(variance![o]! + eps);
          for (let j = 0; j < perOut; j++) weights[o * perOut + j] = weights[o * perOut + j]! * k;
          folded[o] = offset![o]! + ((b0?.[o] ?? 0) - mean![o]!) * k;
        }
      } else if (f === 'Prelu') {
        activations.push({ op: f, alpha: args.shift() });
      } else activations.push({ op: f });
    }

    let pads: [number, number, number, number] | undefined;
    let autoPad: string | undefined;
    let ph: [number, number] | undefined;
    let pw: [number, number] | undefined;
    if (padding === 'SAME') {
      ph = samePads(h!, kh, sh!, dh!);
      pw = samePads(w!, kw, sw!, dw!);
      if (ph && pw) pads = [ph[0], pw[0], ph[1], pw[1]];
      else autoPad = 'SAME_UPPER'; // pads the odd pixel at the end, as TF does
    } else if (padding === 'VALID') {
      ph = [0, 0];
      pw = [0, 0];
      pads = [0, 0, 0, 0];
    } else if (padding === 'EXPLICIT') {
      const e = this.attrInts(node, 'explicit_paddings', []);
      if (e.length !== 8) throw this.nodeFail(node, `explicit_paddings [${e}] should hold 8 numbers`);
      ph = [e[2]!, e[3]!];
      pw = [e[4]!, e[5]!];
      pads = [ph[0], pw[0], ph[1], pw[1]];
    } else throw this.nodeFail(node, `padding ${padding} is not supported`);

    const inputs = [this.nchw(x)];
    if (folded) inputs.push(this.constantTensor(`${X}:weights`, weights, wDims), this.constantTensor(`${X}:bias`, folded, [outC]));
    else {
      inputs.push(this.initializer(rest[0]!, 'oihw', weights, wDims));
      if (bias) inputs.push(this.tfLayout(bias)); // ONNX Conv's B
    }
    const shape: Dim[] = [n!, outSize(h!, kh, sh!, dh!, ph, padding === 'SAME'), outSize(w!, kw, sw!, dw!, pw, padding === 'SAME'), outC];
    const convOut = activations.length ? this.unique(`${X}:conv`) : X;
    const attrs = { kernel_shape: [kh, kw], strides: [sh!, sw!], dilations: [dh!, dw!], group: group === 1 ? undefined : group, pads, auto_pad: autoPad };
    let y = this.set(X, { name: this.emit('Conv', inputs, attrs, convOut), shape, nchw: true });
    activations.forEach((a, i) => {
      const out = i === activations.length - 1 ? X : this.unique(`${X}:${a.op.toLowerCase()}`);
      y = a.op === 'Prelu' ? this.binary(node, X, 'PRelu', y, a.alpha, out) : this.activation(node, a.op, y, out);
    });
  }

  /** FusedBatchNorm in inference mode → BatchNormalization (channels are axis 1 of the NCHW tensor). */
  private batchNorm(node: TfNodeJson, x: Value, params: Value[]): void {
    this.requireNHWC(node);
    if (this.attrBool(node, 'is_training', false)) throw this.nodeFail(node, 'is_training is true; only inference batch norm converts');
    const shape = this.rank4(node, x);
    if (params.length < 4) throw this.nodeFail(node, 'needs scale, offset, mean and variance');
    const inputs = [this.nchw(x), ...params.slice(0, 4).map((p) => this.tfLayout(p))];
    const name = this.emit('BatchNormalization', inputs, { epsilon: this.attrFloat(node, 'epsilon', 1e-3) }, node.name);
    this.set(node.name, { name, shape, nchw: true });
  }

  /**
   * AvgPool / MaxPool. A VALID window covering the whole (static) spatial extent is global pooling, which graft
   * looks for to find a backbone's feature map. TF's SAME average excludes the padding from the count, as ONNX's
   * AveragePool does by default.
   */
  private pool(node: TfNodeJson, x: Value, kind: 'Average' | 'Max'): void {
    this.requireNHWC(node);
    const [n, h, w, c] = this.rank4(node, x);
    const [, kh, kw] = this.attrInts(node, 'ksize', [1, 1, 1, 1]);
    const [, sh, sw] = this.attrInts(node, 'strides', [1, 1, 1, 1]);
    const padding = this.attrString(node, 'padding', 'VALID');
    if (padding === 'VALID' && kh === h && kw === w) {
      const name = this.emit(`Global${kind}Pool`, [this.nchw(x)], {}, node.name);
      this.set(node.name, { name, shape: [n!, 1, 1, c!], nchw: true });
      return;
    }
    if (padding !== 'SAME' && padding !== 'VALID') throw this.nodeFail(node, `padding ${padding} is not supported`);
    const same = padding === 'SAME';
    const ph = same ? samePads(h!, kh!, sh!, 1) : [0, 0] as [number, number];
    const pw = same ? samePads(w!, kw!, sw!, 1) : [0, 0] as [number, number];
    const pads = ph && pw ? [ph[0], pw[0], ph[1], pw[1]] : undefined;
    const attrs = { kernel_shape: [kh!, kw!], strides: [sh!, sw!], pads, auto_pad: pads ? undefined : 'SAME_UPPER' };
    const input = this.nchw(x);
    this.keepPadApart(input);
    const name = this.emit(`${kind}Pool`, [input], attrs, node.name);
    this.set(node.name, { name, shape: [n!, outSize(h!, kh!, sh!, 1, ph, same), outSize(w!, kw!, sw!, 1, pw, same), c!], nchw: true });
  }

  /**
   * onnxruntime's PadFusion folds a zero Pad into the pads of the pool that reads it. That changes the result
   * (MaxPool pads with −∞, and AveragePool here leaves pads out of the count, where TF counted the padded zeros)
   * and can leave pads ≥ kernel, which onnxruntime then rejects. PadFusion skips a Pad whose value is not all
   * zero bytes, so such a Pad pads with −0, which every op treats as 0.
   */
  private keepPadApart(input: string): void {
    const pad = this.b.nodes.find((n) => n.opType === 'Pad' && n.output?.[0] === input);
    const mode = pad?.attribute?.find((a) => a.name === 'mode')?.s;
    if (!pad || (mode && new TextDecoder().decode(mode) !== 'constant')) return;
    const fill = pad.input![2];
    if (fill && fill !== this.scalars.get(0)) return; // a non-zero PadV2 value: not fused
    this.negativeZero ??= this.constantTensor('const:-0', Float32Array.of(-0), []);
    pad.input = [pad.input![0]!, pad.input![1]!, this.negativeZero];
  }

  /** Axes given to an op on a tensor of `rank`, made non-negative. */
  private axes(node: TfNodeJson, list: number[], rank: number): number[] {
    const out = list.map((a) => (a < 0 ? a + rank : a));
    if (out.some((a) => a < 0 || a >= rank)) throw this.nodeFail(node, `axes [${list}] are out of range for rank ${rank}`);
    return [...new Set(out)].sort((a, b) => a - b);
  }

  /**
   * Whether removing `removed` TF axes from an NCHW-held 4-D tensor leaves the remaining axes in TF order, so
   * the result (of lower rank) needs no transpose back: e.g. [N,C,1,1] → [N,C].
   */
  private keepsOrder(removed: readonly number[]): boolean {
    const kept = [0, 1, 2, 3].filter((a) => !removed.includes(a));
    const nchwOrder = TO_NCHW.filter((a) => kept.includes(a));
    return nchwOrder.every((a, i) => a === kept[i]);
  }

  private mean(node: TfNodeJson, x: Value, axesValue: Value | undefined): void {
    const X = node.name;
    if (!x.shape) throw this.nodeFail(node, 'input of unknown rank');
    const rank = x.shape.length;
    const axes = this.axes(node, this.constInts(node, axesValue, 'the reduction axes'), rank);
    const keep = this.attrBool(node, 'keep_dims', false) || this.attrBool(node, 'keepdims', false);
    const reduced = x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
    const dropped = x.shape.filter((_, i) => !axes.includes(i));
    if (x.nchw && axes.length === 2 && axes[0] === 1 && axes[1] === 2) {
      // The spatial mean: global average pooling, then drop the 1×1 unless keep_dims.
      const pooled = this.emit('GlobalAveragePool', [x.name!], {}, keep ? X : this.unique(`${X}:pool`));
      if (keep) return void this.set(X, { name: pooled, shape: reduced, nchw: true });
      this.shapes.set(pooled, TO_NCHW.map((a) => reduced[a]!));
      const name = this.emit('Squeeze', [pooled, this.int64(`${X}:axes`, [2, 3])], {}, X);
      return void this.set(X, { name, shape: dropped, nchw: false });
    }
    if (x.nchw && (keep || this.keepsOrder(axes))) {
      const name = this.emit('ReduceMean', [x.name!], { axes: axes.map((a) => NCHW_POS[a]!), keepdims: keep ? 1 : 0 }, X);
      return void this.set(X, { name, shape: keep ? reduced : dropped, nchw: keep });
    }
    const name = this.emit('ReduceMean', [this.tfLayout(x)], { axes, keepdims: keep ? 1 : 0 }, X);
    this.set(X, { name, shape: keep ? reduced : dropped, nchw: false });
  }

  private squeeze(node: TfNodeJson, x: Value): void {
    const X = node.name;
    if (!x.shape) throw this.nodeFail(node, 'input of unknown rank');
    let dims = this.attrInts(node, 'squeeze_dims', this.attrInts(node, 'axis', []));
    if (!dims.length) {
      // No dims: every size-1 axis, which needs static sizes.
      if (x.shape.some((d) => d === -1)) throw this.nodeFail(node, 'squeezing all size-1 axes needs a static shape');
      dims = x.shape.flatMap((d, i) => (d === 1 ? [i] : []));
    }
    const axes = this.axes(node, dims, x.shape.length);
    const shape = x.shape.filter((_, i) => !axes.includes(i));
    if (x.nchw && this.keepsOrder(axes)) {
      const name = this.emit('Squeeze', [x.name!, this.int64(`${X}:axes`, axes.map((a) => NCHW_POS[a]!))], {}, X);
      return void this.set(X, { name, shape, nchw: false });
    }
    const name = this.emit('Squeeze', [this.tfLayout(x), this.int64(`${X}:axes`, axes)], {}, X);
    this.set(X, { name, shape, nchw: false });
  }

  private reshape(node: TfNodeJson, x: Value, shapeValue: Value | undefined): void {
    const X = node.name;
    const target = this.constInts(node, shapeValue, 'the target shape');
    // The output shape: the -1 takes whatever is left, which is the batch when only the batch is unknown.
    let shape: Dim[] = [...target];
    const hole = target.indexOf(-1);
    if (hole >= 0 && x.shape) {
      const known = size(target.filter((d) => d !== -1));
      const statics = x.shape.filter((d): d is number => typeof d === 'number' && d >= 0);
      const symbolic = x.shape.filter((d) => typeof d === 'string');
      if (statics.length === x.shape.length) shape[hole] = size(statics) / known;
      else if (symbolic.length === 1 && statics.length === x.shape.length - 1 && size(statics) === known) shape[hole] = symbolic[0]!;
    } else if (hole >= 0) shape = target.map((d) => (d === -1 ? -1 : d));
    const name = this.emit('Reshape', [this.tfLayout(x), this.int64(`${X}:shape`, target)], {}, X);
    this.set(X, { name, shape, nchw: false });
  }

  private transpose(node: TfNodeJson, x: Value, permValue: Value | undefined): void {
    const perm = this.constInts(node, permValue, 'the permutation');
    const name = this.emit('Transpose', [this.tfLayout(x)], { perm }, node.name);
    this.set(node.name, { name, shape: x.shape && perm.map((p) => x.shape![p]!), nchw: false });
  }

  private pad(node: TfNodeJson, x: Value, paddingsValue: Value | undefined, fill: Value | undefined): void {
    const X = node.name;
    if (!x.shape) throw this.nodeFail(node, 'input of unknown rank');
    const rank = x.shape.length;
    const p = this.constInts(node, paddingsValue, 'the paddings');
    if (p.length !== 2 * rank) throw this.nodeFail(node, `paddings hold ${p.length} numbers for a rank-${rank} input`);
    let mode = 'constant';
    if (node.op === 'MirrorPad') {
      const m = this.attrString(node, 'mode', 'REFLECT');
      if (m !== 'REFLECT') throw this.nodeFail(node, `mirror mode ${m} has no ONNX equivalent (only REFLECT)`);
      mode = 'reflect';
    }
    // TF paddings are [[begin, end] per axis]; ONNX pads are [all begins, all ends] in the held axis order.
    const order = x.nchw ? [...TO_NCHW] : Array.from({ length: rank }, (_, i) => i);
    const pads = [...order.map((a) => p[2 * a]!), ...order.map((a) => p[2 * a + 1]!)];
    const inputs = [x.nchw ? x.name! : this.tfLayout(x), this.int64(`${X}:pads`, pads)];
    if (fill) inputs.push(this.scalar(this.constant(node, fill, 'the pad value').data[0]!));
    const shape = x.shape.map((d, i) => (typeof d === 'number' && d >= 0 ? d + p[2 * i]! + p[2 * i + 1]! : d));
    const name = this.emit('Pad', inputs, { mode }, X);
    this.set(X, { name, shape, nchw: x.nchw });
  }

  private concat(node: TfNodeJson, parts: Value[], axisValue: Value | undefined): void {
    const X = node.name;
    const rank = parts.find((v) => v.shape)?.shape?.length;
    if (!parts.length || rank === undefined) throw this.nodeFail(node, 'inputs of unknown rank');
    const [axis] = this.axes(node, this.constInts(node, axisValue, 'the axis'), rank);
    const shape = [...parts[0]!.shape!];
    const sizes = parts.map((v) => v.shape?.[axis!]);
    shape[axis!] = sizes.every((d): d is number => typeof d === 'number' && d >= 0) ? sizes.reduce((x, y) => x + y, 0) : -1;
    const nchw = rank === 4 && parts.some((v) => v.nchw);
    const inputs = parts.map((v) => (nchw ? this.nchw(v) : this.tfLayout(v)));
    const name = this.emit('Concat', inputs, { axis: nchw ? NCHW_POS[axis!]! : axis! }, X);
    this.set(X, { name, shape, nchw });
  }

  /** MatMul / _FusedMatMul (2-D) → Gemm, with a fused bias as Gemm's C. */
  private matmul(node: TfNodeJson, a: Value, b: Value | undefined, args: Value[]): void {
    const X = node.name;
    if (!b) throw this.nodeFail(node, 'needs two inputs');
    if (a.shape?.length !== 2 || b.shape?.length !== 2) throw this.nodeFail(node, `only 2-D MatMul converts (got [${a.shape}] × [${b.shape}])`);
    const ta = this.attrBool(node, 'transpose_a', false);
    const tb = this.attrBool(node, 'transpose_b', false);
    const fused = node.op === '_FusedMatMul' ? this.attrStrings(node, 'fused_ops') : [];
    const inputs = [this.tfLayout(a), this.tfLayout(b)];
    const activations: { op: string; alpha?: Value }[] = [];
    for (const f of fused) {
      if (f === 'BiasAdd') {
        const bias = args.shift();
        if (!bias) throw this.nodeFail(node, 'BiasAdd without a bias argument');
        inputs.push(this.tfLayout(bias));
      } else if (f === 'Prelu') activations.push({ op: f, alpha: args.shift() });
      else activations.push({ op: f });
    }
    const shape: Dim[] = [a.shape[ta ? 1 : 0]!, b.shape[tb ? 0 : 1]!];
    const gemmOut = activations.length ? this.unique(`${X}:gemm`) : X;
    let y = this.set(X, { name: this.emit('Gemm', inputs, { transA: ta ? 1 : undefined, transB: tb ? 1 : undefined }, gemmOut), shape, nchw: false });
    activations.forEach((act, i) => {
      const out = i === activations.length - 1 ? X : this.unique(`${X}:${act.op.toLowerCase()}`);
      y = act.op === 'Prelu' ? this.binary(node, X, 'PRelu', y, act.alpha, out) : this.activation(node, act.op, y, out);
    });
  }

  /** Softmax over TF's last axis: the channels, axis 1, of an NCHW-held tensor. */
  private softmax(node: TfNodeJson, x: Value): void {
    const name = this.emit('Softmax', [x.nchw ? x.name! : this.tfLayout(x)], { axis: x.nchw ? 1 : -1 }, node.name);
    this.set(node.name, { name, shape: x.shape, nchw: x.nchw });
  }

  /** Makes the TF node a graph output in TF layout; returns the ONNX output name. */
  private exposeOutput(tf: string): string {
    const v = this.values.get(tf)!;
    let name: string;
    if (v.nchw) name = this.tfLayout(v);
    else if (v.constant || v.name !== tf) name = this.emit('Identity', [this.tfLayout(v)], {}, this.unique(tf));
    else name = v.name;
    if (!this.b.outputs.some((o) => o.name === name)) this.b.outputs.push(valueInfoOf(name, v.constant?.dtype === 'int32' ? DataType.INT32 : DataType.FLOAT, v.shape));
    return name;
  }
}

/**
 * Converts a TensorFlow.js graph model to ONNX (opset 17). The ONNX input keeps the Placeholder's name and
 * NHWC layout; inside, 4-D activations are NCHW. Throws a MODEL error naming the node and op for anything
 * it cannot convert.
 */
export function convertGraphModel(model: TfjsModel, options: ConvertGraphOptions = {}): ConvertedModel {
  return new GraphConverter(model).convert(options.outputs ?? []);
}

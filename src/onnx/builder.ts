/** A small builder for ONNX graphs: named inputs, initializers and nodes, then a ModelProto. */
import { GraftError } from '../errors.js';
import { DataType, onnx, valueInfo, tensor, type AttributeProto, type GraphProto, type ModelProto, type NodeProto, type TensorProto, type ValueInfoProto } from './proto.js';

export type AttrValue = number | string | readonly number[] | readonly string[] | TensorProto;

/** Attributes that ONNX defines as floats; every other numeric attribute is an integer. */
const FLOAT_ATTRS = new Set(['alpha', 'beta', 'epsilon', 'momentum', 'ratio', 'gamma', 'lambd', 'value_float', 'value_floats', 'spatial_scale', 'activation_params']);

export function makeAttribute(name: string, value: AttrValue): AttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  if (typeof value === 'string') return { name, type: T.STRING, s: new TextEncoder().encode(value) };
  if (typeof value === 'number') {
    if (FLOAT_ATTRS.has(name) || !Number.isInteger(value)) return { name, type: T.FLOAT, f: value };
    return { name, type: T.INT, i: value };
  }
  if (Array.isArray(value)) {
    if (value.every((v) => typeof v === 'string')) return { name, type: T.STRINGS, strings: (value as string[]).map((s) => new TextEncoder().encode(s)) };
    const nums = value as number[];
    if (FLOAT_ATTRS.has(name) || nums.some((v) => !Number.isInteger(v))) return { name, type: T.FLOATS, floats: nums };
    return { name, type: T.INTS, ints: nums };
  }
  return { name, type: T.TENSOR, t: value as TensorProto };
}

export interface NodeOptions {
  /** Names for the outputs; by default one fresh name derived from the op. */
  outputs?: string[] | number;
  name?: string;
  domain?: string;
}

export class GraphBuilder {
  readonly nodes: NodeProto[] = [];
  readonly inputs: ValueInfoProto[] = [];
  readonly outputs: ValueInfoProto[] = [];
  readonly initializers: TensorProto[] = [];
  /** Shapes of intermediate tensors, where known (ONNX value_info). */
  readonly valueInfos: ValueInfoProto[] = [];
  private readonly used = new Set<string>();
  private counter = 0;

  constructor(readonly name: string, private readonly prefix = '') {}

  /** A tensor name not yet used in this graph. */
  fresh(base: string): string {
    let name = `${this.prefix}${base}`;
    while (this.used.has(name)) name = `${this.prefix}${base}_${++this.counter}`;
    this.used.add(name);
    return name;
  }

  private claim(name: string): string {
    if (this.used.has(name)) throw new GraftError('MODEL', `graph ${this.name}: tensor name ${name} is used twice`, { name });
    this.used.add(name);
    return name;
  }

  input(name: string, elemType: number, shape: ReadonlyArray<number | string>): string {
    this.inputs.push(valueInfo(this.claim(name), elemType, shape));
    return name;
  }

  output(name: string, elemType: number, shape: ReadonlyArray<number | string>): string {
    this.outputs.push(valueInfo(name, elemType, shape));
    return name;
  }

  /** Records the shape of an intermediate tensor (dimensions: sizes or symbolic names). */
  annotate(name: string, elemType: number, shape: ReadonlyArray<number | string>): void {
    this.valueInfos.push(valueInfo(name, elemType, shape));
  }

  /** Adds an initializer under a fresh name derived from `base`; returns the name. */
  constant(base: string, data: Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array | Int8Array, dims: readonly number[]): string {
    const name = this.fresh(base);
    this.initializers.push(tensor(name, data, dims));
    return name;
  }

  /** Adds an existing initializer (its name is kept). */
  initializer(t: TensorProto): string {
    this.initializers.push({ ...t, name: this.claim(t.name!) });
    return t.name!;
  }

  /** Adds an existing node (copied from another graph); its output names are claimed as they are. */
  copy(node: NodeProto): void {
    for (const o of node.output ?? []) if (o) this.claim(o);
    this.nodes.push(node);
  }

  /** A scalar BOOL initializer (e.g. Dropout's training_mode). */
  bool(base: string, value: boolean): string {
    const name = this.fresh(base);
    this.initializers.push({ name, dataType: DataType.BOOL, dims: [], rawData: Uint8Array.of(value ? 1 : 0) });
    return name;
  }

  int64(base: string, values: readonly number[]): string {
    return this.constant(base, BigInt64Array.from(values.map(BigInt)), [values.length]);
  }

  /** Adds a node; returns the names of its outputs. */
  node(opType: string, inputs: ReadonlyArray<string>, attrs: Record<string, AttrValue | undefined> = {}, options: NodeOptions = {}): string[] {
    const outputs =
      Array.isArray(options.outputs) ? options.outputs.map((o) => this.claim(o))
      : Array.from({ length: typeof options.outputs === 'number' ? options.outputs : 1 }, (_, i) => this.fresh(`${opType.toLowerCase()}${i ? `_${i}` : ''}`));
    const attribute = Object.entries(attrs)
      .filter((e): e is [string, AttrValue] => e[1] !== undefined)
      .map(([k, v]) => makeAttribute(k, v));
    this.nodes.push({
      opType,
      input: [...inputs],
      output: outputs,
      name: options.name ?? this.fresh(`${opType}_node`),
      attribute,
      ...(options.domain ? { domain: options.domain } : {}),
    });
    return outputs;
  }

  /** Adds a single-output node; returns its output name. */
  op(opType: string, inputs: ReadonlyArray<string>, attrs: Record<string, AttrValue | undefined> = {}, options: NodeOptions = {}): string {
    return this.node(opType, inputs, attrs, options)[0]!;
  }

  graph(): GraphProto {
    return { name: this.name, node: this.nodes, input: this.inputs, output: this.outputs, initializer: this.initializers, valueInfo: this.valueInfos };
  }

  model(opset = 17, producer = 'graft'): ModelProto {
    return onnx.ModelProto.create({
      irVersion: 8,
      producerName: producer,
      opsetImport: [{ domain: '', version: opset }],
      graph: this.graph(),
    });
  }
}

/**
 * TensorFlow.js *layers* models (the Keras topology that tfjs-layers, Teachable Machine and
 * `tensorflowjs_converter --input_format keras` write: Sequential and functional Models, nested as layers)
 * → ONNX opset 17, float32, with the weights as initializers.
 *
 * Layout. The graph input stays NHWC like the original and is transposed once to NCHW; from there on every
 * rank-4 activation is kept NCHW, so Keras layers map straight onto ONNX's channel-first Conv,
 * BatchNormalization and pooling ops (which graft's fine-tuning autodiff can train), and a global pooling
 * reads an `[N, C, H, W]` feature map that graft's automatic cut finds. Tensors of other ranks keep Keras's
 * axis order. Where Keras's NHWC order is observable (Flatten, Reshape and Permute of a 4-D tensor, the axis
 * of Concatenate/Softmax/BatchNormalization, Dense applied to a 4-D tensor, 4-D graph outputs) the converter
 * transposes back or remaps axes, so every result equals the tfjs model's.
 *
 * Shapes are tracked statically in Keras order (batch first, `null` where unknown); they give TF's 'same'
 * padding as explicit ONNX pads and let every weight be checked against the tensor it meets.
 */
import { GraftError } from '../errors.js';
import { GraphBuilder, type AttrValue } from '../onnx/builder.js';
import { DataType, valueInfo, type ValueInfoProto } from '../onnx/proto.js';
import { permute, samePadding } from './tf-layout.js';
import type { ConvertedModel, TfjsModel, TfjsWeight } from './tfjs-weights.js';

export type { ConvertedModel };

export interface ConvertLayersOptions {
  /** Names of further layers whose outputs become graph outputs (rank-4 ones transposed back to NHWC). */
  outputs?: string[];
}

/** A static dimension in Keras order; null where unknown (always the batch). */
type Dim = number | null;

/** A Keras tensor in the ONNX graph: `name` is stored NCHW when the rank is 4, in Keras order otherwise. */
interface Value {
  name: string;
  /** Keras-order shape, batch first. */
  shape: Dim[];
}

type Json = Record<string, unknown>;

/** One reference to an input of a layer call: the `tensor`-th output of the `node`-th call of `layer`. */
interface NodeRef {
  layer: string;
  node: number;
  tensor: number;
}

interface LayerSpec {
  className: string;
  name: string;
  config: Json;
  /** The layer's calls inside its parent model (functional models only), each a list of input references. */
  inboundNodes: NodeRef[][];
}

const FLOAT = DataType.FLOAT;
const MODEL_CLASSES = new Set(['Sequential', 'Model', 'Functional']);
/** Layers that only act during training. */
const IDENTITY_LAYERS = new Set([
  'Dropout', 'SpatialDropout1D', 'SpatialDropout2D', 'SpatialDropout3D', 'GaussianNoise', 'GaussianDropout', 'AlphaDropout', 'ActivityRegularization',
]);
/** Keras axis → ONNX axis for a rank-4 tensor stored NCHW (Keras N,H,W,C are ONNX axes 0,2,3,1). */
const NHWC_TO_NCHW_AXIS = [0, 2, 3, 1];

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const product = (dims: readonly number[]) => dims.reduce((a, b) => a * b, 1);
const fmt = (shape: readonly Dim[]) => `[${shape.map((d) => (d === null ? '?' : d)).join(',')}]`;

/**
 * Converts a TensorFlow.js layers model (read with readTfjsModel) to an ONNX model that computes the same
 * outputs from the same NHWC input. Throws a MODEL GraftError naming the file, the layer and its class for
 * anything it cannot convert exactly (an unsupported layer or option, a missing or misshapen weight).
 */
export function convertLayersModel(model: TfjsModel, options: ConvertLayersOptions = {}): ConvertedModel {
  return new LayersConverter(model).convert(options.outputs ?? []);
}

class LayersConverter {
  private readonly b = new GraphBuilder('tfjs-layers');
  /** Layer name → its output value (first call). */
  private readonly layerValues = new Map<string, Value>();
  /** Initializer name of each transformed weight, so a shared layer's weights appear once. */
  private readonly constants = new Map<string, string>();
  private readonly valueInfos = new Map<string, ValueInfoProto>();
  private readonly source: string;

  constructor(private readonly tfjs: TfjsModel) {
    this.source = tfjs.source;
  }

  private fail(message: string, context: Json = {}): never {
    throw new GraftError('MODEL', `${this.source}: ${message}`, { file: this.source, ...context });
  }

  private failLayer(spec: LayerSpec, message: string, context: Json = {}): never {
    return this.fail(`layer ${spec.name} (${spec.className}): ${message}`, { layer: spec.name, className: spec.className, ...context });
  }

  convert(extraOutputs: readonly string[]): ConvertedModel {
    const topology = this.tfjs.json.modelTopology;
    if (!isObject(topology)) this.fail('modelTopology is not an object');
    // tensorflowjs_converter wraps the Keras config as { model_config, training_config, ... }.
    const root = this.parseLayer(isObject(topology.model_config) ? topology.model_config : topology, 'modelTopology');
    if (!MODEL_CLASSES.has(root.className)) this.fail(`modelTopology is a ${root.className}, not a Sequential or Model (is this a graph model?)`);

    const input = this.findInput(root);
    if (!input) this.fail(`model ${root.name} declares no input shape (its first layer needs batch_input_shape)`);
    const { name: inputName, shape } = input;
    const rank = shape.length;
    if (rank < 2) this.fail(`input ${inputName} has shape ${fmt(shape)}; expected a batch dimension and at least one more`);
    const onnxDims = shape.map((d, i) => (i === 0 ? 'N' : d === null ? (rank === 4 ? ['N', 'H', 'W', 'C'][i]! : `d${i}`) : d));
    this.b.input(inputName, FLOAT, onnxDims);

    // Reserve the output names now so that no internal tensor takes them.
    const outputLayers = this.outputLayerNames(root);
    const wanted = [...outputLayers, ...extraOutputs.filter((n) => !outputLayers.includes(n))];
    const outputNames = wanted.map((n) => this.b.fresh(n));

    let x: Value = { name: inputName, shape };
    if (rank === 4) {
      const nchw = this.b.fresh(`${inputName}_nchw`);
      this.renameLast(this.b.op('Transpose', [inputName], { perm: [0, 3, 1, 2] }), nchw);
      this.nameNodes(0, inputName);
      x = { name: nchw, shape };
    }
    this.record(inputName, x);

    const results = this.callModel(root, [x]);
    if (results.length !== outputLayers.length) this.fail(`model ${root.name} gives ${results.length} outputs for ${outputLayers.length} output layers`);
    const missing = extraOutputs.filter((n) => !this.layerValues.has(n));
    if (missing.length) {
      const known = [...this.layerValues.keys()];
      this.fail(`no layer named ${missing.join(', ')} (requested as outputs); layers: ${known.slice(0, 20).join(', ')}${known.length > 20 ? ', …' : ''}`, { missing });
    }
    const values = [...results, ...wanted.slice(outputLayers.length).map((n) => this.layerValues.get(n)!)];

    // A tensor that is the graph output of a rank other than 4 takes the output's name; a second output of
    // the same tensor, or the graph input, goes through Identity.
    const renamed = new Map<string, string>();
    values.forEach((v, i) => {
      const out = outputNames[i]!;
      const start = this.b.nodes.length;
      const src = renamed.get(v.name) ?? v.name;
      if (v.shape.length === 4) {
        // Graph outputs keep the original NHWC order.
        this.renameLast(this.b.op('Transpose', [src], { perm: [0, 2, 3, 1] }), out);
      } else if (!renamed.has(v.name) && this.producedHere(src)) {
        this.rename(src, out, 0);
        renamed.set(v.name, out);
      } else {
        this.renameLast(this.b.op('Identity', [src]), out);
      }
      this.nameNodes(start, out);
      this.b.output(out, FLOAT, v.shape.map((d, j) => (j === 0 ? 'N' : d ?? `${out}_d${j}`)));
    });

    const model = this.b.model(17, 'graft (tfjs-layers)');
    const outputSet = new Set(outputNames);
    model.graph!.valueInfo = [...this.valueInfos.values()].filter((v) => !outputSet.has(v.name!) && v.name !== inputName);
    const layerOutputs = new Map([...this.layerValues].map(([k, v]) => [k, v.name]));
    return { model, inputName, inputShape: shape.map((d) => d ?? -1), outputs: outputNames, layerOutputs };
  }

  // ---- topology ----

  private parseLayer(raw: unknown, where: string): LayerSpec {
    if (!isObject(raw) || typeof raw.class_name !== 'string' || !isObject(raw.config) && !Array.isArray(raw.config))
      this.fail(`${where}: not a Keras layer config (needs class_name and config)`);
    // Old Keras wrote a Sequential's config as the bare list of its layers.
    const config: Json = Array.isArray(raw.config) ? { layers: raw.config } : raw.config;
    const name = typeof raw.name === 'string' ? raw.name : typeof config.name === 'string' ? config.name : undefined;
    if (!name) this.fail(`${where}: a ${raw.class_name} layer has no name`);
    const inbound = Array.isArray(raw.inbound_nodes) ? raw.inbound_nodes : [];
    return { className: raw.class_name, name, config, inboundNodes: inbound.map((n) => this.parseNode(n, name)) };
  }

  /** One call of a layer: Keras 2 writes `[[layer, node, tensor, kwargs], ...]`, Keras 3 `{args, kwargs}` with keras_history. */
  private parseNode(raw: unknown, layer: string): NodeRef[] {
    const refs: NodeRef[] = [];
    const asRef = (h: unknown): NodeRef | undefined =>
      Array.isArray(h) && typeof h[0] === 'string' && typeof h[1] === 'number' && typeof h[2] === 'number' ? { layer: h[0], node: h[1], tensor: h[2] } : undefined;
    if (Array.isArray(raw)) {
      for (const r of raw) refs.push(asRef(r) ?? this.fail(`layer ${layer}: malformed inbound node ${JSON.stringify(r)}`));
    } else if (isObject(raw)) {
      const walk = (v: unknown): void => {
        if (Array.isArray(v)) v.forEach(walk);
        else if (isObject(v)) {
          const history = isObject(v.config) ? asRef(v.config.keras_history) : undefined;
          if (v.class_name === '__keras_tensor__' && history) refs.push(history);
          else Object.values(v).forEach(walk);
        }
      };
      walk(raw.args);
    } else this.fail(`layer ${layer}: malformed inbound node ${JSON.stringify(raw)}`);
    return refs;
  }

  private sublayers(spec: LayerSpec): LayerSpec[] {
    const layers = spec.config.layers;
    if (!Array.isArray(layers)) this.failLayer(spec, 'config.layers is missing');
    return layers.map((l, i) => this.parseLayer(l, `${spec.name}.layers[${i}]`));
  }

  private refList(spec: LayerSpec, key: 'input_layers' | 'output_layers'): NodeRef[] {
    let raw = spec.config[key];
    if (Array.isArray(raw) && typeof raw[0] === 'string') raw = [raw]; // Keras 3 writes a single reference flat
    if (!Array.isArray(raw) || raw.length === 0) this.failLayer(spec, `config.${key} is missing`);
    return raw.map((r) =>
      Array.isArray(r) && typeof r[0] === 'string' ? { layer: r[0], node: Number(r[1] ?? 0), tensor: Number(r[2] ?? 0) } : this.failLayer(spec, `malformed ${key} entry ${JSON.stringify(r)}`));
  }

  /** The model's input layer: its name and Keras shape (batch first). */
  private findInput(spec: LayerSpec): { name: string; shape: Dim[] } | undefined {
    if (spec.className === 'InputLayer') return { name: spec.name, shape: this.batchShape(spec) ?? this.failLayer(spec, 'no batch_input_shape') };
    if (spec.className === 'Sequential') {
      const first = this.sublayers(spec)[0];
      if (!first) return undefined;
      if (first.className === 'InputLayer' || MODEL_CLASSES.has(first.className)) return this.findInput(first);
      const shape = this.batchShape(first);
      // tfjs and Keras name the implicit input of a Sequential `<first layer>_input`.
      return shape ? { name: `${first.name}_input`, shape } : undefined;
    }
    if (MODEL_CLASSES.has(spec.className)) {
      const inputs = this.refList(spec, 'input_layers');
      if (inputs.length !== 1) this.failLayer(spec, `has ${inputs.length} inputs; graft converts models with one input`);
      const layer = this.sublayers(spec).find((l) => l.name === inputs[0]!.layer) ?? this.failLayer(spec, `input layer ${inputs[0]!.layer} is not among its layers`);
      return this.findInput(layer);
    }
    return undefined;
  }

  /** Whether a nested model was built with its own input (and so has an internal call of its own). */
  private hasOwnInput(spec: LayerSpec): boolean {
    if (spec.className === 'Model' || spec.className === 'Functional') return true;
    if (spec.className !== 'Sequential') return false;
    const first = this.sublayers(spec)[0];
    return !!first && (first.className === 'InputLayer' || this.hasOwnInput(first) || this.batchShape(first) !== undefined);
  }

  private batchShape(spec: LayerSpec): Dim[] | undefined {
    const c = spec.config;
    let shape = c.batch_input_shape ?? c.batch_shape;
    if (shape === undefined && Array.isArray(c.input_shape)) shape = [null, ...c.input_shape];
    if (shape === undefined || shape === null) return undefined;
    if (!Array.isArray(shape) || !shape.every((d) => d === null || (Number.isInteger(d) && d > 0)))
      this.failLayer(spec, `malformed batch_input_shape ${JSON.stringify(shape)}`);
    return shape.map((d, i) => (i === 0 ? null : (d as Dim)));
  }

  private outputLayerNames(spec: LayerSpec): string[] {
    if (spec.className === 'Sequential') {
      const last = this.sublayers(spec).at(-1) ?? this.failLayer(spec, 'has no layers');
      return [last.name];
    }
    return this.refList(spec, 'output_layers').map((r) => r.layer);
  }

  // ---- calling layers and models ----

  private record(name: string, v: Value): void {
    if (!this.layerValues.has(name)) this.layerValues.set(name, v);
    if (v.shape.every((d, i) => i === 0 || d !== null) && !this.valueInfos.has(v.name)) {
      const dims = v.shape.length === 4 ? [v.shape[0], v.shape[3], v.shape[1], v.shape[2]] : v.shape;
      this.valueInfos.set(v.name, valueInfo(v.name, FLOAT, dims.map((d) => d ?? 'N')));
    }
  }

  /** Whether a node of this graph computes `tensor` (as opposed to it being the graph input). */
  private producedHere(tensor: string, from = 0): boolean {
    for (let i = from; i < this.b.nodes.length; i++) if (this.b.nodes[i]!.output?.includes(tensor)) return true;
    return false;
  }

  /** Renames a tensor in the nodes from index `start` on, in the layer map and in the value infos. */
  private rename(from: string, to: string, start: number): void {
    const nodes = this.b.nodes;
    for (let i = start; i < nodes.length; i++) {
      const n = nodes[i]!;
      n.input = n.input?.map((t) => (t === from ? to : t));
      n.output = n.output?.map((t) => (t === from ? to : t));
    }
    for (const [k, v] of this.layerValues) if (v.name === from) this.layerValues.set(k, { ...v, name: to });
    const info = this.valueInfos.get(from);
    if (info) {
      this.valueInfos.delete(from);
      this.valueInfos.set(to, { ...info, name: to });
    }
  }

  /** Names the nodes from index `start` on `<base>/<op>`: readable, and unlike the builder's default names unlikely to meet those of nodes added later. */
  private nameNodes(start: number, base: string): void {
    const nodes = this.b.nodes;
    for (let i = start; i < nodes.length; i++) nodes[i]!.name = this.b.fresh(`${base}/${nodes[i]!.opType}`);
  }

  /** Gives the output of the node just added the (reserved) name `to`. */
  private renameLast(tensor: string, to: string): void {
    this.rename(tensor, to, this.b.nodes.length - 1);
  }

  private callModel(spec: LayerSpec, inputs: Value[]): Value[] {
    return spec.className === 'Sequential' ? [this.callSequential(spec, inputs)] : this.callFunctional(spec, inputs);
  }

  private callSequential(spec: LayerSpec, inputs: Value[]): Value {
    if (inputs.length !== 1) this.failLayer(spec, `called on ${inputs.length} tensors`);
    let x = inputs[0]!;
    this.sublayers(spec).forEach((layer, i) => {
      if (layer.className === 'InputLayer') {
        if (i !== 0) this.failLayer(layer, 'an InputLayer inside a Sequential must come first');
        this.record(layer.name, x);
      } else {
        const out = this.callLayer(layer, [x]);
        if (out.length !== 1) this.failLayer(layer, `gives ${out.length} outputs inside Sequential ${spec.name}`);
        x = out[0]!;
      }
    });
    return x;
  }

  private callFunctional(spec: LayerSpec, inputs: Value[]): Value[] {
    const layers = this.sublayers(spec);
    const byName = new Map(layers.map((l) => [l.name, l]));
    // Outputs of each processed call of each layer, in the order of its inbound nodes.
    const produced = new Map<string, Value[][]>();
    const inputRefs = this.refList(spec, 'input_layers');
    if (inputRefs.length !== inputs.length) this.failLayer(spec, `has ${inputRefs.length} inputs but is called on ${inputs.length}`);
    inputRefs.forEach((r, i) => {
      const layer = byName.get(r.layer) ?? this.failLayer(spec, `input layer ${r.layer} is not among its layers`);
      if (layer.className !== 'InputLayer') this.failLayer(spec, `input ${r.layer} is a ${layer.className}, not an InputLayer`);
      produced.set(r.layer, [[inputs[i]!]]);
      this.record(r.layer, inputs[i]!);
    });

    const resolve = (r: NodeRef): Value | undefined => {
      const layer = byName.get(r.layer) ?? this.failLayer(spec, `a layer refers to ${r.layer}, which is not among its layers`);
      const calls = produced.get(r.layer);
      if (!calls) return undefined;
      // A nested model that has its own input counts that internal call as node 0 in references (Keras and
      // tfjs alike), but its config lists only the calls made in this model.
      let k = layer.className === 'InputLayer' ? 0 : r.node - (this.hasOwnInput(layer) ? 1 : 0);
      if (layer.inboundNodes.length === 1) k = 0;
      return calls[k]?.[r.tensor];
    };

    // Process calls as their inputs become available, in config order (as Keras and tfjs do).
    const next = new Map(layers.map((l) => [l.name, 0]));
    let pending = layers.reduce((s, l) => s + (l.className === 'InputLayer' ? 0 : l.inboundNodes.length), 0);
    while (pending > 0) {
      let progress = false;
      for (const layer of layers) {
        if (layer.className === 'InputLayer') continue;
        let k = next.get(layer.name)!;
        while (k < layer.inboundNodes.length) {
          const args = layer.inboundNodes[k]!.map(resolve);
          if (args.some((a) => a === undefined)) break;
          const out = this.callLayer(layer, args as Value[]);
          produced.set(layer.name, [...(produced.get(layer.name) ?? []), out]);
          next.set(layer.name, ++k);
          pending--;
          progress = true;
        }
      }
      if (!progress) {
        const stuck = layers.find((l) => l.className !== 'InputLayer' && next.get(l.name)! < l.inboundNodes.length)!;
        const missing = stuck.inboundNodes[next.get(stuck.name)!]!.filter((r) => !resolve(r)).map((r) => `${r.layer}[${r.node}][${r.tensor}]`);
        this.failLayer(stuck, `its input ${missing.join(', ')} is never computed in model ${spec.name}`);
      }
    }
    return this.refList(spec, 'output_layers').map((r) => resolve(r) ?? this.failLayer(spec, `output ${r.layer}[${r.node}][${r.tensor}] is never computed`));
  }

  /** Calls one layer (or nested model) and names its ONNX output after it. */
  private callLayer(spec: LayerSpec, inputs: Value[]): Value[] {
    if (MODEL_CLASSES.has(spec.className)) {
      const outs = this.callModel(spec, inputs);
      this.record(spec.name, outs[0]!);
      return outs;
    }
    const start = this.b.nodes.length;
    let out = this.layer(spec, inputs);
    this.nameNodes(start, spec.name);
    if (this.producedHere(out.name, start)) {
      const name = this.b.fresh(spec.name);
      this.rename(out.name, name, start);
      out = { ...out, name };
    }
    this.record(spec.name, out);
    return [out];
  }

  // ---- config and weight helpers ----

  private num(spec: LayerSpec, key: string, fallback?: number): number {
    const v = spec.config[key] ?? fallback;
    if (typeof v !== 'number' || !Number.isFinite(v)) this.failLayer(spec, `config.${key} is ${JSON.stringify(v)}, expected a number`);
    return v;
  }

  /** An int or a pair of ints (kernel sizes, strides, dilations). */
  private pair(spec: LayerSpec, key: string, fallback?: number | number[]): [number, number] {
    const v = spec.config[key] ?? fallback;
    const ok = (x: unknown): x is number => Number.isInteger(x) && (x as number) >= 0;
    if (ok(v)) return [v, v];
    if (Array.isArray(v) && v.length === 2 && ok(v[0]) && ok(v[1])) return [v[0], v[1]];
    return this.failLayer(spec, `config.${key} is ${JSON.stringify(v)}, expected an int or two`);
  }

  /** Padding/cropping amounts `[[top, bottom], [left, right]]` from an int, `[h, w]` or `[[t, b], [l, r]]`. */
  private padPairs(spec: LayerSpec, key: string): [[number, number], [number, number]] {
    const v = spec.config[key] ?? 1;
    const ok = (x: unknown): x is number => Number.isInteger(x) && (x as number) >= 0;
    if (ok(v)) return [[v, v], [v, v]];
    if (Array.isArray(v) && v.length === 2) {
      const [h, w] = v;
      if (ok(h) && ok(w)) return [[h, h], [w, w]];
      if (Array.isArray(h) && Array.isArray(w) && h.length === 2 && w.length === 2 && [...h, ...w].every(ok)) return [[h[0], h[1]], [w[0], w[1]]];
    }
    return this.failLayer(spec, `config.${key} is ${JSON.stringify(v)}, expected an int, [h, w] or [[top, bottom], [left, right]]`);
  }

  private requireChannelsLast(spec: LayerSpec): void {
    const f = spec.config.data_format;
    if (f !== undefined && f !== null && f !== 'channels_last') this.failLayer(spec, `data_format ${String(f)} is not supported (channels_last only)`);
  }

  private requireRank(spec: LayerSpec, x: Value, ...ranks: number[]): void {
    if (!ranks.includes(x.shape.length)) this.failLayer(spec, `input shape ${fmt(x.shape)} has rank ${x.shape.length}; expected rank ${ranks.join(' or ')}`);
  }

  /**
   * The weight `<layer>/<param>`. Names in the manifest are usually exactly that; converters of nested Keras
   * models sometimes prefix the enclosing model's name, so a unique `…/<layer>/<param>` is accepted too.
   */
  private weight(spec: LayerSpec, param: string, shape: readonly Dim[]): TfjsWeight {
    const key = `${spec.name}/${param}`;
    let w = this.tfjs.weights.get(key);
    if (!w) {
      const found = [...this.tfjs.weights.values()].filter((c) => c.name.endsWith(`/${key}`) || c.name === `${key}:0`);
      if (found.length > 1) this.failLayer(spec, `weight ${key} is ambiguous: ${found.map((c) => c.name).join(', ')}`, { weight: key });
      w = found[0];
    }
    if (!w) this.failLayer(spec, `weight ${key} is missing from the weights manifest`, { weight: key });
    if (w.dtype !== 'float32') this.failLayer(spec, `weight ${w.name} is ${w.dtype}, expected float32`, { weight: w.name });
    if (w.shape.length !== shape.length || w.shape.some((d, i) => shape[i] !== null && shape[i] !== d))
      this.failLayer(spec, `weight ${w.name} has shape [${w.shape}], expected ${fmt(shape)}`, { weight: w.name });
    return w;
  }

  /** An initializer made from a weight by `transform` (cached, so shared layers share their initializers). */
  private weightConstant(w: TfjsWeight, form: string, dims: readonly number[], transform: (data: Float32Array) => Float32Array = (d) => d): string {
    const key = `${w.name}|${form}`;
    let name = this.constants.get(key);
    if (!name) {
      name = this.b.constant(w.name.replace(/:0$/, '') + (form ? `_${form}` : ''), transform(w.data as Float32Array), dims);
      this.constants.set(key, name);
    }
    return name;
  }

  private floats(base: string, values: ArrayLike<number>, dims: readonly number[]): string {
    return this.b.constant(base, Float32Array.from(values), dims);
  }

  private scalar(v: number): string {
    const key = `scalar|${v}`;
    let name = this.constants.get(key);
    if (!name) this.constants.set(key, (name = this.b.constant('const', Float32Array.of(v), [])));
    return name;
  }

  private ints(base: string, values: readonly number[]): string {
    const key = `int64|${values.join(',')}`;
    let name = this.constants.get(key);
    if (!name) this.constants.set(key, (name = this.b.int64(base, values)));
    return name;
  }

  // ---- layout helpers ----

  /** ONNX axis of Keras axis `axis` (negative counts from the end) of a tensor of rank `rank`. */
  private onnxAxis(spec: LayerSpec, axis: number, rank: number): number {
    const a = axis < 0 ? axis + rank : axis;
    if (!Number.isInteger(a) || a < 1 || a >= rank) this.failLayer(spec, `axis ${axis} is out of range for rank ${rank} (or is the batch axis)`);
    return rank === 4 ? NHWC_TO_NCHW_AXIS[a]! : a;
  }

  /** The tensor in Keras's axis order (NHWC for rank 4). */
  private kerasOrder(x: Value): string {
    return x.shape.length === 4 ? this.b.op('Transpose', [x.name], { perm: [0, 2, 3, 1] }) : x.name;
  }

  /** A Keras-order tensor in this graph's storage order (NCHW for rank 4). */
  private storageOrder(name: string, shape: Dim[]): Value {
    return { name: shape.length === 4 ? this.b.op('Transpose', [name], { perm: [0, 3, 1, 2] }) : name, shape };
  }

  // ---- layers ----

  private layer(spec: LayerSpec, inputs: Value[]): Value {
    const c = spec.className;
    const x = inputs[0] ?? this.failLayer(spec, 'called without inputs');
    const merge = ['Add', 'Subtract', 'Multiply', 'Average', 'Maximum', 'Minimum', 'Concatenate'];
    if (!merge.includes(c) && inputs.length !== 1) this.failLayer(spec, `called on ${inputs.length} tensors; expected one`);
    if (IDENTITY_LAYERS.has(c)) return x;
    switch (c) {
      case 'InputLayer':
        return x;
      case 'Conv2D':
        return this.conv2d(spec, x);
      case 'DepthwiseConv2D':
        return this.depthwiseConv2d(spec, x);
      case 'SeparableConv2D':
        return this.separableConv2d(spec, x);
      case 'Dense':
        return this.dense(spec, x);
      case 'BatchNormalization':
        return this.batchNorm(spec, x);
      case 'LayerNormalization':
        return this.layerNorm(spec, x);
      case 'Activation':
        return this.activation(spec, x, spec.config.activation);
      case 'ReLU':
        return this.relu(spec, x);
      case 'LeakyReLU':
        return { name: this.b.op('LeakyRelu', [x.name], { alpha: this.num(spec, 'alpha', this.num(spec, 'negative_slope', 0.3)) }), shape: x.shape };
      case 'ELU':
        return { name: this.b.op('Elu', [x.name], { alpha: this.num(spec, 'alpha', 1) }), shape: x.shape };
      case 'ThresholdedReLU':
        return { name: this.b.op('ThresholdedRelu', [x.name], { alpha: this.num(spec, 'theta', 1) }), shape: x.shape };
      case 'PReLU':
        return this.prelu(spec, x);
      case 'Softmax': {
        const axis = spec.config.axis ?? -1;
        if (typeof axis !== 'number') this.failLayer(spec, `axis ${JSON.stringify(axis)} is not supported (one axis only)`);
        return { name: this.b.op('Softmax', [x.name], { axis: this.onnxAxis(spec, axis, x.shape.length) }), shape: x.shape };
      }
      case 'Rescaling': {
        const scaled = this.b.op('Mul', [x.name, this.scalar(this.num(spec, 'scale'))]);
        const offset = this.num(spec, 'offset', 0);
        return { name: offset ? this.b.op('Add', [scaled, this.scalar(offset)]) : scaled, shape: x.shape };
      }
      case 'ZeroPadding2D':
        return this.zeroPadding(spec, x);
      case 'Cropping2D':
        return this.cropping(spec, x);
      case 'UpSampling2D':
        return this.upSampling(spec, x);
      case 'MaxPooling2D':
      case 'AveragePooling2D':
        return this.pooling(spec, x, c === 'MaxPooling2D' ? 'MaxPool' : 'AveragePool');
      case 'GlobalAveragePooling2D':
      case 'GlobalMaxPooling2D':
        return this.globalPooling(spec, x, c === 'GlobalAveragePooling2D' ? 'GlobalAveragePool' : 'GlobalMaxPool');
      case 'GlobalAveragePooling1D':
      case 'GlobalMaxPooling1D': {
        this.requireRank(spec, x, 3);
        this.requireChannelsLast(spec);
        const keep = spec.config.keepdims === true;
        const op = c === 'GlobalAveragePooling1D' ? 'ReduceMean' : 'ReduceMax';
        return { name: this.b.op(op, [x.name], { axes: [1], keepdims: keep ? 1 : 0 }), shape: keep ? [x.shape[0]!, 1, x.shape[2]!] : [x.shape[0]!, x.shape[2]!] };
      }
      case 'Flatten':
        return this.flatten(spec, x);
      case 'Reshape':
        return this.reshape(spec, x);
      case 'Permute':
        return this.permute(spec, x);
      case 'Add':
      case 'Subtract':
      case 'Multiply':
      case 'Average':
      case 'Maximum':
      case 'Minimum':
        return this.merge(spec, inputs);
      case 'Concatenate':
        return this.concatenate(spec, inputs);
      default:
        return this.failLayer(spec, `layer class ${c} is not supported`);
    }
  }

  /** Applies a Keras activation (by name) to `x`. */
  private activation(spec: LayerSpec, x: Value, fn: unknown): Value {
    const raw = isObject(fn) ? fn.class_name : fn ?? 'linear';
    if (typeof raw !== 'string') this.failLayer(spec, `activation ${JSON.stringify(fn)} is not understood`);
    const op = (type: string, inputs: string[], attrs: Record<string, AttrValue> = {}) => this.b.op(type, inputs, attrs);
    const at = x.name;
    let y: string;
    // tfjs writes camelCase names (hardSigmoid), Keras snake_case (hard_sigmoid).
    switch (raw.toLowerCase().replace(/_/g, '')) {
      case 'linear':
        return x;
      case 'relu':
        y = op('Relu', [at]);
        break;
      case 'relu6':
        y = op('Clip', [at, this.scalar(0), this.scalar(6)]);
        break;
      case 'sigmoid':
        y = op('Sigmoid', [at]);
        break;
      case 'hardsigmoid': // tfjs and Keras 2: clip(0.2 x + 0.5, 0, 1), which is ONNX HardSigmoid's default form
        y = op('HardSigmoid', [at], { alpha: 0.2, beta: 0.5 });
        break;
      case 'tanh':
        y = op('Tanh', [at]);
        break;
      case 'softmax':
      case 'logsoftmax':
        if (x.shape.length < 2) this.failLayer(spec, 'softmax needs a rank of at least 2');
        y = op(raw.toLowerCase().startsWith('log') ? 'LogSoftmax' : 'Softmax', [at], { axis: this.onnxAxis(spec, -1, x.shape.length) });
        break;
      case 'swish':
      case 'silu':
        y = op('Mul', [at, op('Sigmoid', [at])]);
        break;
      case 'elu':
        y = op('Elu', [at], { alpha: 1 });
        break;
      case 'selu': // ONNX Selu's default alpha and gamma are Keras's constants
        y = op('Selu', [at]);
        break;
      case 'softplus':
        y = op('Softplus', [at]);
        break;
      case 'softsign':
        y = op('Softsign', [at]);
        break;
      case 'exponential':
        y = op('Exp', [at]);
        break;
      case 'mish':
        y = op('Mul', [at, op('Tanh', [op('Softplus', [at])])]);
        break;
      case 'gelu': // exact form: x · ½(1 + erf(x / √2)) (opset 17 has no Gelu op)
        y = op('Mul', [at, op('Mul', [this.scalar(0.5), op('Add', [this.scalar(1), op('Erf', [op('Div', [at, this.scalar(Math.SQRT2)])])])])]);
        break;
      case 'gelunew': // tanh approximation: ½ x (1 + tanh(√(2/π) (x + 0.044715 x³)))
        y = op('Mul', [
          this.scalar(0.5),
          op('Mul', [at, op('Add', [this.scalar(1), op('Tanh', [op('Mul', [this.scalar(Math.sqrt(2 / Math.PI)), op('Add', [at, op('Mul', [this.scalar(0.044715), op('Mul', [at, op('Mul', [at, at])])])])])])])]),
        ]);
        break;
      default:
        return this.failLayer(spec, `activation ${raw} is not supported`);
    }
    return { name: y, shape: x.shape };
  }

  /** Keras ReLU: x ≥ threshold ? x : negative_slope · (x − threshold), then capped at max_value. */
  private relu(spec: LayerSpec, x: Value): Value {
    const maxRaw = spec.config.max_value;
    const max = maxRaw === null || maxRaw === undefined ? undefined : this.num(spec, 'max_value');
    const slope = this.num(spec, 'negative_slope', 0);
    const threshold = this.num(spec, 'threshold', 0);
    let y: string;
    if (slope === 0 && threshold === 0) {
      // Clip(0, max) is ReLU6 for MobileNets; both Relu and Clip are differentiable in graft's autodiff.
      y = max === undefined ? this.b.op('Relu', [x.name]) : this.b.op('Clip', [x.name, this.scalar(0), this.scalar(max)]);
      return { name: y, shape: x.shape };
    }
    if (threshold === 0) y = this.b.op('LeakyRelu', [x.name], { alpha: slope });
    else {
      const below = slope === 0 ? this.scalar(0) : this.b.op('Mul', [this.b.op('Sub', [x.name, this.scalar(threshold)]), this.scalar(slope)]);
      y = this.b.op('Where', [this.b.op('GreaterOrEqual', [x.name, this.scalar(threshold)]), x.name, below]);
    }
    if (max !== undefined) y = this.b.op('Min', [y, this.scalar(max)]);
    return { name: y, shape: x.shape };
  }

  private prelu(spec: LayerSpec, x: Value): Value {
    const rank = x.shape.length;
    const shared = new Set<number>(Array.isArray(spec.config.shared_axes) ? (spec.config.shared_axes as number[]) : []);
    // alpha has the input's shape without the batch, with 1 on shared axes.
    const expected = x.shape.slice(1).map((d, i) => (shared.has(i + 1) ? 1 : d));
    const w = this.weight(spec, 'alpha', expected);
    if (rank !== 4) return { name: this.b.op('PRelu', [x.name, this.weightConstant(w, '', w.shape)]), shape: x.shape };
    // [H, W, C] → [C, H, W] to broadcast against NCHW.
    const [h, wd, ch] = w.shape as [number, number, number];
    const alpha = this.weightConstant(w, 'chw', [ch, h, wd], (d) => permute(d, w.shape, [2, 0, 1]));
    return { name: this.b.op('PRelu', [x.name, alpha]), shape: x.shape };
  }

  /**
   * ONNX window attributes and output size for a 2-D conv/pool with TF padding. TF's 'same' pads
   * (out − 1)·stride + effective kernel − in in total, the odd pixel at the end (bottom/right), which
   * explicit pads express exactly; where a size is unknown and stride > 1, auto_pad SAME_UPPER does the same.
   */
  private window(spec: LayerSpec, x: Value, kernel: [number, number], strides: [number, number], dilations: [number, number]): { attrs: Record<string, AttrValue>; hw: [Dim, Dim] } {
    const padding = String(spec.config.padding ?? 'valid').toLowerCase();
    const sizes = [x.shape[1]!, x.shape[2]!] as const;
    const eff = [0, 1].map((i) => (kernel[i]! - 1) * dilations[i]! + 1);
    if (kernel.some((k) => k < 1) || strides.some((s) => s < 1) || dilations.some((d) => d < 1)) this.failLayer(spec, 'kernel sizes, strides and dilations must be positive');
    const attrs: Record<string, AttrValue> = { kernel_shape: kernel, strides };
    if (padding === 'valid') {
      const hw = sizes.map((n, i) => (n === null ? null : Math.floor((n - eff[i]!) / strides[i]!) + 1)) as [Dim, Dim];
      if (hw.some((d) => d !== null && d < 1)) this.failLayer(spec, `a ${kernel.join('x')} window does not fit the input ${fmt(x.shape)}`);
      return { attrs: { ...attrs, pads: [0, 0, 0, 0] }, hw };
    }
    if (padding !== 'same') this.failLayer(spec, `padding ${padding} is not supported`);
    const hw = sizes.map((n, i) => (n === null ? null : Math.ceil(n / strides[i]!))) as [Dim, Dim];
    // An unknown size only matters with stride > 1 (with stride 1 any size pads the same: use 1).
    const pads = sizes.map((n, i) => (n === null && strides[i] !== 1 ? null : samePadding(n ?? 1, kernel[i]!, strides[i]!, dilations[i]!)));
    if (pads.some((p) => p === null)) return { attrs: { ...attrs, auto_pad: 'SAME_UPPER' }, hw };
    const [ph, pw] = pads as [[number, number], [number, number]];
    return { attrs: { ...attrs, pads: [ph[0], pw[0], ph[1], pw[1]] }, hw };
  }

  private convCommon(spec: LayerSpec, x: Value): { kernel: [number, number]; strides: [number, number]; dilations: [number, number]; channels: number } {
    this.requireRank(spec, x, 4);
    this.requireChannelsLast(spec);
    const channels = x.shape[3];
    if (channels === null || channels === undefined) this.failLayer(spec, `the number of input channels is unknown (${fmt(x.shape)})`);
    return { kernel: this.pair(spec, 'kernel_size'), strides: this.pair(spec, 'strides', 1), dilations: this.pair(spec, 'dilation_rate', 1), channels };
  }

  private bias(spec: LayerSpec, units: number): string | undefined {
    if (spec.config.use_bias === false) return undefined;
    const w = this.weight(spec, 'bias', [units]);
    return this.weightConstant(w, '', [units]);
  }

  private conv2d(spec: LayerSpec, x: Value): Value {
    const { kernel, strides, dilations, channels } = this.convCommon(spec, x);
    const filters = this.num(spec, 'filters');
    const groups = this.num(spec, 'groups', 1);
    if (!Number.isInteger(groups) || groups < 1 || channels % groups || filters % groups) this.failLayer(spec, `groups ${groups} does not divide ${channels} channels and ${filters} filters`);
    const [kh, kw] = kernel;
    // Keras kernel [kh, kw, in/groups, out] → ONNX [out, in/groups, kh, kw].
    const w = this.weight(spec, 'kernel', [kh, kw, channels / groups, filters]);
    const wName = this.weightConstant(w, 'oihw', [filters, channels / groups, kh, kw], (d) => permute(d, w.shape, [3, 2, 0, 1]));
    const b = this.bias(spec, filters);
    const { attrs, hw } = this.window(spec, x, kernel, strides, dilations);
    const y = this.b.op('Conv', b ? [x.name, wName, b] : [x.name, wName], { ...attrs, dilations, group: groups });
    return this.activation(spec, { name: y, shape: [x.shape[0]!, hw[0], hw[1], filters] }, spec.config.activation);
  }

  /** Depthwise convolution as a grouped Conv (group = in channels); returns the ONNX output and its channels. */
  private depthwise(spec: LayerSpec, x: Value, param: string, withBias: boolean): Value {
    const { kernel, strides, dilations, channels } = this.convCommon(spec, x);
    const [kh, kw] = kernel;
    // tfjs leaves depth_multiplier out of SeparableConv2D configs: the kernel's shape tells it then.
    const declared = spec.config.depth_multiplier === undefined ? null : this.num(spec, 'depth_multiplier');
    // Keras [kh, kw, in, mult] → ONNX [in·mult, 1, kh, kw]: output channel c·mult + m reads input channel c,
    // the same channel order as TF's depthwise conv.
    const w = this.weight(spec, param, [kh, kw, channels, declared]);
    const mult = w.shape[3]!;
    const wName = this.weightConstant(w, 'oihw', [channels * mult, 1, kh, kw], (d) => permute(d, w.shape, [2, 3, 0, 1]));
    const b = withBias ? this.bias(spec, channels * mult) : undefined;
    const { attrs, hw } = this.window(spec, x, kernel, strides, dilations);
    const y = this.b.op('Conv', b ? [x.name, wName, b] : [x.name, wName], { ...attrs, dilations, group: channels });
    return { name: y, shape: [x.shape[0]!, hw[0], hw[1], channels * mult] };
  }

  private depthwiseConv2d(spec: LayerSpec, x: Value): Value {
    return this.activation(spec, this.depthwise(spec, x, 'depthwise_kernel', true), spec.config.activation);
  }

  /** Depthwise conv (no bias), then a 1×1 conv with the pointwise kernel and the bias. */
  private separableConv2d(spec: LayerSpec, x: Value): Value {
    const d = this.depthwise(spec, x, 'depthwise_kernel', false);
    const inner = d.shape[3] as number;
    const filters = this.num(spec, 'filters');
    const w = this.weight(spec, 'pointwise_kernel', [1, 1, inner, filters]);
    const wName = this.weightConstant(w, 'oihw', [filters, inner, 1, 1], (data) => permute(data, w.shape, [3, 2, 0, 1]));
    const b = this.bias(spec, filters);
    const y = this.b.op('Conv', b ? [d.name, wName, b] : [d.name, wName], { kernel_shape: [1, 1] });
    return this.activation(spec, { name: y, shape: [...d.shape.slice(0, 3), filters] }, spec.config.activation);
  }

  /** Dense acts on the last axis: Gemm for [N, in], a 1×1 Conv for NCHW tensors, MatMul + Add otherwise. */
  private dense(spec: LayerSpec, x: Value): Value {
    const rank = x.shape.length;
    const units = this.num(spec, 'units');
    const inDim = x.shape[rank - 1];
    if (rank < 2 || inDim === null || inDim === undefined) this.failLayer(spec, `input shape ${fmt(x.shape)} needs a known last dimension`);
    const w = this.weight(spec, 'kernel', [inDim, units]);
    const b = this.bias(spec, units);
    let y: string;
    if (rank === 4) {
      // Keras kernel [in, out] → ONNX 1×1 conv weight [out, in, 1, 1].
      const wName = this.weightConstant(w, 'oi11', [units, inDim, 1, 1], (d) => permute(d, w.shape, [1, 0]));
      y = this.b.op('Conv', b ? [x.name, wName, b] : [x.name, wName], { kernel_shape: [1, 1] });
    } else {
      const wName = this.weightConstant(w, '', [inDim, units]);
      if (rank === 2) y = this.b.op('Gemm', b ? [x.name, wName, b] : [x.name, wName]);
      else {
        y = this.b.op('MatMul', [x.name, wName]);
        if (b) y = this.b.op('Add', [y, b]);
      }
    }
    return this.activation(spec, { name: y, shape: [...x.shape.slice(0, -1), units] }, spec.config.activation);
  }

  private singleAxis(spec: LayerSpec): number {
    let axis = spec.config.axis ?? -1;
    if (Array.isArray(axis) && axis.length === 1) axis = axis[0];
    if (typeof axis !== 'number') this.failLayer(spec, `axis ${JSON.stringify(spec.config.axis)} is not supported (one axis only)`);
    return axis;
  }

  /** Inference-mode batch normalization over one axis (the channels, in every model that matters). */
  private batchNorm(spec: LayerSpec, x: Value): Value {
    const rank = x.shape.length;
    const axis = this.onnxAxis(spec, this.singleAxis(spec), rank);
    const kerasAxis = rank === 4 ? NHWC_TO_NCHW_AXIS.indexOf(axis) : axis;
    const n = x.shape[kerasAxis];
    if (n === null || n === undefined) this.failLayer(spec, `the size of the normalized axis is unknown (${fmt(x.shape)})`);
    const eps = this.num(spec, 'epsilon', 1e-3);
    const useScale = spec.config.scale !== false;
    const useCenter = spec.config.center !== false;
    const param = (p: string) => this.weight(spec, p, [n]);
    if (axis === 1) {
      const get = (p: string, use: boolean, fill: number): string =>
        use ? this.weightConstant(param(p), '', [n]) : this.floats(`${spec.name}/${p}`, new Float32Array(n).fill(fill), [n]);
      const inputs = [x.name, get('gamma', useScale, 1), get('beta', useCenter, 0), get('moving_mean', true, 0), get('moving_variance', true, 1)];
      return { name: this.b.op('BatchNormalization', inputs, { epsilon: eps }), shape: x.shape };
    }
    // Another axis: x · scale + shift, scale = gamma / √(var + eps), shift = beta − mean · scale, shaped to
    // broadcast along that axis.
    const g = useScale ? (param('gamma').data as Float32Array) : new Float32Array(n).fill(1);
    const bt = useCenter ? (param('beta').data as Float32Array) : new Float32Array(n);
    const mu = param('moving_mean').data as Float32Array;
    const vr = param('moving_variance').data as Float32Array;
    const dims = [n, ...Array<number>(rank - 1 - axis).fill(1)];
    const scale = Float32Array.from(g, (gi, i) => gi / Math.sqrt(vr[i]! + eps));
    const shift = Float32Array.from(bt, (bi, i) => bi - mu[i]! * scale[i]!);
    const y = this.b.op('Add', [this.b.op('Mul', [x.name, this.floats(`${spec.name}/scale`, scale, dims)]), this.floats(`${spec.name}/shift`, shift, dims)]);
    return { name: y, shape: x.shape };
  }

  private layerNorm(spec: LayerSpec, x: Value): Value {
    const rank = x.shape.length;
    const axis = this.singleAxis(spec);
    if (rank === 4 || (axis !== -1 && axis !== rank - 1)) this.failLayer(spec, `normalizing axis ${axis} of a rank-${rank} tensor is not supported (the last axis of rank 2 or 3 only)`);
    const n = x.shape[rank - 1] ?? this.failLayer(spec, 'the size of the last axis is unknown');
    const gamma = spec.config.scale !== false ? this.weightConstant(this.weight(spec, 'gamma', [n]), '', [n]) : this.floats(`${spec.name}/gamma`, new Float32Array(n).fill(1), [n]);
    const beta = spec.config.center !== false ? this.weightConstant(this.weight(spec, 'beta', [n]), '', [n]) : this.floats(`${spec.name}/beta`, new Float32Array(n), [n]);
    return { name: this.b.op('LayerNormalization', [x.name, gamma, beta], { axis: -1, epsilon: this.num(spec, 'epsilon', 1e-3) }), shape: x.shape };
  }

  private zeroPadding(spec: LayerSpec, x: Value): Value {
    this.requireRank(spec, x, 4);
    this.requireChannelsLast(spec);
    const [[t, bt], [l, r]] = this.padPairs(spec, 'padding');
    // ONNX pads: all begins, then all ends, in NCHW axis order.
    const y = this.b.op('Pad', [x.name, this.ints('pads', [0, 0, t, l, 0, 0, bt, r])]);
    const add = (d: Dim, a: number) => (d === null ? null : d + a);
    return { name: y, shape: [x.shape[0]!, add(x.shape[1]!, t + bt), add(x.shape[2]!, l + r), x.shape[3]!] };
  }

  private cropping(spec: LayerSpec, x: Value): Value {
    this.requireRank(spec, x, 4);
    this.requireChannelsLast(spec);
    const [[t, bt], [l, r]] = this.padPairs(spec, 'cropping');
    const END = 2 ** 53 - 1; // "to the end" for Slice
    const y = this.b.op('Slice', [x.name, this.ints('starts', [t, l]), this.ints('ends', [bt ? -bt : END, r ? -r : END]), this.ints('axes', [2, 3])]);
    const sub = (d: Dim, a: number) => (d === null ? null : d - a);
    const shape: Dim[] = [x.shape[0]!, sub(x.shape[1]!, t + bt), sub(x.shape[2]!, l + r), x.shape[3]!];
    if (shape.some((d) => d !== null && d < 1)) this.failLayer(spec, `crops the whole input ${fmt(x.shape)}`);
    return { name: y, shape };
  }

  private upSampling(spec: LayerSpec, x: Value): Value {
    this.requireRank(spec, x, 4);
    this.requireChannelsLast(spec);
    const interpolation = spec.config.interpolation ?? 'nearest';
    // tfjs's bilinear upsampling uses other sampling positions than Keras's; only nearest means the same in both.
    if (interpolation !== 'nearest') this.failLayer(spec, `interpolation ${String(interpolation)} is not supported (nearest only)`);
    const [sh, sw] = this.pair(spec, 'size', 2);
    // For integer factors nearest upsampling repeats pixels: out[i] = in[floor(i / s)].
    const y = this.b.op('Resize', [x.name, '', this.floats('scales', [1, 1, sh, sw], [4])], {
      mode: 'nearest', coordinate_transformation_mode: 'asymmetric', nearest_mode: 'floor',
    });
    const mul = (d: Dim, s: number) => (d === null ? null : d * s);
    return { name: y, shape: [x.shape[0]!, mul(x.shape[1]!, sh), mul(x.shape[2]!, sw), x.shape[3]!] };
  }

  private pooling(spec: LayerSpec, x: Value, op: 'MaxPool' | 'AveragePool'): Value {
    this.requireRank(spec, x, 4);
    this.requireChannelsLast(spec);
    const pool = this.pair(spec, 'pool_size', 2);
    const strides = spec.config.strides === null || spec.config.strides === undefined ? pool : this.pair(spec, 'strides');
    const { attrs, hw } = this.window(spec, x, pool, strides, [1, 1]);
    // TF averages over the pixels inside the input only: count_include_pad 0 (the default).
    const y = this.b.op(op, [x.name], attrs);
    return { name: y, shape: [x.shape[0]!, hw[0], hw[1], x.shape[3]!] };
  }

  /** GlobalAveragePool/GlobalMaxPool on NCHW, then Flatten to Keras's [N, C] unless keepdims. */
  private globalPooling(spec: LayerSpec, x: Value, op: 'GlobalAveragePool' | 'GlobalMaxPool'): Value {
    this.requireRank(spec, x, 4);
    this.requireChannelsLast(spec);
    const pooled = this.b.op(op, [x.name]);
    const [n, , , ch] = x.shape as [Dim, Dim, Dim, Dim];
    if (spec.config.keepdims === true) return { name: pooled, shape: [n, 1, 1, ch] };
    return { name: this.b.op('Flatten', [pooled], { axis: 1 }), shape: [n, ch] };
  }

  /** Flatten in Keras's order: an NCHW tensor goes back to NHWC first. */
  private flatten(spec: LayerSpec, x: Value): Value {
    this.requireChannelsLast(spec);
    if (x.shape.length <= 2) return x;
    const rest = x.shape.slice(1);
    const size = rest.includes(null) ? null : product(rest as number[]);
    return { name: this.b.op('Flatten', [this.kerasOrder(x)], { axis: 1 }), shape: [x.shape[0]!, size] };
  }

  private reshape(spec: LayerSpec, x: Value): Value {
    const target = spec.config.target_shape;
    // tfjs writes the inferred dimension as null, Keras as -1.
    const dims = Array.isArray(target) ? target.map((d) => (d === null ? -1 : d)) : [];
    if (!Array.isArray(target) || !dims.every((d) => Number.isInteger(d) && (d > 0 || d === -1)) || dims.filter((d) => d === -1).length > 1)
      this.failLayer(spec, `target_shape ${JSON.stringify(target)} is not a list of positive sizes (one may be -1)`);
    const rest = x.shape.slice(1);
    const known = rest.includes(null) ? null : product(rest as number[]);
    const fixed = product(dims.filter((d) => d !== -1));
    if (known !== null && (dims.includes(-1) ? known % fixed !== 0 : known !== fixed))
      this.failLayer(spec, `cannot reshape ${fmt(x.shape)} to [${dims}]`);
    const outShape: Dim[] = [x.shape[0]!, ...dims.map((d) => (d !== -1 ? d : known === null ? null : known / fixed))];
    // ONNX Reshape's 0 copies the batch size from the input.
    const y = this.b.op('Reshape', [this.kerasOrder(x), this.ints('shape', [0, ...dims])]);
    return this.storageOrder(y, outShape);
  }

  private permute(spec: LayerSpec, x: Value): Value {
    const dims = spec.config.dims;
    const rank = x.shape.length;
    if (!Array.isArray(dims) || dims.length !== rank - 1 || [...dims].sort((a, b) => a - b).some((d, i) => d !== i + 1))
      this.failLayer(spec, `dims ${JSON.stringify(dims)} is not a permutation of 1..${rank - 1}`);
    const p = [0, ...(dims as number[])]; // Keras order: output axis i = input axis p[i]
    // In storage order: output ONNX axis j holds Keras axis L[j], which is input Keras axis p[L[j]], stored at ONNX axis L⁻¹(…).
    const L = rank === 4 ? [0, 3, 1, 2] : p.map((_, i) => i);
    const Linv = L.map((_, i) => L.indexOf(i));
    const perm = L.map((k) => Linv[p[k]!]!);
    return { name: this.b.op('Transpose', [x.name], { perm }), shape: p.map((a) => x.shape[a]!) };
  }

  private sameRank(spec: LayerSpec, inputs: Value[]): void {
    if (inputs.length < 2) this.failLayer(spec, `needs at least two inputs, got ${inputs.length}`);
    const rank = inputs[0]!.shape.length;
    if (inputs.some((v) => v.shape.length !== rank)) this.failLayer(spec, `inputs of different ranks (${inputs.map((v) => fmt(v.shape)).join(', ')}) are not supported`);
  }

  /** Elementwise merges; equal ranks, so ONNX broadcasting agrees with Keras whatever the storage order. */
  private merge(spec: LayerSpec, inputs: Value[]): Value {
    this.sameRank(spec, inputs);
    const op = { Add: 'Add', Subtract: 'Sub', Multiply: 'Mul', Average: 'Add', Maximum: 'Max', Minimum: 'Min' }[spec.className]!;
    if (spec.className === 'Subtract' && inputs.length !== 2) this.failLayer(spec, 'Subtract needs exactly two inputs');
    let y = inputs[0]!.name;
    for (const v of inputs.slice(1)) y = this.b.op(op, [y, v.name]);
    if (spec.className === 'Average') y = this.b.op('Mul', [y, this.scalar(1 / inputs.length)]);
    const shape = inputs[0]!.shape.map((_, i) => {
      const ds: Dim[] = inputs.map((v) => v.shape[i] ?? null);
      return ds.includes(null) ? null : Math.max(...(ds as number[]));
    });
    return { name: y, shape };
  }

  private concatenate(spec: LayerSpec, inputs: Value[]): Value {
    this.sameRank(spec, inputs);
    const rank = inputs[0]!.shape.length;
    const axis = this.onnxAxis(spec, this.num(spec, 'axis', -1), rank);
    const kerasAxis = rank === 4 ? NHWC_TO_NCHW_AXIS.indexOf(axis) : axis;
    const shape = inputs[0]!.shape.map((d, i) => {
      if (i !== kerasAxis) return d;
      const ds: Dim[] = inputs.map((v) => v.shape[i] ?? null);
      return ds.includes(null) ? null : (ds as number[]).reduce((a, b) => a + b, 0);
    });
    return { name: this.b.op('Concat', inputs.map((v) => v.name), { axis }), shape };
  }
}

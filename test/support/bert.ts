/**
 * BERT-architecture ONNX graphs with the structure of a Hugging Face optimum export of `BertModel` (what the
 * Xenova/* repositories ship as `onnx/model.onnx`, e.g. Xenova/all-MiniLM-L6-v2), built from random or given
 * weights: for tests of text fine-tuning without downloading a model.
 *
 * The graph, as the export writes it (opset 14; node names like optimum's, `/encoder/layer.0/attention/self/query/MatMul`):
 * - inputs `input_ids`, `attention_mask`, `token_type_ids`: int64 [batch_size, sequence_length];
 *   output `last_hidden_state`: float [batch_size, sequence_length, hidden];
 * - embeddings: Gather of the word embeddings, + Gather of the token type embeddings, + Gather of the
 *   position embeddings at position ids (the `embeddings.position_ids` buffer [1, max_position] sliced to the
 *   sequence length, or Range(0, L)), then LayerNorm;
 * - the extended attention mask: Unsqueeze(attention_mask, [1, 2]) → Cast → Sub(1, ·) → Mul(·, finfo(float32).min)
 *   (transformers ≥ 4.30; -10000 before), shape [N, 1, 1, L], added to every head's scores;
 * - per layer: Q, K, V = MatMul + Add(bias); to heads with a Reshape whose shape is computed from Shape(x)
 *   (Gather/Unsqueeze/Concat; or the constant [0, 0, heads, headDim]); Transpose (K straight to [N, h, d, L]);
 *   MatMul(Q, Kᵀ) / √headDim + mask → Softmax(-1) → MatMul V → Transpose → Reshape back; output dense
 *   MatMul + Add, residual Add, LayerNorm; intermediate MatMul + Add, exact GELU (Div √2, Erf, Add 1, Mul x,
 *   Mul 0.5); output MatMul + Add, residual Add, LayerNorm;
 * - LayerNorm decomposed as opset-14 exports write it (ReduceMean, Sub, Pow 2, ReduceMean, Add ε, Sqrt, Div,
 *   Mul γ, Add β; ε = 1e-12), or the fused LayerNormalization op (opset 17).
 *
 * Parameters are keyed by their Hugging Face names with torch layouts (Linear weight [out, in]); in the graph a
 * Linear weight is the transposed [in, out] MatMul initializer, named `onnx::MatMul_<k>` as exports name them
 * (bertInitializerNames maps them), every other parameter keeps its name. The pieces (embeddings, mask, one
 * encoder layer, masked-mean pooling) are exported separately so that tests can build a single layer on a float
 * input, or take some layers' weights as graph inputs (ParamTensor).
 */
import { GraftError } from '../../src/errors.js';
import { GraphBuilder, type AttrValue } from '../../src/onnx/builder.js';
import { DataType, tensor, type ModelProto } from '../../src/onnx/proto.js';
import { Random } from '../../src/util/random.js';

/** float32's most negative value, the mask bias of transformers ≥ 4.30 exports. */
export const FLOAT32_MIN = -3.4028234663852886e38;

export interface BertOptions {
  vocabSize?: number;
  hidden?: number;
  layers?: number;
  heads?: number;
  /** Feed-forward width (default 4·hidden). */
  intermediate?: number;
  maxPosition?: number;
  typeVocab?: number;
  /** LayerNorm ε (default 1e-12, as BERT). */
  eps?: number;
  /** Seed of the random weights (default 0). */
  seed?: number;
  /** Standard deviation of the random weights (default 0.02, BERT's initializer_range). */
  initStd?: number;
  /** Explicit weights by Hugging Face parameter name (torch layouts); all of bertParamShapes must be given. */
  weights?: Readonly<Record<string, Float32Array>>;
  /** Default 14; 17 also allows the fused LayerNormalization. */
  opset?: 14 | 17;
  /** `decomposed` (default, as opset-14 exports) or `fused` (LayerNormalization, opset 17). */
  layerNorm?: 'decomposed' | 'fused';
  /** `dynamic` (default): head reshapes with a Shape-computed target, as exports; `constant`: [0, 0, heads, headDim]. */
  reshape?: 'dynamic' | 'constant';
  /** `slice` (default): the `embeddings.position_ids` initializer sliced to L; `range`: Range(0, L). */
  positionIds?: 'slice' | 'range';
  /** The bias of masked positions, times (1 − mask): FLOAT32_MIN (default, transformers ≥ 4.30) or -10000. */
  maskValue?: number;
  /** Float type of the activations and float parameters: DataType.FLOAT (default) or DataType.DOUBLE. */
  elemType?: number;
  /**
   * Replaces the Erf of the GELU (ONNX Runtime has no float64 Erf kernel: a float64 reference graph passes
   * erf written with elementary ops here). Gets the graph, Erf's input; returns erf of it.
   */
  erf?: (b: GraphBuilder, x: string) => string;
}

/** BertOptions with every size resolved. */
export interface BertConfig {
  vocabSize: number;
  hidden: number;
  layers: number;
  heads: number;
  headDim: number;
  intermediate: number;
  maxPosition: number;
  typeVocab: number;
  eps: number;
  seed: number;
  initStd: number;
  opset: 14 | 17;
  layerNorm: 'decomposed' | 'fused';
  reshape: 'dynamic' | 'constant';
  positionIds: 'slice' | 'range';
  maskValue: number;
  elemType: number;
  erf?: (b: GraphBuilder, x: string) => string;
}

export function bertConfig(options: BertOptions = {}): BertConfig {
  const hidden = options.hidden ?? 32;
  const heads = options.heads ?? 4;
  if (hidden % heads !== 0) throw new GraftError('USAGE', `hidden ${hidden} is not a multiple of heads ${heads}`);
  const cfg: BertConfig = {
    vocabSize: options.vocabSize ?? 100,
    hidden,
    layers: options.layers ?? 2,
    heads,
    headDim: hidden / heads,
    intermediate: options.intermediate ?? 4 * hidden,
    maxPosition: options.maxPosition ?? 64,
    typeVocab: options.typeVocab ?? 2,
    eps: options.eps ?? 1e-12,
    seed: options.seed ?? 0,
    initStd: options.initStd ?? 0.02,
    opset: options.opset ?? 14,
    layerNorm: options.layerNorm ?? 'decomposed',
    reshape: options.reshape ?? 'dynamic',
    positionIds: options.positionIds ?? 'slice',
    maskValue: options.maskValue ?? FLOAT32_MIN,
    elemType: options.elemType ?? DataType.FLOAT,
    erf: options.erf,
  };
  if (cfg.layerNorm === 'fused' && cfg.opset < 17) throw new GraftError('USAGE', 'the fused LayerNormalization needs opset 17');
  if (cfg.elemType !== DataType.FLOAT && cfg.elemType !== DataType.DOUBLE) throw new GraftError('USAGE', `elemType ${cfg.elemType} is not FLOAT or DOUBLE`);
  return cfg;
}

/** Hugging Face names and torch shapes of one encoder layer's parameters, in `named_parameters()` order. */
export function bertLayerParamShapes(options: BertOptions | BertConfig, layer: number): Record<string, number[]> {
  const { hidden: h, intermediate: f } = 'headDim' in options ? options : bertConfig(options);
  const p = `encoder.layer.${layer}.`;
  return {
    [`${p}attention.self.query.weight`]: [h, h],
    [`${p}attention.self.query.bias`]: [h],
    [`${p}attention.self.key.weight`]: [h, h],
    [`${p}attention.self.key.bias`]: [h],
    [`${p}attention.self.value.weight`]: [h, h],
    [`${p}attention.self.value.bias`]: [h],
    [`${p}attention.output.dense.weight`]: [h, h],
    [`${p}attention.output.dense.bias`]: [h],
    [`${p}attention.output.LayerNorm.weight`]: [h],
    [`${p}attention.output.LayerNorm.bias`]: [h],
    [`${p}intermediate.dense.weight`]: [f, h],
    [`${p}intermediate.dense.bias`]: [f],
    [`${p}output.dense.weight`]: [h, f],
    [`${p}output.dense.bias`]: [h],
    [`${p}output.LayerNorm.weight`]: [h],
    [`${p}output.LayerNorm.bias`]: [h],
  };
}

/** Every parameter of BertModel (without the pooler) by Hugging Face name, torch shapes, `named_parameters()` order. */
export function bertParamShapes(options: BertOptions = {}): Record<string, number[]> {
  const cfg = bertConfig(options);
  const out: Record<string, number[]> = {
    'embeddings.word_embeddings.weight': [cfg.vocabSize, cfg.hidden],
    'embeddings.position_embeddings.weight': [cfg.maxPosition, cfg.hidden],
    'embeddings.token_type_embeddings.weight': [cfg.typeVocab, cfg.hidden],
    'embeddings.LayerNorm.weight': [cfg.hidden],
    'embeddings.LayerNorm.bias': [cfg.hidden],
  };
  for (let i = 0; i < cfg.layers; i++) Object.assign(out, bertLayerParamShapes(cfg, i));
  return out;
}

/** Whether a parameter is a Linear weight: [out, in] in torch, transposed to a MatMul's [in, out] in the graph. */
export function isLinearWeight(name: string): boolean {
  return name.endsWith('.weight') && !name.includes('LayerNorm') && !name.startsWith('embeddings.');
}

/** Torch shape → the parameter's shape in the graph. */
export function graphShape(name: string, shape: readonly number[]): number[] {
  return isLinearWeight(name) ? [shape[1]!, shape[0]!] : [...shape];
}

/** Torch layout [out, in] → [in, out] (row-major). */
export function transpose2d(data: ArrayLike<number>, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c]!;
  return out;
}

/**
 * The weights: options.weights (checked against bertParamShapes) or seeded random ones: Linear weights,
 * embeddings and biases N(0, initStd) (BERT initialises biases to 0; small values keep tests from being
 * degenerate), LayerNorm γ = 1 + N(0, 0.05), β = N(0, 0.05).
 */
export function bertWeights(options: BertOptions = {}): Record<string, Float32Array> {
  const cfg = bertConfig(options);
  const shapes = bertParamShapes(options);
  const out: Record<string, Float32Array> = {};
  if (options.weights) {
    for (const [name, shape] of Object.entries(shapes)) {
      const w = options.weights[name];
      const size = shape.reduce((a, b) => a * b, 1);
      if (!w || w.length !== size) throw new GraftError('USAGE', `weights: ${name} needs ${size} values [${shape}], got ${w?.length ?? 'none'}`, { name });
      out[name] = w;
    }
    return out;
  }
  const rng = new Random(cfg.seed);
  for (const [name, shape] of Object.entries(shapes)) {
    const size = shape.reduce((a, b) => a * b, 1);
    const ln = name.includes('LayerNorm');
    const [mean, std] = ln ? [name.endsWith('.weight') ? 1 : 0, 0.05] : [0, cfg.initStd];
    out[name] = Float32Array.from({ length: size }, () => mean + std * rng.normal());
  }
  return out;
}

/** Supplies a parameter's tensor (in the graph's layout, see graphShape) by Hugging Face name. */
export type ParamTensor = (name: string) => string;

/**
 * Parameters as initializers (of the config's float type), created on first use: Linear weights transposed to
 * [in, out] and named `onnx::MatMul_<k>` (k counting up from `firstId`), as exports name them; the others by their
 * Hugging Face name. `names` collects HF name → initializer name.
 */
export function initializerParams(b: GraphBuilder, cfg: BertConfig, weights: Readonly<Record<string, Float32Array>>, names: Record<string, string> = {}, firstId = 1000): ParamTensor {
  let id = firstId;
  const shapes = bertParamShapes(cfg);
  return (name) => {
    if (names[name]) return names[name]!;
    const w = weights[name];
    const shape = shapes[name];
    if (!w || !shape) throw new GraftError('USAGE', `no weights for parameter ${name}`, { name });
    const data = isLinearWeight(name) ? transpose2d(w, shape[0]!, shape[1]!) : w;
    const init = b.initializer(tensor(isLinearWeight(name) ? `onnx::MatMul_${id++}` : name, cfg.elemType === DataType.DOUBLE ? Float64Array.from(data) : Float32Array.from(data), graphShape(name, shape)));
    names[name] = init;
    return init;
  };
}

/** Emits nodes named as optimum names them: `${scope}/${Op}`, `${scope}/${Op}_1`, …; outputs `${node}_output_0`. */
export class Emitter {
  private readonly counts = new Map<string, number>();
  constructor(readonly b: GraphBuilder, readonly cfg: BertConfig) {}

  op(scope: string, opType: string, inputs: readonly string[], attrs: Record<string, AttrValue | undefined> = {}): string {
    const key = `${scope}/${opType}`;
    const k = this.counts.get(key) ?? 0;
    this.counts.set(key, k + 1);
    const name = k ? `${key}_${k}` : key;
    return this.b.op(opType, inputs, attrs, { name, outputs: [`${name}_output_0`] });
  }

  /** A scalar constant of the float type. */
  scalar(v: number): string {
    return this.b.constant('const', this.cfg.elemType === DataType.DOUBLE ? Float64Array.of(v) : Float32Array.of(v), []);
  }

  ints(v: readonly number[]): string {
    return this.b.int64('const_ints', v);
  }
}

/** Linear layer on [..., in]: MatMul with the [in, out] weight, then Add(bias, ·) as exports write it. */
function linear(e: Emitter, scope: string, x: string, param: ParamTensor, prefix: string): string {
  const y = e.op(scope, 'MatMul', [x, param(`${prefix}.weight`)]);
  return e.op(scope, 'Add', [param(`${prefix}.bias`), y]);
}

/** LayerNorm over the last axis, decomposed (opset-14 exports) or fused, per cfg.layerNorm. */
export function layerNorm(e: Emitter, scope: string, x: string, gamma: string, beta: string): string {
  if (e.cfg.layerNorm === 'fused') return e.op(scope, 'LayerNormalization', [x, gamma, beta], { axis: -1, epsilon: e.cfg.eps });
  const mean = e.op(scope, 'ReduceMean', [x], { axes: [-1] });
  const centred = e.op(scope, 'Sub', [x, mean]);
  const variance = e.op(scope, 'ReduceMean', [e.op(scope, 'Pow', [centred, e.scalar(2)])], { axes: [-1] });
  const std = e.op(scope, 'Sqrt', [e.op(scope, 'Add', [variance, e.scalar(e.cfg.eps)])]);
  return e.op(scope, 'Add', [e.op(scope, 'Mul', [e.op(scope, 'Div', [centred, std]), gamma]), beta]);
}

/** Dims `dims` of t as a 1-D int64 tensor of Unsqueezed Gathers of Shape(t), joined with constant `tail`. */
function shapeFrom(e: Emitter, scope: string, t: string, dims: readonly number[], tail: readonly number[]): string {
  const shape = e.op(scope, 'Shape', [t]);
  const parts = dims.map((d) => e.op(scope, 'Unsqueeze', [e.op(scope, 'Gather', [shape, e.b.constant('const', BigInt64Array.of(BigInt(d)), [])], { axis: 0 }), e.ints([0])]));
  return e.op(scope, 'Concat', [...parts, e.ints(tail)], { axis: 0 });
}

/**
 * Embeddings of int64 input_ids and token_type_ids [N, L]: word + token type + position, LayerNorm.
 * Returns [N, L, hidden].
 */
export function bertEmbeddings(e: Emitter, param: ParamTensor, inputIds: string, tokenTypeIds: string): string {
  const s = '/embeddings';
  const words = e.op(`${s}/word_embeddings`, 'Gather', [param('embeddings.word_embeddings.weight'), inputIds]);
  const types = e.op(`${s}/token_type_embeddings`, 'Gather', [param('embeddings.token_type_embeddings.weight'), tokenTypeIds]);
  const length = e.op(s, 'Unsqueeze', [e.op(s, 'Gather', [e.op(s, 'Shape', [inputIds]), e.b.constant('const', BigInt64Array.of(1n), [])], { axis: 0 }), e.ints([0])]);
  let positionIds: string;
  if (e.cfg.positionIds === 'slice') {
    const buffer = e.b.initializer(tensor('embeddings.position_ids', BigInt64Array.from({ length: e.cfg.maxPosition }, (_, i) => BigInt(i)), [1, e.cfg.maxPosition]));
    positionIds = e.op(s, 'Slice', [buffer, e.ints([0]), length, e.ints([1]), e.ints([1])]);
  } else {
    const end = e.op(s, 'Squeeze', [length, e.ints([0])]);
    const r = e.op(s, 'Range', [e.b.constant('const', BigInt64Array.of(0n), []), end, e.b.constant('const', BigInt64Array.of(1n), [])]);
    positionIds = e.op(s, 'Unsqueeze', [r, e.ints([0])]);
  }
  const positions = e.op(`${s}/position_embeddings`, 'Gather', [param('embeddings.position_embeddings.weight'), positionIds]);
  const sum = e.op(s, 'Add', [e.op(s, 'Add', [words, types]), positions]);
  return layerNorm(e, `${s}/LayerNorm`, sum, param('embeddings.LayerNorm.weight'), param('embeddings.LayerNorm.bias'));
}

/** The additive mask [N, 1, 1, L] from the int64 attention_mask [N, L]: (1 − m)·maskValue. */
export function extendedAttentionMask(e: Emitter, attentionMask: string): string {
  const m = e.op('', 'Cast', [e.op('', 'Unsqueeze', [attentionMask, e.ints([1, 2])])], { to: e.cfg.elemType });
  return e.op('', 'Mul', [e.op('', 'Sub', [e.scalar(1), m]), e.scalar(e.cfg.maskValue)]);
}

/** Encoder layer `index` (as BertLayer, inference: no dropout) on x [N, L, hidden] with the extended mask. */
export function bertLayer(e: Emitter, param: ParamTensor, index: number, x: string, mask: string): string {
  const { hidden, heads, headDim } = e.cfg;
  const s = `/encoder/layer.${index}`;
  const p = `encoder.layer.${index}`;
  const att = `${s}/attention/self`;
  const toHeads = (t: string, perm: number[]) => {
    const shape = e.cfg.reshape === 'constant' ? e.ints([0, 0, heads, headDim]) : shapeFrom(e, att, t, [0, 1], [heads, headDim]);
    return e.op(att, 'Transpose', [e.op(att, 'Reshape', [t, shape])], { perm });
  };
  const q = toHeads(linear(e, `${att}/query`, x, param, `${p}.attention.self.query`), [0, 2, 1, 3]);
  const k = toHeads(linear(e, `${att}/key`, x, param, `${p}.attention.self.key`), [0, 2, 3, 1]); // Kᵀ: [N, h, d, L]
  const v = toHeads(linear(e, `${att}/value`, x, param, `${p}.attention.self.value`), [0, 2, 1, 3]);
  const scores = e.op(att, 'Add', [e.op(att, 'Div', [e.op(att, 'MatMul', [q, k]), e.scalar(Math.sqrt(headDim))]), mask]);
  const context = e.op(att, 'Transpose', [e.op(att, 'MatMul', [e.op(att, 'Softmax', [scores], { axis: -1 }), v])], { perm: [0, 2, 1, 3] });
  const merged = e.op(att, 'Reshape', [context, e.cfg.reshape === 'constant' ? e.ints([0, 0, hidden]) : shapeFrom(e, att, context, [0, 1], [hidden])]);
  const out = `${s}/attention/output`;
  const attended = layerNorm(
    e, `${out}/LayerNorm`,
    e.op(out, 'Add', [linear(e, `${out}/dense`, merged, param, `${p}.attention.output.dense`), x]),
    param(`${p}.attention.output.LayerNorm.weight`), param(`${p}.attention.output.LayerNorm.bias`),
  );
  const pre = linear(e, `${s}/intermediate/dense`, attended, param, `${p}.intermediate.dense`);
  const act = `${s}/intermediate/intermediate_act_fn`;
  const u = e.op(act, 'Div', [pre, e.scalar(Math.SQRT2)]);
  const erf = e.cfg.erf ? e.cfg.erf(e.b, u) : e.op(act, 'Erf', [u]);
  const gelu = e.op(act, 'Mul', [e.op(act, 'Mul', [pre, e.op(act, 'Add', [erf, e.scalar(1)])]), e.scalar(0.5)]);
  const o = `${s}/output`;
  return layerNorm(
    e, `${o}/LayerNorm`,
    e.op(o, 'Add', [linear(e, `${o}/dense`, gelu, param, `${p}.output.dense`), attended]),
    param(`${p}.output.LayerNorm.weight`), param(`${p}.output.LayerNorm.bias`),
  );
}

/** Masked mean over tokens: Σ_t h·m / Σ_t m with m = attention_mask (int64 [N, L]); [N, L, H] → [N, H]. */
export function maskedMeanPool(e: Emitter, h: string, attentionMask: string): string {
  const s = '/pool';
  const m = e.op(s, 'Unsqueeze', [e.op(s, 'Cast', [attentionMask], { to: e.cfg.elemType }), e.ints([-1])]);
  const sum = e.op(s, 'ReduceSum', [e.op(s, 'Mul', [h, m]), e.ints([1])], { keepdims: 0 });
  return e.op(s, 'Div', [sum, e.op(s, 'ReduceSum', [m, e.ints([1])], { keepdims: 0 })]);
}

/** Declares the three int64 inputs [batch_size, sequence_length]. */
export function bertInputs(b: GraphBuilder): { inputIds: string; attentionMask: string; tokenTypeIds: string } {
  const dims = ['batch_size', 'sequence_length'];
  return {
    inputIds: b.input('input_ids', DataType.INT64, dims),
    attentionMask: b.input('attention_mask', DataType.INT64, dims),
    tokenTypeIds: b.input('token_type_ids', DataType.INT64, dims),
  };
}

export interface BertGraphOptions {
  /** Supplies the parameters (default: initializers from the options' weights, see initializerParams). */
  param?: ParamTensor;
  /** Collects HF name → initializer name (default initializers only). */
  names?: Record<string, string>;
  /** Already declared int64 [N, L] inputs (default: bertInputs declares them, with symbolic sizes). */
  inputs?: { inputIds: string; attentionMask: string; tokenTypeIds: string };
  /** Layers to build (default all): the first `layers` of the model. */
  layers?: number;
}

/** Embeddings and the encoder layers; returns last_hidden_state's tensor (not yet a graph output). */
export function bertGraph(b: GraphBuilder, options: BertOptions = {}, graph: BertGraphOptions = {}): { hidden: string; attentionMask: string; emitter: Emitter } {
  const cfg = bertConfig(options);
  const e = new Emitter(b, cfg);
  const supply = graph.param ?? initializerParams(b, cfg, bertWeights(options), graph.names);
  const { inputIds, attentionMask, tokenTypeIds } = graph.inputs ?? bertInputs(b);
  let h = bertEmbeddings(e, supply, inputIds, tokenTypeIds);
  const mask = extendedAttentionMask(e, attentionMask);
  for (let i = 0; i < (graph.layers ?? cfg.layers); i++) h = bertLayer(e, supply, i, h, mask);
  return { hidden: h, attentionMask, emitter: e };
}

/** The model: inputs input_ids, attention_mask, token_type_ids; output last_hidden_state. */
export function buildBert(options: BertOptions = {}): ModelProto {
  const cfg = bertConfig(options);
  const b = new GraphBuilder('main_graph');
  const { hidden } = bertGraph(b, options);
  // As in exports, the last LayerNorm's final Add writes last_hidden_state itself.
  b.nodes.find((n) => n.output?.[0] === hidden)!.output = ['last_hidden_state'];
  b.output('last_hidden_state', cfg.elemType, ['batch_size', 'sequence_length', cfg.hidden]);
  return b.model(cfg.opset, 'pytorch');
}

/** Hugging Face parameter name → initializer name in buildBert's model (Linear weights: `onnx::MatMul_<k>`). */
export function bertInitializerNames(options: BertOptions = {}): Record<string, string> {
  const names: Record<string, string> = {};
  bertGraph(new GraphBuilder('names'), options, { names });
  return names;
}

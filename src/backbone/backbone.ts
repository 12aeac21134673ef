/**
 * A pretrained model with its top removed: the cut ONNX graph whose single output is `[N, D]` pooled
 * features, the input pipeline it expects (image preprocessing, or a tokenizer and text config), and the
 * provenance that identifies it.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import * as ort from 'onnxruntime-node';
import { GraftError } from '../errors.js';
import { resolveConfig, validateConfig, type PretrainedConfig } from '../preprocess/config.js';
import { AUDIO_DEFAULTS, validateAudioConfig, type AudioConfig } from '../preprocess/audio.js';
import { feedSpecs, pipelineKey, textFeeds, type AudioPipeline, type Feed, type ImagePipeline, type Pipeline, type TextPipeline } from '../preprocess/pipeline.js';
import { parseTokenizerFiles, TextTokenizer, validateTextConfig, type TextConfig, type TextPooling, type TokenizerFiles } from '../preprocess/text.js';
import { DataType, decodeModel, encodeModel, onnx, valueInfoShape, type GraphProto, type ModelProto } from '../onnx/proto.js';
import { cutModel, findCut, pruneTo, tensorNames } from '../onnx/surgery.js';

export interface BackboneSource {
  /** Absolute path of the ONNX file. */
  file: string;
  /** sha256 of the ONNX file's bytes. */
  sha256: string;
  /** Zoo name, when loaded by name. */
  name?: string;
}

/** Where a config says the backbone was cut, and how long its pooled feature vector is. */
export type Cut = { cut: string; featureDim: number };

interface BackboneBase {
  source: BackboneSource;
  /** How the cut was chosen (explicit or found automatically). */
  cutReason: string;
  /** The cut model: the pipeline's inputs in, output `features` `[N, featureDim]`. */
  featureModel: ModelProto;
  featureModelBytes: Uint8Array;
  /** Identity of what produces features: model bytes + cut + the pipeline's key (with its version). Keys the feature cache. */
  key: string;
}

export interface ImageBackbone extends BackboneBase {
  modality: 'image';
  /** Complete config, including `cut` and `featureDim`. */
  config: PretrainedConfig & Cut;
  pipeline: ImagePipeline & { config: PretrainedConfig & Cut };
}

export interface TextBackbone extends BackboneBase {
  modality: 'text';
  config: TextConfig & Cut;
  pipeline: TextPipeline & { config: TextConfig & Cut };
}

export interface AudioBackbone extends BackboneBase {
  modality: 'audio';
  config: AudioConfig & Cut;
  pipeline: AudioPipeline & { config: AudioConfig & Cut };
}

export type Backbone = ImageBackbone | TextBackbone | AudioBackbone;

export interface LoadBackboneOptions {
  /** Tensor to cut at; by default the input of the last global pooling. */
  cut?: string;
  /** Overrides applied on top of the model's own config (sidecar `pretrained_cfg.json`) and defaults. */
  config?: Partial<PretrainedConfig>;
  /** The model's own config when it does not live in a sidecar (a zoo entry and its preprocessor file). */
  modelConfig?: Partial<PretrainedConfig>;
  /** The zoo name the model was loaded by, recorded with the backbone. */
  name?: string;
}

export const FEATURES = 'features';

async function readModel(path: string): Promise<{ file: string; sha256: string; model: ModelProto }> {
  const file = resolve(path);
  let bytes: Uint8Array;
  try {
    bytes = await readFile(file);
  } catch (cause) {
    throw new GraftError('MODEL', `${file}: cannot read the model (${(cause as NodeJS.ErrnoException).code ?? (cause as Error).message})`, { file }, { cause });
  }
  return { file, sha256: createHash('sha256').update(bytes).digest('hex'), model: decodeModel(bytes, file) };
}

function backboneKey(sha256: string, cut: string, pipeline: Pipeline, extra = ''): string {
  return createHash('sha256').update(`${sha256}\n${cut}\n${pipelineKey(pipeline)}${extra}`).digest('hex').slice(0, 32);
}

/** Loads an ONNX image model from a path and removes its top. */
export async function loadBackbone(path: string, options: LoadBackboneOptions = {}): Promise<ImageBackbone> {
  const { file, sha256, model } = await readModel(path);
  const graph = model.graph!;
  const initNames = new Set((graph.initializer ?? []).map((t) => t.name));
  const imageInputs = (graph.input ?? []).filter((i) => !initNames.has(i.name));
  if (imageInputs.length !== 1) {
    throw new GraftError('MODEL', `${file}: expected one image input, found ${imageInputs.length} (${imageInputs.map((i) => i.name).join(', ')})`, { file });
  }
  const input = imageInputs[0]!;
  const dims = valueInfoShape(input) ?? [];
  const own = options.modelConfig ?? (await readSidecar(join(dirname(file), 'pretrained_cfg.json')));
  const config = resolveConfig(options.config, own, inferFromInput(input.name!, dims));
  checkInput(file, config, input.name!, dims);

  let cut: string;
  let cutReason: string;
  if (options.cut ?? config.cut) {
    cut = (options.cut ?? config.cut)!;
    cutReason = options.cut ? 'given with --cut' : 'from the model config';
    if (!tensorNames(graph).has(cut)) {
      throw new GraftError('MODEL', `${file}: cut tensor "${cut}" is not in the model`, { file, tensor: cut });
    }
  } else {
    ({ tensor: cut, reason: cutReason } = findCut(model));
  }
  const probed = await probeTensor(model, { kind: 'image', config }, cut, file);
  const layout = probed.length === 4 ? featureMapLayout(graph, cut, config.layout) : config.layout;
  // 4-D: channels of a feature map (pooled); 3-D [N, tokens, D]: the class token; 2-D: as is.
  const featureDim =
    probed.length === 4 ? (layout === 'NCHW' ? probed[1]! : probed[3]!)
    : probed.length === 3 ? probed[2]!
    : probed.slice(1).reduce((a, b) => a * b, 1);
  if (config.featureDim !== undefined && config.featureDim !== featureDim) {
    throw new GraftError('CONFIG', `${file}: config says featureDim ${config.featureDim} but tensor ${cut} has ${featureDim} channels`, { file, cut });
  }
  const featureModel = cutModel(model, cut, { layout, rank: probed.length, output: FEATURES });
  const fullConfig = validateConfig({ ...config, cut, featureDim }) as ImageBackbone['config'];
  const pipeline = { kind: 'image' as const, config: fullConfig };
  return {
    modality: 'image',
    source: { file, sha256, ...(options.name ? { name: options.name } : {}) },
    config: fullConfig,
    pipeline,
    cutReason,
    featureModel,
    featureModelBytes: encodeModel(featureModel),
    key: backboneKey(sha256, cut, pipeline),
  };
}

export interface LoadTextBackboneOptions {
  /** The tokenizer: a tokenizer.json path (its tokenizer_config.json beside it is read too), or its parsed files. */
  tokenizer: string | TokenizerFiles;
  /** Tensor to cut at (default `last_hidden_state`, else the model's first output). */
  cut?: string;
  /** How a token sequence becomes one vector (default: masked mean when the model takes an attention mask, else the first token). */
  pooling?: Exclude<TextPooling, 'model'>;
  /** L2-normalise the pooled vector (default false). */
  normalize?: boolean;
  /** Tokens per text, special tokens included (default: the tokenizer's own limit, at most the model's positions, else 512). */
  maxLength?: number;
  name?: string;
}

/** ONNX input names of token ids, attention mask and token type ids, as Hugging Face exports name them. */
const TEXT_INPUTS = { ids: ['input_ids', 'ids', 'tokens'], mask: ['attention_mask', 'input_mask', 'mask'], typeIds: ['token_type_ids', 'segment_ids'] };

/** Reads tokenizer.json (and the tokenizer_config.json beside it, when there is one). */
export async function readTokenizerFiles(file: string): Promise<TokenizerFiles> {
  let json: Buffer;
  try {
    json = await readFile(file);
  } catch (cause) {
    throw new GraftError('MODEL', `${file}: cannot read the tokenizer (${(cause as NodeJS.ErrnoException).code ?? (cause as Error).message})`, { file }, { cause });
  }
  const config = await readFile(join(dirname(file), 'tokenizer_config.json')).catch(() => undefined);
  return parseTokenizerFiles(json, config, file);
}

/** Loads an ONNX text encoder (token ids in) with its tokenizer and removes its top. */
export async function loadTextBackbone(path: string, options: LoadTextBackboneOptions): Promise<TextBackbone> {
  const { file, sha256, model } = await readModel(path);
  const graph = model.graph!;
  const initNames = new Set((graph.initializer ?? []).map((t) => t.name));
  const inputs = (graph.input ?? []).filter((i) => !initNames.has(i.name));
  const find = (names: string[]) => inputs.find((i) => names.includes(i.name!))?.name ?? undefined;
  const ids = find(TEXT_INPUTS.ids) ?? inputs.find((i) => i.type?.tensorType?.elemType === DataType.INT64)?.name ?? undefined;
  if (!ids) throw new GraftError('MODEL', `${file}: no token-id input (int64 input_ids) among ${inputs.map((i) => i.name).join(', ')}; is this a text model?`, { file });
  const mask = find(TEXT_INPUTS.mask);
  const typeIds = find(TEXT_INPUTS.typeIds);
  const unknown = inputs.map((i) => i.name!).filter((n) => ![ids, mask, typeIds].includes(n));
  if (unknown.length) throw new GraftError('MODEL', `${file}: inputs ${unknown.join(', ')} are not token ids, attention mask or token type ids; graft cannot feed them`, { file, inputs: unknown });
  for (const name of [ids, mask, typeIds]) {
    const input = inputs.find((i) => i.name === name);
    if (input && input.type?.tensorType?.elemType !== DataType.INT64) throw new GraftError('MODEL', `${file}: input ${name} is not int64`, { file, input: name });
  }

  const tokenizerFiles = typeof options.tokenizer === 'string' ? await readTokenizerFiles(options.tokenizer) : options.tokenizer;
  const tokenizer = new TextTokenizer(tokenizerFiles);
  const positions = (graph.initializer ?? []).find((t) => /position_embeddings?(\.weight)?$/.test(t.name ?? '') && t.dims?.length === 2);
  const maxPositions = positions ? Number(positions.dims![0]) : undefined;
  const maxLength = options.maxLength ?? Math.min(tokenizer.ownMaxLength ?? 512, maxPositions ?? Infinity);
  if (maxPositions !== undefined && maxLength > maxPositions) throw new GraftError('USAGE', `max length ${maxLength} exceeds the ${maxPositions} positions of ${file}`, { file });

  const names = tensorNames(graph);
  const outputs = (graph.output ?? []).map((o) => o.name!);
  const cut = options.cut ?? (names.has('last_hidden_state') ? 'last_hidden_state' : outputs[0]!);
  if (!names.has(cut)) throw new GraftError('MODEL', `${file}: cut tensor "${cut}" is not in the model`, { file, tensor: cut });
  const cutReason = options.cut ? 'given with --cut' : cut === 'last_hidden_state' ? 'the encoder output last_hidden_state' : `the model output ${cut}`;
  const base: TextConfig = {
    tokenizer: { file: 'tokenizer.json', sha256: tokenizerFiles.sha256, model: tokenizer.model, lowercase: tokenizer.lowercase },
    maxLength,
    inputs: { ids, ...(mask ? { mask } : {}), ...(typeIds ? { typeIds } : {}) },
    padId: tokenizer.padId,
    pooling: 'model',
    normalize: options.normalize ?? false,
  };
  const probed = await probeTensor(model, { kind: 'text', config: base, tokenizer: tokenizerFiles }, cut, file);
  if (probed.length !== 2 && probed.length !== 3) throw new GraftError('MODEL', `${file}: cut tensor "${cut}" has rank ${probed.length}; a text backbone gives [N, T, D] token states or [N, D] vectors`, { file, cut });
  const pooling: TextPooling = probed.length === 2 ? 'model' : (options.pooling ?? (mask ? 'masked-mean' : 'class-token'));
  if (pooling === 'masked-mean' && !mask) throw new GraftError('USAGE', `${file}: masked-mean pooling needs an attention_mask input, which the model does not take`, { file });
  const featureDim = probed[probed.length - 1]!;
  const featureModel = cutModel(model, cut, {
    layout: 'NCHW',
    rank: probed.length,
    output: FEATURES,
    ...(probed.length === 3 ? { sequence: pooling === 'masked-mean' ? { pooling: 'masked-mean' as const, mask: mask! } : { pooling: 'class-token' as const } } : {}),
    ...(base.normalize && probed.length === 3 ? { normalize: true } : {}),
  });
  if (base.normalize && probed.length === 2) throw new GraftError('USAGE', `${file}: the model already pools (${cut} is [N, D]); normalisation applies to pooled token states`, { file });
  const config = validateTextConfig({ ...base, pooling, cut, featureDim }) as TextBackbone['config'];
  const pipeline = { kind: 'text' as const, config, tokenizer: tokenizerFiles };
  return {
    modality: 'text',
    source: { file, sha256, ...(options.name ? { name: options.name } : {}) },
    config,
    pipeline,
    cutReason,
    featureModel,
    featureModelBytes: encodeModel(featureModel),
    key: backboneKey(sha256, cut, pipeline, `\n${pooling}\n${config.normalize}`),
  };
}

export interface LoadAudioBackboneOptions {
  /** Tensor to cut at (default: the model's first output), of shape [N, D]. */
  cut?: string;
  /** The model's own config (a zoo entry's), then overrides; unstated fields take AUDIO_DEFAULTS. */
  modelConfig?: Partial<AudioConfig>;
  config?: Partial<AudioConfig>;
  name?: string;
}

/**
 * Loads an ONNX audio model that takes a waveform (float32 [N, samples], its front end inside the graph) and
 * gives one vector per clip ([N, D]), as the bundled speech embedding does.
 */
export async function loadAudioBackbone(path: string, options: LoadAudioBackboneOptions = {}): Promise<AudioBackbone> {
  const { file, sha256, model } = await readModel(path);
  const graph = model.graph!;
  const initNames = new Set((graph.initializer ?? []).map((t) => t.name));
  const inputs = (graph.input ?? []).filter((i) => !initNames.has(i.name));
  const dims = inputs.length === 1 ? valueInfoShape(inputs[0]!) : undefined;
  if (inputs.length !== 1 || dims?.length !== 2 || inputs[0]!.type?.tensorType?.elemType !== DataType.FLOAT) {
    const found = inputs.map((i) => `${i.name} [${valueInfoShape(i)?.join(', ') ?? '?'}]`).join(', ');
    throw new GraftError('MODEL', `${file}: an audio backbone takes one float32 waveform [N, samples]; this model takes ${found || 'nothing'}`, { file });
  }
  const base = validateAudioConfig({ ...AUDIO_DEFAULTS, inputName: inputs[0]!.name, ...options.modelConfig, ...options.config }, `${file} audio config`);
  if (base.inputName !== inputs[0]!.name) throw new GraftError('CONFIG', `${file}: config names input "${base.inputName}" but the model's input is "${inputs[0]!.name}"`, { file });
  const outputs = (graph.output ?? []).map((o) => o.name!);
  const cut = options.cut ?? base.cut ?? outputs[0]!;
  if (!tensorNames(graph).has(cut)) throw new GraftError('MODEL', `${file}: cut tensor "${cut}" is not in the model`, { file, tensor: cut });
  const pipeline0: AudioPipeline = { kind: 'audio', config: base };
  const probed = await probeTensor(model, pipeline0, cut, file);
  if (probed.length !== 2) throw new GraftError('MODEL', `${file}: "${cut}" is [${probed.join(', ')}] for one clip; an audio backbone gives one vector per clip, [N, D]`, { file, tensor: cut });
  const featureDim = probed[1]!;
  const featureModel = cut === FEATURES ? onnx.ModelProto.create({ ...model, graph: { ...pruneTo(graph, [cut]), output: graph.output!.filter((o) => o.name === cut) } }) : cutModel(model, cut, { layout: 'NCHW', rank: 2, output: FEATURES });
  const config = validateAudioConfig({ ...base, cut, featureDim }, `${file} audio config`) as AudioBackbone['config'];
  const pipeline = { kind: 'audio' as const, config };
  return {
    modality: 'audio',
    source: { file, sha256, ...(options.name ? { name: options.name } : {}) },
    config,
    pipeline,
    cutReason: options.cut ? 'given with --cut' : base.cut ? 'from the model config' : `the model output ${cut}`,
    featureModel,
    featureModelBytes: encodeModel(featureModel),
    key: backboneKey(sha256, cut, pipeline),
  };
}

async function readSidecar(path: string): Promise<Partial<PretrainedConfig> | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    return undefined;
  }
  try {
    return JSON.parse(text) as Partial<PretrainedConfig>;
  } catch (cause) {
    throw new GraftError('CONFIG', `${path}: not valid JSON (${(cause as Error).message})`, { file: path }, { cause });
  }
}

/** ONNX ops whose 4-D tensors are channels-first by definition. */
const NCHW_OPS = new Set(['Conv', 'ConvTranspose', 'BatchNormalization', 'GlobalAveragePool', 'GlobalMaxPool', 'MaxPool', 'AveragePool', 'QLinearConv', 'QLinearGlobalAveragePool', 'InstanceNormalization', 'LRN']);
const LAYOUT_KEEPING = new Set(['Relu', 'Clip', 'Add', 'Mul', 'Sub', 'Div', 'Sigmoid', 'HardSigmoid', 'HardSwish', 'LeakyRelu', 'Identity', 'DequantizeLinear', 'QuantizeLinear', 'Tanh', 'Elu', 'Dropout']);

/**
 * Layout of a 4-D feature map: channels-first when an ONNX conv/pool/norm produces or reads it (directly or
 * through elementwise ops), whatever the image input's layout (converted TensorFlow models take NHWC
 * images but compute in NCHW); otherwise the input's layout.
 */
function featureMapLayout(graph: GraphProto, tensor: string, inputLayout: PretrainedConfig['layout']): PretrainedConfig['layout'] {
  const nodes = graph.node ?? [];
  const seen = new Set<string>();
  const queue = [tensor];
  while (queue.length > 0 && seen.size < 64) {
    const t = queue.shift()!;
    if (seen.has(t)) continue;
    seen.add(t);
    for (const n of nodes) {
      const produces = n.output?.includes(t);
      const reads = n.input?.includes(t);
      if (!produces && !reads) continue;
      if (NCHW_OPS.has(n.opType!)) return 'NCHW';
      if (n.opType === 'Transpose') return inputLayout;
      if (LAYOUT_KEEPING.has(n.opType!)) for (const next of produces ? (n.input ?? []) : (n.output ?? [])) if (next) queue.push(next);
    }
  }
  return inputLayout;
}

/** What the graph's input itself says: its name, NCHW vs NHWC, and a fixed spatial size. */
function inferFromInput(name: string, dims: number[]): Partial<PretrainedConfig> {
  const out: Partial<PretrainedConfig> = { inputName: name };
  if (dims.length !== 4) return out;
  if (dims[1] === 3 && dims[3] !== 3) {
    out.layout = 'NCHW';
    if (dims[2]! > 0 && dims[3]! > 0) out.inputSize = [dims[2]!, dims[3]!];
  } else if (dims[3] === 3) {
    out.layout = 'NHWC';
    if (dims[1]! > 0 && dims[2]! > 0) out.inputSize = [dims[1]!, dims[2]!];
  }
  return out;
}

/** Mismatches between the config and the model's input are errors, not silent accuracy loss. */
function checkInput(file: string, config: PretrainedConfig, name: string, dims: number[]): void {
  const fail = (what: string) => {
    throw new GraftError('CONFIG', `${file}: ${what}`, { file, input: name, dims, config });
  };
  if (config.inputName !== name) fail(`config names input "${config.inputName}" but the model's input is "${name}"`);
  if (dims.length !== 4) fail(`input "${name}" has rank ${dims.length}; an image model takes [N, C, H, W] or [N, H, W, C]`);
  const [h, w] = config.inputSize;
  const expected = config.layout === 'NCHW' ? [-1, 3, h, w] : [-1, h, w, 3];
  for (let i = 1; i < 4; i++) {
    if (dims[i]! > 0 && dims[i] !== expected[i]) {
      fail(`input "${name}" is [${dims.map((d) => (d > 0 ? d : '?')).join(', ')}] but the config describes ${config.layout} [N, ${expected.slice(1).join(', ')}]`);
    }
  }
}

/** Feeds of one blank sample of the pipeline (a black image; a short text of padding tokens; a second of silence). */
export function probeFeeds(pipeline: Pipeline): Record<string, Feed> {
  if (pipeline.kind === 'text') return textFeeds(pipeline.config, [{ ids: new Int32Array(4).fill(pipeline.config.padId) }]);
  if (pipeline.kind === 'audio') {
    const n = Math.max(pipeline.config.minSamples, pipeline.config.sampleRate);
    return { [pipeline.config.inputName]: { type: 'float32', data: new Float32Array(n), dims: [1, n] } };
  }
  const spec = feedSpecs(pipeline)[0]!;
  const dims = [1, ...(spec.shape as number[])];
  return { [spec.name]: { type: 'float32', data: new Float32Array(dims.reduce((a, b) => a * b, 1)), dims } };
}

/** Runs the graph up to `tensor` on one blank sample to learn the tensor's shape (and that it is float). */
export async function probeTensor(model: ModelProto, pipeline: Pipeline, tensor: string, file = '<model>'): Promise<number[]> {
  const pruned = pruneTo(model.graph!, [tensor]);
  pruned.output = [{ name: tensor }];
  const probe = onnx.ModelProto.create({ ...model, graph: pruned });
  let session: ort.InferenceSession | undefined;
  try {
    session = await ort.InferenceSession.create(encodeModel(probe), { intraOpNumThreads: 1 });
    const feeds: Record<string, ort.Tensor> = {};
    const needed = new Set(session.inputNames);
    for (const [name, f] of Object.entries(probeFeeds(pipeline))) if (needed.has(name)) feeds[name] = new ort.Tensor(f.type, f.data, f.dims);
    const out = (await session.run(feeds))[tensor]!;
    if (out.type !== 'float32') {
      throw new GraftError('MODEL', `${file}: cut tensor "${tensor}" is ${out.type}, not float; cut at a dequantized (float) tensor`, { file, tensor });
    }
    return [...out.dims];
  } catch (cause) {
    if (cause instanceof GraftError) throw cause;
    throw new GraftError('MODEL', `${file}: cannot run the model up to "${tensor}" (${(cause as Error).message})`, { file, tensor }, { cause });
  } finally {
    await session?.release();
  }
}

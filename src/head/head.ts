/**
 * The new classifier on top of the pooled features, built as an ONNX graph from the start: one forward
 * definition serves training (weights as inputs, dropout mask as input, loss and gradients out), evaluation
 * (weights as inputs, probabilities out) and export (weights baked in as initializers).
 */
import { GraftError } from '../errors.js';
import { GraphBuilder } from '../onnx/builder.js';
import { appendGradients } from '../onnx/autodiff.js';
import { DataType, type ModelProto } from '../onnx/proto.js';
import { Random } from '../util/random.js';

/**
 * `mlp`: Dense(hidden) + ReLU (+ dropout) + Dense; `linear`: one Dense (a logistic regression when solved by
 * head/logistic.ts); `ensemble`: both side by side on the same standardised features, their class probabilities
 * averaged (what the `auto` choice picks when the average scores best in cross-validation).
 */
export type HeadKind = 'mlp' | 'linear' | 'ensemble';

export interface HeadSpec {
  kind: HeadKind;
  inputDim: number;
  numClasses: number;
  /** Width of the hidden layer of the `mlp` head (and of the ensemble's MLP). */
  hidden: number;
  /** Dropout rate before the last layer of the `mlp` head (training mode only). */
  dropout: number;
}

/** Whether the head has an MLP branch (`mlp`, `ensemble`). */
export const hasMlp = (spec: Pick<HeadSpec, 'kind'>): boolean => spec.kind !== 'linear';

/** Whether training feeds a dropout mask ([N, hidden], TRAIN_MASK). */
export const hasDropoutMask = (spec: Pick<HeadSpec, 'kind' | 'dropout'>): boolean => hasMlp(spec) && spec.dropout > 0;

export const DEFAULT_HEAD: Omit<HeadSpec, 'inputDim' | 'numClasses'> = { kind: 'mlp', hidden: 512, dropout: 0.5 };

export interface Param {
  name: string;
  dims: number[];
  data: Float32Array;
  /** Weight decay applies to matrices, not to biases. */
  decay: boolean;
}

/**
 * Feature standardisation fitted on the training features: (x − mean) / std, part of the head so the
 * exported graph applies it too. Not trained.
 */
export interface Standardizer {
  mean: Float32Array;
  invStd: Float32Array;
}

/** The trainable weights of a head, in a fixed order. */
export type HeadParams = Param[];

export const HEAD_INPUT = 'features';
export const HEAD_OUTPUT = 'probabilities';

export function validateSpec(spec: HeadSpec): void {
  if (spec.kind !== 'mlp' && spec.kind !== 'linear' && spec.kind !== 'ensemble') throw new GraftError('USAGE', `unknown head "${spec.kind as string}": use mlp, linear or ensemble`);
  if (!(spec.numClasses >= 2)) throw new GraftError('USAGE', `a classifier needs at least 2 classes, got ${spec.numClasses}`);
  if (!(spec.dropout >= 0 && spec.dropout < 1)) throw new GraftError('USAGE', `dropout must be in [0, 1), got ${spec.dropout}`);
  if (hasMlp(spec) && !(Number.isInteger(spec.hidden) && spec.hidden > 0)) throw new GraftError('USAGE', `hidden width must be a positive integer, got ${spec.hidden}`);
}

/** Names, shapes and decay flags of a head's weights, in order. */
export function paramShapes(spec: HeadSpec): Array<Omit<Param, 'data'>> {
  const { inputDim: d, numClasses: c, hidden: h } = spec;
  const linear = [
    { name: 'fc.weight', dims: [d, c], decay: true },
    { name: 'fc.bias', dims: [c], decay: false },
  ];
  const mlp = [
    { name: 'fc1.weight', dims: [d, h], decay: true },
    { name: 'fc1.bias', dims: [h], decay: false },
    { name: 'fc2.weight', dims: [h, c], decay: true },
    { name: 'fc2.bias', dims: [c], decay: false },
  ];
  return spec.kind === 'linear' ? linear : spec.kind === 'mlp' ? mlp : [...mlp, ...linear];
}

/** Seeded initialisation: He-uniform for the ReLU layer, Glorot-uniform for the output layer, zero biases. */
export function initParams(spec: HeadSpec, seed: number): HeadParams {
  validateSpec(spec);
  const rng = new Random(seed);
  const uniform = (n: number, limit: number) => Float32Array.from({ length: n }, () => (rng.next() * 2 - 1) * limit);
  return paramShapes(spec).map((p) => {
    const size = p.dims.reduce((a, b) => a * b, 1);
    if (!p.decay) return { ...p, data: new Float32Array(size) };
    const [fanIn, fanOut] = p.dims as [number, number];
    // The hidden layer feeds a ReLU: He; the output layer: Glorot.
    const limit = p.name === 'fc1.weight' ? Math.sqrt(6 / fanIn) : Math.sqrt(6 / (fanIn + fanOut));
    return { ...p, data: uniform(size, limit) };
  });
}

/** Fits the standardiser on the rows of `features` marked valid. */
export function fitStandardizer(features: Float32Array, dim: number, rows: ArrayLike<number>): Standardizer {
  const mean = new Float64Array(dim);
  const sq = new Float64Array(dim);
  const n = rows.length;
  for (let i = 0; i < n; i++) {
    const base = rows[i]! * dim;
    for (let j = 0; j < dim; j++) {
      const v = features[base + j]!;
      mean[j]! += v;
      sq[j]! += v * v;
    }
  }
  const outMean = new Float32Array(dim);
  const invStd = new Float32Array(dim);
  for (let j = 0; j < dim; j++) {
    const m = mean[j]! / Math.max(n, 1);
    const variance = Math.max(sq[j]! / Math.max(n, 1) - m * m, 0);
    outMean[j] = m;
    // Constant features (dead channels) are centred and left unscaled.
    invStd[j] = variance > 1e-12 ? 1 / Math.sqrt(variance) : 1;
  }
  return { mean: outMean, invStd };
}

export type Mode = { kind: 'train' } | { kind: 'eval' } | { kind: 'export'; params: HeadParams };

/** Declares the weights (as inputs, or as initializers for export) and returns their tensor names. */
export function declareParams(b: GraphBuilder, spec: HeadSpec, mode: Mode): Map<string, string> {
  const names = new Map<string, string>();
  if (mode.kind === 'export') for (const p of mode.params) names.set(p.name, b.constant(p.name, p.data, p.dims));
  else for (const p of paramShapes(spec)) names.set(p.name, b.input(p.name, DataType.FLOAT, p.dims));
  return names;
}

/**
 * The forward definition shared by every mode (and by fine-tuning graphs); returns the logits tensor. The
 * ensemble's logits are the log of its averaged probabilities (a softmax of them gives the average back).
 */
export function forward(b: GraphBuilder, spec: HeadSpec, std: Standardizer, x: string, w: Map<string, string>, mask?: string): string {
  const mean = b.constant('std.mean', std.mean, [spec.inputDim]);
  const invStd = b.constant('std.inv_std', std.invStd, [spec.inputDim]);
  const z = b.op('Mul', [b.op('Sub', [x, mean]), invStd]);
  const linear = () => b.op('Gemm', [z, w.get('fc.weight')!, w.get('fc.bias')!]);
  const mlp = () => {
    let hidden = b.op('Relu', [b.op('Gemm', [z, w.get('fc1.weight')!, w.get('fc1.bias')!])]);
    if (mask) hidden = b.op('Mul', [hidden, mask]);
    return b.op('Gemm', [hidden, w.get('fc2.weight')!, w.get('fc2.bias')!]);
  };
  if (spec.kind === 'linear') return linear();
  if (spec.kind === 'mlp') return mlp();
  const half = b.constant('ensemble.half', Float32Array.of(0.5), []);
  const average = b.op('Mul', [b.op('Add', [b.op('Softmax', [mlp()], { axis: 1 }), b.op('Softmax', [linear()], { axis: 1 })]), half]);
  return b.op('Log', [average]);
}

/** Inputs of the training graph besides the weights. */
export const TRAIN_LABELS = 'labels';
export const TRAIN_MASK = 'dropout_mask';
/** A label that training losses skip: the padding rows of a short last batch in a fixed-size training graph. */
export const IGNORE_LABEL = -1;
export const TRAIN_LOSS = 'loss';
export const gradName = (param: string) => `grad.${param}`;

/**
 * Training graph: features [N, D], labels int64 [N], (mlp) an inverted-dropout mask [N, hidden] and the
 * weights in; the mean cross-entropy loss and one gradient per weight out. The gradient subgraph comes
 * from graft's autodiff.
 */
export function buildTrainingGraph(spec: HeadSpec, std: Standardizer): ModelProto {
  validateSpec(spec);
  const b = new GraphBuilder('head_train');
  const x = b.input(HEAD_INPUT, DataType.FLOAT, ['N', spec.inputDim]);
  const labels = b.input(TRAIN_LABELS, DataType.INT64, ['N']);
  // No dropout, no mask input (headTrainable feeds one only then).
  const mask = hasDropoutMask(spec) ? b.input(TRAIN_MASK, DataType.FLOAT, ['N', spec.hidden]) : undefined;
  const w = declareParams(b, spec, { kind: 'train' });
  const logits = forward(b, spec, std, x, w, mask);
  b.node('SoftmaxCrossEntropyLoss', [logits, labels], { reduction: 'mean' }, { outputs: [TRAIN_LOSS] });
  b.output(TRAIN_LOSS, DataType.FLOAT, []);
  const grads = appendGradients(b, { loss: TRAIN_LOSS, wrt: [...w.values()] });
  for (const [param, tensor] of w) {
    const g = grads.get(tensor);
    if (!g) throw new GraftError('TRAIN', `autodiff produced no gradient for ${param}`);
    b.op('Identity', [g], {}, { outputs: [gradName(param)] });
    b.output(gradName(param), DataType.FLOAT, paramShapes(spec).find((p) => p.name === param)!.dims);
  }
  return b.model(17);
}

/** Evaluation graph: features and weights in, class probabilities out. */
export function buildEvalGraph(spec: HeadSpec, std: Standardizer): ModelProto {
  validateSpec(spec);
  const b = new GraphBuilder('head_eval');
  const x = b.input(HEAD_INPUT, DataType.FLOAT, ['N', spec.inputDim]);
  const w = declareParams(b, spec, { kind: 'eval' });
  b.op('Softmax', [forward(b, spec, std, x, w)], { axis: 1 }, { outputs: [HEAD_OUTPUT] });
  b.output(HEAD_OUTPUT, DataType.FLOAT, ['N', spec.numClasses]);
  return b.model(17);
}

/**
 * Export graph: the trained weights baked in. It uses only ops whose meaning is the same from opset 11 on
 * (Sub, Mul, Gemm, Relu, Softmax over the last axis of a 2-D tensor), so it can be merged into a backbone
 * of any opset ≥ 11 without changing the backbone's opset.
 */
export function buildExportGraph(spec: HeadSpec, std: Standardizer, params: HeadParams, opset = 11): ModelProto {
  validateSpec(spec);
  const b = new GraphBuilder('head');
  const x = b.input(HEAD_INPUT, DataType.FLOAT, ['N', spec.inputDim]);
  const w = declareParams(b, spec, { kind: 'export', params });
  b.op('Softmax', [forward(b, spec, std, x, w)], { axis: 1 }, { outputs: [HEAD_OUTPUT] });
  b.output(HEAD_OUTPUT, DataType.FLOAT, ['N', spec.numClasses]);
  return b.model(Math.max(11, opset));
}

/**
 * Two full training steps of a small conv net and of a small transformer encoder block, checked against
 * PyTorch autograd and torch.optim. The reference numbers are a committed fixture
 * (test/fixtures/torch-steps.json, made by scripts/torch_reference.py with Debian's python3-torch; see the
 * script for the networks and how to regenerate it): the suite itself needs no Python.
 *
 * Each network is rebuilt here as an ONNX graph (opset 17, float32) with its parameters as graph inputs;
 * appendGradients adds the backward pass and onnxruntime-node runs it. Checked: the loss and every
 * parameter's gradient at torch's initial parameters; then, for SGD (momentum 0.9), Adam and AdamW from
 * src/train/optimizer.ts, starting from the same parameters: the parameters after step 1, the loss and
 * gradients that the ORT graph computes at graft's own step-1 parameters, and the parameters after step 2.
 * Each trajectory is graft's own (gradients from ORT, updates from the optimizers): nothing from torch is
 * fed back after the start.
 *
 * Tolerance, float32 against float32 (different kernels, summation orders and fusions), element-wise:
 * - losses and parameters: |graft − torch| ≤ 1e-4 · max(|torch|, 1e-2) (absolute 1e-6 near zero);
 * - gradients: |graft − torch| ≤ 1e-4 · max(|torch|, 1e-2 · max|torch| over the tensor): small gradient
 *   elements are sums that cancel, so their float32 error is relative to the tensor's scale, not their own;
 * - the update w − w0 (what the optimizer did, where a parameter comparison would drown it in |w|):
 *   |Δgraft − Δtorch| − 2·ulp(w) ≤ 1e-4 · max(|Δtorch|, 1e-2 · max|Δtorch| over the tensor), the 2 ulp
 *   being the float32 rounding of the two parameters. Only this check sees SGD's weight decay
 *   (lr · wd = 1e-5 of w per step) and which parameters decay.
 * Observed (ORT 1.30, torch 1.13): loss ≤ 8e-8, gradients ≤ 4.3e-5, parameters ≤ 9.5e-6, updates ≤ 2e-5.
 * Set GRAFT_TORCH_VERBOSE=1 to print the largest error of every check.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as ort from 'onnxruntime-node';
import { appendGradients } from '../src/onnx/autodiff.js';
import { GraphBuilder } from '../src/onnx/builder.js';
import { DataType, encodeModel } from '../src/onnx/proto.js';
import { Adam, AdamW, SGD, type Optimizer } from '../src/train/optimizer.js';
import type { Param } from '../src/head/head.js';

interface Entry {
  shape: number[];
  data: number[];
}
interface OptimizerRecord {
  kind: 'SGD' | 'Adam' | 'AdamW';
  lr: number;
  weightDecay: number;
  momentum?: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  params1: Record<string, number[]>;
  loss2: number;
  grads2: Record<string, number[]>;
  params2: Record<string, number[]>;
}
interface NetworkRecord {
  inputs: { x: Entry; labels: Entry };
  constants: Record<string, Entry | number>;
  params: Array<{ name: string; shape: number[]; decay: boolean; data: number[] }>;
  loss: number;
  grads: Record<string, number[]>;
  optimizers: Record<string, OptimizerRecord>;
}
interface Fixture {
  torch: string;
  conv: NetworkRecord;
  transformer: NetworkRecord;
}

const fixture = JSON.parse(readFileSync(new URL('../../test/fixtures/torch-steps.json', import.meta.url), 'utf8')) as Fixture;

const TOL = 1e-4;
const PARAM_FLOOR = 1e-2;
const GRAD_FLOOR = 1e-2; // times the tensor's largest magnitude
const UPDATE_FLOOR = 1e-2; // times the tensor's largest update
const verbose = !!process.env.GRAFT_TORCH_VERBOSE;

/** Largest |got − want| / max(|want|, floor) over the elements. */
function maxError(got: ArrayLike<number>, want: readonly number[], floor: number): { err: number; at: number } {
  assert.equal(got.length, want.length);
  let err = 0;
  let at = -1;
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i]! - want[i]!) / Math.max(Math.abs(want[i]!), floor);
    if (!(e <= err)) [err, at] = [Number.isNaN(e) ? Infinity : e, i]; // NaN counts as the worst
  }
  return { err, at };
}

/** Worst error per label, kept for the summary. */
type Report = Map<string, number>;

function check(report: Report, label: string, got: ArrayLike<number>, want: readonly number[], floor: number): void {
  const { err, at } = maxError(got, want, floor);
  report.set(label, Math.max(report.get(label) ?? 0, err));
  assert.ok(err <= TOL, `${label}: max relative error ${err.toExponential(2)} > ${TOL} at element ${at}: graft ${got[at]}, torch ${want[at]}`);
}

/** float32 spacing at v (the distance to the next float32 away from zero). */
function ulp32(v: number): number {
  const a = Math.abs(v);
  return a < 2 ** -126 ? 2 ** -149 : 2 ** (Math.floor(Math.log2(a)) - 23);
}

/**
 * The parameter update w − w0 against torch's, element-wise: |Δgraft − Δtorch| − 2·ulp(w) ≤ TOL · max(|Δtorch|,
 * 1e-2 · max|Δtorch|). The 2 ulp of w are the float32 rounding of the two parameters themselves.
 */
function checkUpdate(report: Report, label: string, w0: Float32Array, got: Float32Array, want: readonly number[]): void {
  const dWant = want.map((v, i) => v - w0[i]!);
  const floor = UPDATE_FLOOR * dWant.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  let err = 0;
  let at = -1;
  for (let i = 0; i < want.length; i++) {
    const e = Math.max(0, Math.abs(got[i]! - want[i]!) - 2 * ulp32(want[i]!)) / Math.max(Math.abs(dWant[i]!), floor);
    if (!(e <= err)) [err, at] = [Number.isNaN(e) ? Infinity : e, i];
  }
  report.set(label, Math.max(report.get(label) ?? 0, err));
  assert.ok(err <= TOL, `${label}: max error ${err.toExponential(2)} of the update > ${TOL} at element ${at}: graft ${got[at]! - w0[at]!}, torch ${dWant[at]}`);
}

function gradFloor(want: readonly number[]): number {
  return GRAD_FLOOR * want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
}

const f32 = (v: readonly number[]) => Float32Array.from(v);

/** A forward graph with the parameters (named as torch names them) as inputs; returns the loss name. */
type Build = (b: GraphBuilder, net: NetworkRecord) => string;

/** Conv 3x3/2 → BatchNorm (inference) → ReLU6 → depthwise 3x3 → ReLU → 1x1 → global average pool → Linear → cross-entropy. */
const buildConv: Build = (b, net) => {
  const scalar = (v: number) => b.constant('k', Float32Array.of(v), []);
  const c = (name: string) => net.constants[name] as Entry;
  const x = b.input('x', DataType.FLOAT, net.inputs.x.shape);
  const labels = b.input('labels', DataType.INT64, net.inputs.labels.shape);
  const mean = b.constant('bn_running_mean', f32(c('bn.running_mean').data), c('bn.running_mean').shape);
  const variance = b.constant('bn_running_var', f32(c('bn.running_var').data), c('bn.running_var').shape);
  let h = b.op('Conv', [x, 'conv1.weight', 'conv1.bias'], { kernel_shape: [3, 3], strides: [2, 2], pads: [1, 1, 1, 1] });
  h = b.op('BatchNormalization', [h, 'bn.weight', 'bn.bias', mean, variance], { epsilon: net.constants['bn.eps'] as number });
  h = b.op('Clip', [h, scalar(0), scalar(6)]);
  h = b.op('Conv', [h, 'dw.weight'], { kernel_shape: [3, 3], pads: [1, 1, 1, 1], group: 8 });
  h = b.op('Relu', [h]);
  h = b.op('Conv', [h, 'pw.weight', 'pw.bias'], { kernel_shape: [1, 1] });
  h = b.op('Flatten', [b.op('GlobalAveragePool', [h])]);
  const logits = b.op('Gemm', [h, 'fc.weight', 'fc.bias'], { transB: 1 });
  return b.op('SoftmaxCrossEntropyLoss', [logits, labels]);
};

/**
 * Pre-norm encoder block: LN → single-head attention (Q, K, V, O; K without bias) → +x → LN → Linear →
 * exact GELU (Erf) → Linear → + → mean over tokens → Linear → cross-entropy. Linear layers on [B, T, D]
 * are MatMul with the transposed torch weight [out, in] plus the bias; the classifier is Gemm transB = 1.
 */
const buildTransformer: Build = (b, net) => {
  const scalar = (v: number) => b.constant('k', Float32Array.of(v), []);
  const x = b.input('x', DataType.FLOAT, net.inputs.x.shape);
  const labels = b.input('labels', DataType.INT64, net.inputs.labels.shape);
  const d = net.inputs.x.shape[2]!;
  const eps = net.constants['ln.eps'] as number;
  const linear = (h: string, name: string, bias = true) => {
    const y = b.op('MatMul', [h, b.op('Transpose', [`${name}.weight`], { perm: [1, 0] })]);
    return bias ? b.op('Add', [y, `${name}.bias`]) : y;
  };
  const ln = (h: string, name: string) => b.op('LayerNormalization', [h, `${name}.weight`, `${name}.bias`], { axis: -1, epsilon: eps });
  const h = ln(x, 'ln1');
  const [q, k, v] = [linear(h, 'q'), linear(h, 'k', false), linear(h, 'v')];
  const scores = b.op('Mul', [b.op('MatMul', [q, b.op('Transpose', [k], { perm: [0, 2, 1] })]), scalar(1 / Math.sqrt(d))]);
  const attended = b.op('MatMul', [b.op('Softmax', [scores], { axis: -1 }), v]);
  const r1 = b.op('Add', [x, linear(attended, 'o')]);
  const f = linear(ln(r1, 'ln2'), 'fc1');
  const gelu = b.op('Mul', [b.op('Mul', [f, scalar(0.5)]), b.op('Add', [b.op('Erf', [b.op('Mul', [f, scalar(Math.SQRT1_2)])]), scalar(1)])]);
  const r2 = b.op('Add', [r1, linear(gelu, 'fc2')]);
  const pooled = b.op('ReduceMean', [r2], { axes: [1], keepdims: 0 });
  const logits = b.op('Gemm', [pooled, 'head.weight', 'head.bias'], { transB: 1 });
  return b.op('SoftmaxCrossEntropyLoss', [logits, labels]);
};

/** Forward + backward session: params → loss and gradients (by parameter name). */
async function gradientSession(net: NetworkRecord, build: Build) {
  const b = new GraphBuilder('torch_steps');
  for (const p of net.params) b.input(p.name, DataType.FLOAT, p.shape);
  const loss = build(b, net);
  const grads = appendGradients(b, { loss, wrt: net.params.map((p) => p.name) });
  b.output(loss, DataType.FLOAT, []);
  for (const p of net.params) b.output(grads.get(p.name)!, DataType.FLOAT, p.shape);
  const session = await ort.InferenceSession.create(encodeModel(b.model(17)), { intraOpNumThreads: 1 });
  const fixed = {
    x: new ort.Tensor('float32', f32(net.inputs.x.data), net.inputs.x.shape),
    labels: new ort.Tensor('int64', BigInt64Array.from(net.inputs.labels.data, (v) => BigInt(v)), net.inputs.labels.shape),
  };
  return {
    session,
    async run(params: readonly Param[]): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
      const feeds: Record<string, ort.Tensor> = { ...fixed };
      for (const p of params) feeds[p.name] = new ort.Tensor('float32', Float32Array.from(p.data), p.dims);
      const out = await session.run(feeds);
      return {
        loss: (out[loss]!.data as Float32Array)[0]!,
        grads: new Map(net.params.map((p) => [p.name, Float32Array.from(out[grads.get(p.name)!]!.data as Float32Array)])),
      };
    },
  };
}

function makeOptimizer(rec: OptimizerRecord, params: Param[]): Optimizer {
  if (rec.kind === 'SGD') return new SGD(params, { lr: rec.lr, momentum: rec.momentum, weightDecay: rec.weightDecay });
  const options = { lr: rec.lr, beta1: rec.beta1, beta2: rec.beta2, eps: rec.eps, weightDecay: rec.weightDecay };
  return rec.kind === 'Adam' ? new Adam(params, options) : new AdamW(params, options);
}

async function checkNetwork(name: 'conv' | 'transformer', build: Build): Promise<void> {
  const net = fixture[name];
  const report: Report = new Map();
  const { session, run } = await gradientSession(net, build);
  try {
    const initial = (): Param[] => net.params.map((p) => ({ name: p.name, dims: [...p.shape], data: f32(p.data), decay: p.decay }));
    const init = new Map(net.params.map((p) => [p.name, f32(p.data)]));
    const checkAll = (label: string, params: readonly Param[], want: Record<string, number[]>) => {
      for (const p of params) check(report, label, p.data, want[p.name]!, PARAM_FLOOR);
      for (const p of params) checkUpdate(report, `${label}, update`, init.get(p.name)!, p.data, want[p.name]!);
    };
    const checkGrads = (label: string, got: Map<string, Float32Array>, want: Record<string, number[]>) => {
      for (const p of net.params) check(report, `${label} (${p.name})`, got.get(p.name)!, want[p.name]!, gradFloor(want[p.name]!));
    };

    const first = await run(initial());
    check(report, 'loss', [first.loss], [net.loss], PARAM_FLOOR);
    checkGrads('gradient', first.grads, net.grads);

    for (const [key, rec] of Object.entries(net.optimizers)) {
      const params = initial();
      const opt = makeOptimizer(rec, params);
      opt.step(first.grads);
      checkAll(`${key} params after step 1`, params, rec.params1);
      const second = await run(params);
      check(report, `${key} loss at step 2`, [second.loss], [rec.loss2], PARAM_FLOOR);
      checkGrads(`${key} gradient at step 2`, second.grads, rec.grads2);
      opt.step(second.grads);
      checkAll(`${key} params after step 2`, params, rec.params2);
    }
  } finally {
    if (verbose) for (const [label, err] of report) console.log(`${name} ${label}: ${err.toExponential(2)}`);
    await session.release();
  }
}

test(`conv net: loss, gradients and two SGD/Adam/AdamW steps match PyTorch ${fixture.torch}`, async () => {
  await checkNetwork('conv', buildConv);
});

test(`transformer block: loss, gradients and two SGD/Adam/AdamW steps match PyTorch ${fixture.torch}`, async () => {
  await checkNetwork('transformer', buildTransformer);
});

test('the fixture is as described: float32, torch layouts, both networks with the three optimizers', () => {
  assert.equal((fixture as unknown as { dtype: string }).dtype, 'float32');
  for (const net of [fixture.conv, fixture.transformer]) {
    assert.deepEqual(Object.keys(net.optimizers), ['sgd', 'adam', 'adamw']);
    for (const p of net.params) assert.equal(p.data.length, p.shape.reduce((a, b) => a * b, 1), p.name);
  }
  assert.deepEqual(fixture.conv.params.find((p) => p.name === 'fc.weight')!.shape, [5, 16]); // Linear: [out, in]
  assert.deepEqual(fixture.conv.params.find((p) => p.name === 'dw.weight')!.shape, [8, 1, 3, 3]); // Conv: [out, in/groups, kh, kw]
});

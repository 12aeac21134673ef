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
import { DataType } from '../src/onnx/proto.js';
import { checkNetwork, f32, type Build, type Entry, type NetworkRecord } from './support/torch-fixture.js';

interface Fixture {
  torch: string;
  conv: NetworkRecord;
  transformer: NetworkRecord;
}

const fixture = JSON.parse(readFileSync(new URL('../../test/fixtures/torch-steps.json', import.meta.url), 'utf8')) as Fixture;

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

test(`conv net: loss, gradients and two SGD/Adam/AdamW steps match PyTorch ${fixture.torch}`, async () => {
  await checkNetwork('conv', fixture.conv, buildConv);
});

test(`transformer block: loss, gradients and two SGD/Adam/AdamW steps match PyTorch ${fixture.torch}`, async () => {
  await checkNetwork('transformer', fixture.transformer, buildTransformer);
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

/**
 * One BERT encoder layer (Hugging Face's BertLayer), masked-mean pooling, a linear head and cross-entropy:
 * loss, every gradient and two AdamW steps checked against PyTorch autograd and torch.optim.AdamW. The
 * reference is a committed fixture (test/fixtures/torch-bert.json, made by scripts/torch_bert_reference.py
 * with Debian's python3-torch; see the script for the network, its initialisation and how to regenerate it).
 *
 * The layer is built here as ONNX (opset 17, float32) with test/support/bert.ts's bertLayer, the layer that
 * buildBert stacks (optimum's export structure: Shape-computed head reshapes, decomposed LayerNorm, exact GELU
 * as Div/Erf/Add/Mul/Mul, mask bias (1 − m)·finfo(float32).min), on a float input x [3, 7, 32] and the
 * attention mask [3, 7], with every weight a graph input in torch's layout (Linear weights transposed in the
 * graph). appendGradients adds the backward pass, onnxruntime-node runs it, src/train/optimizer.ts's AdamW
 * steps the weights (decay on rank ≥ 2 only). The comparison (test/support/torch-fixture.ts, shared with
 * test/torch-steps.test.ts) and its tolerances: float32 against float32, 1e-4 relative for losses,
 * parameters and updates, gradients relative to 1e-2 of their tensor's largest; the key bias, whose gradient
 * is exactly 0 (softmax ignores a per-row shift), is checked ≈ 0 (≤ 1e-6 of the largest gradient) on both
 * sides and not stepped.
 * Observed (ORT 1.30, torch 1.13): see the report of GRAFT_TORCH_VERBOSE=1.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { DataType } from '../src/onnx/proto.js';
import { bertConfig, bertLayer, bertLayerParamShapes, Emitter, extendedAttentionMask, isLinearWeight, maskedMeanPool, FLOAT32_MIN } from './support/bert.js';
import { checkNetwork, type Build, type NetworkRecord } from './support/torch-fixture.js';

interface Fixture {
  torch: string;
  dtype: string;
  bert: NetworkRecord;
}

const fixture = JSON.parse(readFileSync(new URL('../../test/fixtures/torch-bert.json', import.meta.url), 'utf8')) as Fixture;
const CONFIG = { hidden: 32, heads: 4, intermediate: 64, layers: 1, eps: 1e-12, opset: 17 as const };

/** x [N, L, 32] → encoder.layer.0 (bertLayer) → masked mean → head (Gemm transB = 1) → cross-entropy (mean). */
const buildBertLayer: Build = (b, net) => {
  const cfg = bertConfig(CONFIG);
  const e = new Emitter(b, cfg);
  const x = b.input('x', DataType.FLOAT, net.inputs.x!.shape);
  const mask = b.input('attention_mask', DataType.INT64, net.inputs.attention_mask!.shape);
  const labels = b.input('labels', DataType.INT64, net.inputs.labels!.shape);
  // The graph inputs hold torch's layouts (declared by the caller under the parameter names): a Linear weight
  // [out, in] is transposed to the MatMul's [in, out] here.
  const param = (name: string) => (isLinearWeight(name) ? b.op('Transpose', [name], { perm: [1, 0] }) : name);
  const h = bertLayer(e, param, 0, x, extendedAttentionMask(e, mask));
  const logits = b.op('Gemm', [maskedMeanPool(e, h, mask), 'head.weight', 'head.bias'], { transB: 1 });
  return b.op('SoftmaxCrossEntropyLoss', [logits, labels]);
};

test(`BERT layer: loss, gradients and two AdamW steps match PyTorch ${fixture.torch}`, async () => {
  await checkNetwork('bert', fixture.bert, buildBertLayer, { propagateGradientTolerance: true });
});

test('the propagated gradient tolerance does not hide an optimizer that steps differently: a 1% larger lr fails', async () => {
  const rec = fixture.bert.optimizers.adamw!;
  const wrong: NetworkRecord = { ...fixture.bert, optimizers: { adamw: { ...rec, lr: rec.lr * 1.01 } } };
  await assert.rejects(checkNetwork('bert (lr × 1.01)', wrong, buildBertLayer, { propagateGradientTolerance: true }), /adamw params after step 1/);
});

test('the BERT fixture is as described: float32, HF names and torch layouts, padding in two rows, the key bias flagged', () => {
  assert.equal(fixture.dtype, 'float32');
  const net = fixture.bert;
  assert.deepEqual(Object.keys(net.optimizers), ['adamw']);
  assert.deepEqual(net.params.map((p) => [p.name, p.shape]), [...Object.entries(bertLayerParamShapes(CONFIG, 0)), ['head.weight', [3, 32]], ['head.bias', [3]]]);
  for (const p of net.params) {
    assert.equal(p.data.length, p.shape.reduce((a, b) => a * b, 1), p.name);
    assert.equal(p.decay, p.shape.length >= 2, p.name);
    assert.equal(p.zeroGradient ?? false, p.name === 'encoder.layer.0.attention.self.key.bias', p.name);
  }
  assert.deepEqual(net.inputs.x!.shape, [3, 7, 32]);
  assert.deepEqual(net.inputs.attention_mask!.data, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0]);
  assert.equal(net.constants.maskValue, FLOAT32_MIN);
  assert.equal(net.constants.eps, CONFIG.eps);
});

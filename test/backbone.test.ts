/**
 * loadBackbone on the real int8 MobileNetV2: the cut it finds, the config it infers, the cache key, the errors for
 * bad cuts, contradicting configs and unreadable files, and the features of the cut model against the original
 * graph's `627` feature map averaged by hand.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as ort from 'onnxruntime-node';
import { loadBackbone, type ImageBackbone as Backbone, type LoadBackboneOptions } from '../src/backbone/backbone.js';
import { GraftError, type GraftErrorCode } from '../src/errors.js';
import { encodeModel, loadModel, onnx } from '../src/onnx/proto.js';
import { pruneTo } from '../src/onnx/surgery.js';
import { inputShape } from '../src/preprocess/config.js';
import { decodeImage, normalizeInto } from '../src/preprocess/image.js';
import { requireShared, SHARED } from './support/paths.js';

const INT8_MODEL = `${SHARED}/models/mobilenetv2-12-int8/model.onnx`;
const IMAGE = `${SHARED}/data/hymenoptera/val/bees/10870992_eebeeb3a12.jpg`;
requireShared(INT8_MODEL, IMAGE);

async function rejectsWith(promise: Promise<unknown>, code: GraftErrorCode, pattern?: RegExp): Promise<void> {
  await assert.rejects(promise, (e: unknown) => {
    assert.ok(e instanceof GraftError, `expected a GraftError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (pattern) assert.match(e.message, pattern);
    return true;
  });
}

describe('loadBackbone (int8 MobileNetV2)', () => {
  let tmp: string;
  let backbone: Backbone;
  const load = (options?: LoadBackboneOptions) => loadBackbone(INT8_MODEL, options);

  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'graft-backbone-'));
    backbone = await load();
  });
  after(() => rm(tmp, { recursive: true, force: true }));

  it('finds the cut and infers the config from the graph input', async () => {
    assert.equal(backbone.config.cut, '627');
    assert.equal(backbone.config.featureDim, 1280);
    assert.equal(backbone.config.inputName, 'input');
    assert.equal(backbone.config.layout, 'NCHW');
    assert.deepEqual(backbone.config.inputSize, [224, 224]);
    assert.match(backbone.cutReason, /QLinearGlobalAveragePool/);
    assert.equal(backbone.source.file, INT8_MODEL);
    const sha = createHash('sha256').update(await readFile(INT8_MODEL)).digest('hex');
    assert.equal(backbone.source.sha256, sha);
  });

  it('builds a feature model with one output `features` and no classifier', () => {
    const g = backbone.featureModel.graph!;
    assert.deepEqual(g.output!.map((o) => o.name), ['features']);
    assert.deepEqual(g.input!.map((i) => i.name), ['input']);
    const ops = new Set(g.node!.map((n) => n.opType));
    assert.ok(!ops.has('QLinearMatMul') && !ops.has('QLinearGlobalAveragePool'), [...ops].join(','));
    assert.ok(!g.initializer!.some((t) => t.name!.startsWith('classifier')));
    assert.deepEqual(backbone.featureModelBytes, encodeModel(backbone.featureModel));
  });

  it('has a stable key that changes with the preprocessing and with the cut', async () => {
    assert.match(backbone.key, /^[0-9a-f]{32}$/);
    const again = await load();
    assert.equal(again.key, backbone.key);
    const cropped = await load({ config: { cropPct: 1 } });
    assert.match(cropped.key, /^[0-9a-f]{32}$/);
    assert.notEqual(cropped.key, backbone.key);
    // `input` is the only float tensor before 627 (everything between is int8): a valid if silly cut.
    const early = await load({ cut: 'input' });
    assert.equal(early.config.cut, 'input');
    assert.equal(early.config.featureDim, 3);
    assert.equal(early.cutReason, 'given with --cut');
    assert.notEqual(early.key, backbone.key);
    assert.notEqual(early.key, cropped.key);
  });

  it('accepts the found cut given explicitly, with the same key', async () => {
    const explicit = await load({ cut: '627' });
    assert.equal(explicit.key, backbone.key);
    assert.equal(explicit.config.featureDim, 1280);
  });

  it('rejects a cut tensor that is not in the model, naming it', async () => {
    await rejectsWith(load({ cut: 'no_such_tensor_42' }), 'MODEL', /no_such_tensor_42/);
  });

  it('rejects a cut at an int8 tensor', async () => {
    await rejectsWith(load({ cut: '627_quantized' }), 'MODEL', /627_quantized.*not float/);
  });

  it('rejects a config that contradicts the model with a CONFIG error', async () => {
    await rejectsWith(load({ config: { inputSize: [192, 192] } }), 'CONFIG', /192/);
    await rejectsWith(load({ config: { layout: 'NHWC' } }), 'CONFIG', /NHWC/);
    await rejectsWith(load({ config: { inputName: 'pixels' } }), 'CONFIG', /pixels/);
    await rejectsWith(load({ config: { featureDim: 1000 } }), 'CONFIG', /1000/);
  });

  it('rejects a file that is not an ONNX model with a MODEL error naming it', async () => {
    const junk = path.join(tmp, 'junk.onnx');
    await writeFile(junk, Buffer.from('this is not a protobuf at all \xff\xff\xff\xff\xff', 'latin1'));
    await rejectsWith(loadBackbone(junk), 'MODEL', /junk\.onnx.*not a readable ONNX model/);
  });

  it('rejects a missing file with a MODEL error', async () => {
    await rejectsWith(loadBackbone(path.join(tmp, 'missing.onnx')), 'MODEL', /missing\.onnx.*cannot read/);
  });

  it('computes features equal to the 7x7 mean of tensor 627 of the original model', async () => {
    const config = backbone.config;
    const input = new Float32Array(3 * 224 * 224);
    normalizeInto(await decodeImage(await readFile(IMAGE), config, IMAGE), config, input, 0);
    const shape = inputShape(config, 1);

    const { model } = await loadModel(INT8_MODEL);
    const pruned = pruneTo(model.graph!, ['627']);
    pruned.output = [{ name: '627' }];
    const reference = encodeModel(onnx.ModelProto.create({ ...model, graph: pruned }));

    const runOne = async (bytes: Uint8Array, output: string) => {
      const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1 });
      try {
        return (await session.run({ input: new ort.Tensor('float32', input, shape) }))[output]!;
      } finally {
        await session.release();
      }
    };
    const fmap = await runOne(reference, '627');
    const features = await runOne(backbone.featureModelBytes, 'features');
    assert.deepEqual([...fmap.dims], [1, 1280, 7, 7]);
    assert.deepEqual([...features.dims], [1, 1280]);
    const map = fmap.data as Float32Array;
    const got = features.data as Float32Array;
    let maxDiff = 0;
    let nonzero = 0;
    for (let c = 0; c < 1280; c++) {
      let s = 0;
      for (let i = 0; i < 49; i++) s += map[c * 49 + i]!;
      maxDiff = Math.max(maxDiff, Math.abs(got[c]! - s / 49));
      if (got[c] !== 0) nonzero++;
    }
    assert.ok(maxDiff < 1e-4, `max abs diff ${maxDiff}`);
    assert.ok(nonzero > 100, `features are mostly zero (${nonzero} nonzero)`);
  });
});

/**
 * The zoo and model resolution: HF preprocessor files → PretrainedConfig, zoo entries pulled through a local
 * hub (the real repo names, serving small synthetic ONNX models in the hub's layout), loading them by name
 * offline afterwards, token-sequence backbones pooled to their class token, and the errors for unknown,
 * text and unpinned-file models.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { FEATURES, loadBackbone } from '../src/backbone/backbone.js';
import { isCached, pullModel, resolveModel } from '../src/backbone/resolve.js';
import { HUB_DEFAULT, OFFLINE_DEFAULT, ZOO, zooEntry } from '../src/backbone/zoo.js';
import { GraftError } from '../src/errors.js';
import { GraphBuilder } from '../src/onnx/builder.js';
import { DataType, encodeModel } from '../src/onnx/proto.js';
import { configFromPreprocessor } from '../src/preprocess/hf-config.js';
import { Random } from '../src/util/random.js';
import { startHubServer, type HubServer } from './support/hub-server.js';

const F = DataType.FLOAT;
const rng = new Random(7);
const randn = (n: number, s = 0.2) => Float32Array.from({ length: n }, () => rng.normal() * s);

/** pixel_values [N,3,224,224] → Conv 4ch stride 32 → Relu → GlobalAveragePool → Flatten → Gemm → logits [N,10]. */
function cnn(): Uint8Array {
  const g = new GraphBuilder('cnn');
  const x = g.input('pixel_values', F, ['batch', 3, 224, 224]);
  const y = g.op('Relu', [g.op('Conv', [x, g.constant('w', randn(4 * 3 * 32 * 32, 0.05), [4, 3, 32, 32])], { strides: [32, 32] })]);
  const p = g.op('Flatten', [g.op('GlobalAveragePool', [y])]);
  g.op('Gemm', [p, g.constant('fc', randn(10 * 4), [10, 4])], { transB: 1 }, { outputs: ['logits'] });
  g.output('logits', F, ['batch', 10]);
  return encodeModel(g.model(13));
}

/** pixel_values → 4 patch tokens of 8 dims (Conv stride 112 → [N,8,2,2] → [N,4,8]) plus a learned class token → last_hidden_state [N,5,8]. */
function tokens(): Uint8Array {
  const g = new GraphBuilder('vit');
  const x = g.input('pixel_values', F, ['batch', 3, 224, 224]);
  const patches = g.op('Conv', [x, g.constant('w', randn(8 * 3 * 112 * 112, 0.01), [8, 3, 112, 112])], { strides: [112, 112] });
  const seq = g.op('Transpose', [g.op('Reshape', [patches, g.int64('shape', [0, 8, 4])])], { perm: [0, 2, 1] });
  const batch = g.op('Slice', [g.op('Shape', [x]), g.int64('s0', [0]), g.int64('s1', [1])]);
  const cls = g.op('Expand', [g.constant('cls', randn(8, 1), [1, 1, 8]), g.op('Concat', [batch, g.int64('one8', [1, 8])], { axis: 0 })]);
  g.op('Tanh', [g.op('Concat', [cls, seq], { axis: 1 })], {}, { outputs: ['last_hidden_state'] });
  g.output('last_hidden_state', F, ['batch', 5, 8]);
  return encodeModel(g.model(13));
}

const CNN = cnn();
const TOKENS = tokens();
const json = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));
const MOBILENET_PROCESSOR = {
  crop_size: { height: 224, width: 224 },
  do_center_crop: true,
  do_normalize: true,
  do_rescale: true,
  do_resize: true,
  image_mean: [0.5, 0.5, 0.5],
  image_processor_type: 'MobileNetV2ImageProcessor',
  image_std: [0.5, 0.5, 0.5],
  resample: 2,
  rescale_factor: 0.00392156862745098,
  size: { shortest_edge: 256 },
};
const VIT_PROCESSOR = { do_normalize: true, do_resize: true, image_mean: [0.5, 0.5, 0.5], image_std: [0.5, 0.5, 0.5], resample: 2, size: 224 };

async function rejectsWith(p: Promise<unknown>, code: string, pattern: RegExp) {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof GraftError, String(e));
    assert.equal(e.code, code, e.message);
    assert.match(e.message, pattern);
    return true;
  });
}

describe('preprocessor_config.json → PretrainedConfig', () => {
  test('MobileNetV2 / DINOv2 style: shortest edge 256, centre crop 224', () => {
    const c = configFromPreprocessor(MOBILENET_PROCESSOR);
    assert.deepEqual(c.inputSize, [224, 224]);
    assert.equal(c.resize, 'center-crop');
    assert.equal(c.cropPct, 0.875);
    assert.equal(c.interpolation, 'bilinear');
    assert.deepEqual(c.mean, [0.5, 0.5, 0.5]);
    assert.equal(c.scale, 1 / 255);
    assert.equal(c.layout, 'NCHW');
  });
  test('ViT: a plain 224×224 resize', () => {
    const c = configFromPreprocessor(VIT_PROCESSOR);
    assert.deepEqual([c.inputSize, c.resize, c.cropPct], [[224, 224], 'squash', 1]);
  });
  test('ConvNext/ResNet: crop_pct with shortest_edge, bicubic', () => {
    const c = configFromPreprocessor({ crop_pct: 0.875, do_resize: true, image_mean: [0.485, 0.456, 0.406], image_std: [0.229, 0.224, 0.225], resample: 3, size: { shortest_edge: 224 } });
    assert.deepEqual([c.inputSize, c.resize, c.cropPct, c.interpolation], [[224, 224], 'center-crop', 0.875, 'bicubic']);
  });
  test('CLIP: shortest edge 224 and crop 224 (no margin); no normalisation; no rescale', () => {
    const c = configFromPreprocessor({ size: { shortest_edge: 224 }, crop_size: 224, do_center_crop: true, resample: 3, image_mean: [0.48145466, 0.4578275, 0.40821073], image_std: [0.26862954, 0.26130258, 0.27577711] });
    assert.deepEqual([c.inputSize, c.cropPct], [[224, 224], 1]);
    assert.equal(c.mean![0], 0.48145466);
    const raw = configFromPreprocessor({ do_normalize: false, do_rescale: false, size: { height: 32, width: 48 } });
    assert.deepEqual([raw.mean, raw.std, raw.scale, raw.inputSize], [[0, 0, 0], [1, 1, 1], 1, [32, 48]]);
  });
  test('not an object is a CONFIG error naming the file', () => {
    assert.throws(() => configFromPreprocessor(3, '/x/preprocessor_config.json'), /\/x\/preprocessor_config\.json: expected a JSON object/);
  });
});

describe('zoo', () => {
  test('entries are complete and distinct', () => {
    assert.equal(new Set(ZOO.map((e) => e.name)).size, ZOO.length);
    for (const e of ZOO) {
      assert.ok(e.description && e.licence && e.bytes > 0 && e.featureDim > 0, e.name);
      if (e.source.kind === 'hub') {
        assert.match(e.source.repo, /^[\w.-]+\/[\w.-]+$/, e.name);
        if (e.source.sha256) assert.match(e.source.sha256, /^[0-9a-f]{64}$/, e.name);
      }
    }
    for (const wanted of ['mobilenetv2', 'resnet50', 'efficientnet-b0', 'vgg16', 'vit-b16', 'dinov2-small', 'clip-vit-b32', 'bert-base', 'minilm-l6'])
      assert.ok(zooEntry(wanted), wanted);
    assert.equal(zooEntry(HUB_DEFAULT)!.task, 'image');
    assert.equal(zooEntry(OFFLINE_DEFAULT)!.source.kind, 'bundled');
  });
});

describe('models by name through a local hub', () => {
  let server: HubServer;
  let cacheDir: string;
  let graftCache: string;
  const hub = () => ({ endpoint: server.url, cacheDir, offline: false });
  const offline = () => ({
    cacheDir,
    offline: true,
    fetch: (() => {
      throw new Error('network used');
    }) as unknown as typeof fetch,
  });

  before(async () => {
    server = await startHubServer({
      'onnx-community/mobilenet_v2_1.0_224': { files: { 'onnx/model.onnx': { content: CNN, lfs: true }, 'preprocessor_config.json': { content: json(MOBILENET_PROCESSOR) } } },
      'Xenova/vit-base-patch16-224-in21k': { files: { 'onnx/model.onnx': { content: TOKENS, lfs: true }, 'preprocessor_config.json': { content: json(VIT_PROCESSOR) } } },
      'acme/any': { files: { 'onnx/model.onnx': { content: CNN, lfs: true }, 'exports/small.onnx': { content: CNN, lfs: true } } },
      'Xenova/dinov2-small': { files: { 'onnx/model.onnx': { content: TOKENS, lfs: true }, 'preprocessor_config.json': { content: json(VIT_PROCESSOR) } } },
    });
    cacheDir = await mkdtemp(join(tmpdir(), 'graft-zoo-hf-'));
    graftCache = await mkdtemp(join(tmpdir(), 'graft-zoo-cache-'));
  });
  after(async () => {
    await server.close();
    await rm(cacheDir, { recursive: true, force: true });
    await rm(graftCache, { recursive: true, force: true });
  });

  test('pull downloads the model and its preprocessor file; it then resolves offline with the processor config', async () => {
    assert.equal(await isCached(zooEntry('mobilenetv2')!, { hub: hub() }), false);
    const { files } = await pullModel('mobilenetv2', { hub: hub() });
    assert.deepEqual(files.map((f) => f.path), ['onnx/model.onnx', 'preprocessor_config.json']);
    assert.equal(await isCached(zooEntry('mobilenetv2')!, { hub: hub() }), true);
    const resolved = await resolveModel('mobilenetv2', { hub: offline(), cacheDir: graftCache });
    assert.equal(resolved.name, 'mobilenetv2');
    assert.equal(resolved.file, files[0]!.local);
    assert.equal(resolved.config!.cropPct, 0.875);
    assert.deepEqual(resolved.config!.mean, [0.5, 0.5, 0.5]);
    assert.equal(resolved.config!.featureDim, 1280, 'the zoo states the real model\'s feature size');
    const backbone = await loadBackbone(resolved.file, { modelConfig: { ...resolved.config!, featureDim: 4 }, name: resolved.name! });
    assert.equal(backbone.config.featureDim, 4);
    assert.equal(backbone.config.inputName, 'pixel_values');
    assert.equal(backbone.source.name, 'mobilenetv2');
  });

  test('with no --model and a cached hub default, the hub MobileNetV2 is chosen without network, with a notice', async () => {
    const resolved = await resolveModel(undefined, { hub: offline(), cacheDir: graftCache });
    assert.equal(resolved.name, HUB_DEFAULT);
    assert.match(resolved.notice!, /no --model given: using mobilenetv2 .*from the hub cache/);
  });

  test('a token-sequence backbone (ViT) gives its class token as features', async () => {
    const resolved = await resolveModel('vit-b16', { hub: hub(), cacheDir: graftCache });
    assert.equal(resolved.config!.resize, 'squash');
    const backbone = await loadBackbone(resolved.file, { modelConfig: { ...resolved.config!, featureDim: 8 } });
    assert.equal(backbone.config.featureDim, 8);
    const x = new ort.Tensor('float32', randn(2 * 3 * 224 * 224, 1), [2, 3, 224, 224]);
    const full = await ort.InferenceSession.create(TOKENS);
    const cut = await ort.InferenceSession.create(backbone.featureModelBytes);
    const seq = (await full.run({ pixel_values: x })).last_hidden_state!.data as Float32Array;
    const feats = (await cut.run({ pixel_values: x }))[FEATURES]!;
    assert.deepEqual(feats.dims, [2, 8]);
    for (let n = 0; n < 2; n++) for (let d = 0; d < 8; d++) assert.ok(Math.abs((feats.data as Float32Array)[n * 8 + d]! - seq[n * 5 * 8 + d]!) < 1e-6);
  });

  test('any hub repository: owner/name (transformers.js layout) or hf:owner/name/path.onnx', async () => {
    const a = await resolveModel('acme/any', { hub: hub(), cacheDir: graftCache });
    assert.equal(a.name, 'hf:acme/any/onnx/model.onnx');
    assert.equal(a.config, undefined, 'no preprocessor_config.json in that repo');
    const b = await resolveModel('hf:acme/any/exports/small.onnx', { hub: hub(), cacheDir: graftCache });
    assert.match(b.file, /models--acme--any\/snapshots\/[0-9a-f]{40}\/exports\/small\.onnx$/);
    const v = await resolveModel('hf:Xenova/vit-base-patch16-224-in21k', { hub: offline(), cacheDir: graftCache });
    assert.equal(v.config!.resize, 'squash', 'its cached preprocessor file is read, offline');
    assert.equal((await loadBackbone(a.file, {})).config.featureDim, 4);
  });

  test('a pinned sha256 protects against a changed upstream file', async () => {
    await rejectsWith(resolveModel('dinov2-small', { hub: hub(), cacheDir: graftCache }), 'HUB', /Xenova\/dinov2-small: onnx\/model\.onnx: the hub now serves a different file/);
  });

  test('unknown names, text models and missing paths are clear errors', async () => {
    await rejectsWith(resolveModel('resnet5O', { hub: offline() }), 'USAGE', /unknown model "resnet5O".*mobilenetv2, resnet50/);
    await rejectsWith(resolveModel('minilm-l6', { hub: offline() }), 'USAGE', /minilm-l6 is a text model/);
    await rejectsWith(resolveModel('./nowhere/model.onnx', { hub: offline() }), 'MODEL', /nowhere\/model\.onnx: no such file/);
    await rejectsWith(resolveModel('resnet50', { hub: offline() }), 'HUB', /Xenova\/resnet-50: onnx\/model\.onnx: not in the cache .* offline mode is on/);
  });
});

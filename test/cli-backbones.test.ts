/**
 * The backbone commands end to end: `graft models`, `graft pull` against a local hub (HF_ENDPOINT),
 * offline errors, `graft import` of the real Teachable Machine export followed by training on it, and
 * `graft train` with no --model on a machine without network (the bundled default).
 */
import { requireShared } from './support/paths.js';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { GraphBuilder } from '../src/onnx/builder.js';
import { DataType, encodeModel } from '../src/onnx/proto.js';
import { startHubServer, type HubServer } from './support/hub-server.js';
import { graft, linkSubset } from './support/cli.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const shared = resolve(root, '../shared');
const TM = join(shared, 'models/tm-mobilenetv2-0.35');

function tinyImageModel(): Uint8Array {
  const g = new GraphBuilder('tiny');
  const x = g.input('pixel_values', DataType.FLOAT, ['batch', 3, 224, 224]);
  // 1280 channels like the real MobileNetV2 (the zoo entry states that feature size).
  const w = Float32Array.from({ length: 1280 * 3 * 3 * 3 }, (_, i) => Math.sin(i) * 0.3);
  const y = g.op('Relu', [g.op('Conv', [x, g.constant('w', w, [1280, 3, 3, 3])], { strides: [32, 32] })]);
  g.op('Flatten', [g.op('GlobalAveragePool', [y])], {}, { outputs: ['logits'] });
  g.output('logits', DataType.FLOAT, ['batch', 1280]);
  return encodeModel(g.model(13));
}

describe('graft models / pull / import / default backbone', () => {
  let tmp: string;
  let server: HubServer;
  let env: Record<string, string>;
  let data: string;

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'graft-cli-bb-'));
    server = await startHubServer({
      'onnx-community/mobilenet_v2_1.0_224': {
        files: {
          'onnx/model.onnx': { content: tinyImageModel(), lfs: true },
          'preprocessor_config.json': { content: new TextEncoder().encode(JSON.stringify({ size: { shortest_edge: 256 }, crop_size: 224, do_center_crop: true, image_mean: 0.5, image_std: 0.5 })) },
        },
      },
    });
    env = { HF_ENDPOINT: server.url, HF_HUB_CACHE: join(tmp, 'hf'), GRAFT_CACHE: join(tmp, 'graft'), HF_HUB_OFFLINE: '' };
    data = join(tmp, 'data');
    await linkSubset(data, 'train', 25);
    await linkSubset(data, 'val', 25);
  });
  after(async () => {
    await server.close();
    await rm(tmp, { recursive: true, force: true });
  });

  test('models lists the zoo as JSON, nothing cached yet', async () => {
    const r = await graft(['models', '--json'], env);
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(r.stdout) as { cacheDir: string; models: Array<{ name: string; cached: boolean; featureDim: number; licence: string; bytes: number; task: string }> };
    assert.equal(doc.cacheDir, join(tmp, 'hf'));
    assert.ok(doc.models.length >= 10);
    const byName = new Map(doc.models.map((m) => [m.name, m]));
    assert.equal(byName.get('resnet50')!.featureDim, 2048);
    assert.equal(byName.get('minilm-l6')!.task, 'text');
    assert.equal(byName.get('mobilenetv2')!.cached, false);
    const table = await graft(['models'], env);
    assert.match(table.stdout, /^name\s+task\s+size\s+features\s+licence\s+cached/m);
    assert.match(table.stdout, /^vgg16\s+image\s+553 MB\s+4096\s+apache-2.0\s+no$/m);
  });

  test('pull fetches through HF_ENDPOINT into HF_HUB_CACHE; models then shows it cached', async () => {
    const r = await graft(['pull', 'mobilenetv2', '--json'], env);
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(r.stdout) as { model: string; files: Array<{ path: string; local: string; bytes: number }> };
    assert.equal(doc.model, 'mobilenetv2');
    assert.deepEqual(doc.files.map((f) => f.path), ['onnx/model.onnx', 'preprocessor_config.json']);
    assert.ok(doc.files[0]!.local.startsWith(join(tmp, 'hf', 'models--onnx-community--mobilenet_v2_1.0_224', 'snapshots')));
    const listed = JSON.parse((await graft(['models', '--json'], env)).stdout) as { models: Array<{ name: string; cached: boolean }> };
    assert.equal(listed.models.find((m) => m.name === 'mobilenetv2')!.cached, true);
  });

  test('offline, a model that is not cached is an error naming the file', async () => {
    const r = await graft(['pull', 'resnet50', '--offline', '--json'], env);
    assert.equal(r.code, 1);
    const doc = JSON.parse(r.stdout) as { error: { code: string; message: string } };
    assert.equal(doc.error.code, 'HUB');
    assert.match(doc.error.message, /Xenova\/resnet-50: onnx\/model\.onnx: not in the cache .* offline mode is on/);
  });

  test('import converts the Teachable Machine export; training on the imported backbone works', async () => {
    requireShared(TM);
    const out = join(tmp, 'tm');
    const r = await graft(['import', TM, '--out', out, '--json'], env);
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(r.stdout) as { format: string; model: string; labels: string[]; config: { layout: string; scale: number } };
    assert.equal(doc.format, 'layers');
    assert.equal(doc.model, join(out, 'model.onnx'));
    assert.deepEqual(doc.labels, ['바위', '보', '가위']);
    assert.equal(doc.config.layout, 'NHWC');
    assert.deepEqual(JSON.parse(await readFile(join(out, 'labels.json'), 'utf8')), doc.labels);
    const trained = await graft(['train', data, '--model', doc.model, '--out', join(tmp, 'tm-out'), '--epochs', '20', '--json'], env);
    assert.equal(trained.code, 0, trained.stderr);
    const t = JSON.parse(trained.stdout) as { metrics: { accuracy: number } };
    assert.ok(t.metrics.accuracy >= 0.7, `accuracy ${t.metrics.accuracy}`);
    assert.match(trained.stderr, /cut at "[^"]+" \(input of GlobalAveragePool/);
  });

  test('no --model and no network: the bundled backbone, with a notice, recorded in graft.json', async () => {
    const off = { ...env, HF_HUB_OFFLINE: '1', HF_HUB_CACHE: join(tmp, 'hf-empty') };
    const out = join(tmp, 'default-out');
    const r = await graft(['train', data, '--out', out, '--epochs', '20', '--json'], off);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /no --model given: offline mode; using the bundled offline backbone mobilenetv2-140-bundled/);
    const doc = JSON.parse(r.stdout) as { metrics: { accuracy: number } };
    assert.ok(doc.metrics.accuracy >= 0.65, `accuracy ${doc.metrics.accuracy}`);
    const manifest = JSON.parse(await readFile(join(out, 'graft.json'), 'utf8')) as { backbone: { name: string; file: string } };
    assert.equal(manifest.backbone.name, 'mobilenetv2-140-bundled');
    assert.ok(manifest.backbone.file.startsWith(join(tmp, 'graft', 'backbones')));
  });

  test('no --model with the hub default cached: that one is used, without network', async () => {
    const off = { ...env, HF_HUB_OFFLINE: '1' };
    const r = await graft(['train', data, '--out', join(tmp, 'hub-out'), '--epochs', '3', '--json'], off);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /no --model given: using mobilenetv2 \(onnx-community\/mobilenet_v2_1\.0_224, from the hub cache\)/);
  });
});

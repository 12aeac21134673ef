/**
 * `importTfjs` on both TensorFlow.js formats as files on disk: the real Teachable Machine export (layers)
 * and nsfwjs's mobilenet_v2_mid written out as model.json + binary shards (graph). Each writes a model
 * that loadBackbone cuts at its global pooling with the written config, and the sidecar says NHWC.
 */
import { requireShared } from './support/paths.js';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { loadBackbone } from '../src/backbone/backbone.js';
import { importTfjs } from '../src/convert/import.js';
import { GraftError } from '../src/errors.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const TM = resolve(root, '../shared/models/tm-mobilenetv2-0.35');
const require = createRequire(import.meta.url);

describe('graft import', () => {
  let tmp: string;
  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'graft-import-'));
  });
  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  test('a Teachable Machine layers export: labels, [-1, 1] NHWC config, cut at its pooling', async () => {
    requireShared(TM);
    const r = await importTfjs(TM, join(tmp, 'tm'));
    assert.equal(r.format, 'layers');
    assert.deepEqual(r.inputShape, [-1, 224, 224, 3]);
    assert.equal(r.configSource, 'Teachable Machine metadata.json');
    const sidecar = JSON.parse(await readFile(join(tmp, 'tm', 'pretrained_cfg.json'), 'utf8'));
    assert.deepEqual([sidecar.layout, sidecar.scale, sidecar.mean], ['NHWC', 1 / 127.5, [1, 1, 1]]);
    const backbone = await loadBackbone(r.model);
    assert.equal(backbone.config.featureDim, 1280);
    assert.equal(backbone.config.layout, 'NHWC');
    assert.match(backbone.cutReason, /input of GlobalAveragePool/);
  });

  test('a graph model on disk (nsfwjs mobilenet_v2_mid as model.json + .bin shards)', async () => {
    const dir = join(tmp, 'graph-src');
    const pkg = join(root, 'node_modules', 'nsfwjs');
    const models = join(pkg, 'dist', 'models', 'mobilenet_v2_mid');
    const json = require(join(models, 'model.min.js')) as { weightsManifest: Array<{ paths: string[] }> };
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { recursive: true });
    for (const p of json.weightsManifest[0]!.paths) await writeFile(join(dir, p), Buffer.from(require(join(models, `${p}.min.js`)) as string, 'base64'));
    await writeFile(join(dir, 'model.json'), JSON.stringify(json));
    const r = await importTfjs(dir, join(tmp, 'graph'));
    assert.equal(r.format, 'graph');
    assert.equal(r.inputName, 'input');
    assert.match(r.configSource, /^assumed/);
    const backbone = await loadBackbone(r.model, { config: { scale: 1 / 255, mean: [0, 0, 0], std: [1, 1, 1] } });
    assert.equal(backbone.config.featureDim, 1792);
  });

  test('a folder without model.json is an error naming it', async () => {
    await assert.rejects(importTfjs(join(tmp, 'nothing'), join(tmp, 'x')), (e: unknown) => e instanceof GraftError && /nothing: no such file or folder/.test(e.message));
    await writeFile(join(tmp, 'model.json'), '{"not": "a model"}');
    await assert.rejects(importTfjs(join(tmp, 'model.json'), join(tmp, 'x')), (e: unknown) => e instanceof GraftError && /not a TensorFlow\.js model\.json/.test(e.message));
  });
});

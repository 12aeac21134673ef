/**
 * The library path on real images: learner() → fit() → evaluate() → export() → GraftModel.load(), and the
 * exported ONNX file run by plain onnxruntime-node reproduces the pipeline's probabilities.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { learner, GraftModel, GraftError, type Learner } from '../src/index.js';
import { Evaluator } from '../src/train/trainer.js';
import { decodeImage, normalizeInto } from '../src/preprocess/image.js';
import { inputShape } from '../src/preprocess/config.js';
import { readArtifact } from '../src/artifact/artifact.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const MODEL = resolve(root, '../shared/models/mobilenetv2-12-int8/model.onnx');
const HYM = resolve(root, '../shared/data/hymenoptera');

describe('Learner on a hymenoptera subset', () => {
  let tmp: string;
  let learn: Learner;
  let out: string;

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'graft-learner-'));
    // DIR/<class>/* without a val folder: exercises the seeded stratified split.
    for (const cls of ['ants', 'bees']) {
      await mkdir(join(tmp, 'data', cls), { recursive: true });
      const files = (await readdir(join(HYM, 'train', cls))).filter((f) => f.endsWith('.jpg')).sort().slice(0, 30);
      for (const f of files) await symlink(join(HYM, 'train', cls, f), join(tmp, 'data', cls, f));
    }
    // The MLP head, trained by epochs (the default `auto` head may be solved instead: test/select-head.test.ts).
    learn = await learner({ data: join(tmp, 'data'), model: MODEL, cacheDir: join(tmp, 'cache'), valSplit: 0.3, seed: 7, head: 'mlp' });
    out = join(tmp, 'out');
  });

  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  it('splits 30 images per class 21/9 and cuts the backbone at 627', () => {
    assert.equal(learn.data.trainRows.length, 42);
    assert.equal(learn.data.valRows.length, 18);
    assert.equal(learn.backbone.config.cut, '627');
    assert.equal(learn.spec.inputDim, 1280);
    assert.equal(learn.data.dataset.split.kind, 'random');
  });

  it('refuses to evaluate or export before fit', async () => {
    await assert.rejects(learn.evaluate(), (e: unknown) => e instanceof GraftError && e.code === 'TRAIN');
  });

  it('fits a head that beats chance, with the training loss falling', async () => {
    const result = await learn.fit({ epochs: 25, patience: 0 });
    assert.equal(result.history.length, 25);
    const first = result.history[0]!.trainLoss;
    const last = result.history[result.history.length - 1]!.trainLoss;
    assert.ok(last < first * 0.5, `train loss ${first} → ${last}`);
    const metrics = await learn.evaluate();
    assert.ok(metrics.accuracy >= 0.75, `accuracy ${metrics.accuracy}`);
    assert.equal(metrics.count, 18);
  });

  it('early stopping restores the weights of the best validation epoch', async () => {
    const result = await learn.fit({ epochs: 40, patience: 3, lr: 3e-3 });
    const best = result.history[result.bestEpoch]!;
    assert.equal(Math.min(...result.history.map((h) => h.valLoss)), best.valLoss);
    if (result.stoppedEarly) assert.equal(result.history.length, result.bestEpoch + 1 + 3);
    const metrics = await learn.evaluate();
    assert.ok(Math.abs(metrics.loss! - best.valLoss) < 1e-5, `restored loss ${metrics.loss} vs best ${best.valLoss}`);
  });

  it('exports one ONNX graph that reproduces the pipeline probabilities', async () => {
    const metrics = await learn.evaluate();
    await learn.export(out, metrics);
    const { manifest, modelBytes } = await readArtifact(out);
    assert.deepEqual(manifest.labels, ['ants', 'bees']);

    // Pipeline probabilities: cached features → head.
    const evaluator = await Evaluator.forHead(learn.spec, learn.standardizer);
    const pipeline = await evaluator.probabilities(learn.data.features, learn.data.valRows, learn.result!.params);
    await evaluator.release();

    // The exported file alone, run by plain ONNX Runtime on tensors preprocessed as graft.json says.
    const session = await ort.InferenceSession.create(modelBytes);
    const files = learn.data.valRows.map((r) => learn.data.dataset.train.concat(learn.data.dataset.val)[r]!.file);
    assert.equal(manifest.task, 'image-classification');
    if (manifest.task !== 'image-classification') return;
    const stride = 3 * 224 * 224;
    const x = new Float32Array(files.length * stride);
    for (let i = 0; i < files.length; i++) normalizeInto(await decodeImage(files[i]!, manifest.config), manifest.config, x, i * stride);
    const outputs = await session.run({ [manifest.model.input]: new ort.Tensor('float32', x, inputShape(manifest.config, files.length)) });
    const direct = outputs[manifest.model.output]!.data as Float32Array;
    assert.equal(direct.length, pipeline.length);
    let maxDiff = 0;
    for (let i = 0; i < direct.length; i++) maxDiff = Math.max(maxDiff, Math.abs(direct[i]! - pipeline[i]!));
    assert.ok(maxDiff < 1e-4, `max |Δp| = ${maxDiff}`);
    await session.release();

    // And through load() + predict.
    const model = await GraftModel.load(out);
    const { probabilities, valid } = await model.probabilities(files);
    assert.ok(valid.every((v) => v === 1));
    for (let i = 0; i < probabilities.length; i++) assert.ok(Math.abs(probabilities[i]! - pipeline[i]!) < 1e-4);
    const { predictions } = await model.predict(files.slice(0, 1), 1);
    assert.equal(predictions[0]!.predictions.length, 1);
    await model.close();
  });

  it('detects a model.onnx that does not match its graft.json', async () => {
    const bytes = await readFile(join(out, 'model.onnx'));
    bytes[bytes.length - 1] ^= 0xff;
    await writeFile(join(out, 'model.onnx'), bytes);
    await assert.rejects(GraftModel.load(out), (e: unknown) => e instanceof GraftError && e.code === 'ARTIFACT' && /sha256/.test(e.message));
    await assert.rejects(GraftModel.load(join(tmp, 'nowhere')), (e: unknown) => e instanceof GraftError && /graft.json/.test(e.message));
  });
});

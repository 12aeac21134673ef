/** The learning-rate range test: the rate schedule, the valley rule, the plot, and `graft lr-find` / `--lr auto`. */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fitStandardizer, type HeadSpec } from '../src/head/head.js';
import { lrFind, lrFindSvg, valley } from '../src/train/lr-find.js';
import { DEFAULT_FIT, headTrainable } from '../src/train/trainer.js';
import { Random } from '../src/util/random.js';
import { graft, linkSubset } from './support/cli.js';
import { requireShared, SHARED } from './support/paths.js';

const [MODEL] = requireShared(`${SHARED}/models/mobilenetv2-12-int8/model.onnx`);

describe('learning-rate range test', () => {
  it('valley: halfway through the middle third of the longest falling stretch', () => {
    // Flat, then falling from index 3 to 12, then blowing up.
    const losses = [2, 2.01, 2.02, 2, 1.8, 1.6, 1.4, 1.2, 1, 0.8, 0.6, 0.5, 0.45, 0.9, 3];
    // Longest decreasing run: 2.02 (2) … 0.45 (12), length 11; as fastai counts it, start = 12 - 11 = 1 and a
    // third is 11/3: 1 + 3 + 1 = 5.
    assert.equal(valley(losses), 5);
    assert.equal(valley([3, 2, 1]), 0);
    assert.equal(valley([1]), 0);
  });

  it('raises the rate exponentially step by step, stops when the loss blows up, and suggests a rate inside the falling part', async () => {
    const rng = new Random(2);
    const dim = 8, n = 256;
    const features = new Float32Array(n * dim);
    const labels = Int32Array.from({ length: n }, (_, i) => i % 2);
    for (let i = 0; i < n; i++) for (let j = 0; j < dim; j++) features[i * dim + j] = rng.normal() + (labels[i] ? 1 : -1) * (j < 2 ? 1 : 0);
    const rows = [...Array(n).keys()];
    const spec: HeadSpec = { kind: 'mlp', hidden: 32, dropout: 0.2, inputDim: dim, numClasses: 2 };
    const std = fitStandardizer(features, dim, rows.slice(0, 192));
    const fit = { ...DEFAULT_FIT, lr: 1e-3, batchSize: 16 };
    const r = await lrFind(headTrainable(spec, std, 0, fit.lr, fit.weightDecay), { features, dim, labels }, rows.slice(0, 192), rows.slice(192), fit, { start: 1e-6, end: 100, steps: 80 });
    assert.ok(r.lrs.length >= 20 && r.lrs.length <= 80, `${r.lrs.length} steps`);
    for (let i = 1; i < r.lrs.length; i++) assert.ok(Math.abs(r.lrs[i]! / r.lrs[i - 1]! - (100 / 1e-6) ** (1 / 79)) < 1e-9, 'a constant ratio per step');
    assert.ok(Math.abs(r.lrs[0]! - 1e-6) < 1e-18);
    assert.ok(r.lrs.length < 80, 'the loss blew up before the end (rates up to 100)');
    const i = r.lrs.indexOf(r.suggestion);
    assert.ok(i > 0 && r.smoothed[i]! < r.smoothed[0]!, `suggested ${r.suggestion}: the loss there is below where it started`);
    assert.ok(r.suggestion < r.minimumTenth * 10, 'the valley lies before the least loss');
    const svg = lrFindSvg(r);
    assert.match(svg, /^<svg [^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
    assert.match(svg, /<path d="M[\d.]+,[\d.]+( L[\d.]+,[\d.]+){19,}"/);
    assert.ok(!svg.includes('NaN'));
  });
});

describe('graft lr-find and --lr auto', () => {
  let tmp: string;
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'graft-lrfind-'));
    await linkSubset(path.join(tmp, 'data'), 'train', 20);
    await linkSubset(path.join(tmp, 'data'), 'val', 10);
  });
  after(() => rm(tmp, { recursive: true, force: true }));
  const env = () => ({ GRAFT_CACHE: path.join(tmp, 'cache'), HF_HUB_OFFLINE: '1' });

  it('prints the suggestion, writes the curve, and --lr auto trains the head at it', async () => {
    const out = path.join(tmp, 'find');
    const r = await graft(['lr-find', path.join(tmp, 'data'), '--model', MODEL, '--out', out, '--json'], env());
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(r.stdout) as { suggestion: number; lrs: number[]; smoothed: number[]; plot: string };
    assert.ok(doc.suggestion > 1e-7 && doc.suggestion < 10);
    assert.equal(doc.lrs.length, doc.smoothed.length);
    assert.match(await readFile(path.join(out, 'lr-find.svg'), 'utf8'), /<svg/);
    const trained = path.join(tmp, 'auto');
    const t = await graft(['train', path.join(tmp, 'data'), '--model', MODEL, '--out', trained, '--lr', 'auto', '--json'], env());
    assert.equal(t.code, 0, t.stderr);
    assert.match(t.stderr, /--lr auto: learning-rate range test suggests/);
    const manifest = JSON.parse(await readFile(path.join(trained, 'graft.json'), 'utf8')) as { training: { lr: number } };
    assert.equal(manifest.training.lr, doc.suggestion, 'same data, seed and options: the same suggestion, recorded as the rate trained with');
    const bad = await graft(['train', path.join(tmp, 'data'), '--lr', 'fast'], env());
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--lr must be a positive number, got "fast"/);
  });
});

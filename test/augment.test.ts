/**
 * Data augmentation: views drawn from a policy (deterministic per sample, within the policy's ranges), what
 * the decoding workers make of them (crop, rotation without uncovered corners, jitter, flips), audio views
 * (shift, gain, noise at a signal-to-noise ratio), the extractor's cache per view, the learner's layout of
 * augmented rows, epochs that pick among views, and test-time augmentation that the exported model
 * reproduces exactly.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import {
  applyAudioView,
  audioView,
  AUDIO_POLICIES,
  FLIP_VIEW,
  IMAGE_POLICIES,
  imageView,
  mirrorPixels,
  mirrorTensor,
  type ViewSpec,
} from '../src/preprocess/augment.js';
import { decodeImage, decodeImageView, normalizeInto } from '../src/preprocess/image.js';
import { IMAGENET_DEFAULTS, type PretrainedConfig } from '../src/preprocess/config.js';
import { loadBackbone } from '../src/backbone/backbone.js';
import { FeatureExtractor } from '../src/backbone/extractor.js';
import { pickViews } from '../src/train/trainer.js';
import { planViews, viewMap, ttaMap } from '../src/train/views.js';
import { Random } from '../src/util/random.js';
import { GraftError, GraftModel, learner, type Learner } from '../src/index.js';
import { requireShared, SHARED } from './support/paths.js';
import { graft } from './support/cli.js';

const [MODEL, HYM] = requireShared(`${SHARED}/models/mobilenetv2-12-int8/model.onnx`, `${SHARED}/data/hymenoptera`);
const BEE = `${HYM}/train/bees/16838648_415acd9e3f.jpg`;
const CONFIG: PretrainedConfig = { ...IMAGENET_DEFAULTS };
const standard = (view: number, seed = 0): Extract<ViewSpec, { kind: 'image' }> => ({ kind: 'image', policy: IMAGE_POLICIES.standard, seed, view });

describe('image views', () => {
  it('are a function of (policy, seed, view, sample): the same inputs give the same view, others differ', () => {
    assert.deepEqual(imageView(standard(1), 'abc'), imageView(standard(1), 'abc'));
    assert.notDeepEqual(imageView(standard(1), 'abc'), imageView(standard(2), 'abc'));
    assert.notDeepEqual(imageView(standard(1), 'abc'), imageView(standard(1), 'abd'));
    assert.notDeepEqual(imageView(standard(1, 0), 'abc'), imageView(standard(1, 1), 'abc'));
    assert.deepEqual(imageView({ kind: 'image', policy: 'flip', seed: 3, view: 0 }, 'x'), FLIP_VIEW);
  });

  it('stay within the policy: crop area and aspect, rotation, jitter factors; flips about half the time', () => {
    for (const name of ['light', 'standard', 'strong'] as const) {
      const p = IMAGE_POLICIES[name];
      let flips = 0;
      for (let i = 0; i < 400; i++) {
        const v = imageView({ kind: 'image', policy: p, seed: 0, view: i }, `sample-${i}`);
        const c = v.crop!;
        const area = c.width * c.height;
        const whole = c.width === 1 && c.height === 1;
        if (!whole) {
          assert.ok(area >= p.scale[0] - 1e-9 && area <= p.scale[1] + 1e-9, `${name}: area ${area}`);
          const ratio = c.width / c.height;
          assert.ok(ratio >= p.ratio[0] - 1e-9 && ratio <= p.ratio[1] + 1e-9, `${name}: ratio ${ratio}`);
        }
        assert.ok(c.left >= 0 && c.top >= 0 && c.left + c.width <= 1 + 1e-9 && c.top + c.height <= 1 + 1e-9, `${name}: crop inside ${JSON.stringify(c)}`);
        assert.ok(Math.abs(v.angle ?? 0) <= p.rotate, `${name}: angle ${v.angle}`);
        for (const k of ['brightness', 'contrast', 'saturation'] as const) {
          const f = v[k] ?? 1;
          assert.ok(f >= 1 - p[k] && f <= 1 + p[k], `${name}: ${k} ${f}`);
        }
        assert.ok(Math.abs(v.hue ?? 0) <= 360 * p.hue + 1e-9);
        if (v.flip) flips++;
      }
      assert.ok(flips > 150 && flips < 250, `${name}: ${flips} flips in 400`);
    }
  });
});

describe('decoding a view', () => {
  it('the mirror view is the clean decoding mirrored, and mirrorTensor does the same to normalised tensors (NCHW, NHWC)', async () => {
    const clean = await decodeImage(BEE, CONFIG);
    const flipped = await decodeImageView(BEE, CONFIG, FLIP_VIEW);
    assert.deepEqual(Uint8Array.from(flipped), mirrorPixels(Uint8Array.from(clean), 224, 224)); // (Buffer#slice would share clean's memory)
    assert.notDeepEqual(flipped, clean);
    for (const layout of ['NCHW', 'NHWC'] as const) {
      const config = { ...CONFIG, layout };
      const a = new Float32Array(3 * 224 * 224);
      const b = new Float32Array(3 * 224 * 224);
      normalizeInto(clean, config, a, 0);
      normalizeInto(flipped, config, b, 0);
      assert.deepEqual(mirrorTensor(a, config, 1), b, layout);
    }
  });

  it('a whole-image crop with no rotation or jitter is the squashed image', async () => {
    const squash = { ...CONFIG, resize: 'squash' as const };
    const view = await decodeImageView(BEE, squash, { crop: { left: 0, top: 0, width: 1, height: 1 }, flip: false });
    assert.deepEqual(Uint8Array.from(view), Uint8Array.from(await decodeImage(BEE, squash)));
  });

  it('crops the named region: the left half of a half-red, half-blue image is red', async () => {
    const png = await sharp({ create: { width: 200, height: 100, channels: 3, background: '#0000ff' } })
      .composite([{ input: await sharp({ create: { width: 100, height: 100, channels: 3, background: '#ff0000' } }).png().toBuffer(), left: 0, top: 0 }])
      .png()
      .toBuffer();
    const px = await decodeImageView(png, CONFIG, { crop: { left: 0, top: 0, width: 0.45, height: 1 }, flip: false });
    for (let i = 0; i < px.length; i += 3) assert.ok(px[i]! > 240 && px[i + 2]! < 15, `pixel ${i / 3}: ${px[i]},${px[i + 1]},${px[i + 2]}`);
    // Mirrored, the right side of the output is still the crop (red): the crop comes before the flip.
    const mirrored = await decodeImageView(png, CONFIG, { crop: { left: 0, top: 0, width: 0.45, height: 1 }, flip: true });
    assert.deepEqual(mirrored, px);
  });

  it('a rotation keeps no uncovered corner: a rotated solid image stays solid', async () => {
    const red = await sharp({ create: { width: 300, height: 200, channels: 3, background: '#ff0000' } }).png().toBuffer();
    for (const angle of [-20, 7, 15]) {
      const px = await decodeImageView(red, CONFIG, { crop: { left: 0, top: 0, width: 1, height: 1 }, angle, flip: false });
      let worst = 0;
      for (let i = 0; i < px.length; i += 3) worst = Math.max(worst, 255 - px[i]!, px[i + 1]!, px[i + 2]!);
      assert.ok(worst <= 2, `angle ${angle}: a pixel is ${worst} levels off red (uncovered corner)`);
    }
  });

  it('jitter: brightness above 1 brightens, contrast below 1 narrows the spread', async () => {
    const grad = await sharp(Buffer.from(Array.from({ length: 64 * 64 * 3 }, (_, i) => Math.floor(i / 3) % 64 * 3 + 30)), { raw: { width: 64, height: 64, channels: 3 } }).png().toBuffer();
    const whole = { left: 0, top: 0, width: 1, height: 1 };
    const stats = (px: Uint8Array) => {
      let s = 0, s2 = 0;
      for (const v of px) {
        s += v;
        s2 += v * v;
      }
      const m = s / px.length;
      return { mean: m, std: Math.sqrt(s2 / px.length - m * m) };
    };
    const base = stats(await decodeImageView(grad, CONFIG, { crop: whole, flip: false }));
    const bright = stats(await decodeImageView(grad, CONFIG, { crop: whole, flip: false, brightness: 1.4 }));
    const flat = stats(await decodeImageView(grad, CONFIG, { crop: whole, flip: false, contrast: 0.5 }));
    assert.ok(bright.mean > base.mean + 10, `brightness: mean ${base.mean} → ${bright.mean}`);
    assert.ok(Math.abs(flat.std - 0.5 * base.std) < 0.1 * base.std, `contrast 0.5: std ${base.std} → ${flat.std}`);
  });

  it('a cropped view of a corrupt file is a named IMAGE error, not a crash', async () => {
    const bytes = await sharp({ create: { width: 50, height: 50, channels: 3, background: '#808080' } }).jpeg().toBuffer();
    await assert.rejects(decodeImageView(bytes.subarray(0, 200), CONFIG, { crop: { left: 0, top: 0, width: 0.5, height: 0.5 }, flip: false }, 'cut.jpg'), (e: unknown) => e instanceof GraftError && e.code === 'IMAGE' && /cut\.jpg/.test(e.message));
  });
});

describe('audio views', () => {
  const rate = 16000;
  const sine = Float32Array.from({ length: rate }, (_, i) => 0.5 * Math.sin((2 * Math.PI * 440 * i) / rate));

  it('shift moves the clip (zeros enter), gain scales it', () => {
    const out = applyAudioView(sine, { shift: 100, gain: 2, noise: 0, seed: 1 });
    for (let i = 0; i < 100; i++) assert.equal(out[i], 0);
    for (let i = 100; i < rate; i += 997) assert.ok(Math.abs(out[i]! - 2 * sine[i - 100]!) < 1e-6);
    const back = applyAudioView(sine, { shift: -50, gain: 1, noise: 0, seed: 1 });
    assert.ok(Math.abs(back[0]! - sine[50]!) < 1e-7);
    for (let i = rate - 50; i < rate; i++) assert.equal(back[i], 0);
  });

  it('adds white noise at the view\'s signal-to-noise ratio', () => {
    for (const snr of [10, 20, 30]) {
      const out = applyAudioView(sine, { shift: 0, gain: 1, noise: 10 ** (-snr / 20), seed: 7 });
      let signal = 0, noise = 0;
      for (let i = 0; i < rate; i++) {
        signal += sine[i]! ** 2;
        noise += (out[i]! - sine[i]!) ** 2;
      }
      const measured = 10 * Math.log10(signal / noise);
      assert.ok(Math.abs(measured - snr) < 0.5, `SNR ${snr} dB measured ${measured.toFixed(2)}`);
    }
  });

  it('views stay within the policy', () => {
    const p = AUDIO_POLICIES.standard;
    for (let v = 1; v < 200; v++) {
      const view = audioView({ kind: 'audio', policy: p, seed: 0, view: v }, 'h', rate);
      assert.ok(Math.abs(view.shift) <= p.shift * rate + 1);
      const db = 20 * Math.log10(view.gain);
      assert.ok(Math.abs(db) <= p.gain + 1e-9);
      if (view.noise > 0) {
        const snr = -20 * Math.log10(view.noise);
        assert.ok(snr >= p.snr[0] - 1e-9 && snr <= p.snr[1] + 1e-9);
      }
    }
  });
});

describe('views as rows', () => {
  it('plans K blocks of training rows, then the mirrored validation rows', () => {
    const blocks = planViews('image', { augment: 'light', views: 2, tta: true }, 0, 10, [0, 1, 2, 3], [7, 8]);
    assert.deepEqual(blocks.map((b) => [b.purpose, b.offset, b.rows.length]), [['train', 10, 4], ['train', 14, 4], ['tta', 18, 2]]);
    blocks.forEach((b) => b.valid.fill(1));
    blocks[0]!.valid[1] = 0;
    assert.deepEqual([...viewMap(blocks)].sort((a, b) => a[0] - b[0]), [[0, [10, 14]], [1, [15]], [2, [12, 16]], [3, [13, 17]]]);
    assert.deepEqual([...ttaMap(blocks)], [[7, 18], [8, 19]]);
    assert.throws(() => planViews('text', { augment: 'light' }, 0, 10, [0], [1]), GraftError);
    assert.throws(() => planViews('image', { views: 3 }, 0, 10, [0], [1]), /augmentation policy/);
    assert.throws(() => planViews('audio', { tta: true }, 0, 10, [0], [1]), /images/);
    assert.equal(planViews('image', { augment: 'standard' }, 0, 10, [0], [1]).length, 4, 'four views by default');
  });

  it('an epoch trains on each row or one of its views, uniformly', () => {
    const views = new Map([[0, [10, 11, 12]]]);
    const rng = new Random(3);
    const counts = new Map<number, number>();
    for (let i = 0; i < 4000; i++) {
      const [r] = pickViews([0], views, rng);
      counts.set(r!, (counts.get(r!) ?? 0) + 1);
    }
    assert.deepEqual([...counts.keys()].sort((a, b) => a - b), [0, 10, 11, 12]);
    for (const n of counts.values()) assert.ok(Math.abs(n - 1000) < 120, `${[...counts]}`);
    assert.deepEqual(pickViews([5, 6], views, rng), [5, 6], 'rows without views stay');
  });
});

describe('augmented extraction and training on a hymenoptera subset', () => {
  let tmp: string;
  let data: string;
  let learn: Learner;

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'graft-augment-'));
    data = join(tmp, 'data');
    for (const cls of ['ants', 'bees']) {
      await mkdir(join(data, cls), { recursive: true });
      const files = (await readdir(join(HYM, 'train', cls))).filter((f) => f.endsWith('.jpg')).sort().slice(0, 16);
      for (const f of files) await symlink(join(HYM, 'train', cls, f), join(data, cls, f));
    }
  });

  after(async () => {
    await learn?.close();
    await rm(tmp, { recursive: true, force: true });
  });

  it('caches each view apart from the clean features; a view is the same every time', async () => {
    const backbone = await loadBackbone(MODEL);
    const files = (await readdir(join(data, 'bees'))).slice(0, 5).map((f) => join(data, 'bees', f));
    const cacheDir = join(tmp, 'view-cache');
    const ex = new FeatureExtractor(backbone, { cacheDir });
    try {
      const clean = await ex.extract(files);
      const v1 = await ex.extract(files, undefined, { view: standard(1) });
      assert.equal(v1.extracted, 5, 'a view is not served from the clean cache');
      assert.notDeepEqual(v1.features, clean.features);
      const again = await ex.extract(files, undefined, { view: standard(1) });
      assert.equal(again.cached, 5);
      assert.deepEqual(again.features, v1.features);
      const v2 = await ex.extract(files, undefined, { view: standard(2) });
      assert.equal(v2.extracted, 5);
      assert.notDeepEqual(v2.features, v1.features);
    } finally {
      await ex.close();
    }
    // Without a cache, in another extractor: the same view gives the same features.
    const fresh = new FeatureExtractor(backbone, { cacheDir: false });
    try {
      const a = await fresh.extract(files, undefined, { view: standard(1) });
      const cached = new FeatureExtractor(backbone, { cacheDir });
      const b = await cached.extract(files, undefined, { view: standard(1) });
      await cached.close();
      for (let i = 0; i < a.features.length; i++) assert.ok(Math.abs(a.features[i]! - b.features[i]!) < 1e-5);
    } finally {
      await fresh.close();
    }
  });

  it('learner: K views per training row after the clean rows, mirrored validation rows, training, and a TTA export that reproduces evaluate()', async () => {
    learn = await learner({ data, model: MODEL, cacheDir: join(tmp, 'cache'), valSplit: 0.25, seed: 3, augment: 'standard', views: 2, tta: true });
    const { trainRows, valRows, viewBlocks } = learn.data;
    const n = 32;
    assert.equal(trainRows.length + valRows.length, n);
    assert.equal(learn.data.features.features.length, n * learn.data.features.dim, 'views are extracted when a training needs them');
    assert.equal(learn.data.features.labels.length, n + 2 * trainRows.length + valRows.length);
    assert.deepEqual(viewBlocks.map((b) => b.purpose), ['train', 'train', 'tta']);

    await learn.fit({ epochs: 6, patience: 0 });
    const { features } = learn.data;
    assert.equal(features.features.length, (n + 2 * trainRows.length + valRows.length) * features.dim);
    assert.equal(features.views!.size, trainRows.length);
    for (const r of trainRows) for (const v of features.views!.get(r)!) assert.equal(features.labels[v], features.labels[r]);
    assert.equal(learn.data.extraction.views!.rows, 2 * trainRows.length + valRows.length);
    const metrics = await learn.evaluate();
    const out = join(tmp, 'out');
    const manifest = await learn.export(out, metrics);
    assert.deepEqual(manifest.inference, { tta: 'flip' });
    assert.deepEqual((manifest.training as { augmentation?: unknown }).augmentation, { policy: 'standard', views: 2, tta: true });
    // The exported model, applying the recorded TTA, gives the learner's validation metrics.
    const model = await GraftModel.load(out);
    try {
      const samples = [...learn.data.dataset.train, ...learn.data.dataset.val];
      const { probabilities } = await model.probabilities(valRows.map((r) => samples[r]!.file));
      let loss = 0;
      valRows.forEach((r, i) => (loss -= Math.log(Math.max(probabilities[i * 2 + features.labels[r]!]!, 1e-7))));
      assert.ok(Math.abs(loss / valRows.length - metrics.loss!) < 1e-4, `exported TTA loss ${loss / valRows.length} vs evaluate() ${metrics.loss}`);
    } finally {
      await model.close();
    }
  });

  it('fine-tuning with views: only the boundary activations of the views are extracted, and training runs on them', async () => {
    const tuning = await learner({ data, model: MODEL, cacheDir: join(tmp, 'cache'), valSplit: 0.25, seed: 3, augment: 'standard', views: 2, tta: true });
    try {
      const tuned = await tuning.fineTune({ unfreeze: 1, freezeEpochs: 2, fit: { epochs: 2, patience: 0 } });
      const { trainRows, valRows, features } = tuning.data;
      assert.equal(features.features.length, 32 * features.dim, 'no pooled views were extracted');
      assert.equal(features.views!.size, trainRows.length);
      assert.equal(tuning.data.extraction.views!.rows, 2 * trainRows.length + valRows.length);
      assert.equal(tuned.phase2.history.length, 2);
      assert.ok(Number.isFinite(tuned.phase2.history[1]!.trainLoss));
      const metrics = await tuning.evaluate();
      assert.ok(metrics.accuracy >= 0.5, `accuracy ${metrics.accuracy}`);
    } finally {
      await tuning.close();
    }
  });
});

describe('graft train --augment, --views, --tta', () => {
  it('trains with augmentation from the command line, logs the views, records them in graft.json, and refuses what cannot apply', async () => {
    const tmp = await mkdtemp(join(tmpdir(), 'graft-augment-cli-'));
    try {
      const data = join(tmp, 'data');
      for (const cls of ['ants', 'bees']) {
        await mkdir(join(data, cls), { recursive: true });
        for (const f of (await readdir(join(HYM, 'val', cls))).filter((x) => x.endsWith('.jpg')).sort().slice(0, 10)) await symlink(join(HYM, 'val', cls, f), join(data, cls, f));
      }
      const out = join(tmp, 'out');
      const run = await graft(['train', data, '--model', MODEL, '--out', out, '--cache-dir', join(tmp, 'cache'), '--augment', 'light', '--views', '1', '--tta', '--epochs', '3', '--json']);
      assert.equal(run.code, 0, run.stderr);
      assert.match(run.stderr, /augmented views: 20 rows \(0 cached, 20 extracted/);
      const manifest = JSON.parse(await readFile(join(out, 'graft.json'), 'utf8')) as { inference?: unknown; training: { augmentation?: unknown } };
      assert.deepEqual(manifest.inference, { tta: 'flip' });
      assert.deepEqual(manifest.training.augmentation, { policy: 'light', views: 1, tta: true });
      const again = await graft(['train', data, '--model', MODEL, '--out', out, '--cache-dir', join(tmp, 'cache'), '--augment', 'light', '--views', '1', '--tta', '--epochs', '3', '--json']);
      assert.match(again.stderr, /augmented views: 20 rows \(20 cached, 0 extracted/, 'views come from the cache the second time');

      const noPolicy = await graft(['train', data, '--model', MODEL, '--out', out, '--cache-dir', join(tmp, 'cache'), '--views', '2']);
      assert.equal(noPolicy.code, 2);
      assert.match(noPolicy.stderr, /augmentation policy/);
      const bad = await graft(['train', data, '--augment', 'wild']);
      assert.notEqual(bad.code, 0);
      assert.match(bad.stderr, /light, standard, strong|Allowed choices/);
      const texts = join(tmp, 'texts.csv');
      await writeFile(texts, 'text,label\n' + Array.from({ length: 12 }, (_, i) => `message ${i},${i % 2 ? 'a' : 'b'}`).join('\n') + '\n');
      const text = await graft(['train', texts, '--augment', 'light', '--offline']);
      assert.equal(text.code, 2);
      assert.match(text.stderr, /texts have none/);
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  });
});

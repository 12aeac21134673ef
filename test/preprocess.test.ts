import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { GraftError } from '../src/errors.js';
import { IMAGENET_DEFAULTS, resolveConfig, type PretrainedConfig } from '../src/preprocess/config.js';
import { blankness, decodeImage, normalizeInto } from '../src/preprocess/image.js';
import { ImagePool, sharedFloat32 } from '../src/preprocess/pool.js';
import { Random } from '../src/util/random.js';
import { requireShared, SHARED } from './support/paths.js';

const HYMENOPTERA = `${SHARED}/data/hymenoptera`;
const PLACEHOLDER = path.join(HYMENOPTERA, 'train/ants/imageNotFound.gif');
const ANT = path.join(HYMENOPTERA, 'train/ants/0013035.jpg');
requireShared(HYMENOPTERA);

let tmp: string;
before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'graft-preprocess-'));
});
after(() => rm(tmp, { recursive: true, force: true }));

/** Random pixels (so that images are not blank), with `paint(x, y)` overriding chosen pixels. */
function pixels(width: number, height: number, channels: number, paint?: (x: number, y: number) => number[] | undefined): Buffer {
  const random = new Random(7);
  const data = Buffer.alloc(width * height * channels);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const fixed = paint?.(x, y);
      for (let c = 0; c < channels; c++) data[(y * width + x) * channels + c] = fixed ? fixed[c]! : random.int(256);
    }
  }
  return data;
}
const raw = (data: Buffer, width: number, height: number, channels: 1 | 2 | 3 | 4) => sharp(data, { raw: { width, height, channels } });

/** A config whose output is the image itself: same size, no crop. */
const identity = (height: number, width: number, extra: Partial<PretrainedConfig> = {}) =>
  resolveConfig(extra, { inputSize: [height, width], resize: 'squash', interpolation: 'nearest' });

const pixelAt = (out: Uint8Array, width: number, x: number, y: number) => [...out.subarray((y * width + x) * 3, (y * width + x) * 3 + 3)];
const isRed = ([r, g, b]: number[]) => r! > 200 && g! < 60 && b! < 60;

async function rejectsImage(promise: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(promise, (e: unknown) => {
    assert.ok(e instanceof GraftError);
    assert.equal(e.code, 'IMAGE');
    assert.match(e.message, pattern);
    return true;
  });
}

describe('decodeImage', () => {
  it('expands a grayscale PNG to RGB', async () => {
    const grey = pixels(16, 8, 1);
    const png = await raw(grey, 16, 8, 1).toColourspace('b-w').png().toBuffer();
    assert.equal((await sharp(png).metadata()).channels, 1);
    const out = await decodeImage(png, identity(8, 16));
    assert.equal(out.length, 16 * 8 * 3);
    for (let i = 0; i < grey.length; i++) assert.deepEqual([out[3 * i], out[3 * i + 1], out[3 * i + 2]], [grey[i], grey[i], grey[i]]);
  });

  it('flattens alpha on white', async () => {
    const rgba = pixels(16, 16, 4, (x, y) => (y < 4 ? [10, 20, 30, 0] : undefined));
    for (let i = 3; i < rgba.length; i += 4) if (rgba[i - 3] !== 10) rgba[i] = 255;
    const out = await decodeImage(await raw(rgba, 16, 16, 4).png().toBuffer(), identity(16, 16));
    assert.equal(out.length, 16 * 16 * 3);
    assert.deepEqual(pixelAt(out, 16, 3, 2), [255, 255, 255]);
    assert.deepEqual(pixelAt(out, 16, 5, 9), [...rgba.subarray((9 * 16 + 5) * 4, (9 * 16 + 5) * 4 + 3)]);
  });

  it('reduces a 16-bit PNG to 8 bits', async () => {
    const rgb = pixels(16, 16, 3);
    const png = await raw(rgb, 16, 16, 3).toColourspace('rgb16').png().toBuffer();
    assert.equal((await sharp(png).metadata()).depth, 'ushort');
    const out = await decodeImage(png, identity(16, 16));
    assert.equal(out.length, rgb.length);
    for (let i = 0; i < rgb.length; i++) assert.ok(Math.abs(out[i]! - rgb[i]!) <= 1, `byte ${i}: ${out[i]} vs ${rgb[i]}`);
  });

  it('converts a CMYK JPEG to sRGB', async () => {
    const rgb = pixels(32, 32, 3, (x) => (x < 16 ? [220, 30, 30] : undefined));
    const jpeg = await raw(rgb, 32, 32, 3).toColourspace('cmyk').jpeg({ quality: 95 }).toBuffer();
    assert.equal((await sharp(jpeg).metadata()).space, 'cmyk');
    const out = await decodeImage(jpeg, identity(32, 32));
    assert.equal(out.length, 32 * 32 * 3);
    assert.ok(isRed(pixelAt(out, 32, 5, 10)), `got ${pixelAt(out, 32, 5, 10)}`);
  });

  it('converts a CMYK JPEG without an ICC profile as ImageMagick and browsers do, not through a press profile', async () => {
    // test/fixtures/images: cmyk-source.png (a plasma) written as CMYK by ImageMagick 6.9 (-colorspace CMYK -strip).
    const fixtures = path.join(import.meta.dirname, '../../test/fixtures/images');
    const jpeg = await readFile(path.join(fixtures, 'cmyk-no-icc.jpg'));
    const meta = await sharp(jpeg).metadata();
    assert.equal(meta.space, 'cmyk');
    assert.equal(meta.hasProfile, false);
    const source = await sharp(await readFile(path.join(fixtures, 'cmyk-source.png'))).removeAlpha().raw().toBuffer();
    const meanError = (x: Uint8Array) => x.reduce((a, v, i) => a + Math.abs(v - source[i]!), 0) / x.length;
    const out = await decodeImage(jpeg, identity(64, 64));
    // libvips' own conversion (its SWOP fallback profile) is off by ~10/255; the plain formula is JPEG noise away.
    const viaProfile = await sharp(jpeg).toColourspace('srgb').raw().toBuffer();
    assert.ok(meanError(viaProfile) > 5, `libvips' profile conversion ${meanError(viaProfile)}`);
    assert.ok(meanError(out) < 2.5, `mean error ${meanError(out).toFixed(2)}/255`);
  });

  it('applies the EXIF orientation', async () => {
    // 48 wide, 24 high, red left half. Orientation 6 means "rotate 90° clockwise to display": red ends on top.
    const rgb = pixels(48, 24, 3, (x) => (x < 24 ? [255, 0, 0] : undefined));
    const jpeg = await raw(rgb, 48, 24, 3).jpeg({ quality: 95 }).withMetadata({ orientation: 6 }).toBuffer();
    assert.equal((await sharp(jpeg).metadata()).orientation, 6);
    const out = await decodeImage(jpeg, identity(48, 24));
    assert.ok(isRed(pixelAt(out, 24, 12, 5)), `top: ${pixelAt(out, 24, 12, 5)}`);
    assert.ok(!isRed(pixelAt(out, 24, 12, 40)) || !isRed(pixelAt(out, 24, 13, 41)), 'bottom half should not be red');
  });

  it('takes the centre crop', async () => {
    // 400×200 with a red centre 200×200: the shorter side goes to 100 / cropPct, the crop lands inside the red.
    const rgb = pixels(400, 200, 3, (x) => (x >= 100 && x < 300 ? [255, 0, 0] : undefined));
    const png = await raw(rgb, 400, 200, 3).png().toBuffer();
    for (const cropPct of [1, 0.875]) {
      const out = await decodeImage(png, resolveConfig({ inputSize: [100, 100], cropPct }));
      let red = 0;
      for (let i = 0; i < 100 * 100; i++) if (isRed(pixelAt(out, 100, i % 100, Math.floor(i / 100)))) red++;
      assert.ok(red >= (cropPct === 1 ? 9800 : 10000), `cropPct ${cropPct}: ${red} red pixels`);
      for (let y = 0; y < 100; y++) assert.ok(isRed(pixelAt(out, 100, 50, y)) && isRed(pixelAt(out, 100, 2, y)));
    }
    const squashed = await decodeImage(png, resolveConfig({ inputSize: [100, 100], resize: 'squash' }));
    assert.ok(!isRed(pixelAt(squashed, 100, 2, 50)) && isRed(pixelAt(squashed, 100, 50, 50)));
  });

  it('rejects a truncated JPEG', async () => {
    const bytes = await readFile(ANT);
    await rejectsImage(decodeImage(bytes.subarray(0, bytes.length >> 1), IMAGENET_DEFAULTS, 'half.jpg'), /^half\.jpg: cannot decode image \(.+\)$/);
  });

  it('gives a HEIC it cannot decode a one-line reason (libheif reports over ten lines)', async () => {
    // An AVIF relabelled as HEVC-coded HEIC: sharp's libheif has no HEVC decoder and says so line by line.
    const heic = Buffer.from(await sharp({ create: { width: 16, height: 16, channels: 3, background: '#f00' } }).avif().toBuffer());
    heic.write('heic', heic.indexOf('avif'));
    for (let j = heic.indexOf('av01'); j >= 0; j = heic.indexOf('av01', j + 1)) heic.write('hvc1', j);
    await assert.rejects(sharp(heic).raw().toBuffer(), (e: Error) => e.message.split('\n').length > 3);
    await rejectsImage(decodeImage(heic, IMAGENET_DEFAULTS, 'photo.heic'), /^photo\.heic: cannot decode image \([^\n]*heif[^\n]*\)$/);
  });

  it('rejects data that is not an image', async () => {
    await rejectsImage(decodeImage(Buffer.from('definitely not an image'), IMAGENET_DEFAULTS, 'x.jpg'), /x\.jpg: not an image \(unrecognised file signature\)/);
    await rejectsImage(decodeImage(new Uint8Array(0), IMAGENET_DEFAULTS, 'zero.jpg'), /zero\.jpg: empty file \(0 bytes\)/);
  });

  it('rejects the placeholder GIF, and copies of it re-encoded at other sizes', async () => {
    await rejectsImage(decodeImage(PLACEHOLDER, IMAGENET_DEFAULTS), /imageNotFound\.gif: blank or placeholder image \(matches a known placeholder, .*'image not found'.*; grey-level entropy 0\.\d+ bits\)$/);
    for (const [size, format] of [[150, 'jpeg'], [600, 'png'], [97, 'webp']] as const) {
      const copy = await sharp(PLACEHOLDER).resize(size, size).toFormat(format).toBuffer();
      await rejectsImage(decodeImage(copy, IMAGENET_DEFAULTS, `copy.${format}`), /blank or placeholder image \(matches a known placeholder/);
    }
  });

  it('rejects a flat image as blank, and a flat one with a few specks of noise', async () => {
    const png = await sharp({ create: { width: 50, height: 40, channels: 3, background: '#3366cc' } }).png().toBuffer();
    await rejectsImage(decodeImage(png, IMAGENET_DEFAULTS, 'flat.png'), /flat\.png: blank or placeholder image \(flat: 100\.00% of pixels within 8 grey levels of one; grey-level entropy 0\.00 bits\)/);
    const specks = pixels(400, 300, 3, (x, y) => ((x * 7 + y * 13) % 5000 === 0 ? [0, 0, 0] : [250, 250, 250]));
    await rejectsImage(decodeImage(await sharp(specks, { raw: { width: 400, height: 300, channels: 3 } }).png().toBuffer(), IMAGENET_DEFAULTS, 'specks.png'), /blank or placeholder image \(flat: 99\.9\d% of pixels/);
  });

  it('keeps line art: 40 black-on-white doodles, antialiased or binary, thin or bold, small or large', async () => {
    const rng = new Random(7);
    const entropies: number[] = [];
    for (let i = 0; i < 40; i++) {
      const size = [64, 128, 256, 512][i % 4]!;
      const strokes = Array.from({ length: 1 + (i % 4) }, () => {
        const points = Array.from({ length: 3 + Math.floor(rng.next() * 8) }, () => `${Math.round(rng.next() * size)},${Math.round(rng.next() * size)}`).join(' ');
        return `<polyline points="${points}" fill="none" stroke="black" stroke-width="${1 + (i % 5)}" stroke-linecap="round"${i % 2 ? ' shape-rendering="crispEdges"' : ''}/>`;
      });
      const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${size}" height="${size}"><rect width="100%" height="100%" fill="white"/>${strokes.join('')}</svg>`;
      const png = await sharp(Buffer.from(svg)).png().toBuffer();
      const native = await sharp(png).removeAlpha().raw().toBuffer();
      entropies.push(blankness(native));
      const out = await decodeImage(png, IMAGENET_DEFAULTS, `doodle-${i}.png`);
      assert.equal(out.length, 224 * 224 * 3);
    }
    // Most are what a 1-bit entropy threshold (graft before pipeline v3) dropped.
    assert.ok(entropies.filter((e) => e < 1).length >= 20, `entropies ${entropies.map((e) => e.toFixed(2)).join(' ')}`);
  });

  it('decodes a real photo to the input size', async () => {
    const out = await decodeImage(ANT, IMAGENET_DEFAULTS);
    assert.equal(out.length, 224 * 224 * 3);
    assert.ok(blankness(out) > 4);
    const nhwc = await decodeImage(await readFile(ANT), resolveConfig({ inputSize: [160, 128], resize: 'squash' }));
    assert.equal(nhwc.length, 160 * 128 * 3);
  });
});

describe('blankness', () => {
  it('is the entropy of the grey levels in bits', () => {
    assert.equal(blankness(new Uint8Array(30).fill(90)), 0);
    const halves = new Uint8Array(12);
    halves.fill(255, 6);
    assert.equal(blankness(halves), 1);
  });
});

describe('normalizeInto', () => {
  // Two pixels, (10, 20, 30) and (200, 100, 0).
  const px = Uint8Array.from([10, 20, 30, 200, 100, 0]);
  const base = { inputSize: [1, 2] as const, scale: 0.5, mean: [1, 2, 3] as const, std: [2, 4, 8] as const };
  const v = (p: number, c: number) => (p * 0.5 - base.mean[c]!) / base.std[c]!;
  const check = (config: Partial<PretrainedConfig>, expected: number[]) => {
    const out = new Float32Array(9).fill(-1);
    normalizeInto(px, resolveConfig(config, base), out, 2);
    assert.deepEqual([out[0], out[1], out[8]], [-1, -1, -1]);
    [...out.subarray(2, 8)].forEach((x, i) => assert.ok(Math.abs(x - expected[i]!) < 1e-6, `${i}: ${x} vs ${expected[i]}`));
  };

  it('writes planar RGB for NCHW', () => {
    assert.equal(v(10, 0), 2); // hand check: (10·0.5 − 1) / 2
    check({ layout: 'NCHW', channelOrder: 'RGB' }, [v(10, 0), v(200, 0), v(20, 1), v(100, 1), v(30, 2), v(0, 2)]);
  });
  it('writes interleaved RGB for NHWC', () => {
    check({ layout: 'NHWC', channelOrder: 'RGB' }, [v(10, 0), v(20, 1), v(30, 2), v(200, 0), v(100, 1), v(0, 2)]);
  });
  it('swaps channels for BGR, with mean and std in BGR order', () => {
    check({ layout: 'NCHW', channelOrder: 'BGR' }, [v(30, 0), v(0, 0), v(20, 1), v(100, 1), v(10, 2), v(200, 2)]);
    check({ layout: 'NHWC', channelOrder: 'BGR' }, [v(30, 0), v(20, 1), v(10, 2), v(0, 0), v(100, 1), v(200, 2)]);
  });
  it('refuses a target that is too short', () => {
    assert.throws(() => normalizeInto(px, resolveConfig(base), new Float32Array(7), 2), /offset/);
  });
});

describe('ImagePool', () => {
  it('decodes exactly like the main thread and reports failures', async () => {
    const config = resolveConfig({ layout: 'NHWC', channelOrder: 'BGR' });
    const files = [
      ANT,
      path.join(HYMENOPTERA, 'train/bees/16838648_415acd9e3f.jpg'),
      path.join(HYMENOPTERA, 'val/ants/10308379_1b6c72e180.jpg'),
      path.join(HYMENOPTERA, 'val/bees/1032546534_06907fe3b3.jpg'),
    ];
    const size = 3 * 224 * 224;
    const target = sharedFloat32(6 * size);
    const pool = new ImagePool(config, { threads: 2 });
    try {
      const antBytes = await readFile(ANT);
      const results = await Promise.all([
        ...files.map((file, i) => pool.loadInto({ file }, target, i * size)),
        pool.loadInto({ file: 'ant-bytes.jpg', bytes: antBytes }, target, 4 * size),
        pool.loadInto({ file: PLACEHOLDER }, target, 5 * size),
      ]);
      assert.deepEqual(results.slice(0, 5), new Array(5).fill({ ok: true }));
      const failed = results[5]!;
      assert.ok(!failed.ok && /blank or placeholder image/.test(failed.reason));
      const broken = await pool.loadInto({ file: 'half.jpg', bytes: antBytes.subarray(0, 5000) }, target, 5 * size);
      assert.ok(!broken.ok && /^cannot decode image/.test(broken.reason));

      const expected = new Float32Array(size);
      for (const [i, file] of [...files, ANT].entries()) {
        normalizeInto(await decodeImage(file, config), config, expected, 0);
        assert.deepEqual(target.subarray(i * size, (i + 1) * size), expected, file);
      }
    } finally {
      await pool.close();
    }
    await assert.rejects(pool.loadInto({ file: ANT }, target, 0), /closed/);
  });

  it('lets the process exit after close(), and even without it', async () => {
    const poolUrl = new URL('../src/preprocess/pool.js', import.meta.url).href;
    const configUrl = new URL('../src/preprocess/config.js', import.meta.url).href;
    for (const close of [true, false]) {
      const script = path.join(tmp, `pool-exit-${close}.mjs`);
      await writeFile(
        script,
        `import { ImagePool, sharedFloat32 } from ${JSON.stringify(poolUrl)};
import { IMAGENET_DEFAULTS } from ${JSON.stringify(configUrl)};
const pool = new ImagePool(IMAGENET_DEFAULTS, { threads: 2 });
const result = await pool.loadInto({ file: ${JSON.stringify(ANT)} }, sharedFloat32(3 * 224 * 224), 0);
${close ? 'await pool.close();' : ''}
console.log(JSON.stringify(result));`,
      );
      const { stdout } = await promisify(execFile)(process.execPath, [script], { timeout: 15_000 });
      assert.equal(stdout.trim(), '{"ok":true}', `close=${close}`);
    }
  });
});

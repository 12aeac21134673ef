/**
 * Data augmentation: named policies with explicit parameters, and the concrete view of one sample drawn from
 * them. A view is a pure function of (policy, seed, view index, the sample's content hash), so view k of a
 * file is the same whatever order or batch it is decoded in, and its features can be cached under a key
 * that names the policy, the seed and k.
 *
 * - images (applied by the decoding workers with sharp, before normalisation): random resized crop (area
 *   fraction and aspect ratio of the original), small rotation, horizontal flip, colour jitter (brightness,
 *   contrast, saturation, hue);
 * - audio (applied to the decoded waveform): time shift, gain, white noise at a signal-to-noise ratio.
 *
 * Test-time augmentation uses the fixed `FLIP_VIEW` (the clean image mirrored), so a model can apply it on
 * the preprocessed tensor at prediction time and get exactly what evaluation measured.
 */
import { createHash } from 'node:crypto';
import { GraftError } from '../errors.js';
import { Random } from '../util/random.js';
import type { PretrainedConfig } from './config.js';

export type AugmentLevel = 'none' | 'light' | 'standard' | 'strong';
export const AUGMENT_LEVELS: readonly AugmentLevel[] = ['none', 'light', 'standard', 'strong'];

export interface ImageAugment {
  /** Random resized crop: the crop's area as a fraction of the image, and its aspect ratio (w/h), both uniform (ratio: log-uniform). */
  scale: [number, number];
  ratio: [number, number];
  /** Mirror left-right with probability 1/2. */
  flip: boolean;
  /** Rotation, uniform in ±degrees (the corners the rotation uncovers are cropped away). */
  rotate: number;
  /** Colour jitter factors, each uniform in [1 − x, 1 + x] (hue: a shift uniform in ±hue turns). */
  brightness: number;
  contrast: number;
  saturation: number;
  hue: number;
}

export interface AudioAugment {
  /** Time shift, uniform in ±seconds (the clip moves within its padded window; what leaves it is cut). */
  shift: number;
  /** Gain in dB, uniform in ±gain. */
  gain: number;
  /** White noise at a signal-to-noise ratio uniform in [snr[0], snr[1]] dB, with probability `noise`. */
  snr: [number, number];
  noise: number;
}

/**
 * The named policies. `standard` is torchvision's ImageNet training recipe with a gentler crop (35-100% of the
 * area instead of 8-100%: a small dataset's photos are framed on their subject) plus light jitter; `strong`
 * is the full recipe with rotation.
 */
export const IMAGE_POLICIES: Readonly<Record<Exclude<AugmentLevel, 'none'>, ImageAugment>> = {
  light: { scale: [0.6, 1], ratio: [3 / 4, 4 / 3], flip: true, rotate: 0, brightness: 0.1, contrast: 0.1, saturation: 0.1, hue: 0 },
  standard: { scale: [0.35, 1], ratio: [3 / 4, 4 / 3], flip: true, rotate: 10, brightness: 0.2, contrast: 0.2, saturation: 0.2, hue: 0.02 },
  strong: { scale: [0.08, 1], ratio: [3 / 4, 4 / 3], flip: true, rotate: 20, brightness: 0.4, contrast: 0.4, saturation: 0.4, hue: 0.1 },
};

export const AUDIO_POLICIES: Readonly<Record<Exclude<AugmentLevel, 'none'>, AudioAugment>> = {
  light: { shift: 0.1, gain: 3, snr: [30, 40], noise: 0.5 },
  standard: { shift: 0.2, gain: 6, snr: [20, 35], noise: 0.5 },
  strong: { shift: 0.3, gain: 10, snr: [10, 30], noise: 0.8 },
};

/** One image view: what the decoding worker does to the oriented image before normalising it. */
export interface ImageView {
  /** The crop, as fractions of the oriented image's width and height (absent: the configured resize and centre crop). */
  crop?: { left: number; top: number; width: number; height: number };
  /** Degrees, counter-clockwise positive. */
  angle?: number;
  flip: boolean;
  brightness?: number;
  contrast?: number;
  saturation?: number;
  /** Degrees of hue rotation. */
  hue?: number;
}

export interface AudioView {
  /** Samples to move the clip by (positive: later). */
  shift: number;
  /** Linear gain. */
  gain: number;
  /** Noise RMS relative to the clip's RMS (0: none). */
  noise: number;
  /** Seed of the noise. */
  seed: number;
}

/** Test-time augmentation's view: the clean image, mirrored. */
export const FLIP_VIEW: ImageView = { flip: true };

/** What an extraction's view is, as the extractor and its cache need it. */
export type ViewSpec =
  | { kind: 'image'; policy: ImageAugment | 'flip'; seed: number; view: number }
  | { kind: 'audio'; policy: AudioAugment; seed: number; view: number };

/** The cache identity of a view (policy parameters, seed, view index). */
export function viewKey(spec: ViewSpec): string {
  return `augment/v1\n${spec.kind}\n${JSON.stringify(spec.policy)}\n${spec.policy === 'flip' ? '' : `${spec.seed}\n${spec.view}`}`;
}

/** A seeded generator for one sample's view: independent of the order samples are processed in. */
function viewRandom(seed: number, view: number, hash: string): Random {
  const digest = createHash('sha256').update(`${seed}\n${view}\n${hash}`).digest();
  return new Random(digest.readUInt32LE(0));
}

const uniform = (rng: Random, lo: number, hi: number) => lo + (hi - lo) * rng.next();

/** Image view `spec.view` of the sample whose content hash is `hash`. */
export function imageView(spec: Extract<ViewSpec, { kind: 'image' }>, hash: string): ImageView {
  if (spec.policy === 'flip') return FLIP_VIEW;
  const p = spec.policy;
  const rng = viewRandom(spec.seed, spec.view, hash);
  // torchvision's RandomResizedCrop, in fractions of the image: area fraction s and aspect r give a crop of
  // sqrt(s·r) × sqrt(s/r) of (width, height) for a square image; for others the fractions are relative to
  // each side, which keeps the same area fraction. Ten tries, then the whole image.
  let crop: ImageView['crop'] = { left: 0, top: 0, width: 1, height: 1 };
  for (let i = 0; i < 10; i++) {
    const s = uniform(rng, p.scale[0], p.scale[1]);
    const r = Math.exp(uniform(rng, Math.log(p.ratio[0]), Math.log(p.ratio[1])));
    const w = Math.sqrt(s * r);
    const h = Math.sqrt(s / r);
    if (w <= 1 && h <= 1) {
      crop = { left: rng.next() * (1 - w), top: rng.next() * (1 - h), width: w, height: h };
      break;
    }
  }
  const view: ImageView = { crop, flip: p.flip && rng.next() < 0.5 };
  if (p.rotate > 0) view.angle = uniform(rng, -p.rotate, p.rotate);
  if (p.brightness > 0) view.brightness = uniform(rng, 1 - p.brightness, 1 + p.brightness);
  if (p.contrast > 0) view.contrast = uniform(rng, 1 - p.contrast, 1 + p.contrast);
  if (p.saturation > 0) view.saturation = uniform(rng, 1 - p.saturation, 1 + p.saturation);
  if (p.hue > 0) view.hue = 360 * uniform(rng, -p.hue, p.hue);
  return view;
}

/** Audio view `spec.view` of the sample whose content hash is `hash`, for a clip at `sampleRate`. */
export function audioView(spec: Extract<ViewSpec, { kind: 'audio' }>, hash: string, sampleRate: number): AudioView {
  const p = spec.policy;
  const rng = viewRandom(spec.seed, spec.view, hash);
  const shift = Math.round(uniform(rng, -p.shift, p.shift) * sampleRate);
  const gain = 10 ** (uniform(rng, -p.gain, p.gain) / 20);
  const noisy = rng.next() < p.noise;
  const snr = uniform(rng, p.snr[0], p.snr[1]);
  return { shift, gain, noise: noisy ? 10 ** (-snr / 20) : 0, seed: Math.floor(rng.next() * 2 ** 31) };
}

/**
 * Applies an audio view to a clip: shifted (zeros enter, what leaves is cut), scaled, with white noise at the
 * view's level relative to the clip's RMS. Returns a new array of the same length.
 */
export function applyAudioView(samples: Float32Array, view: AudioView): Float32Array {
  const n = samples.length;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const j = i - view.shift;
    if (j >= 0 && j < n) out[i] = samples[j]! * view.gain;
  }
  if (view.noise > 0) {
    let energy = 0;
    for (let i = 0; i < n; i++) energy += out[i]! * out[i]!;
    const sigma = view.noise * Math.sqrt(energy / Math.max(1, n));
    const rng = new Random(view.seed);
    for (let i = 0; i < n; i++) out[i] = out[i]! + sigma * rng.normal();
  }
  return out;
}

/** Mirrors HWC pixels left-right in place. */
export function mirrorPixels(pixels: Uint8Array, width: number, height: number, channels = 3): Uint8Array {
  for (let y = 0; y < height; y++) {
    const row = y * width * channels;
    for (let a = 0, b = width - 1; a < b; a++, b--) {
      for (let c = 0; c < channels; c++) {
        const i = row + a * channels + c;
        const j = row + b * channels + c;
        const t = pixels[i]!;
        pixels[i] = pixels[j]!;
        pixels[j] = t;
      }
    }
  }
  return pixels;
}

/** A mirrored copy (left-right) of `n` preprocessed images in the config's layout. */
export function mirrorTensor(input: Float32Array, config: Pick<PretrainedConfig, 'inputSize' | 'layout'>, n: number): Float32Array {
  const [h, w] = config.inputSize;
  const out = new Float32Array(n * 3 * h * w);
  // NCHW: rows of w values; NHWC: rows of w pixels of 3 values.
  const [rows, c] = config.layout === 'NCHW' ? [n * 3 * h, 1] : [n * h, 3];
  for (let r = 0; r < rows; r++) {
    const base = r * w * c;
    for (let x = 0; x < w; x++) for (let k = 0; k < c; k++) out[base + x * c + k] = input[base + (w - 1 - x) * c + k]!;
  }
  return out;
}

/** Reads a policy from its name (or `none`). */
export function augmentLevel(value: string, where = '--augment'): AugmentLevel {
  if ((AUGMENT_LEVELS as readonly string[]).includes(value)) return value as AugmentLevel;
  throw new GraftError('USAGE', `${where} ${value}: expected one of ${AUGMENT_LEVELS.join(', ')}`);
}

import { FileProblem, readRegularFile } from '../util/fs.js';
import sharp, { type OutputInfo, type Sharp } from 'sharp';
import { whyNotImage } from '../data/dataset.js';
import { GraftError, invalidParameter } from '../errors.js';
import type { PretrainedConfig } from './config.js';
import { mirrorPixels, type ImageView } from './augment.js';

const KERNELS = { nearest: 'nearest', bilinear: 'linear', bicubic: 'cubic', lanczos3: 'lanczos3' } as const;



/** A flat image: fewer than this fraction of its pixels differ from the commonest grey level by more than FLAT_TOLERANCE. */
const FLAT_FRACTION = 0.001;
const FLAT_TOLERANCE = 8;

/**
 * Known placeholders, by fingerprint: 16×16 grey thumbnails (see `fingerprint`), matched within
 * PLACEHOLDER_DISTANCE mean absolute grey levels, so a re-encoded or resized copy matches too (a JPEG
 * re-encoding at half size: 2.1) while line art and flat images do not (a doodle: 14.6, white: 12.6).
 */
export const PLACEHOLDERS: ReadonlyArray<{ name: string; fingerprint: string }> = [
  {
    name: "a photo host's 'image not found' picture (as in the hymenoptera set's imageNotFound.gif)",
    fingerprint: '9/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39vf39/f39/f39/f39/f39/j4+Pn5+Pn5+Pj39/f39/Xr6+nn7uvq6Ofw9/f39/jvrK7Locm0uKOtyPj39/f39uXd6dzm4uDf4uf39/f39/jz6uff4+Tj6+r0+Pf39/f39/j16evm6vf49/f39/f39/f39/j4+Pj39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39w==',
  },
];
const PLACEHOLDER_DISTANCE = 5;

/** The 16×16 grey thumbnail placeholders are matched by. */
export async function fingerprint(input: Uint8Array | string): Promise<Uint8Array> {
  return (await load(typeof input === 'string' ? await readRegularFile(input) : input)).greyscale().resize(16, 16, { fit: 'fill', kernel: 'cubic' }).raw({ depth: 'uchar' }).toBuffer();
}

/** Why a low-entropy image is rejected (flat, or a known placeholder), or undefined for line art and the like. */
async function blankOrPlaceholder(histogram: Uint32Array, input: Uint8Array | string): Promise<string | undefined> {
  const n = histogram.reduce((a, c) => a + c, 0);
  const mode = histogram.indexOf(Math.max(...histogram));
  const near = histogram.subarray(Math.max(0, mode - FLAT_TOLERANCE), mode + FLAT_TOLERANCE + 1).reduce((a, c) => a + c, 0);
  const off = n - near;
  if (off < FLAT_FRACTION * n) return `flat: ${(100 * (1 - off / n)).toFixed(2)}% of pixels within ${FLAT_TOLERANCE} grey levels of one`;
  const thumb = await fingerprint(input);
  for (const p of PLACEHOLDERS) {
    const known = Buffer.from(p.fingerprint, 'base64');
    let d = 0;
    for (let i = 0; i < known.length; i++) d += Math.abs(known[i]! - thumb[i]!);
    if (d / known.length < PLACEHOLDER_DISTANCE) return `matches a known placeholder, ${p.name}`;
  }
  return undefined;
}
/**
 * Images with fewer bits of grey-level entropy than this are checked at their own resolution for being flat or
 * a known placeholder (photos have 5-7 bits; resampling and re-encoding add levels: the 0.56-bit placeholder
 * measures 1.2 bits at 224×224, a JPEG copy of it more). Low entropy alone rejects nothing: line art, sketches
 * and scans have little (a black-on-white doodle: 0.35 bits).
 */
const RECHECK_BITS = 3.0;

/**
 * An image's bytes (read from its file when given a path), checked to look like an image, and how to fail
 * about it: an IMAGE error naming the file and the reason.
 */
async function imageBytes(input: Uint8Array | string, file?: string): Promise<{ bytes: Uint8Array; fail: (reason: string, cause?: unknown) => GraftError }> {
  const name = file ?? (typeof input === 'string' ? input : 'image');
  const fail = (reason: string, cause?: unknown) => new GraftError('IMAGE', `${name}: ${reason}`, { file: name, reason }, { cause });
  let bytes: Uint8Array;
  try {
    bytes = typeof input === 'string' ? await readRegularFile(input) : input;
  } catch (e) {
    throw fail(e instanceof FileProblem ? e.problem : `cannot read file (${(e as Error).message})`, e);
  }
  const notImage = whyNotImage(bytes.subarray(0, 16));
  if (notImage) throw fail(notImage);
  return { bytes, fail };
}

/**
 * Decodes an image file or its bytes into the network's input pixels: EXIF orientation applied, first frame,
 * 8-bit sRGB with any alpha flattened on white, resized as `config` says. Returns HWC RGB, H×W = inputSize.
 * Throws an IMAGE error when the data is corrupt or truncated, and when the image is blank or a placeholder.
 */
export async function decodeImage(input: Uint8Array | string, config: PretrainedConfig, file?: string): Promise<Uint8Array> {
  const { bytes, fail } = await imageBytes(input, file);
  input = bytes;
  const [height, width] = config.inputSize;
  let pixels: Uint8Array;
  let entropy: number;
  let rejected: string | undefined;
  try {
    const image = await load(input);
    const kernel = KERNELS[config.interpolation];
    if (config.resize === 'squash') {
      image.resize(width, height, { fit: 'fill', kernel });
    } else {
      const meta = await image.metadata();
      const ih = meta.autoOrient.height;
      const iw = meta.autoOrient.width;
      // Scale so that the shorter side (relative to the crop) becomes inputSize / cropPct, then crop the centre.
      const s = Math.max(Math.round(height / config.cropPct) / ih, Math.round(width / config.cropPct) / iw);
      const rh = Math.max(height, Math.round(ih * s));
      const rw = Math.max(width, Math.round(iw * s));
      image
        .resize(rw, rh, { fit: 'fill', kernel })
        .extract({ left: Math.floor((rw - width) / 2), top: Math.floor((rh - height) / 2), width, height });
    }
    const { data, info } = await rgb8(image);
    if (info.channels !== 3 || info.width !== width || info.height !== height) {
      throw new Error(`decoded to ${info.width}x${info.height}x${info.channels}, expected ${width}x${height}x3`);
    }
    pixels = data;
    entropy = blankness(pixels);
    if (entropy < RECHECK_BITS) {
      // Nearest-neighbour sampling keeps the image's own grey levels; the size cap bounds the cost of huge images.
      const original = (await load(input)).resize(1024, 1024, { fit: 'inside', withoutEnlargement: true, kernel: 'nearest' });
      const native = (await rgb8(original)).data;
      const histogram = lumaHistogram(native);
      entropy = entropyBits(histogram);
      rejected = await blankOrPlaceholder(histogram, input);
    }
  } catch (e) {
    // Decoders report over several lines (libheif: four); a skip reason is one line.
    const message = (e instanceof Error ? e.message : String(e)).split(/\s*[\r\n]+\s*/).filter(Boolean).join('; ');
    throw fail(`cannot decode image (${message})`, e);
  }
  if (rejected) throw fail(`blank or placeholder image (${rejected}; grey-level entropy ${entropy.toFixed(2)} bits)`);
  return pixels;
}

/** Grey the corners a rotation uncovers are filled with before they are cropped away (ImageNet's mean colour). */
const ROTATE_FILL = { r: 124, g: 116, b: 104 };

/**
 * Decodes an image as `view` says (data augmentation, test-time flips) into the network's input pixels, HWC
 * RGB of config.inputSize. A view without a crop is the clean decoding (with its checks for blank and
 * placeholder images), mirrored when `view.flip`. A cropped view takes that part of the oriented image,
 * rotates it by `view.angle` and keeps the largest centred rectangle of its aspect ratio free of uncovered
 * corners, squashes it to inputSize (as torchvision's RandomResizedCrop does), then applies the colour jitter
 * and the flip. A cropped view is not checked for blankness (a crop of sky is flat and still a sample).
 */
export async function decodeImageView(input: Uint8Array | string, config: PretrainedConfig, view: ImageView, file?: string): Promise<Uint8Array> {
  const [height, width] = config.inputSize;
  if (!view.crop) {
    const pixels = await decodeImage(input, config, file);
    return view.flip ? mirrorPixels(pixels, width, height) : pixels;
  }
  const { bytes, fail } = await imageBytes(input, file);
  input = bytes;
  try {
    const image = await load(input);
    const meta = await image.metadata();
    const iw = meta.autoOrient.width;
    const ih = meta.autoOrient.height;
    const c = view.crop;
    const left = Math.min(iw - 1, Math.floor(c.left * iw));
    const top = Math.min(ih - 1, Math.floor(c.top * ih));
    const cw = Math.max(1, Math.min(iw - left, Math.round(c.width * iw)));
    const ch = Math.max(1, Math.min(ih - top, Math.round(c.height * ih)));
    image.extract({ left, top, width: cw, height: ch });
    const kernel = KERNELS[config.interpolation];
    let out: Sharp;
    if (view.angle) {
      // Two passes: the rotated crop (its size known only after the rotation), then its inner rectangle.
      const region = await rgb8(image.rotate(view.angle, { background: ROTATE_FILL }));
      // A w×h rectangle turned by θ holds a centred w/z × h/z one of the same shape, z = cos θ + sin θ · max(w/h, h/w).
      const t = (Math.abs(view.angle) * Math.PI) / 180;
      const z = Math.cos(t) + Math.sin(t) * Math.max(cw / ch, ch / cw);
      // Two pixels less on each side: the rotated edges are blended with the fill over about a pixel.
      const w = Math.max(1, Math.floor(cw / z) - 4);
      const h = Math.max(1, Math.floor(ch / z) - 4);
      const inner = { left: Math.floor((region.info.width - w) / 2), top: Math.floor((region.info.height - h) / 2), width: w, height: h };
      out = sharp(region.data, { raw: { width: region.info.width, height: region.info.height, channels: 3 } }).extract(inner).resize(width, height, { fit: 'fill', kernel });
    } else {
      out = image.resize(width, height, { fit: 'fill', kernel });
    }
    if (view.brightness !== undefined || view.saturation !== undefined || view.hue !== undefined) {
      out = out.modulate({ brightness: view.brightness ?? 1, saturation: view.saturation ?? 1, hue: Math.round(view.hue ?? 0) });
    }
    // Contrast around mid-grey, as torchvision's adjust_contrast does around the image's mean grey.
    if (view.contrast !== undefined) out = out.linear(view.contrast, 128 * (1 - view.contrast));
    const { data, info } = await rgb8(out);
    if (info.channels !== 3 || info.width !== width || info.height !== height) throw new Error(`decoded to ${info.width}x${info.height}x${info.channels}, expected ${width}x${height}x3`);
    return view.flip ? mirrorPixels(data, width, height) : data;
  } catch (e) {
    const message = (e instanceof Error ? e.message : String(e)).split(/\s*[\r\n]+\s*/).filter(Boolean).join('; ');
    throw fail(`cannot decode image (${message})`, e);
  }
}

/** Oriented, first frame, 8-bit sRGB with alpha flattened on white. */
async function load(input: Uint8Array | string): Promise<Sharp> {
  // failOn 'error' rejects truncated and undecodable data but tolerates libjpeg warnings such as
  // "extraneous bytes before marker", which are common in scraped photos and decode fine.
  const image = sharp(input, { failOn: 'error', autoOrient: true });
  const meta = await image.metadata();
  if (meta.space === 'cmyk' && !meta.hasProfile) return sharp(await naiveCmykToRgb(input), { raw: { width: meta.autoOrient.width, height: meta.autoOrient.height, channels: 3 } });
  return image.flatten({ background: '#ffffff' }).toColourspace('srgb');
}

/**
 * A CMYK image without an ICC profile, converted as browsers and ImageMagick do (R = (1 − C)(1 − K), …):
 * libvips would assume its press profile (US Web Coated SWOP) instead, which shifts the colours of files
 * made by the plain formula (10/255 mean error against the source on such a file, vs 1.7 this way).
 */
async function naiveCmykToRgb(input: Uint8Array | string): Promise<Buffer> {
  const { data, info } = await sharp(input, { failOn: 'error', autoOrient: true }).pipelineColourspace('cmyk').toColourspace('cmyk').raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
  if (info.channels !== 4) throw new Error(`CMYK decoded to ${info.channels} channels`);
  const n = info.width * info.height;
  const rgb = Buffer.alloc(3 * n);
  for (let i = 0, j = 0; i < 4 * n; i += 4, j += 3) {
    const k = 255 - data[i + 3]!;
    rgb[j] = Math.round(((255 - data[i]!) * k) / 255);
    rgb[j + 1] = Math.round(((255 - data[i + 1]!) * k) / 255);
    rgb[j + 2] = Math.round(((255 - data[i + 2]!) * k) / 255);
  }
  return rgb;
}

function rgb8(image: Sharp): Promise<{ data: Buffer; info: OutputInfo }> {
  return image.removeAlpha().raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
}

/** Grey-level (BT.601 luma) histogram of RGB pixels. */
function lumaHistogram(pixels: Uint8Array): Uint32Array {
  const histogram = new Uint32Array(256);
  for (let i = 0; i + 2 < pixels.length; i += 3) {
    histogram[(77 * pixels[i]! + 150 * pixels[i + 1]! + 29 * pixels[i + 2]! + 128) >> 8]!++;
  }
  return histogram;
}

function entropyBits(histogram: Uint32Array): number {
  const n = histogram.reduce((a, c) => a + c, 0);
  let bits = 0;
  for (const count of histogram) {
    if (count > 0) bits -= (count / n) * Math.log2(count / n);
  }
  return bits;
}

/** Shannon entropy in bits of the grey-level (BT.601 luma) histogram of RGB pixels: 0 for a flat image, at most 8. */
export function blankness(pixels: Uint8Array): number {
  return entropyBits(lumaHistogram(pixels));
}

/**
 * Writes one image's input tensor (3·H·W floats) into `out` at `offset`: (p·scale − mean) / std per channel,
 * in config.channelOrder and config.layout. `pixels` is HWC RGB as returned by decodeImage.
 */
export function normalizeInto(pixels: Uint8Array, config: PretrainedConfig, out: Float32Array, offset: number): void {
  const [height, width] = config.inputSize;
  const n = height * width;
  if (pixels.length !== 3 * n) throw invalidParameter('pixels.length', `${3 * n} (${height}x${width}x3)`, pixels.length);
  if (!Number.isInteger(offset) || offset < 0 || offset + 3 * n > out.length) {
    throw invalidParameter('offset', `an integer in [0, ${out.length - 3 * n}]`, offset);
  }
  const { scale, mean, std } = config;
  const a0 = scale / std[0], a1 = scale / std[1], a2 = scale / std[2];
  const b0 = -mean[0] / std[0], b1 = -mean[1] / std[1], b2 = -mean[2] / std[2];
  // Source channel of each output channel.
  const [s0, s1, s2] = config.channelOrder === 'BGR' ? [2, 1, 0] : [0, 1, 2];
  if (config.layout === 'NCHW') {
    const o1 = offset + n, o2 = offset + 2 * n;
    for (let i = 0, j = 0; i < n; i++, j += 3) {
      out[offset + i] = pixels[j + s0]! * a0 + b0;
      out[o1 + i] = pixels[j + s1]! * a1 + b1;
      out[o2 + i] = pixels[j + s2]! * a2 + b2;
    }
  } else {
    for (let j = 0; j < 3 * n; j += 3) {
      out[offset + j] = pixels[j + s0]! * a0 + b0;
      out[offset + j + 1] = pixels[j + s1]! * a1 + b1;
      out[offset + j + 2] = pixels[j + s2]! * a2 + b2;
    }
  }
}

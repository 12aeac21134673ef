import { FileProblem, readRegularFile } from '../util/fs.js';
import sharp, { type OutputInfo, type Sharp } from 'sharp';
import { whyNotImage } from '../data/dataset.js';
import { GraftError, invalidParameter } from '../errors.js';
import type { PretrainedConfig } from './config.js';

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
 * Decodes an image file or its bytes into the network's input pixels: EXIF orientation applied, first frame,
 * 8-bit sRGB with any alpha flattened on white, resized as `config` says. Returns HWC RGB, H×W = inputSize.
 * Throws an IMAGE error when the data is corrupt or truncated, and when the image is blank or a placeholder.
 */
export async function decodeImage(input: Uint8Array | string, config: PretrainedConfig, file?: string): Promise<Uint8Array> {
  const name = file ?? (typeof input === 'string' ? input : 'image');
  const fail = (reason: string, cause?: unknown) => new GraftError('IMAGE', `${name}: ${reason}`, { file: name, reason }, { cause });
  if (typeof input === 'string') {
    try {
      input = await readRegularFile(input);
    } catch (e) {
      throw fail(e instanceof FileProblem ? e.problem : `cannot read file (${(e as Error).message})`, e);
    }
  }
  const notImage = whyNotImage((input as Uint8Array).subarray(0, 16));
  if (notImage) throw fail(notImage);
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

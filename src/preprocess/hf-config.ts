import { GraftError } from '../errors.js';
import type { PretrainedConfig } from './config.js';

/**
 * The fields of a Hugging Face `preprocessor_config.json` that decide the pixels a model sees
 * (ViTImageProcessor, ConvNextImageProcessor, BitImageProcessor, CLIPImageProcessor,
 * MobileNetV2ImageProcessor, …).
 */
export interface HfPreprocessorConfig {
  image_processor_type?: string;
  feature_extractor_type?: string;
  do_resize?: boolean;
  size?: number | { shortest_edge?: number; height?: number; width?: number };
  do_center_crop?: boolean;
  crop_size?: number | { height?: number; width?: number };
  /** ConvNext: resize the shorter side to size/crop_pct, then crop `size`. */
  crop_pct?: number | null;
  /** PIL filter: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming. */
  resample?: number;
  do_rescale?: boolean;
  rescale_factor?: number;
  do_normalize?: boolean;
  image_mean?: number | number[];
  image_std?: number | number[];
}

const RESAMPLE: Record<number, PretrainedConfig['interpolation']> = { 0: 'nearest', 1: 'lanczos3', 2: 'bilinear', 3: 'bicubic', 4: 'bilinear', 5: 'bilinear' };

const triple = (v: number | number[] | undefined, fallback: number): [number, number, number] => {
  if (v === undefined) return [fallback, fallback, fallback];
  if (typeof v === 'number') return [v, v, v];
  if (v.length === 1) return [v[0]!, v[0]!, v[0]!];
  return [v[0]!, v[1]!, v[2]!];
};

const hw = (v: HfPreprocessorConfig['size'] | HfPreprocessorConfig['crop_size']): { h?: number; w?: number; short?: number } => {
  if (v === undefined) return {};
  if (typeof v === 'number') return { h: v, w: v };
  return { h: v.height, w: v.width, short: 'shortest_edge' in v ? v.shortest_edge : undefined };
};

/**
 * Translates a preprocessor_config.json into graft's PretrainedConfig fields, so a hub model is fed
 * exactly what its own processor would feed it. `source` names the file in error messages.
 */
export function configFromPreprocessor(raw: unknown, source = 'preprocessor_config.json'): Partial<PretrainedConfig> {
  if (typeof raw !== 'object' || raw === null) throw new GraftError('CONFIG', `${source}: expected a JSON object`, { file: source });
  const p = raw as HfPreprocessorConfig;
  const out: Partial<PretrainedConfig> = { layout: 'NCHW', channelOrder: 'RGB' };
  if (p.resample !== undefined) out.interpolation = RESAMPLE[p.resample] ?? 'bilinear';
  out.scale = p.do_rescale === false ? 1 : (p.rescale_factor ?? 1 / 255);
  if (p.do_normalize === false) {
    out.mean = [0, 0, 0];
    out.std = [1, 1, 1];
  } else {
    if (p.image_mean !== undefined) out.mean = triple(p.image_mean, 0);
    if (p.image_std !== undefined) out.std = triple(p.image_std, 1);
  }
  const size = hw(p.size);
  const crop = hw(p.crop_size);
  if (p.do_center_crop && crop.h && crop.w) {
    // Shorter side to `shortest_edge`, then the central crop_size.
    out.resize = 'center-crop';
    out.inputSize = [crop.h, crop.w];
    const short = size.short ?? Math.min(size.h ?? crop.h, size.w ?? crop.w);
    out.cropPct = Math.min(1, Math.min(crop.h, crop.w) / short);
  } else if (size.short) {
    // ConvNext style: below 384 px, shorter side to short/crop_pct and crop short×short; else a plain resize.
    out.inputSize = [size.short, size.short];
    if (p.crop_pct && size.short < 384) {
      out.resize = 'center-crop';
      out.cropPct = p.crop_pct;
    } else {
      out.resize = 'squash';
      out.cropPct = 1;
    }
  } else if (size.h && size.w) {
    out.inputSize = [size.h, size.w];
    out.resize = 'squash';
    out.cropPct = 1;
  }
  return out;
}

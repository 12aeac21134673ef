import { GraftError, invalidConfig } from '../errors.js';

/**
 * How a backbone expects its input, and where its features are. It travels with every backbone and is
 * written into every exported artifact, so that the same preprocessing is applied at training, evaluation
 * and prediction time (timm's `pretrained_cfg`).
 */
export interface PretrainedConfig {
  /** Name of the image input of the ONNX graph. */
  inputName: string;
  /** Network input height and width in pixels. */
  inputSize: readonly [height: number, width: number];
  /** Memory layout of the input tensor. */
  layout: 'NCHW' | 'NHWC';
  /** Order of colour channels in the input tensor. */
  channelOrder: 'RGB' | 'BGR';
  /**
   * `center-crop`: resize the shorter side to inputSize / cropPct, then take the central inputSize crop
   * (the ImageNet evaluation transform; cropPct 0.875 gives 256 → 224).
   * `squash`: resize to inputSize exactly, ignoring aspect ratio.
   */
  resize: 'center-crop' | 'squash';
  /** Fraction of the resized shorter side kept by the centre crop (1 = no margin). Only for `center-crop`. */
  cropPct: number;
  interpolation: 'nearest' | 'bilinear' | 'bicubic' | 'lanczos3';
  /** Multiplier applied to 8-bit pixel values before mean/std (1/255 maps to [0, 1]). */
  scale: number;
  /** Per-channel mean subtracted after scaling, in channelOrder. */
  mean: readonly [number, number, number];
  /** Per-channel standard deviation divided after the mean, in channelOrder. */
  std: readonly [number, number, number];
  /** Tensor at which the classifier is removed; features are its global average over space. */
  cut?: string;
  /** Length of the pooled feature vector at `cut`. */
  featureDim?: number;
}

export const IMAGENET_MEAN = [0.485, 0.456, 0.406] as const;
export const IMAGENET_STD = [0.229, 0.224, 0.225] as const;

/** The torchvision/ONNX-model-zoo ImageNet transform: 256 → centre 224, RGB, [0,1], ImageNet mean/std, NCHW. */
export const IMAGENET_DEFAULTS: PretrainedConfig = Object.freeze({
  inputName: 'input',
  inputSize: [224, 224] as const,
  layout: 'NCHW',
  channelOrder: 'RGB',
  resize: 'center-crop',
  cropPct: 0.875,
  interpolation: 'bilinear',
  scale: 1 / 255,
  mean: IMAGENET_MEAN,
  std: IMAGENET_STD,
});

const isPositiveInt = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v > 0;
const isTriple = (v: unknown): v is [number, number, number] =>
  Array.isArray(v) && v.length === 3 && v.every((x) => typeof x === 'number' && Number.isFinite(x));

/**
 * The one precedence resolver: explicit overrides → the backbone's own config → ImageNet defaults.
 * Returns a complete, validated, frozen config.
 */
export function resolveConfig(...layers: ReadonlyArray<Partial<PretrainedConfig> | undefined>): PretrainedConfig {
  const merged: Record<string, unknown> = { ...IMAGENET_DEFAULTS };
  for (let i = layers.length - 1; i >= 0; i--) {
    const layer = layers[i];
    if (!layer) continue;
    for (const [k, v] of Object.entries(layer)) if (v !== undefined) merged[k] = v;
  }
  return validateConfig(merged);
}

/** Checks every field of a config read from JSON or built by hand; throws a CONFIG error naming the field. */
export function validateConfig(raw: unknown, source = 'PretrainedConfig'): PretrainedConfig {
  if (typeof raw !== 'object' || raw === null) throw new GraftError('CONFIG', `${source}: expected an object`, { source });
  const c = raw as Record<string, unknown>;
  const fail = (field: string, expected: string): never => {
    throw invalidConfig(source, field, expected, c[field]);
  };
  if (typeof c.inputName !== 'string' || !c.inputName) fail('inputName', 'a tensor name');
  const size = c.inputSize;
  if (!Array.isArray(size) || size.length !== 2 || !size.every(isPositiveInt)) fail('inputSize', '[height, width] in pixels');
  if (c.layout !== 'NCHW' && c.layout !== 'NHWC') fail('layout', '"NCHW" or "NHWC"');
  if (c.channelOrder !== 'RGB' && c.channelOrder !== 'BGR') fail('channelOrder', '"RGB" or "BGR"');
  if (c.resize !== 'center-crop' && c.resize !== 'squash') fail('resize', '"center-crop" or "squash"');
  if (typeof c.cropPct !== 'number' || !(c.cropPct > 0 && c.cropPct <= 1)) fail('cropPct', 'a number in (0, 1]');
  if (!['nearest', 'bilinear', 'bicubic', 'lanczos3'].includes(c.interpolation as string))
    fail('interpolation', '"nearest", "bilinear", "bicubic" or "lanczos3"');
  if (typeof c.scale !== 'number' || !(c.scale > 0)) fail('scale', 'a positive number');
  if (!isTriple(c.mean)) fail('mean', 'three numbers');
  if (!isTriple(c.std) || !(c.std as number[]).every((s) => s > 0)) fail('std', 'three positive numbers');
  if (c.cut !== undefined && (typeof c.cut !== 'string' || !c.cut)) fail('cut', 'a tensor name');
  if (c.featureDim !== undefined && !isPositiveInt(c.featureDim)) fail('featureDim', 'a positive integer');
  const out: PretrainedConfig = {
    inputName: c.inputName as string,
    inputSize: [(size as number[])[0]!, (size as number[])[1]!],
    layout: c.layout as PretrainedConfig['layout'],
    channelOrder: c.channelOrder as PretrainedConfig['channelOrder'],
    resize: c.resize as PretrainedConfig['resize'],
    cropPct: c.cropPct as number,
    interpolation: c.interpolation as PretrainedConfig['interpolation'],
    scale: c.scale as number,
    mean: [...(c.mean as number[])] as unknown as PretrainedConfig['mean'],
    std: [...(c.std as number[])] as unknown as PretrainedConfig['std'],
    ...(c.cut !== undefined ? { cut: c.cut as string } : {}),
    ...(c.featureDim !== undefined ? { featureDim: c.featureDim as number } : {}),
  };
  return Object.freeze(out);
}

/** The shape of one batch of `n` images as the backbone takes it. */
export function inputShape(config: PretrainedConfig, n: number): [number, number, number, number] {
  const [h, w] = config.inputSize;
  return config.layout === 'NCHW' ? [n, 3, h, w] : [n, h, w, 3];
}

/** Stable identity of the preprocessing part of a config (what changes the pixels fed to the model). */
export function preprocessKey(config: PretrainedConfig): string {
  return JSON.stringify(Object.fromEntries(PREPROCESS_KEY_FIELDS.map((f) => [f, config[f]])));
}

/**
 * Which config fields change the pixels a backbone sees, and so go into the cache key. Typed over every field of
 * PretrainedConfig: a field added later does not compile until it is placed here (in the key, or out with a reason).
 */
const KEYED: Record<keyof PretrainedConfig, boolean> = {
  inputSize: true,
  layout: true,
  channelOrder: true,
  resize: true,
  cropPct: true,
  interpolation: true,
  scale: true,
  mean: true,
  std: true,
  inputName: false, // a name, not a value
  cut: false, // part of the feature model, whose bytes key the cache
  featureDim: false, // follows from the model and cut
};
export const PREPROCESS_KEY_FIELDS = (Object.keys(KEYED) as Array<keyof PretrainedConfig>).filter((f) => KEYED[f]);

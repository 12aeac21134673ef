/**
 * `graft import`: a TensorFlow.js model folder (layers or graph format) → `OUT/model.onnx` plus
 * `OUT/pretrained_cfg.json` (how to feed it, read by every later `--model OUT/model.onnx`) and, for a
 * Teachable Machine export, `OUT/labels.json` (its classes, from metadata.json).
 */
import { mkdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { GraftError } from '../errors.js';
import { encodeModel } from '../onnx/proto.js';
import type { PretrainedConfig } from '../preprocess/config.js';
import { writeFileAtomic } from '../util/fs.js';
import { convertGraphModel } from './tfjs-graph.js';
import { convertLayersModel } from './tfjs-layers.js';
import { readTfjsModel } from './tfjs-weights.js';

export interface ImportResult {
  format: 'layers' | 'graph';
  source: string;
  /** Path of the written ONNX model. */
  model: string;
  inputName: string;
  inputShape: number[];
  outputs: string[];
  /** What was written to pretrained_cfg.json. */
  config: Partial<PretrainedConfig>;
  /** Where the preprocessing came from. */
  configSource: string;
  labels?: string[];
}

interface TeachableMetadata {
  labels?: unknown;
  imageSize?: unknown;
  packageName?: unknown;
  tmVersion?: unknown;
}

async function readMetadata(dir: string): Promise<TeachableMetadata | undefined> {
  try {
    return JSON.parse(await readFile(join(dir, 'metadata.json'), 'utf8')) as TeachableMetadata;
  } catch {
    return undefined;
  }
}

export async function importTfjs(source: string, outDir: string): Promise<ImportResult> {
  const tfjs = await readTfjsModel(source);
  const format = tfjs.json.format === 'graph-model' || (tfjs.json.modelTopology as { node?: unknown }).node ? 'graph' : 'layers';
  const converted = format === 'graph' ? convertGraphModel(tfjs) : convertLayersModel(tfjs);
  const [, h, w] = converted.inputShape;
  const meta = await readMetadata(dirname(tfjs.source));
  const teachable = !!meta && (typeof meta.tmVersion === 'string' || String(meta.packageName ?? '').includes('teachablemachine'));
  const size: [number, number] | undefined = h! > 0 && w! > 0 ? [h!, w!] : typeof meta?.imageSize === 'number' ? [meta.imageSize, meta.imageSize] : undefined;
  // Teachable Machine crops the central square, resizes it and scales pixels to [-1, 1]; Keras
  // applications' MobileNets use the same [-1, 1] scaling, which is the assumption for other exports.
  const config: Partial<PretrainedConfig> = {
    inputName: converted.inputName,
    layout: 'NHWC',
    channelOrder: 'RGB',
    ...(size ? { inputSize: size } : {}),
    resize: 'center-crop',
    cropPct: 1,
    interpolation: 'bilinear',
    scale: 1 / 127.5,
    mean: [1, 1, 1],
    std: [1, 1, 1],
  };
  const labels = Array.isArray(meta?.labels) && meta.labels.every((l) => typeof l === 'string') ? (meta.labels as string[]) : undefined;
  if (converted.inputShape.length !== 4 || converted.inputShape[3] !== 3)
    throw new GraftError('MODEL', `${tfjs.source}: input ${converted.inputName} is [${converted.inputShape.join(', ')}]; graft imports image models taking [N, H, W, 3]`, {
      file: tfjs.source,
    });
  await mkdir(outDir, { recursive: true });
  const model = join(outDir, 'model.onnx');
  await writeFileAtomic(model, encodeModel(converted.model));
  await writeFileAtomic(join(outDir, 'pretrained_cfg.json'), JSON.stringify(config, null, 2) + '\n');
  if (labels) await writeFileAtomic(join(outDir, 'labels.json'), JSON.stringify(labels, null, 2) + '\n');
  return {
    format,
    source: tfjs.source,
    model,
    inputName: converted.inputName,
    inputShape: converted.inputShape,
    outputs: converted.outputs,
    config,
    configSource: teachable ? 'Teachable Machine metadata.json' : 'assumed: RGB scaled to [-1, 1] (Keras MobileNet convention); edit pretrained_cfg.json if the model expects otherwise',
    ...(labels ? { labels } : {}),
  };
}

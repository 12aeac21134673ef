/**
 * The input-pipeline seam: one description per modality of how a raw sample becomes the named, typed ONNX
 * feeds of a backbone. A pipeline has a serialisable config (written into graft.json), a cache key that
 * carries a pipeline version (a change of decoder, tokenizer or preprocessing invalidates cached features
 * and skip records), the feeds it produces, and an encoder that runs in the worker pool (pool.ts).
 *
 * - image: a file's bytes → decoded, resized, normalised float32 [3, H, W] or [H, W, 3] (image.ts);
 * - text: a string → token ids [T] (+ attention mask, token type ids), padded per batch (text.ts);
 * - audio: a file's bytes → decoded, mono, resampled waveform [S] (audio.ts; the front end is in the graph).
 */
import { GraftError } from '../errors.js';
import type { Modality } from '../data/dataset.js';
import { inputShape, preprocessKey, type PretrainedConfig } from './config.js';
import { audioKey, type AudioConfig } from './audio.js';
import { textKey, type Encoded, type TextConfig, type TokenizerFiles } from './text.js';

export type FeedType = 'float32' | 'int64';

/** One named ONNX input's value. */
export interface Feed {
  type: FeedType;
  data: Float32Array | BigInt64Array;
  dims: readonly number[];
}

/** One ONNX input a pipeline feeds: its name, type and per-sample shape ('T': the token axis, 'S': the samples of a clip). */
export interface FeedSpec {
  name: string;
  type: FeedType;
  shape: Array<number | 'T' | 'S'>;
}

/**
 * Versions of what each pipeline computes, part of every cache key: bump one when its decoder, tokenizer
 * handling or preprocessing changes in a way the config does not show.
 */
export const PIPELINE_VERSIONS: Readonly<Record<Modality, number>> = { image: 4, text: 2, audio: 1 };

export type ImagePipeline = { kind: 'image'; config: PretrainedConfig };
/** A text pipeline carries its tokenizer's files, which the encoding workers load. */
export type TextPipeline = { kind: 'text'; config: TextConfig; tokenizer: TokenizerFiles };
export type AudioPipeline = { kind: 'audio'; config: AudioConfig };
export type Pipeline = ImagePipeline | TextPipeline | AudioPipeline;

/** The pipeline's cache identity: its kind and version and everything in its config that changes the feeds. */
export function pipelineKey(p: Pipeline): string {
  const version = `${p.kind}/v${PIPELINE_VERSIONS[p.kind]}`;
  return `${version}\n${p.kind === 'image' ? preprocessKey(p.config) : p.kind === 'text' ? textKey(p.config) : audioKey(p.config)}`;
}

/** The ONNX inputs a pipeline feeds, in a fixed order. */
export function feedSpecs(p: Pipeline): FeedSpec[] {
  if (p.kind === 'image') return [{ name: p.config.inputName, type: 'float32', shape: inputShape(p.config, 1).slice(1) }];
  if (p.kind === 'audio') return [{ name: p.config.inputName, type: 'float32', shape: ['S'] }];
  const { ids, mask, typeIds } = p.config.inputs;
  return [
    { name: ids, type: 'int64', shape: ['T'] },
    ...(mask ? [{ name: mask, type: 'int64' as const, shape: ['T' as const] }] : []),
    ...(typeIds ? [{ name: typeIds, type: 'int64' as const, shape: ['T' as const] }] : []),
  ];
}

/**
 * Feeds for a batch of tokenised texts, padded to the longest (at least `minLength`): ids (pad id after the
 * end), the attention mask (1 for real tokens) and token type ids (0), as the config names them.
 */
export function textFeeds(config: TextConfig, batch: ReadonlyArray<Pick<Encoded, 'ids'>>, rows = batch.length, minLength = 1): Record<string, Feed> {
  if (rows < batch.length) throw new GraftError('USAGE', `textFeeds: ${batch.length} texts for ${rows} rows`);
  const T = Math.max(minLength, ...batch.map((e) => e.ids.length));
  const ids = new BigInt64Array(rows * T).fill(BigInt(config.padId));
  const mask = new BigInt64Array(rows * T);
  batch.forEach((e, i) => {
    for (let t = 0; t < e.ids.length; t++) {
      ids[i * T + t] = BigInt(e.ids[t]!);
      mask[i * T + t] = 1n;
    }
  });
  const dims = [rows, T];
  const feeds: Record<string, Feed> = { [config.inputs.ids]: { type: 'int64', data: ids, dims } };
  if (config.inputs.mask) feeds[config.inputs.mask] = { type: 'int64', data: mask, dims };
  if (config.inputs.typeIds) feeds[config.inputs.typeIds] = { type: 'int64', data: new BigInt64Array(rows * T), dims };
  return feeds;
}

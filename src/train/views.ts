/**
 * Augmented views as rows. After the N clean rows of a dataset (one per sample) come blocks of augmented
 * rows: K views of every training row (`train` blocks; each epoch trains on a row or one of its views), then
 * the mirrored validation rows (`tta` block; evaluation averages a row's probabilities with its mirror's).
 * The layout is fixed by the plan, so the pooled features of feature extraction and the boundary
 * activations of fine-tuning put the same view at the same row.
 */
import type { Modality } from '../data/dataset.js';
import { GraftError } from '../errors.js';
import { AUDIO_POLICIES, IMAGE_POLICIES, type AudioAugment, type AugmentLevel, type ImageAugment, type ViewSpec } from '../preprocess/augment.js';
import type { ExtractInput, ExtractProgress, FeatureExtractor } from '../backbone/extractor.js';

export interface AugmentOptions {
  /** A named policy or explicit parameters (images: ImageAugment, audio: AudioAugment); default none. */
  augment?: AugmentLevel | ImageAugment | AudioAugment;
  /** Augmented views per training sample, each extracted (and cached) once (default 4 when augmenting). */
  views?: number;
  /** Test-time augmentation (images): evaluation and prediction average each image with its mirror. */
  tta?: boolean;
}

export const DEFAULT_VIEWS = 4;

export interface ViewBlock {
  purpose: 'train' | 'tta';
  spec: ViewSpec;
  /** The clean rows (samples) this block holds views of; the view of rows[j] is row offset + j. */
  rows: number[];
  offset: number;
  /** Which views could be made (a view's decoding can fail where the clean one did not). */
  valid: Uint8Array;
}

/** The policy an option names for a modality, or undefined for none. */
export function augmentPolicy(modality: Modality, augment: AugmentOptions['augment']): ImageAugment | AudioAugment | undefined {
  if (augment === undefined || augment === 'none') return undefined;
  if (modality === 'text') throw new GraftError('USAGE', 'augmentation is for images and audio; texts have none');
  if (typeof augment !== 'string') {
    const isImage = 'scale' in augment;
    if (isImage !== (modality === 'image')) throw new GraftError('USAGE', `${isImage ? 'image' : 'audio'} augmentation parameters for a ${modality} dataset`);
    return augment;
  }
  return modality === 'image' ? IMAGE_POLICIES[augment] : AUDIO_POLICIES[augment];
}

/** The blocks of augmented rows after `n` clean ones. */
export function planViews(modality: Modality, options: AugmentOptions, seed: number, n: number, trainRows: readonly number[], valRows: readonly number[]): ViewBlock[] {
  const policy = augmentPolicy(modality, options.augment);
  const views = options.views ?? (policy ? DEFAULT_VIEWS : 0);
  if (!Number.isInteger(views) || views < 0) throw new GraftError('USAGE', `views must be a whole number ≥ 0 (got ${views})`);
  if (views > 0 && !policy) throw new GraftError('USAGE', `${views} augmented views need an augmentation policy (augment: light, standard or strong)`);
  if (options.tta && modality !== 'image') throw new GraftError('USAGE', 'test-time augmentation (mirrored images) is for images');
  const blocks: ViewBlock[] = [];
  let offset = n;
  for (let v = 1; v <= views; v++) {
    const spec: ViewSpec = modality === 'image' ? { kind: 'image', policy: policy as ImageAugment, seed, view: v } : { kind: 'audio', policy: policy as AudioAugment, seed, view: v };
    blocks.push({ purpose: 'train', spec, rows: [...trainRows], offset, valid: new Uint8Array(trainRows.length) });
    offset += trainRows.length;
  }
  if (options.tta) blocks.push({ purpose: 'tta', spec: { kind: 'image', policy: 'flip', seed: 0, view: 0 }, rows: [...valRows], offset, valid: new Uint8Array(valRows.length) });
  return blocks;
}

/** Rows in all, clean and augmented. */
export function totalRows(n: number, blocks: readonly ViewBlock[]): number {
  return blocks.reduce((a, b) => a + b.rows.length, n);
}

/** Each training row's views (valid ones). */
export function viewMap(blocks: readonly ViewBlock[]): Map<number, number[]> {
  const map = new Map<number, number[]>();
  for (const b of blocks) {
    if (b.purpose !== 'train') continue;
    b.rows.forEach((r, j) => {
      if (!b.valid[j]) return;
      const list = map.get(r) ?? [];
      list.push(b.offset + j);
      map.set(r, list);
    });
  }
  return map;
}

/** Each validation row's mirrored row, where it could be made. */
export function ttaMap(blocks: readonly ViewBlock[]): Map<number, number> {
  const map = new Map<number, number>();
  for (const b of blocks) if (b.purpose === 'tta') b.rows.forEach((r, j) => b.valid[j] && map.set(r, b.offset + j));
  return map;
}

/** Every valid augmented row. */
export function augmentedRows(blocks: readonly ViewBlock[]): number[] {
  return blocks.flatMap((b) => b.rows.map((_, j) => (b.valid[j] ? b.offset + j : -1)).filter((r) => r >= 0));
}

export interface ViewExtraction {
  /** Features of each block's rows (empty when they went to the extractor's row store). */
  features: Float32Array[];
  /** Sequence extractions (audio windows): each block's rows' token arrays (W zeros for W windows). */
  tokens: Int32Array[][];
  cached: number;
  extracted: number;
  seconds: number;
}

/**
 * Extracts every block's views of `inputs` (the clean samples, by row). `record`: set the blocks' validity
 * from this extraction (the first, feature extraction); otherwise a view valid before must be valid again
 * (fine-tuning's boundary activations). With a row store in the extractor, rows go to their layout rows.
 */
export async function extractViews(
  extractor: FeatureExtractor,
  inputs: readonly ExtractInput[],
  blocks: readonly ViewBlock[],
  options: { record: boolean; toStore?: boolean; onProgress?: (p: ExtractProgress, block: ViewBlock, index: number) => void },
): Promise<ViewExtraction> {
  const out: ViewExtraction = { features: [], tokens: [], cached: 0, extracted: 0, seconds: 0 };
  for (let i = 0; i < blocks.length; i++) {
    const b = blocks[i]!;
    const r = await extractor.extract(
      b.rows.map((row) => inputs[row]!),
      (p) => options.onProgress?.(p, b, i),
      { view: b.spec, ...(options.toStore ? { rowOffset: b.offset } : {}) },
    );
    if (options.record) b.valid.set(r.valid);
    else {
      b.rows.forEach((row, j) => {
        if (b.valid[j] && !r.valid[j]) {
          const input = inputs[row]!;
          const file = typeof input === 'string' ? input : input.file;
          throw new GraftError('TRAIN', `${file}: its augmented view ${b.spec.kind === 'image' && b.spec.policy === 'flip' ? '(mirror)' : b.spec.view} was encoded for features but not for fine-tuning`, { file });
        }
      });
    }
    out.features.push(r.features);
    out.tokens.push(r.tokens ?? []);
    out.cached += r.cached;
    out.extracted += r.extracted;
    out.seconds += r.seconds;
  }
  return out;
}

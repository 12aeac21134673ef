/**
 * What the training loop reads batches from: a source of rows that writes the feeds of a batch. Dense rows
 * are fixed-size float rows (pooled features; a CNN's boundary activations); sequence rows are a text
 * encoder's per-token states at a boundary, each of its own length, padded per batch, with the side inputs
 * (attention mask, token ids, token type ids) the rest of the encoder recomputes its mask arithmetic from.
 */
import { GraftError } from '../errors.js';
import type { Feed } from '../preprocess/pipeline.js';
import type { RowStore } from '../util/row-store.js';

export interface Rows {
  /** Class of each row. */
  labels: Int32Array;
  /** Each row's length, where rows differ (token sequences): batches then group similar lengths. */
  lengths?: Int32Array;
  /** Augmented views: row r's other rows (same sample, other augmentations); each epoch trains on r or one of them. */
  views?: ReadonlyMap<number, readonly number[]>;
  /**
   * Feeds of the graph's row inputs for `rows` (a batch), padded to `size` rows with zero rows (which
   * training labels IGNORE_LABEL). The arrays may be reused by the next call.
   */
  feeds(rows: readonly number[], size: number): Record<string, Feed>;
  /** Frees what the rows hold (a spill file); feeds() fails afterwards. */
  close?(): void;
  /** Rows kept in a store: bytes held in memory and in its spill file. */
  stored?(): { memory: number; disk: number };
}

/** Where rows' values lie: one array of fixed-size rows, or a store (memory up to a budget, then disk). */
export type RowValues = Float32Array | RowStore;

/** Rows of `dim` floats (`features[i·dim … (i+1)·dim)`, or a store's row i), fed as `input` with per-row shape `rowShape`. */
export function denseRows(data: { features: RowValues; dim: number; labels: Int32Array }, input: string, rowShape: readonly number[]): Rows {
  const { features, dim, labels } = data;
  let x = new Float32Array(0);
  return {
    labels,
    feeds(rows, size) {
      if (x.length < size * dim) x = new Float32Array(size * dim);
      if (features instanceof Float32Array) rows.forEach((r, i) => x.set(features.subarray(r * dim, (r + 1) * dim), i * dim));
      else rows.forEach((r, i) => features.read(r, x, i * dim));
      x.fill(0, rows.length * dim, size * dim);
      return { [input]: { type: 'float32', data: x.subarray(0, size * dim), dims: [size, ...rowShape] } };
    },
    ...(features instanceof Float32Array ? {} : storeMethods(features)),
  };
}

/** What each side input of a sequence suffix holds. */
export type SideInput = 'mask' | 'ids' | 'typeIds';

export interface SequenceData {
  /** Row i's token states, T_i × width (an array per row, or a store's row i). */
  states: readonly Float32Array[] | RowStore;
  /** Row i's token ids (T_i of them). */
  tokens: readonly Int32Array[];
  width: number;
  /** Shape of one token's (window's) state, `width` values (default [width]). */
  tokenShape?: readonly number[];
  labels: Int32Array;
}

/**
 * Token-state rows fed as `input` [N, T, width] (T: the batch's longest row), with `side` graph inputs
 * ([N, T] int64): the attention mask (1 on real tokens), the token ids (`padId` after the end), token types (0).
 */
export function sequenceRows(data: SequenceData, input: string, side: Readonly<Record<string, SideInput>>, padId: number): Rows {
  const { states, tokens, width, labels } = data;
  const tokenShape = data.tokenShape ?? [width];
  const stored = Array.isArray(states) ? undefined : (states as RowStore);
  const inArrays = stored ? undefined : (states as readonly Float32Array[]);
  for (let i = 0; i < tokens.length; i++) {
    const n = stored ? stored.length(i) : inArrays![i]!.length;
    if (n !== tokens[i]!.length * width) throw new GraftError('TRAIN', `row ${i}: ${n} state values for ${tokens[i]!.length} tokens of width ${width}`);
  }
  return {
    labels,
    lengths: Int32Array.from(tokens, (t) => t.length),
    feeds(rows, size) {
      const T = Math.max(1, ...rows.map((r) => tokens[r]!.length));
      const x = new Float32Array(size * T * width);
      if (stored) rows.forEach((r, i) => stored.read(r, x, i * T * width));
      else rows.forEach((r, i) => x.set(inArrays![r]!, i * T * width));
      const feeds: Record<string, Feed> = { [input]: { type: 'float32', data: x, dims: [size, T, ...tokenShape] } };
      for (const [name, kind] of Object.entries(side)) {
        const v = new BigInt64Array(size * T);
        if (kind === 'ids') v.fill(BigInt(padId));
        if (kind !== 'typeIds') {
          rows.forEach((r, i) => {
            const ids = tokens[r]!;
            for (let t = 0; t < ids.length; t++) v[i * T + t] = kind === 'mask' ? 1n : BigInt(ids[t]!);
          });
        }
        feeds[name] = { type: 'int64', data: v, dims: [size, T] };
      }
      return feeds;
    },
    ...(stored ? storeMethods(stored) : {}),
  };
}

function storeMethods(store: RowStore): Pick<Rows, 'close' | 'stored'> {
  return { close: () => store.close(), stored: () => ({ memory: store.bytesInMemory, disk: store.bytesOnDisk }) };
}

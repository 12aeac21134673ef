/**
 * Text preprocessing: a `tokenizer.json` (WordPiece, Unigram/SentencePiece or BPE) read by the maintained
 * `@huggingface/tokenizers` package, and the TextConfig that travels with a text backbone and every text
 * artifact (max length, truncation, the ONNX inputs fed, pooling).
 */
import { createHash } from 'node:crypto';
import { Tokenizer } from '@huggingface/tokenizers';
import { GraftError, invalidConfig } from '../errors.js';

/** How a text backbone's output becomes one feature vector. */
export type TextPooling =
  /** sentence-transformers: mean over the real tokens (attention mask), then optionally L2-normalised. */
  | 'masked-mean'
  /** BERT's [CLS]: the first token's state. */
  | 'class-token'
  /** The graph already ends in one vector per text (USE-lite). */
  | 'model';

export interface TextConfig {
  /** The tokenizer file (relative to the artifact or backbone folder) and its sha256. */
  tokenizer: { file: string; sha256: string; model: string; lowercase: boolean };
  /** Texts are cut to this many tokens, special tokens included (the start is kept). */
  maxLength: number;
  /** ONNX input names: token ids, and the attention mask and token type ids where the model takes them. */
  inputs: { ids: string; mask?: string; typeIds?: string };
  /** Token id of the padding that fills a batch to its longest text. */
  padId: number;
  pooling: TextPooling;
  /** L2-normalise the pooled vector (sentence-transformers' Normalize). */
  normalize: boolean;
  /** Tensor at which the model is cut (its sequence output, or its pooled output). */
  cut?: string;
  featureDim?: number;
}

export function validateTextConfig(raw: unknown, source = 'TextConfig'): TextConfig {
  const fail = (field: string, expected: string, actual: unknown): never => {
    throw invalidConfig(source, field, expected, actual);
  };
  if (typeof raw !== 'object' || raw === null) throw new GraftError('CONFIG', `${source}: expected an object`, { source });
  const c = raw as Record<string, unknown>;
  const t = c.tokenizer as Record<string, unknown> | undefined;
  if (!t || typeof t.file !== 'string' || typeof t.sha256 !== 'string') fail('tokenizer', '{ file, sha256, model, lowercase }', t);
  if (!Number.isInteger(c.maxLength) || (c.maxLength as number) < 2) fail('maxLength', 'an integer ≥ 2', c.maxLength);
  const inputs = c.inputs as Record<string, unknown> | undefined;
  if (!inputs || typeof inputs.ids !== 'string') fail('inputs', '{ ids, mask?, typeIds? }', inputs);
  if (!Number.isInteger(c.padId) || (c.padId as number) < 0) fail('padId', 'a token id', c.padId);
  if (!['masked-mean', 'class-token', 'model'].includes(c.pooling as string)) fail('pooling', '"masked-mean", "class-token" or "model"', c.pooling);
  if (typeof c.normalize !== 'boolean') fail('normalize', 'true or false', c.normalize);
  if (c.cut !== undefined && typeof c.cut !== 'string') fail('cut', 'a tensor name', c.cut);
  if (c.featureDim !== undefined && !(Number.isInteger(c.featureDim) && (c.featureDim as number) > 0)) fail('featureDim', 'a positive integer', c.featureDim);
  const out: TextConfig = {
    tokenizer: { file: t!.file as string, sha256: t!.sha256 as string, model: String(t!.model ?? ''), lowercase: t!.lowercase === true },
    maxLength: c.maxLength as number,
    inputs: {
      ids: inputs!.ids as string,
      ...(typeof inputs!.mask === 'string' ? { mask: inputs!.mask } : {}),
      ...(typeof inputs!.typeIds === 'string' ? { typeIds: inputs!.typeIds } : {}),
    },
    padId: c.padId as number,
    pooling: c.pooling as TextPooling,
    normalize: c.normalize as boolean,
    ...(c.cut !== undefined ? { cut: c.cut as string } : {}),
    ...(c.featureDim !== undefined ? { featureDim: c.featureDim as number } : {}),
  };
  return Object.freeze(out);
}

/** What changes the token ids fed to the model: tokenizer bytes, max length, inputs (not pooling: that is in the graph). */
export function textKey(config: TextConfig): string {
  const { tokenizer, maxLength, inputs, padId, pooling, normalize } = config;
  return JSON.stringify({ tokenizer: { sha256: tokenizer.sha256, model: tokenizer.model, lowercase: tokenizer.lowercase }, maxLength, inputs, padId, pooling, normalize });
}

/** Every field of TextConfig, and whether textKey keys on it (typed: a new field must be placed here). */
export const TEXT_KEY_FIELDS: Record<keyof TextConfig, boolean> = {
  tokenizer: true, // by content (sha256), model and lower-casing; the file name is not keyed
  maxLength: true,
  inputs: true,
  padId: true,
  pooling: true,
  normalize: true,
  cut: false, // part of the feature model, whose bytes key the cache
  featureDim: false,
};

export interface TokenizerFiles {
  /** tokenizer.json, parsed. */
  json: Record<string, unknown>;
  /** tokenizer_config.json, parsed ({} when there is none). */
  config: Record<string, unknown>;
  /** sha256 of tokenizer.json's bytes. */
  sha256: string;
  /** The files' text as read (what an artifact copies). */
  text: string;
  configText?: string;
}

/** Parses tokenizer.json (and tokenizer_config.json) bytes; `file` names them in errors. */
export function parseTokenizerFiles(json: Uint8Array | string, config: Uint8Array | string | undefined, file: string): TokenizerFiles {
  const text = typeof json === 'string' ? json : new TextDecoder().decode(json);
  const sha256 = createHash('sha256').update(json).digest('hex');
  const parse = (s: string, name: string): Record<string, unknown> => {
    try {
      const v = JSON.parse(s) as unknown;
      if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
      return v as Record<string, unknown>;
    } catch (cause) {
      throw new GraftError('CONFIG', `${name}: not a valid tokenizer file (${(cause as Error).message})`, { file: name }, { cause });
    }
  };
  const parsed = parse(text, file);
  if (typeof parsed.model !== 'object' || parsed.model === null) throw new GraftError('CONFIG', `${file}: no "model" section; is this a Hugging Face tokenizer.json?`, { file });
  const configText = config === undefined ? undefined : typeof config === 'string' ? config : new TextDecoder().decode(config);
  return { json: parsed, config: configText === undefined ? {} : parse(configText, `${file} (tokenizer_config.json)`), sha256, text, ...(configText !== undefined ? { configText } : {}) };
}

/** One text's token ids (special tokens included) after truncation, and how many it had before. */
export interface Encoded {
  ids: Int32Array;
  /** Tokens the text had before truncation (special tokens included); > ids.length when truncated. */
  tokens: number;
}

/** Longest text (in UTF-16 units) that is tokenised at all; anything after it could never fit in maxLength anyway. */
const charsPerToken = 64;

/**
 * A tokenizer.json tokenizer with graft's truncation: the start of the text is kept and the special tokens
 * the post-processor adds ([CLS] … [SEP], <s> … </s>) stay in place.
 */
export class TextTokenizer {
  private readonly tokenizer: Tokenizer;
  /** Special tokens the post-processor puts before and after the text. */
  private readonly prefix: number;
  private readonly suffix: number;
  readonly padId: number;
  readonly model: string;
  readonly lowercase: boolean;
  /** The tokenizer's own max length (tokenizer.json truncation, else tokenizer_config's model_max_length), if any. */
  readonly ownMaxLength: number | undefined;

  constructor(files: TokenizerFiles) {
    try {
      this.tokenizer = new Tokenizer(files.json, files.config);
    } catch (cause) {
      throw new GraftError('CONFIG', `cannot load the tokenizer (${(cause as Error).message})`, {}, { cause });
    }
    const model = files.json.model as Record<string, unknown>;
    this.model = typeof model.type === 'string' ? model.type : 'unknown';
    const normalizer = files.json.normalizer as Record<string, unknown> | null | undefined;
    this.lowercase = JSON.stringify(normalizer ?? {}).includes('"lowercase":true') || files.config.do_lower_case === true;
    // Probe the post-processor: where do its special tokens go around a text?
    const bare = this.tokenizer.encode('a', { add_special_tokens: false }).ids;
    const full = this.tokenizer.encode('a', { add_special_tokens: true }).ids;
    const at = indexOfRun(full, bare);
    this.prefix = at < 0 ? 0 : at;
    this.suffix = at < 0 ? 0 : full.length - at - bare.length;
    const padding = files.json.padding as Record<string, unknown> | null | undefined;
    const padToken = typeof files.config.pad_token === 'string' ? files.config.pad_token : undefined;
    this.padId =
      typeof padding?.pad_id === 'number' ? padding.pad_id
      : padToken !== undefined && this.tokenizer.token_to_id(padToken) !== undefined ? this.tokenizer.token_to_id(padToken)!
      : 0;
    const truncation = files.json.truncation as Record<string, unknown> | null | undefined;
    const own = typeof truncation?.max_length === 'number' ? truncation.max_length : typeof files.config.model_max_length === 'number' && files.config.model_max_length < 1e6 ? files.config.model_max_length : undefined;
    this.ownMaxLength = own;
  }

  /** Token ids of `text` with special tokens, cut to `maxLength` (the start kept, special tokens kept). */
  encode(text: string, maxLength: number): Encoded {
    const limit = maxLength * charsPerToken;
    const ids = this.tokenizer.encode(text.length > limit ? text.slice(0, limit) : text, { add_special_tokens: true }).ids;
    if (ids.length <= maxLength) return { ids: Int32Array.from(ids), tokens: ids.length };
    const keep = Math.max(0, maxLength - this.prefix - this.suffix);
    const out = new Int32Array(Math.min(maxLength, this.prefix + keep + this.suffix));
    out.set(ids.slice(0, this.prefix + keep));
    out.set(ids.slice(ids.length - this.suffix), this.prefix + keep);
    return { ids: out, tokens: text.length > limit ? Math.max(ids.length, maxLength + 1) : ids.length };
  }

  tokenToId(token: string): number | undefined {
    return this.tokenizer.token_to_id(token);
  }
}

function indexOfRun(haystack: readonly number[], needle: readonly number[]): number {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

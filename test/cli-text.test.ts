/**
 * `graft` on texts end to end: the real SMS spam file trains with no flags and no network (the bundled
 * Universal Sentence Encoder lite, with its notice); predict from --text, a .txt file and a table; eval on a
 * table; column flags and their errors; a hub text encoder (`--model owner/name` and the zoo's minilm-l6)
 * through a local hub serving onnx/model.onnx + tokenizer.json.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { encodeModel } from '../src/onnx/proto.js';
import { buildBert } from './support/bert.js';
import { graft } from './support/cli.js';
import { startHubServer, type HubServer } from './support/hub-server.js';
import { SHARED } from './support/paths.js';

const SMS = join(SHARED, 'data/sms-spam/SMSSpamCollection.tsv');
const TOKENIZER = join(SHARED, 'models/minilm-l6-tokenizer');

interface TrainDoc {
  task: string;
  metrics: { accuracy: number; macroF1: number; perClass: Record<string, { f1: number }> };
  labels: string[];
  skipped: unknown[];
  leaks: Array<{ val: string; train: string }>;
  features: { tokens?: { truncated: number } };
}

describe('graft on texts', () => {
  let tmp: string;
  let server: HubServer;
  let env: Record<string, string>;

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'graft-cli-text-'));
    const bert = { content: encodeModel(buildBert({ vocabSize: 30522, hidden: 32, layers: 2, heads: 4, intermediate: 64, maxPosition: 512, seed: 9 })), lfs: true };
    const tokenizer = { 'tokenizer.json': { content: await readFile(join(TOKENIZER, 'tokenizer.json')), lfs: true }, 'tokenizer_config.json': { content: await readFile(join(TOKENIZER, 'tokenizer_config.json')) } };
    server = await startHubServer({
      'acme/tiny-bert': { files: { 'onnx/model.onnx': bert, ...tokenizer } },
      'Xenova/all-MiniLM-L6-v2': { files: { 'onnx/model.onnx': bert, ...tokenizer, 'config.json': { content: new TextEncoder().encode('{}') } } },
    });
    env = { HF_HUB_OFFLINE: '1', HF_HUB_CACHE: join(tmp, 'hf'), GRAFT_CACHE: join(tmp, 'graft') };
  });
  after(async () => {
    await server.close();
    await rm(tmp, { recursive: true, force: true });
  });

  test('the real SMS file trains with no flags and no network: the bundled sentence encoder, a notice, text metrics', async () => {
    const out = join(tmp, 'sms');
    const r = await graft(['train', SMS, '--out', out, '--json'], env);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /no --model given: offline mode; using the bundled offline backbone use-lite-bundled/);
    assert.match(r.stderr, /4460 train \/ 1114 val texts, 2 classes/);
    assert.match(r.stderr, /warning: 110 validation texts also occur in training \(leakage/);
    const doc = JSON.parse(r.stdout) as TrainDoc;
    assert.equal(doc.task, 'text');
    assert.deepEqual(doc.labels, ['ham', 'spam']);
    assert.equal(doc.leaks.length, 110);
    assert.match(doc.leaks[0]!.val, /SMSSpamCollection\.tsv:\d+$/);
    assert.ok(doc.features.tokens!.truncated > 0);
    assert.ok(doc.metrics.accuracy > 0.98, `accuracy ${doc.metrics.accuracy}`);
    assert.ok(doc.metrics.perClass.spam!.f1 > 0.94, `spam F1 ${doc.metrics.perClass.spam!.f1}`);
    const manifest = JSON.parse(await readFile(join(out, 'graft.json'), 'utf8')) as { task: string; backbone: { name: string }; config: { tokenizer: { model: string }; pooling: string }; data: { truncated: number; leaks: number } };
    assert.equal(manifest.task, 'text-classification');
    assert.equal(manifest.backbone.name, 'use-lite-bundled');
    assert.equal(manifest.config.tokenizer.model, 'Unigram');
    assert.equal(manifest.config.pooling, 'model');
    assert.equal(manifest.data.leaks, 110);

    // predict: --text (repeatable), a .txt file (one text a line), a table.
    const texts = join(tmp, 'texts.txt');
    await writeFile(texts, 'URGENT! You have won a 1 week FREE membership in our £100,000 Prize Jackpot! Txt the word CLAIM to 81010\n\nok i am on my way home\n');
    const p = await graft(['predict', out, '--text', 'FREE entry in 2 a wkly comp to win FA Cup final tkts, txt FA to 87121', texts, '--json', '--top-k', '1'], env);
    assert.equal(p.code, 0, p.stderr);
    const preds = JSON.parse(p.stdout) as Array<{ text: string; file?: string; line?: number; predictions: Array<{ label: string; probability: number }> }>;
    assert.deepEqual(preds.map((e) => [e.line ?? null, e.predictions[0]!.label]), [[null, 'spam'], [1, 'spam'], [3, 'ham']]);
    assert.equal(preds[1]!.file, texts);
    const table = join(tmp, 'new.csv');
    await writeFile(table, 'id,message\n1,"Call now to claim your free prize, 0800 123 456"\n2,"see you at lunch, love"\n');
    const t = await graft(['predict', out, table, '--json'], env);
    assert.equal(t.code, 0, t.stderr);
    assert.deepEqual((JSON.parse(t.stdout) as Array<{ line: number }>).map((e) => e.line), [2, 3]);
    const plain = await graft(['predict', out, '--text', 'hello there'], env);
    assert.match(plain.stdout, /^hello there\n\s+[\d.]+%\s+(ham|spam)\n/);

    // eval on the whole table: the 4460 training rows (and the validation rows repeating a training text) are left out.
    const e = await graft(['eval', out, SMS, '--json'], env);
    assert.equal(e.code, 0, e.stderr);
    const ed = JSON.parse(e.stdout);
    assert.equal(ed.trainingSamples.known, true);
    assert.ok(ed.trainingSamples.excluded >= 4460 && ed.trainingSamples.excluded < 4460 + 120, `excluded ${ed.trainingSamples.excluded}`);
    assert.equal(ed.metrics.count + ed.trainingSamples.excluded, 5574);
    const wrong = await graft(['predict', out, '--json'], env);
    assert.equal(wrong.code, 2);
    assert.match(wrong.stdout, /nothing to classify/);
  });

  test('columns by flag; a missing column, and a text table forced to be images, are usage errors', async () => {
    const csv = join(tmp, 'news.csv');
    const rows = ['headline,body,topic'];
    for (let i = 0; i < 30; i++) rows.push(`"Match report ${i}","the team won the football game, ${i} goals",sport`, `"Market ${i}","stocks and shares fell, bank rates ${i}",business`);
    await writeFile(csv, rows.join('\n') + '\n');
    const r = await graft(['train', csv, '--model', 'acme/tiny-bert', '--text-column', 'headline', '--text-column', 'body', '--label-column', 'topic', '--out', join(tmp, 'news'), '--epochs', '30', '--json'], {
      ...env,
      HF_HUB_OFFLINE: '',
      HF_ENDPOINT: server.url,
    });
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(r.stdout) as TrainDoc;
    assert.deepEqual(doc.labels, ['business', 'sport']);
    assert.equal(doc.metrics.accuracy, 1);
    const missing = await graft(['train', csv, '--text-column', 'summary', '--out', join(tmp, 'x'), '--json'], env);
    assert.equal(missing.code, 2);
    assert.match((JSON.parse(missing.stdout) as { error: { message: string } }).error.message, /news\.csv has no column "summary".*"headline", "body", "topic"/);
    const forced = await graft(['train', SMS, '--task', 'image', '--out', join(tmp, 'y'), '--json'], env);
    assert.equal(forced.code, 2);
    assert.match(forced.stdout, /"code": "USAGE"/);
  });

  test('the zoo text encoder minilm-l6 through the hub: its tokenizer comes along, mean pooling is L2-normalised', async () => {
    const hub = { ...env, HF_HUB_OFFLINE: '', HF_ENDPOINT: server.url };
    const out = join(tmp, 'minilm');
    const r = await graft(['train', SMS, '--model', 'minilm-l6', '--out', out, '--epochs', '5', '--max-length', '32', '--json'], hub);
    assert.equal(r.code, 0, r.stderr);
    const manifest = JSON.parse(await readFile(join(out, 'graft.json'), 'utf8')) as { config: { pooling: string; normalize: boolean; maxLength: number }; files: Record<string, unknown> };
    assert.deepEqual([manifest.config.pooling, manifest.config.normalize, manifest.config.maxLength], ['masked-mean', true, 32]);
    assert.deepEqual(Object.keys(manifest.files).sort(), ['split.json', 'tokenizer.json', 'tokenizer_config.json']);
    // An image zoo model for a text dataset is a usage error naming the text models.
    const img = await graft(['train', SMS, '--model', 'resnet50', '--out', join(tmp, 'z'), '--json'], env);
    assert.equal(img.code, 2);
    assert.match(img.stdout, /resnet50 is an image model; text training needs a text backbone \(bert-base, minilm-l6, use-lite-bundled\)/);
  });
});

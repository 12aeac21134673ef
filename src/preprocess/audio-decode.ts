/**
 * Audio files to mono waveforms at one sample rate. WAV is decoded here (wav.ts); MP3, Ogg Vorbis and FLAC
 * (native or in Ogg) by eshaz's WebAssembly decoders, imported on first use. The format comes from the
 * file's first bytes, never its name.
 */
import { mpegSync, oggCodec, sniffAudioType, whyNotAudio, type AudioFormat } from '../data/sniff.js';
import { GraftError, invalidParameter } from '../errors.js';
import { oneLine } from '../util/fs.js';
import { resample } from './resample.js';
import { AudioProblem, checkStreamParameters, decodeWav, MAX_SAMPLE_RATE, readWavHeader } from './wav.js';
import { concatArrays } from '../util/buffer.js';

export { sniffAudioType, whyNotAudio, type AudioFormat };

export interface DecodedAudio {
  /** Mono (channels averaged), in [-1, 1], at `sampleRate`. */
  samples: Float32Array;
  /** The target rate the samples were resampled to. */
  sampleRate: number;
  sourceRate: number;
  channels: number;
  /** Duration of the source. */
  seconds: number;
  format: AudioFormat;
}

export interface DecodeAudioOptions {
  /** Longer files are refused, from their header alone where it tells the length. Default 600. */
  maxSeconds?: number;
  /** Default 16000. */
  targetRate?: number;
}

const ascii = (b: Uint8Array, start: number, end: number) => String.fromCharCode(...b.subarray(start, end));
const u32be = (b: Uint8Array, at: number) => ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
const u32le = (b: Uint8Array, at: number) => (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;

/** What a compressed file's headers say before any decoding. */
interface StreamInfo {
  sampleRate: number;
  channels: number;
  /** Frames (samples per channel) the headers announce, when they do. */
  frames?: number;
  /** Why the file is known to be cut short. */
  truncated?: string;
}

/** FLAC's STREAMINFO, the mandatory first metadata block after the 'fLaC' marker at `at`. */
function flacInfo(b: Uint8Array, at: number): StreamInfo {
  const s = at + 8;
  if (b.length < s + 18 || (b[at + 4]! & 0x7f) !== 0) throw new AudioProblem('truncated header (no FLAC STREAMINFO block)');
  const frames = (b[s + 13]! & 15) * 2 ** 32 + u32be(b, s + 14);
  return {
    sampleRate: (b[s + 10]! << 12) | (b[s + 11]! << 4) | (b[s + 12]! >> 4),
    channels: ((b[s + 12]! >> 1) & 7) + 1,
    frames: frames || undefined, // 0: unknown
  };
}

/** The last Ogg page: granule position (samples so far) and whether the stream ends there, complete. */
function oggInfo(b: Uint8Array): StreamInfo {
  const codec = oggCodec(b);
  const p = 27 + (b[26] ?? 0);
  let info: StreamInfo;
  if (codec === 'vorbis' && b.length >= p + 16) info = { channels: b[p + 11]!, sampleRate: u32le(b, p + 12) };
  else if (codec === 'flac') info = flacInfo(b, p + 9);
  else throw new AudioProblem('truncated header (the Ogg identification header is cut short)');
  // Pages are at most 65307 bytes: the last one starts within that distance of the end.
  for (let q = b.length - 27; q >= Math.max(0, b.length - 65307); q--) {
    if (b[q] !== 0x4f || ascii(b, q, q + 4) !== 'OggS' || b[q + 4] !== 0) continue;
    const segments = b[q + 26]!;
    let end = q + 27 + segments;
    for (let i = 0; i < segments && q + 27 + i < b.length; i++) end += b[q + 27 + i]!;
    if (end > b.length) info.truncated = 'the last Ogg page is cut short';
    else if (!(b[q + 5]! & 4)) info.truncated = 'the Ogg stream ends without its end-of-stream page';
    const lo = u32le(b, q + 6);
    const hi = u32le(b, q + 10);
    if (hi !== 0xffffffff) info.frames = hi * 2 ** 32 + lo; // -1: no packet ends on this page
    return info;
  }
  info.truncated = 'no complete Ogg page near the end';
  return info;
}

const MPEG_BITRATES = [
  [0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448], // MPEG-1 layer I
  [0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384], // MPEG-1 layer II
  [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320], // MPEG-1 layer III
  [0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256], // MPEG-2/2.5 layer I
  [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160], // MPEG-2/2.5 layers II and III
];

interface MpegFrame {
  bytes: number;
  samples: number;
  sampleRate: number;
  channels: number;
  /** Where a Xing/Info tag would start, for layer III. */
  tagAt: number;
}

/** The MPEG audio frame whose header is at `at`, or undefined (including free-format frames, of unknown length). */
function mpegFrame(b: Uint8Array, at: number): MpegFrame | undefined {
  if (at + 4 > b.length || !mpegSync(b, at)) return undefined;
  const version = (b[at + 1]! >> 3) & 3; // 0: MPEG-2.5, 2: MPEG-2, 3: MPEG-1
  const layer = 4 - ((b[at + 1]! >> 1) & 3);
  const bitrate = MPEG_BITRATES[version === 3 ? layer - 1 : layer === 1 ? 3 : 4]![b[at + 2]! >> 4]! * 1000;
  if (bitrate === 0) return undefined;
  const sampleRate = [44100, 48000, 32000][(b[at + 2]! >> 2) & 3]! >> (version === 3 ? 0 : version === 2 ? 1 : 2);
  const padding = (b[at + 2]! >> 1) & 1;
  const samples = layer === 1 ? 384 : layer === 2 || version === 3 ? 1152 : 576;
  const bytes = layer === 1 ? (Math.floor((12 * bitrate) / sampleRate) + padding) * 4 : Math.floor(((samples / 8) * bitrate) / sampleRate) + padding;
  const channels = b[at + 3]! >> 6 === 3 ? 1 : 2;
  const sideInfo = version === 3 ? (channels === 1 ? 17 : 32) : channels === 1 ? 9 : 17;
  return { bytes, samples, sampleRate, channels, tagAt: at + 4 + (b[at + 1]! & 1 ? 0 : 2) + sideInfo };
}

/** Walks an MPEG audio file's frames: the first tells the format, their count the length, the last whether it is cut. */
function mpegInfo(b: Uint8Array): StreamInfo {
  let start = 0;
  while (ascii(b, start, start + 3) === 'ID3' && start + 10 <= b.length) {
    const size = ((b[start + 6]! & 0x7f) << 21) | ((b[start + 7]! & 0x7f) << 14) | ((b[start + 8]! & 0x7f) << 7) | (b[start + 9]! & 0x7f);
    start += 10 + size + (b[start + 5]! & 0x10 ? 10 : 0);
  }
  if (start >= b.length) throw new AudioProblem('truncated (nothing after the ID3 tag)');
  // The first frame is a header followed by another one (or by the end of the file), within 64 KiB of junk.
  let first = -1;
  for (let i = start; i < Math.min(b.length, start + 65536) && first < 0; i++) {
    const f = mpegFrame(b, i);
    if (f && (i + f.bytes === b.length || mpegFrame(b, i + f.bytes)?.sampleRate === f.sampleRate)) first = i;
  }
  if (first < 0) throw new AudioProblem('no MPEG audio frames found');
  const head = mpegFrame(b, first)!;
  const tag = ascii(b, head.tagAt, head.tagAt + 4);
  const tagged = (tag === 'Xing' || tag === 'Info') && b[head.tagAt + 7]! & 1 ? u32be(b, head.tagAt + 8) : undefined;
  let count = 0;
  let at = first;
  let truncated: string | undefined;
  for (let f: MpegFrame | undefined = head; f; f = mpegFrame(b, at)) {
    if (at + f.bytes > b.length) {
      truncated = 'the last MPEG frame is cut short';
      break;
    }
    count++;
    at += f.bytes;
  }
  // The Xing/Info frame itself carries no audio and is not in its own count.
  const audioFrames = tagged === undefined ? count : count - 1;
  if (!truncated && at === b.length && tagged !== undefined && audioFrames < tagged) truncated = `${audioFrames} of ${tagged} MPEG frames present`;
  return { sampleRate: head.sampleRate, channels: head.channels, frames: (tagged ?? audioFrames) * head.samples, truncated };
}

interface DecodedChunk {
  channelData: Float32Array[];
  samplesDecoded: number;
  sampleRate: number;
  errors: Array<{ message: string }>;
}
interface StreamDecoder {
  ready: Promise<void>;
  decode(data: Uint8Array): DecodedChunk | Promise<DecodedChunk>;
  flush?: () => Promise<DecodedChunk>;
  free(): void;
}

/** The WebAssembly decoders, loaded on first use. Ogg FLAC goes to the FLAC decoder, which reads both. */
const DECODERS: Record<Exclude<AudioFormat, 'wav'>, () => Promise<StreamDecoder>> = {
  mp3: async () => new (await import('mpg123-decoder')).MPEGDecoder(),
  ogg: async () => new (await import('@wasm-audio-decoders/ogg-vorbis')).OggVorbisDecoder(),
  flac: async () => new (await import('@wasm-audio-decoders/flac')).FLACDecoder(),
};

/** Input is fed in pieces this large, so that decoding stops soon after a file proves longer than the limit. */
const FEED_BYTES = 8192;

/** Runs a decoder call with console.error silenced: the decoders print every error, and return them too. */
function quietly<T>(call: () => T): T {
  const original = console.error;
  console.error = () => {};
  try {
    return call();
  } finally {
    console.error = original;
  }
}

async function decodeCompressed(format: Exclude<AudioFormat, 'wav'>, bytes: Uint8Array, maxSeconds: number) {
  const info = format === 'mp3' ? mpegInfo(bytes) : ascii(bytes, 0, 4) === 'OggS' ? oggInfo(bytes) : flacInfo(bytes, 0);
  checkStreamParameters(info.sampleRate, info.channels);
  if (info.truncated) throw new AudioProblem(`truncated (${info.truncated})`);
  if (info.frames !== undefined && info.frames / info.sampleRate > maxSeconds) throw tooLong(info.frames / info.sampleRate, maxSeconds);
  const decoder = await DECODERS[format]();
  await decoder.ready;
  const parts: Float32Array[] = [];
  const errors = new Set<string>();
  let frames = 0;
  let sampleRate = 0;
  const take = (chunk: DecodedChunk) => {
    for (const e of chunk.errors) errors.add(joinLines(e.message));
    const n = chunk.samplesDecoded;
    if (n === 0) return;
    if (sampleRate && chunk.sampleRate !== sampleRate) throw new AudioProblem(`changes sample rate mid-stream (${sampleRate} Hz, then ${chunk.sampleRate} Hz)`);
    sampleRate = chunk.sampleRate;
    checkStreamParameters(sampleRate, chunk.channelData.length);
    const mono = new Float32Array(n);
    for (const channel of chunk.channelData) for (let i = 0; i < n; i++) mono[i]! += channel[i]!;
    const scale = 1 / chunk.channelData.length;
    for (let i = 0; i < n; i++) mono[i]! *= scale;
    parts.push(mono);
    frames += n;
    if (frames / sampleRate > maxSeconds) throw tooLong(frames / sampleRate, maxSeconds, true);
  };
  try {
    for (let at = 0; at < bytes.length; at += FEED_BYTES) take(await quietly(() => decoder.decode(bytes.subarray(at, at + FEED_BYTES))));
    if (decoder.flush) take(await quietly(() => decoder.flush!()));
  } finally {
    decoder.free();
  }
  const problems = [...errors].slice(0, 3).join('; ');
  if (info.frames !== undefined && format === 'flac' && frames < info.frames) {
    throw new AudioProblem(`truncated (${seconds(frames / info.sampleRate)} s of ${seconds(info.frames / info.sampleRate)} s decoded${problems ? `; ${problems}` : ''})`);
  }
  if (errors.size) throw new AudioProblem(`cannot decode ${format.toUpperCase()} (${problems})`);
  if (frames === 0) throw new AudioProblem('has no audio frames');
  return { samples: concatArrays(parts, Float32Array), sampleRate, channels: info.channels };
}

/** Decoders report over several lines; a skip reason is one line. */
const joinLines = (message: string) => message.split(/\s*[\r\n]+\s*/).filter(Boolean).join('; ');

const seconds = (s: number) => String(Math.round(s * 100) / 100);

/** `decoded`: the length is not known, decoding stopped at `duration`. */
function tooLong(duration: number, maxSeconds: number, decoded = false): AudioProblem {
  return new AudioProblem(
    decoded
      ? `lasts more than the ${maxSeconds} s limit (decoding stopped at ${seconds(duration)} s)`
      : `lasts ${seconds(duration)} s, more than the ${maxSeconds} s limit`,
  );
}

/**
 * Decodes an audio file's bytes (WAV, MP3, Ogg Vorbis, FLAC, told apart by their signatures) into mono
 * samples in [-1, 1] at `targetRate`. Every failure is an AUDIO GraftError whose one-line message names `file`;
 * a file longer than `maxSeconds` is refused from its header where that tells the length, before any decoding,
 * and otherwise as soon as decoding passes the limit.
 */
export async function decodeAudio(bytes: Uint8Array, file: string, options: DecodeAudioOptions = {}): Promise<DecodedAudio> {
  const { maxSeconds = 600, targetRate = 16000 } = options;
  if (!(typeof maxSeconds === 'number' && maxSeconds > 0)) throw invalidParameter('maxSeconds', 'a positive number of seconds', maxSeconds);
  if (!(Number.isInteger(targetRate) && targetRate > 0 && targetRate <= MAX_SAMPLE_RATE)) {
    throw invalidParameter('targetRate', `an integer rate in Hz (1 … ${MAX_SAMPLE_RATE})`, targetRate);
  }
  const format = sniffAudioType(bytes);
  try {
    if (!format) throw new AudioProblem(whyNotAudio(bytes)!);
    let source: { samples: Float32Array; sampleRate: number; channels: number };
    if (format === 'wav') {
      const header = readWavHeader(bytes);
      if (header.frames === 0) throw new AudioProblem('has no audio frames (empty data chunk)');
      if (header.frames / header.sampleRate > maxSeconds) throw tooLong(header.frames / header.sampleRate, maxSeconds);
      source = { samples: decodeWav(bytes, header), sampleRate: header.sampleRate, channels: header.channels };
    } else {
      source = await decodeCompressed(format, bytes, maxSeconds);
    }
    const samples = resample(source.samples, source.sampleRate, targetRate);
    // Float files and the resampler's ringing may step past full scale.
    for (let i = 0; i < samples.length; i++) samples[i] = Math.max(-1, Math.min(1, samples[i]!));
    return {
      samples,
      sampleRate: targetRate,
      sourceRate: source.sampleRate,
      channels: source.channels,
      seconds: source.samples.length / source.sampleRate,
      format,
    };
  } catch (e) {
    const reason = oneLine(e instanceof AudioProblem ? e.problem : `cannot decode ${format?.toUpperCase() ?? 'audio'} (${joinLines(e instanceof Error ? e.message : String(e))})`);
    throw new GraftError('AUDIO', `${oneLine(file)}: ${reason}`, { file, reason }, { cause: e });
  }
}

/**
 * A WAV decoder: RIFF (and RF64/BW64) WAVE files with PCM 8/16/24/32-bit integer, IEEE float 32/64, A-law or
 * µ-law samples, plain or WAVE_FORMAT_EXTENSIBLE, any number of channels (mixed down to mono).
 */

/** Why some bytes cannot be decoded as audio, in one line without the file name (the caller adds it). */
export class AudioProblem extends Error {
  constructor(readonly problem: string) {
    super(problem);
    this.name = 'AudioProblem';
  }
}

export interface WavHeader {
  /** The format tag, resolved through WAVE_FORMAT_EXTENSIBLE's subformat: 1 PCM, 3 float, 6 A-law, 7 µ-law. */
  format: number;
  channels: number;
  sampleRate: number;
  bitsPerSample: number;
  /** Where the samples start, and how many whole frames the file holds there. */
  dataOffset: number;
  frames: number;
}

const PCM = 0x0001;
const FLOAT = 0x0003;
const ALAW = 0x0006;
const MULAW = 0x0007;
const EXTENSIBLE = 0xfffe;
/** The KSDATAFORMAT_SUBTYPE GUIDs are the format tag followed by these 14 bytes. */
const GUID_TAIL = [0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xaa, 0x00, 0x38, 0x9b, 0x71];

/** Names of formats met in the wild that this decoder does not read. */
const FORMAT_NAMES: Record<number, string> = {
  0x0002: 'Microsoft ADPCM',
  0x0011: 'IMA ADPCM',
  0x0031: 'GSM 6.10',
  0x0040: 'G.721 ADPCM',
  0x0050: 'MPEG audio',
  0x0055: 'MPEG Layer 3',
  0x0161: 'Windows Media Audio',
  0x0162: 'Windows Media Audio Pro',
  0x1610: 'AAC',
  0xf1ac: 'FLAC',
};

/** Highest sample rate accepted (the highest any common format or interface uses). */
export const MAX_SAMPLE_RATE = 768_000;

const ascii = (b: Uint8Array, start: number, end: number) => String.fromCharCode(...b.subarray(start, end));

/** Checks a sample rate and channel count read from any file header. */
export function checkStreamParameters(sampleRate: number, channels: number): void {
  if (channels === 0) throw new AudioProblem('has 0 channels');
  if (sampleRate === 0) throw new AudioProblem('has a sample rate of 0 Hz');
  if (sampleRate > MAX_SAMPLE_RATE) throw new AudioProblem(`has an absurd sample rate of ${sampleRate} Hz (more than ${MAX_SAMPLE_RATE / 1000} kHz)`);
}

/**
 * Reads a WAV file's header and finds its samples, touching no sample. Unknown chunks are skipped (odd sizes
 * with their pad byte); a data chunk that claims more bytes than the file has, or 0xFFFFFFFF bytes (streaming
 * writers), holds the whole frames up to the end of the file.
 */
export function readWavHeader(bytes: Uint8Array): WavHeader {
  const n = bytes.length;
  if (n < 12) throw new AudioProblem(`truncated header (${n} bytes, a WAV header needs at least 44)`);
  const riff = ascii(bytes, 0, 4);
  if (riff === 'RIFX') throw new AudioProblem('big-endian (RIFX) WAV is not supported');
  if ((riff !== 'RIFF' && riff !== 'RF64' && riff !== 'BW64') || ascii(bytes, 8, 12) !== 'WAVE') {
    throw new AudioProblem('not a RIFF WAVE file');
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, n);
  let fmt: Omit<WavHeader, 'dataOffset' | 'frames'> | undefined;
  let data: { offset: number; length: number } | undefined;
  let ds64Size: number | undefined;
  let pos = 12;
  while (pos + 8 <= n && !(fmt && data)) {
    const id = ascii(bytes, pos, pos + 4);
    const size = view.getUint32(pos + 4, true);
    const body = pos + 8;
    if (id === 'ds64' && body + 16 <= n) {
      ds64Size = view.getUint32(body + 8, true) + view.getUint32(body + 12, true) * 2 ** 32;
    } else if (id === 'fmt ' && !fmt) {
      if (body + 16 > n || size < 16) throw new AudioProblem('truncated header (the fmt chunk is cut short)');
      fmt = readFmt(view, body, size);
    } else if (id === 'data' && !data) {
      const available = n - body;
      const declared = size === 0xffffffff ? (ds64Size ?? available) : size;
      data = { offset: body, length: Math.min(declared, available) };
      if (declared >= available) break;
    }
    pos = body + size + (size & 1);
  }
  if (!fmt) throw new AudioProblem(data ? 'has no fmt chunk' : 'truncated header (no fmt chunk)');
  if (!data) throw new AudioProblem('truncated header (no data chunk)');
  const frameBytes = fmt.channels * Math.ceil(fmt.bitsPerSample / 8);
  return { ...fmt, dataOffset: data.offset, frames: Math.floor(data.length / frameBytes) };
}

function readFmt(view: DataView, at: number, size: number): Omit<WavHeader, 'dataOffset' | 'frames'> {
  let format = view.getUint16(at, true);
  const channels = view.getUint16(at + 2, true);
  const sampleRate = view.getUint32(at + 4, true);
  const bitsPerSample = view.getUint16(at + 14, true);
  if (format === EXTENSIBLE) {
    if (size < 40 || at + 40 > view.byteLength) throw new AudioProblem('truncated header (WAVE_FORMAT_EXTENSIBLE fmt chunk without its subformat)');
    format = view.getUint16(at + 24, true);
    if (!GUID_TAIL.every((b, i) => view.getUint8(at + 26 + i) === b)) {
      const guid = Array.from({ length: 16 }, (_, i) => view.getUint8(at + 24 + i).toString(16).padStart(2, '0')).join('');
      throw new AudioProblem(`unsupported encoding (WAVE_FORMAT_EXTENSIBLE subformat ${guid})`);
    }
  }
  checkStreamParameters(sampleRate, channels);
  const supported =
    (format === PCM && bitsPerSample >= 8 && bitsPerSample <= 32) ||
    (format === FLOAT && (bitsPerSample === 32 || bitsPerSample === 64)) ||
    ((format === ALAW || format === MULAW) && bitsPerSample === 8);
  if (!supported) {
    const tag = `WAV format 0x${format.toString(16).padStart(4, '0')}`;
    const name = FORMAT_NAMES[format] ?? { [PCM]: 'integer PCM', [FLOAT]: 'IEEE float', [ALAW]: 'A-law', [MULAW]: 'µ-law' }[format];
    throw new AudioProblem(`unsupported encoding (${tag}${name ? `, ${name}` : ''}, ${bitsPerSample} bits per sample)`);
  }
  return { format, channels, sampleRate, bitsPerSample };
}

/** ITU-T G.711 expansions to 16-bit values, built on first use. */
let g711: { alaw: Int16Array; mulaw: Int16Array } | undefined;
function g711Tables(): { alaw: Int16Array; mulaw: Int16Array } {
  if (g711) return g711;
  const alaw = new Int16Array(256);
  const mulaw = new Int16Array(256);
  for (let i = 0; i < 256; i++) {
    const a = i ^ 0x55;
    const exponent = (a >> 4) & 7;
    const magnitude = exponent === 0 ? ((a & 15) << 4) + 8 : (((a & 15) << 4) + 0x108) << (exponent - 1);
    alaw[i] = a & 0x80 ? magnitude : -magnitude;
    const u = ~i & 0xff;
    const m = ((((u & 15) << 3) + 0x84) << ((u >> 4) & 7)) - 0x84;
    mulaw[i] = u & 0x80 ? -m : m;
  }
  return (g711 = { alaw, mulaw });
}

/**
 * Decodes the samples `header` describes, averaged over channels: integers scaled by 2^(bits-1) of their
 * container (8-bit: (v - 128) / 128), floats as they are. Throws when float data holds NaN or infinities.
 */
export function decodeWav(bytes: Uint8Array, header: WavHeader = readWavHeader(bytes)): Float32Array {
  const { format, channels, frames, dataOffset } = header;
  const width = Math.ceil(header.bitsPerSample / 8);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tables = format === ALAW || format === MULAW ? g711Tables() : undefined;
  const read: (at: number) => number =
    format === FLOAT
      ? width === 4
        ? (at) => view.getFloat32(at, true)
        : (at) => view.getFloat64(at, true)
      : tables
        ? ((t) => (at: number) => t[bytes[at]!]! / 32768)(format === ALAW ? tables.alaw : tables.mulaw)
        : width === 1
          ? (at) => (bytes[at]! - 128) / 128
          : width === 2
            ? (at) => view.getInt16(at, true) / 32768
            : width === 3
              ? (at) => ((bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16)) << 8 >> 8) / 8388608
              : (at) => view.getInt32(at, true) / 2147483648;
  const out = new Float32Array(frames);
  for (let f = 0, at = dataOffset; f < frames; f++) {
    let sum = 0;
    for (let c = 0; c < channels; c++, at += width) sum += read(at);
    if (!Number.isFinite(sum)) throw new AudioProblem(Number.isNaN(sum) ? 'contains NaN samples' : 'contains infinite samples');
    out[f] = sum / channels;
  }
  return out;
}

/**
 * Audio preprocessing: the AudioConfig that travels with an audio backbone and every audio artifact. A clip is
 * decoded (audio-decode.ts), mixed to mono, resampled to `sampleRate` and fed as one float32 row
 * `[samples]`; everything after that (the front end: log-mel frames, windows, pooling over windows) lives in the
 * ONNX graph, so an exported model takes a plain waveform anywhere ONNX runs.
 */
import { GraftError, invalidConfig } from '../errors.js';

/** How the backbone's window embeddings become one vector per clip. */
export type AudioPooling = 'mean' | 'mean+max';

export interface AudioConfig {
  /** The ONNX input: float32 `[N, samples]`. */
  inputName: string;
  /** Samples per second the model takes; clips are resampled to it. */
  sampleRate: number;
  /**
   * What a full-scale sample is on the input: 1 means samples in [-1, 1] (what soundfile, WebAudio and graft's
   * decoder give); 32768 would mean the int16 scale.
   */
  sampleScale: number;
  /** Clips shorter than this are zero-padded at the end (by the graph; recorded so users know). */
  minSamples: number;
  /** Longer clips are not used (skipped in training, refused in predict): a bound on memory and time. */
  maxSeconds: number;
  /**
   * The front end's framing as the graph computes it, where the backbone states it (informational: the
   * clip/window policy): frames of `frameLength` samples every `frameHop`, windows of `frames` frames every `hop`.
   */
  window?: { frameLength: number; frameHop: number; frames: number; hop: number };
  pooling: AudioPooling;
  /** Tensor the features are read from, and their length. */
  cut?: string;
  featureDim?: number;
}

export function validateAudioConfig(raw: unknown, source = 'AudioConfig'): AudioConfig {
  const fail = (field: string, expected: string, actual: unknown): never => {
    throw invalidConfig(source, field, expected, actual);
  };
  if (typeof raw !== 'object' || raw === null) throw new GraftError('CONFIG', `${source}: expected an object`, { source });
  const c = raw as Record<string, unknown>;
  const positiveInt = (v: unknown) => Number.isInteger(v) && (v as number) > 0;
  if (typeof c.inputName !== 'string' || !c.inputName) fail('inputName', 'an input name', c.inputName);
  if (!positiveInt(c.sampleRate) || (c.sampleRate as number) > 768000) fail('sampleRate', 'a rate in Hz (1 … 768000)', c.sampleRate);
  if (!(typeof c.sampleScale === 'number' && c.sampleScale > 0 && Number.isFinite(c.sampleScale))) fail('sampleScale', 'a positive number', c.sampleScale);
  if (!(Number.isInteger(c.minSamples) && (c.minSamples as number) >= 0)) fail('minSamples', 'an integer ≥ 0', c.minSamples);
  if (!(typeof c.maxSeconds === 'number' && c.maxSeconds > 0)) fail('maxSeconds', 'a positive number of seconds', c.maxSeconds);
  const w = c.window as Record<string, unknown> | undefined;
  if (w !== undefined && (typeof w !== 'object' || w === null || ![w.frameLength, w.frameHop, w.frames, w.hop].every(positiveInt))) fail('window', '{ frameLength, frameHop, frames, hop } (positive integers)', w);
  if (!['mean', 'mean+max'].includes(c.pooling as string)) fail('pooling', '"mean" or "mean+max"', c.pooling);
  if (c.cut !== undefined && typeof c.cut !== 'string') fail('cut', 'a tensor name', c.cut);
  if (c.featureDim !== undefined && !positiveInt(c.featureDim)) fail('featureDim', 'a positive integer', c.featureDim);
  return Object.freeze({
    inputName: c.inputName as string,
    sampleRate: c.sampleRate as number,
    sampleScale: c.sampleScale as number,
    minSamples: c.minSamples as number,
    maxSeconds: c.maxSeconds as number,
    ...(w ? { window: { frameLength: w.frameLength as number, frameHop: w.frameHop as number, frames: w.frames as number, hop: w.hop as number } } : {}),
    pooling: c.pooling as AudioPooling,
    ...(c.cut !== undefined ? { cut: c.cut as string } : {}),
    ...(c.featureDim !== undefined ? { featureDim: c.featureDim as number } : {}),
  });
}

/** What changes the waveform fed to the model: rate, scale and the length bound (the rest is in the graph, whose bytes key the cache). */
export function audioKey(config: AudioConfig): string {
  const { sampleRate, sampleScale, maxSeconds } = config;
  return JSON.stringify({ sampleRate, sampleScale, maxSeconds });
}

/** Every field of AudioConfig, and whether audioKey keys on it (typed: a new field must be placed here). */
export const AUDIO_KEY_FIELDS: Record<keyof AudioConfig, boolean> = {
  inputName: false,
  sampleRate: true,
  sampleScale: true,
  maxSeconds: true, // a longer clip is skipped: the skip record depends on it
  minSamples: false, // padding, windows and pooling are computed by the graph, whose bytes key the cache
  window: false,
  pooling: false,
  cut: false,
  featureDim: false,
};

/** `samples` (in [-1, 1]) on the config's scale, as the model takes them. */
/** Defaults for a waveform model that states nothing else: 16 kHz in [-1, 1], no padding, clips up to 10 minutes. */
export const AUDIO_DEFAULTS: Pick<AudioConfig, 'inputName' | 'sampleRate' | 'sampleScale' | 'minSamples' | 'maxSeconds' | 'pooling'> = {
  inputName: 'waveform',
  sampleRate: 16000,
  sampleScale: 1,
  minSamples: 0,
  maxSeconds: 600,
  pooling: 'mean',
};

export function scaleSamples(samples: Float32Array, config: Pick<AudioConfig, 'sampleScale'>): Float32Array {
  if (config.sampleScale === 1) return samples;
  const out = new Float32Array(samples.length);
  for (let i = 0; i < samples.length; i++) out[i] = samples[i]! * config.sampleScale;
  return out;
}

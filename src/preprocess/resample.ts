/**
 * Band-limited resampling by a windowed-sinc polyphase filter (Kaiser window), one table of coefficients per
 * pair of rates, cached.
 *
 * The passband ends at 90% of the lower of the two Nyquist frequencies and the stopband starts at that Nyquist
 * frequency, so nothing aliases and nothing images: 44.1 kHz → 16 kHz keeps 0-7.2 kHz flat (ripple under
 * 0.001 dB) and attenuates everything from 8 kHz up by STOPBAND_DB (measured: 90-94 dB).
 */
import { invalidParameter } from '../errors.js';

const STOPBAND_DB = 90;
const PASSBAND_EDGE = 0.9;
const BETA = 0.1102 * (STOPBAND_DB - 8.7);

/** Phase tables larger than this many coefficients are replaced by POLY_PHASES phases, linearly interpolated. */
const MAX_EXACT_TABLE = 1 << 20;
const POLY_PHASES = 1024;

interface Filter {
  /** to/from in lowest terms: output j sits at input time j·down/up. */
  up: number;
  down: number;
  /** Half width in input samples; each output sample reads 2·half inputs (a multiple of 4). */
  half: number;
  /** Rows of 2·half coefficients: `up` rows (one per phase) when exact, else POLY_PHASES + 1 rows to interpolate. */
  exact: boolean;
  table: Float32Array;
}

const cache = new Map<string, Filter>();
const CACHE_SIZE = 16;

const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));

/** Zeroth-order modified Bessel function of the first kind, by its power series. */
function besselI0(x: number): number {
  let sum = 1;
  let term = 1;
  for (let k = 1; term > 1e-12 * sum; k++) {
    term *= (x / (2 * k)) ** 2;
    sum += term;
  }
  return sum;
}

function design(from: number, to: number): Filter {
  const g = gcd(from, to);
  const up = to / g;
  const down = from / g;
  const nyquist = Math.min(from, to) / 2;
  const cutoff = ((1 + PASSBAND_EDGE) / 2) * nyquist / from; // cycles per input sample, at the transition's middle
  const transition = (2 * Math.PI * (1 - PASSBAND_EDGE) * nyquist) / from; // radians per input sample
  // Kaiser's length estimate, rounded up so that the taps (2·half) come in fours for the unrolled loop.
  const half = 2 * Math.ceil((STOPBAND_DB - 7.95) / (2.285 * transition) / 4);
  const taps = 2 * half;
  const exact = up * taps <= MAX_EXACT_TABLE;
  const rows = exact ? up : POLY_PHASES + 1;
  const table = new Float32Array(rows * taps);
  const i0Beta = besselI0(BETA);
  for (let r = 0; r < rows; r++) {
    const frac = r / (exact ? up : POLY_PHASES);
    let sum = 0;
    const row = new Float64Array(taps);
    for (let k = 0; k < taps; k++) {
      // Tap k reads input i0 - half + 1 + k for an output at input time i0 + frac.
      const t = frac + half - 1 - k;
      const x = 2 * cutoff * t;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      const w = t / half;
      const window = Math.abs(w) >= 1 ? 0 : besselI0(BETA * Math.sqrt(1 - w * w)) / i0Beta;
      row[k] = 2 * cutoff * sinc * window;
      sum += row[k]!;
    }
    // Unit gain at DC for every phase.
    for (let k = 0; k < taps; k++) table[r * taps + k] = row[k]! / sum;
  }
  return { up, down, half, exact, table };
}

function filterFor(from: number, to: number): Filter {
  const key = `${from}:${to}`;
  let filter = cache.get(key);
  if (filter) {
    cache.delete(key); // re-inserted below: most recently used last
  } else {
    filter = design(from, to);
    if (cache.size >= CACHE_SIZE) cache.delete(cache.keys().next().value!);
  }
  cache.set(key, filter);
  return filter;
}

/**
 * Resamples mono audio from `from` Hz to `to` Hz (positive integers). Output sample j is the band-limited
 * signal at input time j·from/to, so the first samples line up; the output has round(n·to/from) samples and
 * the signal is taken as zero outside the input. Returns `samples` itself when from === to.
 */
export function resample(samples: Float32Array, from: number, to: number): Float32Array {
  if (!Number.isInteger(from) || from <= 0) throw invalidParameter('from', 'a positive integer sample rate', from);
  if (!Number.isInteger(to) || to <= 0) throw invalidParameter('to', 'a positive integer sample rate', to);
  if (from === to) return samples;
  const n = samples.length;
  const out = new Float32Array(Math.round((n * to) / from));
  if (out.length === 0) return out;
  const { up, down, half, exact, table } = filterFor(from, to);
  const taps = 2 * half;
  // Zeros around the input keep the inner loop free of bounds checks.
  const x = new Float32Array(n + taps + 1);
  x.set(samples, half);
  const whole = Math.floor(down / up);
  const rest = down % up;
  let i0 = 0; // out[j] sits at input time i0 + phase/up
  let phase = 0;
  for (let j = 0; j < out.length; j++) {
    // x[i0 + 1 + k] is input i0 - half + 1 + k.
    const base = i0 + 1;
    let acc = 0;
    if (exact) {
      const row = phase * taps;
      let a1 = 0, a2 = 0, a3 = 0;
      for (let k = 0; k < taps; k += 4) {
        acc += x[base + k]! * table[row + k]!;
        a1 += x[base + k + 1]! * table[row + k + 1]!;
        a2 += x[base + k + 2]! * table[row + k + 2]!;
        a3 += x[base + k + 3]! * table[row + k + 3]!;
      }
      acc += a1 + a2 + a3;
    } else {
      const u = (phase * POLY_PHASES) / up;
      const r = Math.floor(u);
      const w = u - r;
      const a = r * taps;
      const b = a + taps;
      for (let k = 0; k < taps; k++) {
        const c = table[a + k]!;
        acc += x[base + k]! * (c + w * (table[b + k]! - c));
      }
    }
    out[j] = acc;
    i0 += whole;
    phase += rest;
    if (phase >= up) {
      phase -= up;
      i0++;
    }
  }
  return out;
}

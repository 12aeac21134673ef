import { readFile, realpath, stat } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve, sep } from 'node:path';
import { GraftError } from '../errors.js';
import { readRegularFile } from '../util/fs.js';
import type { ModelProto } from '../onnx/proto.js';
import { concatArrays } from '../util/buffer.js';

/** One weight as a TensorFlow.js `weightsManifest` describes it. */
export interface TfjsWeightEntry {
  name: string;
  shape: number[];
  dtype: string;
  /** Stored quantized: value = q * scale + min (uint8/uint16), or IEEE half floats (float16). */
  quantization?: { dtype: 'uint8' | 'uint16' | 'float16'; scale?: number; min?: number; original_dtype?: string };
}

/** A group of weights stored back to back across the concatenation of its shard files. */
export interface TfjsWeightsGroup {
  paths: string[];
  weights: TfjsWeightEntry[];
}

/** The `model.json` of a TensorFlow.js model (layers or graph format). */
export interface TfjsModelJson {
  format?: string;
  generatedBy?: string;
  convertedBy?: string | null;
  modelTopology: unknown;
  weightsManifest: TfjsWeightsGroup[];
  userDefinedMetadata?: Record<string, unknown>;
  signature?: unknown;
}

export interface TfjsWeight {
  name: string;
  shape: number[];
  dtype: 'float32' | 'int32';
  data: Float32Array | Int32Array;
}

/** A model.json with its weights decoded, and where it came from (for error messages). */
export interface TfjsModel {
  json: TfjsModelJson;
  weights: Map<string, TfjsWeight>;
  source: string;
}

/** What both importers return: the ONNX model and where the TensorFlow.js names ended up. */
export interface ConvertedModel {
  /** Opset 17, float32, batch dimension symbolic (`N`). */
  model: ModelProto;
  /** The input's name; it keeps TensorFlow's layout (NHWC for images). */
  inputName: string;
  /** The input's dimensions in TensorFlow order, -1 where unknown (the batch): e.g. `[-1, 224, 224, 3]`. */
  inputShape: number[];
  /** ONNX output names: the model's own outputs, then any asked for, in TensorFlow's layout. */
  outputs: string[];
  /**
   * Layer (layers format) or node (graph format) name → the ONNX tensor holding its value inside the graph,
   * where every 4-D activation is NCHW: the names to cut at.
   */
  layerOutputs: Map<string, string>;
}

const QUANT_BYTES = { uint8: 1, uint16: 2, float16: 2 } as const;
const DTYPE_BYTES: Record<string, number> = { float32: 4, int32: 4, bool: 1 };

/** IEEE 754 half → number (exact). */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/**
 * Decodes every weight of a manifest from its shards' bytes (`shard(path)` returns the file named in
 * `paths`). Dequantization follows tfjs exactly (q * scale + min in double, then rounded to float32), so a
 * converted model reproduces tfjs's outputs.
 */
export function decodeWeights(
  manifest: readonly TfjsWeightsGroup[],
  shard: (path: string) => Uint8Array,
  source = 'model.json',
): Map<string, TfjsWeight> {
  const out = new Map<string, TfjsWeight>();
  const bad = (msg: string, ctx: Record<string, unknown> = {}): never => {
    throw new GraftError('MODEL', `${source}: ${msg}`, { file: source, ...ctx });
  };
  if (!Array.isArray(manifest)) bad('weightsManifest is missing or not a list');
  for (const group of manifest) {
    if (!Array.isArray(group.paths) || !Array.isArray(group.weights)) bad('a weightsManifest group lacks paths or weights');
    const parts = group.paths.map((p) => shard(p));
    const buf = concatArrays(parts, Uint8Array);
    const total = buf.byteLength;
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    let offset = 0;
    for (const w of group.weights) {
      const n = w.shape.reduce((a, b) => a * b, 1);
      const q = w.quantization;
      const bytesPer = q ? QUANT_BYTES[q.dtype] : DTYPE_BYTES[w.dtype];
      if (bytesPer === undefined) bad(`weight ${w.name} has unsupported dtype ${q ? q.dtype : w.dtype}`, { weight: w.name });
      const size = n * bytesPer!;
      if (offset + size > total)
        bad(`weight ${w.name} needs bytes ${offset}..${offset + size} but the shards ${group.paths.join(', ')} hold ${total}`, {
          weight: w.name,
        });
      const isInt = (q?.original_dtype ?? w.dtype) === 'int32';
      const data = isInt ? new Int32Array(n) : new Float32Array(n);
      if (!q) {
        for (let i = 0; i < n; i++)
          data[i] = w.dtype === 'bool' ? buf[offset + i]! : isInt ? view.getInt32(offset + 4 * i, true) : view.getFloat32(offset + 4 * i, true);
      } else if (q.dtype === 'float16') {
        for (let i = 0; i < n; i++) data[i] = halfToFloat(view.getUint16(offset + 2 * i, true));
      } else {
        const scale = q.scale ?? bad(`weight ${w.name}: ${q.dtype} quantization without scale`, { weight: w.name });
        const min = q.min ?? bad(`weight ${w.name}: ${q.dtype} quantization without min`, { weight: w.name });
        for (let i = 0; i < n; i++) {
          const v = q.dtype === 'uint8' ? buf[offset + i]! : view.getUint16(offset + 2 * i, true);
          data[i] = isInt ? Math.round(v * scale + min) : v * scale + min;
        }
      }
      out.set(w.name, { name: w.name, shape: [...w.shape], dtype: isInt ? 'int32' : 'float32', data });
      offset += size;
    }
    if (offset !== total) bad(`shards ${group.paths.join(', ')} hold ${total} bytes but the manifest describes ${offset}`);
  }
  return out;
}

/** Reads a TensorFlow.js model from a folder holding model.json (or the model.json path itself) and its shards. */
export async function readTfjsModel(path: string): Promise<TfjsModel> {
  let file = path;
  try {
    if ((await stat(path)).isDirectory()) file = join(path, 'model.json');
  } catch {
    throw new GraftError('MODEL', `${path}: no such file or folder`, { file: path });
  }
  let json: TfjsModelJson;
  try {
    json = JSON.parse(await readFile(file, 'utf8')) as TfjsModelJson;
  } catch (e) {
    throw new GraftError('MODEL', `${file}: not a readable TensorFlow.js model.json (${(e as Error).message})`, { file }, { cause: e });
  }
  if (typeof json !== 'object' || json === null || !json.modelTopology || !json.weightsManifest)
    throw new GraftError('MODEL', `${file}: not a TensorFlow.js model.json (needs modelTopology and weightsManifest)`, { file });
  const dir = dirname(file);
  const shards = new Map<string, Uint8Array>();
  for (const g of json.weightsManifest)
    for (const p of g.paths ?? []) {
      // A shard is a file of the model's own folder: `../../etc/passwd`, an absolute path or a link out is refused.
      const shardPath = resolve(dir, String(p));
      const within = (root: string, f: string) => f.startsWith(root.endsWith(sep) ? root : root + sep);
      if (typeof p !== 'string' || isAbsolute(p) || !within(resolve(dir), shardPath))
        throw new GraftError('MODEL', `${file}: weight shard path ${JSON.stringify(p)} leaves the model's folder`, { file, shard: String(p) });
      const real = await realpath(shardPath).catch(() => shardPath);
      const realDir = await realpath(dir).catch(() => resolve(dir));
      if (!within(realDir, real)) throw new GraftError('MODEL', `${file}: weight shard ${JSON.stringify(p)} is a link out of the model's folder`, { file, shard: p });
      try {
        shards.set(p, await readRegularFile(shardPath));
      } catch (e) {
        throw new GraftError('MODEL', `${file}: weight shard ${join(dir, p)} is missing or unreadable`, { file, shard: p }, { cause: e });
      }
    }
  const weights = decodeWeights(json.weightsManifest, (p) => shards.get(p)!, file);
  return { json, weights, source: file };
}

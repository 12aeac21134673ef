/**
 * ONNX protobuf IO over the maintained `onnx-proto` package: read, write, and convert tensors. Nothing
 * here runs a model.
 */
import { readFile } from 'node:fs/promises';
import onnxProto from 'onnx-proto';
import { GraftError } from '../errors.js';

export const onnx = onnxProto.onnx;
export type ModelProto = onnxProto.onnx.ModelProto;
export type GraphProto = onnxProto.onnx.IGraphProto;
export type NodeProto = onnxProto.onnx.INodeProto;
export type TensorProto = onnxProto.onnx.ITensorProto;
export type ValueInfoProto = onnxProto.onnx.IValueInfoProto;
export type AttributeProto = onnxProto.onnx.IAttributeProto;
export const DataType = onnxProto.onnx.TensorProto.DataType;

/** protobufjs decodes int64 as Long objects; graft works in plain numbers. */
export function toNumber(v: number | { toNumber(): number } | null | undefined): number {
  if (v === null || v === undefined) return 0;
  return typeof v === 'number' ? v : v.toNumber();
}

export function decodeModel(bytes: Uint8Array, source = '<buffer>'): ModelProto {
  try {
    const model = onnx.ModelProto.decode(bytes);
    if (!model.graph) throw new Error('the model has no graph');
    return model;
  } catch (cause) {
    throw new GraftError('MODEL', `${source}: not a readable ONNX model (${(cause as Error).message})`, { file: source }, { cause });
  }
}

export async function loadModel(file: string): Promise<{ model: ModelProto; bytes: Uint8Array }> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(file);
  } catch (cause) {
    throw new GraftError('MODEL', `${file}: cannot read the model file (${(cause as Error).message})`, { file }, { cause });
  }
  return { model: decodeModel(bytes, file), bytes };
}

export function encodeModel(model: ModelProto): Uint8Array {
  return onnx.ModelProto.encode(model).finish();
}

/** Opset version of the default ONNX domain. */
export function defaultOpset(model: ModelProto): number {
  const entry = model.opsetImport.find((o) => !o.domain || o.domain === 'ai.onnx');
  return toNumber(entry?.version as number | undefined);
}

/** Dimensions of a value info; symbolic or unknown dimensions become -1. */
export function valueInfoShape(v: ValueInfoProto): number[] | undefined {
  const dims = v.type?.tensorType?.shape?.dim;
  if (!dims) return undefined;
  return dims.map((d) => (d.dimValue !== undefined && d.dimValue !== null && toNumber(d.dimValue as number) > 0 ? toNumber(d.dimValue as number) : -1));
}

export function valueInfo(name: string, elemType: number, shape: ReadonlyArray<number | string>): ValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType,
        shape: { dim: shape.map((d) => (typeof d === 'string' ? { dimParam: d } : { dimValue: d })) },
      },
    },
  };
}

export type TypedArray = Float32Array | Float64Array | Int32Array | Uint8Array | Int8Array | BigInt64Array;

/** Builds an initializer from a typed array (stored as raw little-endian bytes). */
export function tensor(name: string, data: Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array | Int8Array, dims: readonly number[]): TensorProto {
  const dataType =
    data instanceof Float32Array ? DataType.FLOAT
    : data instanceof Float64Array ? DataType.DOUBLE
    : data instanceof Int32Array ? DataType.INT32
    : data instanceof BigInt64Array ? DataType.INT64
    : data instanceof Uint8Array ? DataType.UINT8
    : DataType.INT8;
  const size = dims.reduce((a, b) => a * b, 1);
  if (size !== data.length) throw new GraftError('MODEL', `tensor ${name}: ${data.length} values for dims [${dims}]`, { name });
  return {
    name,
    dataType,
    dims: [...dims],
    rawData: new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice(),
  };
}

export function int64Tensor(name: string, values: readonly number[], dims: readonly number[] = [values.length]): TensorProto {
  return tensor(name, BigInt64Array.from(values.map((v) => BigInt(v))), dims);
}

/** Reads any numeric initializer as float32 values (int8/uint8 are returned as their integer values). */
export function tensorToFloat32(t: TensorProto): Float32Array {
  const dims = (t.dims ?? []).map((d) => toNumber(d as number));
  const size = dims.reduce((a, b) => a * b, 1);
  const raw = t.rawData && t.rawData.length > 0 ? t.rawData : undefined;
  const out = new Float32Array(size);
  const view = raw ? new DataView(raw.buffer, raw.byteOffset, raw.byteLength) : undefined;
  switch (t.dataType) {
    case DataType.FLOAT:
      if (view) for (let i = 0; i < size; i++) out[i] = view.getFloat32(i * 4, true);
      else out.set(t.floatData ?? []);
      break;
    case DataType.DOUBLE:
      if (view) for (let i = 0; i < size; i++) out[i] = view.getFloat64(i * 8, true);
      else out.set(t.doubleData ?? []);
      break;
    case DataType.UINT8:
      if (raw) out.set(raw.subarray(0, size));
      else out.set(t.int32Data ?? []);
      break;
    case DataType.INT8:
      if (raw) for (let i = 0; i < size; i++) out[i] = (raw[i]! << 24) >> 24;
      else out.set(t.int32Data ?? []);
      break;
    case DataType.INT32:
      if (view) for (let i = 0; i < size; i++) out[i] = view.getInt32(i * 4, true);
      else out.set(t.int32Data ?? []);
      break;
    case DataType.INT64:
      if (view) for (let i = 0; i < size; i++) out[i] = Number(view.getBigInt64(i * 8, true));
      else (t.int64Data ?? []).forEach((v, i) => (out[i] = toNumber(v as number)));
      break;
    default:
      throw new GraftError('MODEL', `tensor ${t.name}: data type ${t.dataType} is not supported here`, { name: t.name });
  }
  return out;
}

export function attr(node: NodeProto, name: string): AttributeProto | undefined {
  return node.attribute?.find((a) => a.name === name) ?? undefined;
}

/** An integer attribute, or `fallback` where the node has none. */
export function attrInt(node: NodeProto, name: string, fallback: number): number {
  const a = attr(node, name);
  return a ? toNumber(a.i as number | undefined) : fallback;
}

export function attrInts(node: NodeProto, name: string): number[] | undefined {
  return attr(node, name)?.ints?.map((v) => toNumber(v as number));
}

/** The values of an int64 or int32 tensor (a constant shape, axes list…); undefined for other tensors. */
export function constantInts(t: TensorProto | undefined): number[] | undefined {
  return t && (t.dataType === DataType.INT64 || t.dataType === DataType.INT32) ? Array.from(tensorToFloat32(t)) : undefined;
}

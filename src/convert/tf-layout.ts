/** What TensorFlow and ONNX lay out differently, shared by both TF.js importers: weight axes and SAME padding. */

/** Row-major `data` of `shape` with its axes permuted: output axis i is input axis perm[i] (numpy.transpose). */
export function permute<T extends Float32Array | Int32Array>(data: T, shape: readonly number[], perm: readonly number[]): T {
  const rank = shape.length;
  const inStrides = new Array<number>(rank);
  for (let i = rank - 1, s = 1; i >= 0; i--) {
    inStrides[i] = s;
    s *= shape[i]!;
  }
  const outShape = perm.map((p) => shape[p]!);
  const strides = perm.map((p) => inStrides[p]!); // input stride of each output axis
  const out = new (data.constructor as new (n: number) => T)(data.length);
  const idx = new Array<number>(rank).fill(0);
  let src = 0;
  for (let o = 0; o < out.length; o++) {
    out[o] = data[src]!;
    // Advance the output index like an odometer, keeping the input offset in step.
    for (let a = rank - 1; a >= 0; a--) {
      idx[a]!++;
      src += strides[a]!;
      if (idx[a]! < outShape[a]!) break;
      src -= strides[a]! * outShape[a]!;
      idx[a] = 0;
    }
  }
  return out;
}

/**
 * TF's SAME padding of one spatial axis as [begin, end]: the output has ⌈in / stride⌉ positions, which needs
 * (out − 1)·stride + (kernel − 1)·dilation + 1 − in pixels of padding in total, the odd one at the end
 * (ONNX's SAME_UPPER). With stride 1 it is (kernel − 1)·dilation whatever the size.
 */
export function samePadding(inSize: number, kernel: number, stride: number, dilation: number): [number, number] {
  const extent = (kernel - 1) * dilation + 1;
  const out = Math.ceil(inSize / stride);
  const total = Math.max((out - 1) * stride + extent - inSize, 0);
  return [Math.floor(total / 2), total - Math.floor(total / 2)];
}

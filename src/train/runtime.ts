/** What the ONNX Runtime build in use offers beyond standard ONNX, found out by asking it. */
import * as ort from 'onnxruntime-node';
import { GraphBuilder } from '../onnx/builder.js';
import { NCHWC_DOMAIN } from '../onnx/nchwc.js';
import { DataType, encodeModel } from '../onnx/proto.js';

let block: Promise<number> | undefined;

/**
 * The channel block of ONNX Runtime's NCHWc kernels on this CPU (16 with AVX-512, 8 with AVX2), or 0 where
 * the build or CPU has none: the channel count `ReorderInput` pads 4 channels to.
 */
export function nchwcBlockSize(): Promise<number> {
  block ??= (async () => {
    const g = new GraphBuilder('nchwc_probe');
    g.input('x', DataType.FLOAT, [1, 4, 1, 1]);
    g.node('ReorderInput', ['x'], {}, { domain: NCHWC_DOMAIN, outputs: ['y'] });
    g.output('y', DataType.FLOAT, [1, -1, 1, 1]);
    const model = g.model();
    model.opsetImport!.push({ domain: NCHWC_DOMAIN, version: 1 });
    try {
      const session = await ort.InferenceSession.create(encodeModel(model), { intraOpNumThreads: 1 });
      const y = (await session.run({ x: new ort.Tensor('float32', Float32Array.of(1, 2, 3, 4), [1, 4, 1, 1]) })).y!;
      await session.release();
      const size = Number(y.dims[1]);
      return size > 1 ? size : 0;
    } catch {
      return 0;
    }
  })();
  return block;
}

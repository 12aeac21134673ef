/**
 * onnxruntime-web (WASM only), loaded when first needed from the server's /ort/ folder — not bundled into
 * app.js, so the page stays small. The files it requests: /ort/ort.wasm.min.mjs (the API),
 * /ort/ort-wasm-simd-threaded.mjs (the Emscripten glue) and /ort/ort-wasm-simd-threaded.wasm (the runtime).
 * One thread: no worker, no SharedArrayBuffer, so it needs no cross-origin isolation.
 */
import type * as Ort from 'onnxruntime-web';

export const ORT_BASE = '/ort/';
export const ORT_MODULE = `${ORT_BASE}ort.wasm.min.mjs`;

let loading: Promise<typeof Ort> | null = null;

export function loadOrt(): Promise<typeof Ort> {
  loading ??= (async () => {
    const url: string = ORT_MODULE; // a variable: esbuild leaves the import to the browser
    const ort = (await import(url)) as typeof Ort;
    ort.env.wasm.wasmPaths = ORT_BASE;
    ort.env.wasm.numThreads = 1;
    ort.env.wasm.proxy = false;
    ort.env.logLevel = 'error';
    return ort;
  })();
  loading.catch(() => {
    loading = null;
  });
  return loading;
}

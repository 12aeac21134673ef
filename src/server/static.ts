/**
 * The page's files: `/` (web/index.html), `/app.js` (dist/web/app.js, the bundle of web/src/main.ts),
 * `/app.css` (web/app.css) and `/ort/<name>` (onnxruntime-web's dist files, an allow-list of names). They hold
 * no data, so they need no token.
 */
import { readFile } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import { fileURLToPath } from 'node:url';
import { HttpError, sendBytes } from './http.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

export const PAGE_CSP =
  "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; " +
  "connect-src 'self'; style-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

const PAGE: Record<string, { file: string; type: string }> = {
  '/': { file: 'web/index.html', type: 'text/html; charset=utf-8' },
  '/index.html': { file: 'web/index.html', type: 'text/html; charset=utf-8' },
  '/app.js': { file: 'dist/web/app.js', type: 'text/javascript; charset=utf-8' },
  '/app.css': { file: 'web/app.css', type: 'text/css; charset=utf-8' },
};

/** The onnxruntime-web files the page may load (the WebAssembly backend's, with and without threads). */
const ORT_FILES = new Set([
  'ort.wasm.min.mjs',
  'ort.wasm.mjs',
  'ort.wasm.bundle.min.mjs',
  'ort.min.mjs',
  'ort.mjs',
  'ort-wasm-simd-threaded.mjs',
  'ort-wasm-simd-threaded.wasm',
  'ort-wasm-simd-threaded.jsep.mjs',
  'ort-wasm-simd-threaded.jsep.wasm',
]);

/** Serves a page file for GET `pathname`; false when the path is not one. */
export async function serveStatic(pathname: string, res: ServerResponse): Promise<boolean> {
  let file: string;
  let type: string;
  if (PAGE[pathname]) ({ file, type } = PAGE[pathname]);
  else if (pathname.startsWith('/ort/')) {
    const name = pathname.slice('/ort/'.length);
    if (!ORT_FILES.has(name)) throw new HttpError('NOT_FOUND', `/ort/${name} is not one of the onnxruntime-web files served`, { name });
    file = `node_modules/onnxruntime-web/dist/${name}`;
    type = name.endsWith('.wasm') ? 'application/wasm' : 'text/javascript; charset=utf-8';
  } else return false;
  let bytes: Buffer;
  try {
    bytes = await readFile(ROOT + file);
  } catch {
    throw new HttpError('NOT_FOUND', `${file} is missing from this installation${file.startsWith('dist/web') ? ' (build the page: see README)' : ''}`, { file });
  }
  const headers: Record<string, string> = { 'Cache-Control': 'no-cache' };
  if (type.startsWith('text/html')) headers['Content-Security-Policy'] = PAGE_CSP;
  sendBytes(res, bytes, type, headers);
  return true;
}

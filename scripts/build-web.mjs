#!/usr/bin/env node
/**
 * Builds graft serve's page: type-checks web/ (its own tsconfig: DOM, strict, no emit) and bundles
 * web/src/main.ts with esbuild into dist/web/app.js (ESM, minified, with a source map). onnxruntime-web is not
 * bundled: the page imports it at run time from /ort/ (see web/src/ort.ts).
 */
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const tsc = require.resolve('typescript/bin/tsc');

execFileSync(process.execPath, [tsc, '-p', join(root, 'web/tsconfig.json')], { stdio: 'inherit', cwd: root });

const result = await build({
  entryPoints: [join(root, 'web/src/main.ts')],
  outfile: join(root, 'dist/web/app.js'),
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: ['chrome110', 'firefox115', 'safari16'],
  minify: true,
  sourcemap: true,
  legalComments: 'none',
  logLevel: 'warning',
  metafile: true,
});
const out = Object.entries(result.metafile.outputs).find(([f]) => f.endsWith('app.js'));
if (out && process.env.GRAFT_BUILD_VERBOSE) console.log(`dist/web/app.js: ${out[1].bytes} bytes`);

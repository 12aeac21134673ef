#!/usr/bin/env node
import { fileURLToPath } from 'node:url';
import { longArgv } from '../dist/src/cli/argv.js';

// Long command lines (hundreds of files) are passed to a relaunched process through a file: see argv.ts.
const argv = longArgv(process.argv, fileURLToPath(import.meta.url));
if (argv) {
  const { main } = await import('../dist/src/cli/main.js');
  await main(argv);
}

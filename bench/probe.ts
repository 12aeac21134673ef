/**
 * The outside yardstick for a backbone's features: sklearn's StandardScaler + L2 LogisticRegression with C chosen
 * by 5-fold cross-validation on the training rows (bench/probe_cv.py, Debian's /usr/bin/python3 + python3-sklearn),
 * scored on graft's validation rows. Benches only; the test suite never runs Python.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FeatureSet } from '../src/train/trainer.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));

export interface ProbeResult {
  accuracy: number;
  macroF1: number;
  C: number;
  cvScore: number;
  seconds: number;
}

/**
 * C from 1e-4 to 100 in ×3 steps: past 100 the standardised problem is as good as unregularised, and sklearn's
 * lbfgs then takes minutes per fold on a few thousand rows of 1280-d features (flowers5: over 10 minutes per row
 * with the text bench's grid up to 1000).
 */
export const PROBE_GRID = [1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100];

export function probe(set: FeatureSet, train: readonly number[], val: readonly number[], options: { folds?: number; seed?: number; scoring?: 'accuracy' | 'f1_macro'; grid?: number[] } = {}): ProbeResult {
  const dir = mkdtempSync(join(tmpdir(), 'graft-probe-'));
  try {
    writeFileSync(join(dir, 'split.json'), JSON.stringify({ labels: Array.from(set.labels), train, val, dim: set.dim, scoring: options.scoring ?? 'accuracy', folds: options.folds ?? 5, seed: options.seed ?? 0, grid: options.grid ?? PROBE_GRID }));
    writeFileSync(join(dir, 'features.f32'), new Uint8Array(set.features.buffer, set.features.byteOffset, set.features.byteLength));
    const out = execFileSync('/usr/bin/python3', [join(root, 'bench/probe_cv.py'), dir], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 26 });
    return JSON.parse(out) as ProbeResult;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

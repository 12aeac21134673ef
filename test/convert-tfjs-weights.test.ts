/** The TF.js reader reads weight shards from the model's own folder only (issue 11 #10). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readTfjsModel } from '../src/convert/tfjs-weights.js';
import { GraftError } from '../src/errors.js';

function modelFolder(paths: string[]): string {
  const root = mkdtempSync(join(tmpdir(), 'graft-tfjs-'));
  const dir = join(root, 'model');
  mkdirSync(dir);
  writeFileSync(join(root, 'secret.bin'), Float32Array.of(13, 17));
  writeFileSync(join(dir, 'w.bin'), Float32Array.of(1.5, -2));
  symlinkSync(join(root, 'secret.bin'), join(dir, 'link.bin'));
  writeFileSync(join(dir, 'model.json'), JSON.stringify({ modelTopology: {}, weightsManifest: [{ paths, weights: [{ name: 'w', shape: [2], dtype: 'float32' }] }] }));
  return dir;
}

test('a shard inside the folder is read', async () => {
  const dir = modelFolder(['w.bin']);
  try {
    const m = await readTfjsModel(dir);
    assert.deepEqual([...(m.weights.get('w')!.data as Float32Array)], [1.5, -2]);
  } finally {
    rmSync(join(dir, '..'), { recursive: true, force: true });
  }
});

for (const [what, path, message] of [
  ['a ../ path', '../secret.bin', /weight shard path "\.\.\/secret\.bin" leaves the model's folder/],
  ['a deeper ../ path', 'sub/../../secret.bin', /leaves the model's folder/],
  ['an absolute path', '/etc/passwd', /weight shard path "\/etc\/passwd" leaves the model's folder/],
  ['a symbolic link out of the folder', 'link.bin', /weight shard "link\.bin" is a link out of the model's folder/],
] as const) {
  test(`a shard named by ${what} is refused before anything is read`, async () => {
    const dir = modelFolder([path]);
    try {
      await assert.rejects(readTfjsModel(dir), (e: unknown) => e instanceof GraftError && e.code === 'MODEL' && message.test(e.message));
    } finally {
      rmSync(join(dir, '..'), { recursive: true, force: true });
    }
  });
}

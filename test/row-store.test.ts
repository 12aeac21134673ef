/**
 * RowStore: rows in memory up to a byte budget, then in an unlinked spill file, read back exactly; and the
 * training rows (dense and token sequences) fed from a store are the same feeds as from arrays.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RowStore } from '../src/util/row-store.js';
import { denseRows, sequenceRows } from '../src/train/rows.js';
import { GraftError } from '../src/errors.js';

function row(seed: number, n: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => Math.sin(seed * 7.1 + i * 0.37) * (seed + 1));
}

describe('RowStore', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'graft-rowstore-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('keeps rows in memory up to the budget, spills the rest, and reads every row back exactly', async () => {
    const store = new RowStore({ memoryBytes: 3 * 100 * 4, spillDir: dir });
    for (let r = 0; r < 10; r++) store.put(r, row(r, 100));
    assert.equal(store.bytesInMemory, 3 * 100 * 4);
    assert.equal(store.bytesOnDisk, 7 * 100 * 4);
    // The spill file is unlinked as soon as it is open: a killed process leaves nothing behind.
    assert.deepEqual(await readdir(dir), []);
    const target = new Float32Array(250);
    for (let r = 0; r < 10; r++) {
      assert.equal(store.length(r), 100);
      assert.deepEqual(store.get(r), row(r, 100));
      target.fill(-1);
      assert.equal(store.read(r, target, 150), 100);
      assert.deepEqual(target.subarray(150), row(r, 100));
      assert.ok(target.subarray(0, 150).every((v) => v === -1), 'nothing outside the row is written');
    }
    assert.equal(store.has(10), false);
    assert.equal(store.length(10), 0);
    assert.throws(() => store.read(10, target), /never stored/);
    assert.throws(() => store.read(9, new Float32Array(50)), RangeError);
    store.close();
    assert.throws(() => store.read(9, target), /never stored/);
    assert.throws(() => store.put(0, row(0, 1)), /closed/);
  });

  it('holds rows of different lengths, copies what it is given, and replaces a row put again', () => {
    const store = new RowStore({ memoryBytes: 40, spillDir: dir });
    const a = row(1, 10);
    store.put(0, a); // 40 bytes: in memory
    a[0] = 99; // the store keeps its own copy
    store.put(1, row(2, 3)); // past the budget: disk
    store.put(2, row(3, 1000));
    assert.deepEqual(store.get(0), row(1, 10));
    assert.deepEqual(store.get(1), row(2, 3));
    assert.deepEqual(store.get(2), row(3, 1000));
    store.put(0, row(4, 7)); // frees its 40 bytes, then fits again
    assert.equal(store.bytesInMemory, 28);
    store.put(1, row(5, 2)); // fits in memory now (28 + 8 <= 40)
    assert.deepEqual(store.get(0), row(4, 7));
    assert.deepEqual(store.get(1), row(5, 2));
    assert.equal(store.bytesInMemory, 36);
    store.close();
  });

  it('names the folder when the spill file cannot be created', () => {
    const missing = join(dir, 'no', 'such', 'folder');
    const store = new RowStore({ memoryBytes: 0, spillDir: missing });
    assert.throws(
      () => store.put(0, row(0, 4)),
      (e: unknown) => e instanceof GraftError && e.code === 'IO' && e.message.includes(missing) && /ENOENT/.test(e.message),
    );
    store.close();
  });

  it('feeds the same dense batches from a store as from one array', () => {
    const n = 12;
    const dim = 6;
    const features = new Float32Array(n * dim);
    const store = new RowStore({ memoryBytes: 5 * dim * 4, spillDir: dir });
    for (let r = 0; r < n; r++) {
      features.set(row(r, dim), r * dim);
      store.put(r, row(r, dim));
    }
    const labels = Int32Array.from({ length: n }, (_, i) => i % 3);
    const fromArray = denseRows({ features, dim, labels }, 'x', [2, 3]);
    const fromStore = denseRows({ features: store, dim, labels }, 'x', [2, 3]);
    for (const batch of [[0, 1, 2], [11, 3, 7, 5], [9]]) {
      const a = fromArray.feeds(batch, 5).x!;
      const b = fromStore.feeds(batch, 5).x!;
      assert.deepEqual(b.dims, [5, 2, 3]);
      assert.deepEqual(Array.from(b.data as Float32Array), Array.from(a.data as Float32Array));
    }
    assert.deepEqual(fromStore.stored!(), { memory: 5 * dim * 4, disk: 7 * dim * 4 });
    assert.equal(fromArray.stored, undefined);
    fromStore.close!();
    assert.throws(() => fromStore.feeds([0], 1), /never stored/);
  });

  it('feeds the same token-state batches (and side inputs) from a store as from arrays', () => {
    const width = 4;
    const tokens = [Int32Array.of(101, 7, 102), Int32Array.of(101, 102), Int32Array.of(101, 5, 6, 8, 102)];
    const states = tokens.map((t, i) => row(i, t.length * width));
    const store = new RowStore({ memoryBytes: 0, spillDir: dir });
    states.forEach((s, i) => store.put(i, s));
    const labels = Int32Array.of(0, 1, 0);
    const side = { attention_mask: 'mask', input_ids: 'ids', token_type_ids: 'typeIds' } as const;
    const a = sequenceRows({ states, tokens, width, labels }, 'h', side, 0).feeds([2, 0, 1], 4);
    const b = sequenceRows({ states: store, tokens, width, labels }, 'h', side, 0).feeds([2, 0, 1], 4);
    for (const name of Object.keys(a)) {
      assert.deepEqual(b[name]!.dims, a[name]!.dims, name);
      assert.deepEqual(Array.from(b[name]!.data as ArrayLike<number | bigint>), Array.from(a[name]!.data as ArrayLike<number | bigint>), name);
    }
    assert.deepEqual(a.h!.dims, [4, 5, width]);
    // A stored row whose length does not match its tokens is refused up front.
    const wrong = new RowStore({ memoryBytes: 1 << 20, spillDir: dir });
    states.forEach((s, i) => wrong.put(i, i === 1 ? s.subarray(0, 4) : s));
    assert.throws(() => sequenceRows({ states: wrong, tokens, width, labels }, 'h', side, 0), /row 1: 4 state values for 2 tokens/);
    store.close();
    wrong.close();
  });
});

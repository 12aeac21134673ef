import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  calibration,
  confusedPairs,
  crossValidationFolds,
  mislabelCandidates,
  nearDuplicates,
  topLosses,
} from '../src/evaluate/diagnostics.js';
import { computeMetrics } from '../src/evaluate/metrics.js';
import { GraftError } from '../src/errors.js';
import { Random } from '../src/util/random.js';

function close(actual: number, expected: number, message?: string, tolerance = 1e-9): void {
  assert.ok(Math.abs(actual - expected) < tolerance, `${message ?? ''} expected ${expected}, got ${actual}`);
}

const usage = (e: unknown): boolean => e instanceof GraftError && e.code === 'USAGE';
const f32 = (rows: number[][]): Float32Array => Float32Array.from(rows.flat());

test('topLosses: highest cross-entropy first, ties by index, clamped like crossEntropy', () => {
  const probs = f32([
    [0.7, 0.2, 0.1], // truth 0: loss -ln 0.7
    [0.1, 0.8, 0.1], // truth 2: loss -ln 0.1, predicted 1
    [0.5, 0.25, 0.25], // truth 1: loss -ln 0.25, predicted 0
    [0.25, 0.5, 0.25], // truth 2: loss -ln 0.25 (ties row 2), predicted 1
    [0, 1, 0], // truth 0: p = 0, clamped at 1e-12 -> 12 ln 10
  ]);
  const truth = Int32Array.from([0, 2, 1, 2, 0]);
  const top = topLosses(probs, 3, truth, 3);
  assert.deepEqual(
    top.map((s) => [s.index, s.label, s.predicted]),
    [
      [4, 0, 1],
      [1, 2, 1],
      [2, 1, 0],
    ],
  );
  close(top[0]!.loss, 12 * Math.LN10, 'clamped loss');
  assert.equal(top[0]!.probability, 0);
  close(top[1]!.loss, -Math.log(Math.fround(0.1)));
  close(top[1]!.probability, Math.fround(0.1));
  close(top[2]!.loss, Math.log(4));
  assert.deepEqual(
    topLosses(probs, 3, truth, 10).map((s) => s.index),
    [4, 1, 2, 3, 0],
  );
  assert.deepEqual(topLosses(probs, 3, truth, 0), []);
  assert.deepEqual(topLosses(new Float32Array(0), 3, new Int32Array(0), 5), []);
  // A NaN probability is a broken prediction: it ranks first.
  assert.equal(topLosses(f32([[0.9, 0.1], [NaN, 0.5]]), 2, Int32Array.from([1, 0]), 1)[0]!.index, 1);
});

test('topLosses: rejects mismatched or invalid labels', () => {
  const probs = f32([[0.5, 0.5]]);
  assert.throws(() => topLosses(probs, 2, Int32Array.from([0, 1]), 1), usage);
  assert.throws(() => topLosses(probs, 2, Int32Array.from([2]), 1), usage);
  assert.throws(() => topLosses(probs, 2, Int32Array.from([0]), -1), usage);
  assert.throws(() => topLosses(f32([[0.5, 0.25, 0.25]]), 2, Int32Array.from([0]), 1), usage);
});

test('confusedPairs: off-diagonal cells by count, then rate, then matrix order', () => {
  const labels = ['cat', 'dog', 'bird'];
  // The confusion matrix of evaluate.test.ts: cat 4 samples, dog 2, bird 3.
  const m = computeMetrics(labels, [0, 0, 0, 0, 1, 1, 2, 2, 2], [0, 0, 0, 1, 1, 2, 0, 0, 2]);
  assert.deepEqual(m.confusion, [
    [3, 1, 0],
    [0, 1, 1],
    [2, 0, 1],
  ]);
  assert.deepEqual(confusedPairs(m.confusion, labels, 10), [
    { actual: 'bird', predicted: 'cat', count: 2, rate: 2 / 3 },
    { actual: 'dog', predicted: 'bird', count: 1, rate: 1 / 2 }, // same count as cat->dog, higher rate
    { actual: 'cat', predicted: 'dog', count: 1, rate: 1 / 4 },
  ]);
  assert.deepEqual(
    confusedPairs(m.confusion, labels, 1).map((p) => p.actual),
    ['bird'],
  );
  // Full ties keep row-major order; a class with no samples (bird) contributes nothing; the diagonal never appears.
  assert.deepEqual(
    confusedPairs(
      [
        [5, 1, 1],
        [0, 9, 0],
        [0, 0, 0],
      ],
      labels,
      5,
    ),
    [
      { actual: 'cat', predicted: 'dog', count: 1, rate: 1 / 7 },
      { actual: 'cat', predicted: 'bird', count: 1, rate: 1 / 7 },
    ],
  );
  assert.deepEqual(confusedPairs([], [], 3), []);
  assert.throws(() => confusedPairs([[1, 2]], ['a'], 1), usage);
  assert.throws(() => confusedPairs([[1]], ['a', 'b'], 1), usage);
});

test('calibration: hand-computed 3-class example', () => {
  // Probabilities are multiples of 1/8, exact in float32. Bins of width 0.1, right-closed: (0.4, 0.5] is bin 4.
  const probs = f32([
    [0.75, 0.125, 0.125], // truth 0: top 0.75 (bin 7), correct
    [0.75, 0.25, 0], // truth 1: top 0.75 (bin 7), wrong
    [0.5, 0.375, 0.125], // truth 0: top 0.5 (bin 4), correct
    [0.125, 0.625, 0.25], // truth 1: top 0.625 (bin 6), correct
    [0.25, 0.25, 0.5], // truth 0: top 0.5 (bin 4), wrong
    [0, 0, 1], // truth 2: top 1 (bin 9), correct
  ]);
  const truth = Int32Array.from([0, 1, 0, 1, 0, 2]);
  const c = calibration(probs, 3, truth);
  // Overall: bin 4 conf 0.5 acc 1/2 -> 0; bin 6 conf 0.625 acc 1 -> 0.375 x 1/6; bin 7 conf 0.75 acc 1/2 -> 0.25 x 2/6;
  // bin 9 conf 1 acc 1 -> 0. ECE = 0.375/6 + 0.5/6 = 7/48.
  close(c.ece, 7 / 48);
  assert.deepEqual(
    c.bins.map((b) => b.count),
    [0, 0, 0, 0, 2, 0, 1, 2, 0, 1],
  );
  assert.deepEqual(c.bins[7], { lower: 0.7, upper: 0.8, count: 2, confidence: 0.75, accuracy: 0.5 });
  assert.deepEqual(c.bins[0], { lower: 0, upper: 0.1, count: 0, confidence: 0, accuracy: 0 });
  close(c.bins[9]!.upper, 1);
  // Class 0, p0 = .75 .75 .5 .125 .25 0 against is-0 = 1 0 1 0 1 0:
  //   bin 7 {.75:1, .75:0} gap .25 x2; bin 4 {.5:1} gap .5; bin 1 {.125:0} gap .125; bin 2 {.25:1} gap .75; bin 0 {0:0} gap 0
  //   ECE_0 = (.5 + .5 + .125 + .75)/6 = 5/16
  // Class 1, p1 = .125 .25 .375 .625 .25 0 against is-1 = 0 1 0 1 0 0:
  //   bin 1 gap .125; bin 2 {.25:1, .25:0} gap .25 x2; bin 3 gap .375; bin 6 gap .375; bin 0 gap 0 -> 1.375/6 = 11/48
  // Class 2, p2 = .125 0 .125 .25 .5 1 against is-2 = 0 0 0 0 0 1:
  //   bin 1 {.125, .125} gap .125 x2; bin 2 gap .25; bin 4 gap .5; bins 0 and 9 gap 0 -> 1/6
  assert.equal(c.perClass.length, 3);
  close(c.perClass[0]!, 5 / 16);
  close(c.perClass[1]!, 11 / 48);
  close(c.perClass[2]!, 1 / 6);
});

test('calibration: perfectly calibrated toys score 0, an empty input scores 0, a missing class scores its mean probability', () => {
  // Confidence 0.75 and 3 of 4 right: calibrated overall and for each class (p1 = 0.25 and 1 of 4 is class 1).
  const toy = calibration(f32([[0.75, 0.25], [0.75, 0.25], [0.75, 0.25], [0.75, 0.25]]), 2, Int32Array.from([0, 0, 0, 1]));
  assert.equal(toy.ece, 0);
  assert.deepEqual(toy.perClass, [0, 0]);
  const confident = calibration(f32([[1, 0, 0], [0, 1, 0], [0, 0, 1]]), 3, Int32Array.from([0, 1, 2]));
  assert.equal(confident.ece, 0);
  assert.deepEqual(confident.perClass, [0, 0, 0]);
  assert.deepEqual(confident.bins[9], { lower: 0.9, upper: 1, count: 3, confidence: 1, accuracy: 1 });

  const empty = calibration(new Float32Array(0), 3, new Int32Array(0), 5);
  assert.equal(empty.ece, 0);
  assert.deepEqual(empty.perClass, [0, 0, 0]);
  assert.deepEqual(
    empty.bins.map((b) => [b.lower, b.count]),
    [
      [0, 0],
      [0.2, 0],
      [0.4, 0],
      [0.6, 0],
      [0.8, 0],
    ],
  );

  // No sample is class 2: ECE_2 = mean p2 = 0.25. Overall both sit at 0.5 (bin (0.4, 0.5]) and are right: ECE 0.5.
  // Class 0: p0 0.5 (is 0) gap 0.5, p0 0.25 (not 0) gap 0.25 -> 0.375; class 1 symmetric.
  const missing = calibration(f32([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]]), 3, Int32Array.from([0, 1]));
  close(missing.ece, 0.5);
  assert.deepEqual(missing.perClass, [0.375, 0.375, 0.25]);
  assert.equal(missing.bins[4]!.count, 2);
  // One bin: ECE = |accuracy - mean confidence| = |1/2 - 3/4|.
  close(calibration(f32([[0.75, 0.25], [0.25, 0.75]]), 2, Int32Array.from([0, 0]), 1).ece, 0.25);
});

test('calibration: rejects bad bins, probabilities and labels', () => {
  const probs = f32([[0.5, 0.5]]);
  assert.throws(() => calibration(probs, 2, Int32Array.from([0]), 0), usage);
  assert.throws(() => calibration(probs, 2, Int32Array.from([0]), 2.5), usage);
  assert.throws(() => calibration(f32([[1.5, -0.5]]), 2, Int32Array.from([0])), usage);
  assert.throws(() => calibration(f32([[NaN, 0.5]]), 2, Int32Array.from([0])), usage);
  assert.throws(() => calibration(probs, 2, Int32Array.from([3])), usage);
  assert.throws(() => calibration(probs, 0, Int32Array.from([0])), usage);
  assert.throws(() => calibration(probs, 3, Int32Array.from([0])), usage);
});

test('mislabelCandidates: per-class thresholds as confident learning defines them', () => {
  const probs = f32([
    [0.875, 0.125, 0], // given 0
    [0.75, 0.125, 0.125], // given 0
    [0.125, 0.875, 0], // given 0, looks like 1
    [0, 1, 0], // given 1
    [0.25, 0.75, 0], // given 1: below t1 but no other class reaches its threshold
    [0.125, 0.125, 0.75], // given 2
    [0.625, 0, 0.375], // given 2, looks like 0
  ]);
  const given = Int32Array.from([0, 0, 0, 1, 1, 2, 2]);
  // t0 = (0.875 + 0.75 + 0.125)/3 = 0.5833; t1 = (1 + 0.75)/2 = 0.875; t2 = (0.75 + 0.375)/2 = 0.5625.
  // Row 2: p0 0.125 < t0 and p1 0.875 >= t1 (exactly at it). Row 6: p2 0.375 < t2 and p0 0.625 >= t0.
  assert.deepEqual(mislabelCandidates(probs, 3, given), [
    { index: 2, given: 0, suggested: 1, givenProbability: 0.125, suggestedProbability: 0.875, margin: 0.75 },
    { index: 6, given: 2, suggested: 0, givenProbability: 0.375, suggestedProbability: 0.625, margin: 0.25 },
  ]);
  assert.deepEqual(
    mislabelCandidates(probs, 3, given, { limit: 1 }).map((c) => c.index),
    [2],
  );
  // One fixed threshold of 0.7: row 6's 0.625 no longer reaches it; row 4's 0.75 is above it.
  assert.deepEqual(
    mislabelCandidates(probs, 3, given, { threshold: 0.7 }).map((c) => c.index),
    [2],
  );
  // A class nobody is labelled with has no per-class threshold, so it is never suggested; a fixed one allows it.
  const lonely = f32([[1, 0, 0], [0, 0, 1]]);
  assert.deepEqual(mislabelCandidates(lonely, 3, Int32Array.from([0, 0])), []);
  assert.deepEqual(
    mislabelCandidates(lonely, 3, Int32Array.from([0, 0]), { threshold: 0.5 }).map((c) => [c.index, c.suggested]),
    [[1, 2]],
  );
  // Equally probable suggestions go to the lower class; equal margins keep index order; a given probability at its
  // threshold (row 2) is not below it.
  assert.deepEqual(
    mislabelCandidates(f32([[0, 0.5, 0.5], [0, 0.5, 0.5], [0.5, 0.5, 0]]), 3, Int32Array.from([0, 0, 0]), { threshold: 0.5 }).map((c) => [
      c.index,
      c.suggested,
    ]),
    [
      [0, 1],
      [1, 1],
    ],
  );
  assert.deepEqual(mislabelCandidates(new Float32Array(0), 3, new Int32Array(0)), []);
  assert.throws(() => mislabelCandidates(probs, 3, given, { threshold: 2 }), usage);
  assert.throws(() => mislabelCandidates(probs, 3, given, { limit: -1 }), usage);
  assert.throws(() => mislabelCandidates(probs, 3, given.subarray(1)), usage);
});

/** Three well-separated 2-D Gaussian blobs, 20 points each, the samples ordered by class. */
function blobs(seed: number): { points: Float64Array; truth: Int32Array } {
  const centres = [
    [0, 0],
    [10, 0],
    [0, 10],
  ];
  const random = new Random(seed);
  const points = new Float64Array(60 * 2);
  const truth = new Int32Array(60);
  for (let i = 0; i < 60; i++) {
    truth[i] = Math.floor(i / 20);
    points[2 * i] = centres[truth[i]!]![0]! + random.normal();
    points[2 * i + 1] = centres[truth[i]!]![1]! + random.normal();
  }
  return { points, truth };
}

/** Out-of-fold probabilities of a nearest-centroid classifier (softmax of -squared distance / 2). */
function outOfFold(points: Float64Array, labels: Int32Array, folds: Int32Array, k: number): Float32Array {
  const probs = new Float32Array(labels.length * 3);
  for (let f = 0; f < k; f++) {
    const sum = new Float64Array(6);
    const n = new Float64Array(3);
    labels.forEach((c, i) => {
      if (folds[i] === f) return;
      sum[2 * c] += points[2 * i]!;
      sum[2 * c + 1] += points[2 * i + 1]!;
      n[c]++;
    });
    labels.forEach((_, i) => {
      if (folds[i] !== f) return;
      const logits = [0, 1, 2].map((c) => -((points[2 * i]! - sum[2 * c]! / n[c]!) ** 2 + (points[2 * i + 1]! - sum[2 * c + 1]! / n[c]!) ** 2) / 2);
      const top = Math.max(...logits);
      const e = logits.map((l) => Math.exp(l - top));
      const z = e.reduce((a, b) => a + b, 0);
      e.forEach((v, c) => (probs[i * 3 + c] = v / z));
    });
  }
  return probs;
}

test('mislabelCandidates: the two flipped labels of a separable set are exactly the candidates', () => {
  const { points, truth } = blobs(3);
  const k = 5;
  const clean = outOfFold(points, truth, crossValidationFolds(truth, k, 11), k);
  assert.deepEqual(mislabelCandidates(clean, 3, truth), []);

  const given = truth.slice();
  given[5] = 1; // truly 0
  given[47] = 0; // truly 2
  const probs = outOfFold(points, given, crossValidationFolds(given, k, 11), k);
  const found = mislabelCandidates(probs, 3, given);
  assert.deepEqual(
    found.map((c) => [c.index, c.given, c.suggested]).sort((a, b) => a[0]! - b[0]!),
    [
      [5, 1, 0],
      [47, 0, 2],
    ],
  );
  for (const c of found) assert.ok(c.margin > 0.9, `margin ${c.margin}`);
  assert.ok(found[0]!.margin >= found[1]!.margin);
});

test('crossValidationFolds: stratified, balanced and deterministic for a seed', () => {
  // 23 of class 4, 10 of class 0, 7 of class 2, interleaved.
  const labels = Int32Array.from({ length: 40 }, (_, i) => (i < 23 ? 4 : i < 33 ? 0 : 2));
  new Random(5).shuffle(Array.from(labels)).forEach((c, i) => (labels[i] = c));
  const k = 5;
  const folds = crossValidationFolds(labels, k, 42);
  assert.equal(folds.length, 40);
  assert.ok(folds.every((f) => f >= 0 && f < k));
  for (const [c, n] of [
    [4, 23],
    [0, 10],
    [2, 7],
  ] as const) {
    for (let f = 0; f < k; f++) {
      const inFold = folds.filter((g, i) => g === f && labels[i] === c).length;
      assert.ok(Math.abs(inFold - n / k) < 1, `class ${c} fold ${f}: ${inFold} of ${n}`);
    }
  }
  for (let f = 0; f < k; f++) assert.equal(folds.filter((g) => g === f).length, 8);
  assert.deepEqual(crossValidationFolds(labels, k, 42), folds);
  assert.notDeepEqual(crossValidationFolds(labels, k, 43), folds);
  // More folds than samples of a class: each sample still lands somewhere, at most one per fold.
  const few = crossValidationFolds(Int32Array.from([1, 1, 0]), 4, 0);
  assert.notEqual(few[0], few[1]);
  assert.deepEqual(crossValidationFolds(new Int32Array(0), 3, 1), new Int32Array(0));
  assert.throws(() => crossValidationFolds(labels, 1, 0), usage);
  assert.throws(() => crossValidationFolds(labels, 2.5, 0), usage);
});

/** Row-major matrix of standard-normal rows. */
function gaussianRows(rows: number, dim: number, seed: number): Float32Array {
  const random = new Random(seed);
  return Float32Array.from({ length: rows * dim }, () => random.normal());
}

function cosine(x: Float32Array, dim: number, a: number, b: number): number {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let d = 0; d < dim; d++) {
    dot += x[a * dim + d]! * x[b * dim + d]!;
    na += x[a * dim + d]! ** 2;
    nb += x[b * dim + d]! ** 2;
  }
  return na === 0 || nb === 0 ? 0 : dot / Math.sqrt(na * nb);
}

const range = (from: number, to: number): number[] => Array.from({ length: to - from }, (_, i) => from + i);

test('nearDuplicates: finds planted exact, scaled and near copies among random vectors, and nothing else', () => {
  const dim = 70; // not a multiple of the 32-dimension stages
  const x = gaussianRows(400, dim, 9);
  const train = range(0, 300);
  const val = range(300, 400); // more than one block of 64
  assert.deepEqual(nearDuplicates(x, dim, train, val), []);

  const random = new Random(1);
  for (let d = 0; d < dim; d++) {
    x[310 * dim + d] = x[17 * dim + d]!; // exact copy
    x[355 * dim + d] = 3 * x[200 * dim + d]!; // scaled copy: cosine 1
    x[380 * dim + d] = x[42 * dim + d]! + 0.05 * random.normal(); // near copy, cosine about 0.999
    x[390 * dim + d] = x[42 * dim + d]! + 0.5 * random.normal(); // cosine about 0.9: below 0.98
  }
  const found = nearDuplicates(x, dim, train, val);
  assert.deepEqual(
    found.map((p) => [p.val, p.train]),
    [
      [310, 17],
      [355, 200],
      [380, 42],
    ],
  );
  close(found[0]!.cosine, 1, 'exact', 1e-6);
  close(found[1]!.cosine, 1, 'scaled', 1e-6);
  close(found[2]!.cosine, cosine(x, dim, 380, 42), 'near', 1e-6);
  assert.ok(found[2]!.cosine < 0.9999 && found[2]!.cosine > 0.98);
  assert.deepEqual(
    nearDuplicates(x, dim, train, val, 0.95).map((p) => p.val),
    [310, 355, 380],
  );
  assert.deepEqual(
    nearDuplicates(x, dim, train, val, 0.8).map((p) => p.val),
    [310, 355, 380, 390],
  );
});

test('nearDuplicates: pruning keeps the exact best match (brute-force check at low thresholds)', () => {
  for (const [dim, threshold] of [
    [70, 0.2],
    [8, 0.5],
    [100, -1],
  ] as const) {
    const x = gaussianRows(260, dim, dim);
    const train = range(0, 200);
    const val = range(200, 260);
    const expected = val
      .map((v) => {
        let best = -Infinity;
        let match = -1;
        for (const t of train) {
          const c = cosine(x, dim, v, t);
          if (c > best) [best, match] = [c, t];
        }
        return { val: v, train: match, cosine: best };
      })
      .filter((p) => p.cosine >= threshold)
      .sort((a, b) => b.cosine - a.cosine);
    const found = nearDuplicates(x, dim, train, val, threshold);
    assert.ok(expected.length > 10, `dim ${dim}: ${expected.length} pairs`);
    assert.deepEqual(
      found.map((p) => [p.val, p.train]),
      expected.map((p) => [p.val, p.train]),
      `dim ${dim}`,
    );
    found.forEach((p, i) => close(p.cosine, expected[i]!.cosine, `dim ${dim} val ${p.val}`, 1e-6));
  }
});

test('nearDuplicates: ties go to the first train row, zero rows match nothing, empty inputs give nothing', () => {
  const dim = 4;
  const x = Float32Array.from([
    1, 2, 3, 4, // row 0
    0, 0, 0, 0, // row 1: zero
    1, 2, 3, 4, // row 2 = row 0
    2, 4, 6, 8, // row 3 = 2 x row 0
    0, 0, 0, 0, // row 4: zero
  ]);
  assert.deepEqual(nearDuplicates(x, dim, [2, 0, 1], [3, 4]).map((p) => [p.val, p.train]), [[3, 2]]);
  assert.deepEqual(nearDuplicates(x, dim, [0, 2], [3]).map((p) => [p.val, p.train]), [[3, 0]]);
  assert.deepEqual(nearDuplicates(x, dim, [1], [4]), []);
  assert.deepEqual(nearDuplicates(x, dim, [], [0, 3]), []);
  assert.deepEqual(nearDuplicates(x, dim, [0, 2], []), []);
  assert.throws(() => nearDuplicates(x, dim, [5], [0]), usage);
  assert.throws(() => nearDuplicates(x, 3, [0], [1]), usage);
  assert.throws(() => nearDuplicates(x, dim, [0], [1], 1.5), usage);
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { argmaxRows, computeMetrics, crossEntropy, topK } from '../src/evaluate/metrics.js';
import { formatMetrics } from '../src/evaluate/report.js';
import { GraftError } from '../src/errors.js';

function close(actual: number, expected: number, message?: string): void {
  assert.ok(Math.abs(actual - expected) < 1e-9, `${message ?? ''} expected ${expected}, got ${actual}`);
}

const usage = (e: unknown): boolean => e instanceof GraftError && e.code === 'USAGE';

test('computeMetrics: hand-computed 3-class example', () => {
  const labels = ['cat', 'dog', 'bird'];
  const truth = [0, 0, 0, 0, 1, 1, 2, 2, 2];
  const predicted = [0, 0, 0, 1, 1, 2, 0, 0, 2];
  // Confusion (rows true, columns predicted):
  //   cat : cat 3, dog 1, bird 0   -> support 4
  //   dog : cat 0, dog 1, bird 1   -> support 2
  //   bird: cat 2, dog 0, bird 1   -> support 3
  // Column sums (predicted as): cat 5, dog 2, bird 2.
  // cat : P = 3/5 = 0.6, R = 3/4 = 0.75, F1 = 2*0.6*0.75/1.35 = 2/3
  // dog : P = 1/2,       R = 1/2,        F1 = 1/2
  // bird: P = 1/2,       R = 1/3,        F1 = 2*(1/6)/(5/6) = 2/5
  // accuracy = (3+1+1)/9 = 5/9; macroF1 = (2/3 + 1/2 + 2/5)/3 = 47/90
  const m = computeMetrics(labels, truth, predicted, { loss: 0.5 });
  assert.deepEqual(m.confusion, [
    [3, 1, 0],
    [0, 1, 1],
    [2, 0, 1],
  ]);
  assert.deepEqual(m.labels, labels);
  assert.equal(m.count, 9);
  assert.equal(m.loss, 0.5);
  close(m.accuracy, 5 / 9);
  close(m.perClass.cat!.precision, 0.6);
  close(m.perClass.cat!.recall, 0.75);
  close(m.perClass.cat!.f1, 2 / 3);
  assert.equal(m.perClass.cat!.support, 4);
  close(m.perClass.dog!.precision, 0.5);
  close(m.perClass.dog!.recall, 0.5);
  close(m.perClass.dog!.f1, 0.5);
  assert.equal(m.perClass.dog!.support, 2);
  close(m.perClass.bird!.precision, 0.5);
  close(m.perClass.bird!.recall, 1 / 3);
  close(m.perClass.bird!.f1, 0.4);
  assert.equal(m.perClass.bird!.support, 3);
  close(m.macroF1, 47 / 90);
  assert.equal('loss' in computeMetrics(labels, truth, predicted), false);
});

test('computeMetrics: zero denominators give 0 (zero_division=0)', () => {
  // a: TP 2, predicted as a 3, support 2 -> P 2/3, R 1, F1 0.8
  // b: never predicted -> P 0/0 = 0; support 1, TP 0 -> R 0; F1 0
  // c: never true, never predicted -> all 0, support 0
  const m = computeMetrics(['a', 'b', 'c'], [0, 0, 1], Int32Array.from([0, 0, 0]));
  close(m.perClass.a!.precision, 2 / 3);
  close(m.perClass.a!.recall, 1);
  close(m.perClass.a!.f1, 0.8);
  assert.deepEqual(m.perClass.b, { precision: 0, recall: 0, f1: 0, support: 1 });
  assert.deepEqual(m.perClass.c, { precision: 0, recall: 0, f1: 0, support: 0 });
  close(m.macroF1, 0.8 / 3);
  for (const c of Object.values(m.perClass)) assert.ok(!Number.isNaN(c.f1));
});

test('computeMetrics: empty input', () => {
  const m = computeMetrics(['a', 'b'], [], []);
  assert.equal(m.count, 0);
  assert.equal(m.accuracy, 0);
  assert.equal(m.macroF1, 0);
  assert.deepEqual(m.confusion, [
    [0, 0],
    [0, 0],
  ]);
});

test('computeMetrics: perfect and all-wrong predictions', () => {
  const perfect = computeMetrics(['x', 'y'], [0, 1, 1], [0, 1, 1]);
  assert.equal(perfect.accuracy, 1);
  assert.equal(perfect.macroF1, 1);
  assert.deepEqual(perfect.perClass.y, { precision: 1, recall: 1, f1: 1, support: 2 });
  assert.deepEqual(perfect.confusion, [
    [1, 0],
    [0, 2],
  ]);

  const wrong = computeMetrics(['x', 'y'], [0, 1, 1], [1, 0, 0]);
  assert.equal(wrong.accuracy, 0);
  assert.equal(wrong.macroF1, 0);
  assert.deepEqual(wrong.perClass.x, { precision: 0, recall: 0, f1: 0, support: 1 });
  assert.deepEqual(wrong.confusion, [
    [0, 1],
    [2, 0],
  ]);
});

test('computeMetrics: usage errors', () => {
  assert.throws(() => computeMetrics(['a', 'b'], [0, 1], [0]), usage);
  assert.throws(() => computeMetrics(['a', 'b'], [0, 2], [0, 1]), usage);
  assert.throws(() => computeMetrics(['a', 'b'], [0, 1], [-1, 1]), usage);
  assert.throws(() => computeMetrics(['a', 'b'], [0, 1], [0, 0.5]), usage);
  assert.throws(() => computeMetrics(['a', 'a'], [0, 1], [0, 1]), usage);
});

test('argmaxRows: per row, first maximum wins ties', () => {
  const p = Float32Array.from([0.1, 0.7, 0.2, 0.4, 0.4, 0.2, 0.3, 0.3, 0.4, NaN, 0.1, 0.05]);
  assert.deepEqual(Array.from(argmaxRows(p, 3)), [1, 0, 2, 1]);
  assert.deepEqual(Array.from(argmaxRows(new Float32Array(0), 3)), []);
  assert.throws(() => argmaxRows(Float32Array.from([1, 2, 3]), 2), usage);
  assert.throws(() => argmaxRows(Float32Array.from([1, 2]), 0), usage);
});

test('topK: ranked, ties by lower index, k capped', () => {
  const labels = ['a', 'b', 'c', 'd'];
  const probs = [0.1, 0.4, 0.1, 0.4];
  assert.deepEqual(
    topK(probs, labels, 3).map((e) => e.label),
    ['b', 'd', 'a'],
  );
  assert.deepEqual(topK(probs, labels, 1), [{ label: 'b', probability: 0.4 }]);
  assert.equal(topK(probs, labels, 10).length, 4);
  assert.deepEqual(topK(probs, labels, 0), []);
  assert.deepEqual(
    topK([NaN, 0.2, 0.8], ['n', 'p', 'q'], 3).map((e) => e.label),
    ['q', 'p', 'n'],
  );
  assert.throws(() => topK([0.5, 0.5], labels, 1), usage);
  assert.throws(() => topK(probs, labels, -1), usage);
});

test('crossEntropy: mean -log p_true with clamping', () => {
  const p = Float32Array.from([0.5, 0.5, 0.25, 0.75, 1, 0]);
  // rows: p_true = 0.5, 0.75, 0 (clamped to 1e-12)
  const expected = -(Math.log(0.5) + Math.log(0.75) + Math.log(1e-12)) / 3;
  close(crossEntropy(p, 2, [0, 1, 1]), expected);
  close(crossEntropy(Float32Array.from([1, 0]), 2, [0]), 0);
  assert.equal(crossEntropy(new Float32Array(0), 2, []), 0);
  assert.throws(() => crossEntropy(p, 2, [0, 1]), usage);
  assert.throws(() => crossEntropy(p, 2, [0, 1, 2]), usage);
});

test('formatMetrics: names, accuracy, loss, confusion counts', () => {
  const m = computeMetrics(['cat', 'dog', 'a-very-long-class-name-indeed'], [0, 0, 0, 0, 1, 1, 2, 2, 2], [0, 0, 0, 1, 1, 2, 0, 0, 2], {
    loss: 0.123456,
  });
  const text = formatMetrics(m);
  assert.match(text, /Accuracy\s+0\.5556\s+\(5\/9 correct\)/);
  assert.match(text, /Loss\s+0\.1235/);
  assert.ok(text.includes('cat') && text.includes('dog'));
  assert.ok(text.includes('a-very-lon…ndeed'));
  assert.ok(!text.includes('a-very-long-class-name-indeed'));
  assert.match(text, /macro avg.*0\.5222\s+9$/m);
  const lines = text.split('\n');
  const start = lines.findIndex((l) => l.startsWith('Confusion matrix'));
  const rows = lines.slice(start + 2).map((l) => l.trim().split(/\s{2,}/));
  assert.deepEqual(rows, [
    ['cat', '3', '1', '0'],
    ['dog', '0', '1', '1'],
    ['a-very-lon…ndeed', '2', '0', '1'],
  ]);
  // Every line of the per-class table has the same width up to its last column.
  const header = lines.find((l) => l.startsWith('class'))!;
  assert.equal(lines.find((l) => l.startsWith('dog'))!.length, header.length);
  assert.equal(formatMetrics(computeMetrics(['a'], [0], [0])).includes('Loss'), false);
});

test('formatMetrics: many classes number the confusion columns', () => {
  const labels = Array.from({ length: 50 }, (_, i) => `class_${i}`);
  const truth = labels.map((_, i) => i);
  const m = computeMetrics(labels, truth, truth);
  const text = formatMetrics(m);
  const lines = text.split('\n');
  const start = lines.findIndex((l) => l.startsWith('Confusion matrix'));
  assert.match(lines[start + 1]!, /^true \\ predicted\s+0\s+1\s+2 /);
  assert.match(lines[start + 2]!, /^ 0 class_0\s+1\s+0/);
  assert.match(lines[start + 51]!, /^49 class_49(\s+0)+\s+1$/);
  assert.ok(lines.every((l) => l.length < 260));
});

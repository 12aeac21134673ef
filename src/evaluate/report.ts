import type { Metrics } from './metrics.js';

const MAX_NAME = 16;
/** Above this width the confusion matrix numbers its columns instead of naming them. */
const MAX_NAMED_WIDTH = 100;

/** One line of at most MAX_NAME characters; a longer name keeps its start and end around '…' (names often differ only at the end). */
function shortName(label: string): string {
  const chars = Array.from(label.replace(/\s+/g, ' '));
  if (chars.length <= MAX_NAME) return chars.join('');
  const tail = 5;
  return chars.slice(0, MAX_NAME - 1 - tail).join('') + '…' + chars.slice(-tail).join('');
}

/** Columns separated by two spaces; the first column is left-aligned, the others right-aligned. */
function table(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  return rows.map((row) =>
    row
      .map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!)))
      .join('  ')
      .trimEnd(),
  );
}

const fixed = (x: number): string => x.toFixed(4);

/** Accuracy (and loss), a per-class precision/recall/F1 table with its macro average, and the confusion matrix, as plain aligned text. */
export function formatMetrics(m: Metrics): string {
  const correct = m.confusion.reduce((s, row, i) => s + row[i]!, 0);
  const lines = [`Accuracy  ${fixed(m.accuracy)}  (${correct}/${m.count} correct)`];
  if (m.loss !== undefined) lines.push(`Loss      ${fixed(m.loss)}`);

  const names = m.labels.map(shortName);
  const classes = m.labels.map((label) => m.perClass[label]!);
  const mean = (pick: (c: (typeof classes)[number]) => number): string =>
    fixed(classes.length === 0 ? 0 : classes.reduce((s, c) => s + pick(c), 0) / classes.length);
  lines.push(
    '',
    ...table([
      ['class', 'precision', 'recall', 'f1', 'support'],
      ...classes.map((c, i) => [names[i]!, fixed(c.precision), fixed(c.recall), fixed(c.f1), String(c.support)]),
      ['macro avg', mean((c) => c.precision), mean((c) => c.recall), fixed(m.macroF1), String(m.count)],
    ]),
  );

  // Name the columns when that fits a terminal; otherwise number them and prefix each row with its number.
  const countWidth = Math.max(1, ...m.confusion.flat().map((v) => String(v).length));
  const named = names.reduce((w, name) => w + 2 + Math.max(name.length, countWidth), MAX_NAME) <= MAX_NAMED_WIDTH;
  const indexWidth = String(names.length - 1).length;
  const rowName = (i: number): string => (named ? names[i]! : `${String(i).padStart(indexWidth)} ${names[i]!}`);
  lines.push(
    '',
    'Confusion matrix (rows: true class, columns: predicted class)',
    ...table([
      ['true \\ predicted', ...names.map((name, j) => (named ? name : String(j)))],
      ...m.confusion.map((row, i) => [rowName(i), ...row.map(String)]),
    ]),
  );
  return lines.join('\n');
}

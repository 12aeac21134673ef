import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Dataset, Sample, Skipped } from '../src/data/dataset.js';
import { scanManifest } from '../src/data/manifest.js';
import { sniffAudioType } from '../src/data/dataset.js';
import { detectData, openDataset, openLabelled } from '../src/data/open.js';
import { readTable } from '../src/data/table.js';
import { scanLabelledText, scanTextData, type TextDataset } from '../src/data/text.js';
import { GraftError } from '../src/errors.js';
import { SHARED } from './support/paths.js';

const SMS = path.join(SHARED, 'data/sms-spam/SMSSpamCollection.tsv');
const HYMENOPTERA = path.join(SHARED, 'data/hymenoptera');
const ANTS = ['0013035.jpg', '1030023514_aad5c608f9.jpg'].map((f) => path.join(HYMENOPTERA, 'train/ants', f));
const BEES = ['1092977343_cb42b38d62.jpg', '1093831624_fb5fbe2308.jpg'].map((f) => path.join(HYMENOPTERA, 'train/bees', f));
const SPLIT_REASON = 'is not one of train, val, validation, valid, dev, test';

let tmp: string;
let counter = 0;
const fresh = async () => {
  const dir = path.join(tmp, `case${counter++}`);
  await mkdir(dir, { recursive: true });
  return dir;
};

/** Writes `files` (paths relative to a fresh folder) and returns the folder. */
async function tree(files: Record<string, string | Uint8Array>): Promise<string> {
  const dir = await fresh();
  for (const [name, content] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(dir, name)), { recursive: true });
    await writeFile(path.join(dir, name), content);
  }
  return dir;
}

/** Writes one file into a fresh folder and returns its path. */
async function file(name: string, content: string | Uint8Array): Promise<string> {
  return path.join(await tree({ [name]: content }), name);
}

async function rejectsWith(promise: Promise<unknown>, code: string, ...patterns: RegExp[]): Promise<void> {
  await assert.rejects(promise, (e: unknown) => {
    assert.ok(e instanceof GraftError, `expected a GraftError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    for (const p of patterns) assert.match(e.message, p);
    return true;
  });
}

const lines = (rows: ReadonlyArray<{ line?: number }>) => rows.map((r) => r.line);
const skips = (s: readonly Skipped[]) => s.map((x) => [x.line, x.reason]);
const texts = (d: Dataset, part: 'train' | 'val') => d[part].map((s) => s.text);
const named = (d: Dataset, s: Sample) => d.classes[s.label];
const countBy = (d: Dataset, samples: readonly Sample[]) => {
  const out: Record<string, number> = {};
  for (const s of samples) out[named(d, s)!] = (out[named(d, s)!] ?? 0) + 1;
  return out;
};
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'graft-data-text-'));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('the SMS Spam Collection (real TSV)', () => {
  it('loads with no options: columns, rows, classes, literal quotes', async () => {
    assert.ok(existsSync(SMS), `${SMS} is missing: the tests need ../shared`);
    const table = await readTable(SMS);
    assert.equal(table.format, 'tsv');
    assert.equal(table.header, true);
    assert.deepEqual(table.columns, ['Label', 'SMS']);
    assert.deepEqual(table.textColumns, ['SMS']);
    assert.equal(table.labelColumn, 'Label');
    assert.equal(table.pathColumn, undefined);
    assert.equal(table.splitColumn, undefined);
    assert.equal(table.rows.length, 5574);
    assert.deepEqual(table.skipped, []);
    const counts: Record<string, number> = {};
    for (const r of table.rows) counts[r.label!] = (counts[r.label!] ?? 0) + 1;
    assert.deepEqual(counts, { ham: 4827, spam: 747 });
    assert.equal(table.rows[0]!.line, 2);
    assert.match(table.rows[0]!.text!, /^Go until jurong point/);
    assert.equal(table.rows.at(-1)!.line, 5575);
    // Unquoted TSV: a field that begins with a quote keeps it, and the row stays one row.
    const r284 = table.rows.find((r) => r.line === 284)!;
    assert.match(r284.text!, /^"Wen u miss someone, .*Keep-in-touch" gdeve\.\.$/);
    assert.match(table.rows.find((r) => r.line === 447)!.text!, /^"HEY HEY .* XXX"$/);
  });

  it('splits stratified, seeded and deterministic; reports leakage', async () => {
    const d = (await scanTextData(SMS, {})) as TextDataset;
    assert.equal(d.modality, 'text');
    assert.deepEqual(d.classes, ['ham', 'spam']);
    assert.deepEqual(d.split, { kind: 'random', valFraction: 0.2, seed: 0 });
    assert.deepEqual(d.skipped, []);
    assert.deepEqual(countBy(d, d.val), { ham: 965, spam: 149 });
    assert.deepEqual(countBy(d, d.train), { ham: 3862, spam: 598 });
    assert.equal(d.test, undefined);
    for (const s of [...d.train, ...d.val]) {
      assert.equal(s.file, SMS);
      assert.equal(typeof s.line, 'number');
      assert.equal(typeof s.text, 'string');
    }
    const again = await scanTextData(SMS, { seed: 0 });
    assert.deepEqual(lines(again.val), lines(d.val));
    const other = await scanTextData(SMS, { seed: 1 });
    assert.equal(other.val.length, d.val.length);
    assert.notDeepEqual(lines(other.val), lines(d.val));
    // The collection repeats messages: some validation texts are also training texts.
    assert.ok(d.leaks!.length > 0);
    for (const { val, train } of d.leaks!) assert.equal(val.text!.trim().replace(/\s+/g, ' '), train.text!.trim().replace(/\s+/g, ' '));
    const opened = await openDataset(SMS, {});
    assert.equal(opened.modality, 'text');
    assert.deepEqual(lines(opened.val), lines(d.val));
  });
});

describe('CSV parsing', () => {
  it('reads quoted fields with commas, line breaks and doubled quotes, with the line each row starts on', async () => {
    const f = await file('q.csv', 'id,text,label\n1,"Hello, world",greet\n2,"multi\nline ""quoted"" text",quote\n3,plain,greet\n4,"a ""b"", c",quote\n');
    const t = await readTable(f);
    assert.equal(t.format, 'csv');
    assert.deepEqual(t.columns, ['id', 'text', 'label']);
    assert.deepEqual(t.rows, [
      { line: 2, text: 'Hello, world', label: 'greet' },
      { line: 3, text: 'multi\nline "quoted" text', label: 'quote' },
      { line: 5, text: 'plain', label: 'greet' },
      { line: 6, text: 'a "b", c', label: 'quote' },
    ]);
    assert.deepEqual(t.skipped, []);
  });

  it('drops a UTF-8 BOM and reads CRLF (kept inside quoted fields) and a last line without a break', async () => {
    const f = await file('bom.csv', '\uFEFFtext,label\r\nfoo bar,a\r\n"x\r\ny",b\r\nbaz,a\r\nqux,b');
    const t = await readTable(f);
    assert.deepEqual(t.columns, ['text', 'label']);
    assert.equal(t.header, true);
    assert.deepEqual(t.rows, [
      { line: 2, text: 'foo bar', label: 'a' },
      { line: 3, text: 'x\r\ny', label: 'b' },
      { line: 5, text: 'baz', label: 'a' },
      { line: 6, text: 'qux', label: 'b' },
    ]);
  });

  it('reads a 2-column file without a header: the longer column is the text, either order', async () => {
    const a = await readTable(await file('a.csv', 'pos,great movie really\nneg,awful film\npos,loved it\n'));
    assert.equal(a.header, false);
    assert.deepEqual(a.columns, ['1', '2']);
    assert.deepEqual(a.textColumns, ['2']);
    assert.equal(a.labelColumn, '1');
    assert.deepEqual(lines(a.rows), [1, 2, 3]);
    assert.deepEqual(a.rows[0], { line: 1, text: 'great movie really', label: 'pos' });
    const b = await readTable(await file('b.csv', 'great movie really,pos\nawful film,neg\nloved it,pos\n'));
    assert.equal(b.header, false);
    assert.deepEqual(b.textColumns, ['1']);
    assert.equal(b.labelColumn, '2');
    // A first row of unknown names that do not recur below is a header; the longer column is still the text.
    const c = await readTable(await file('c.csv', 'phrase,mood\nI am very happy,joy\nso sad today,grief\nyay it works,joy\nboo hiss,grief\n'));
    assert.equal(c.header, true);
    assert.deepEqual(c.textColumns, ['phrase']);
    assert.equal(c.labelColumn, 'mood');
    assert.deepEqual(lines(c.rows), [2, 3, 4, 5]);
  });

  it('keeps integer labels as strings and orders them numerically', async () => {
    const f = await file('int.csv', 'text,label\nt one,10\nt two,2\nt three,10\nt four,2\nt five,1\nt six,1\n');
    const t = await readTable(f);
    assert.deepEqual(t.rows.map((r) => r.label), ['10', '2', '10', '2', '1', '1']);
    const d = await scanTextData(f, { valSplit: 0.5 });
    assert.deepEqual(d.classes, ['1', '2', '10']);
  });

  it('joins several text columns with a newline; label and text columns by name; a missing one is a USAGE error', async () => {
    const f = await file('news.csv', 'title,body,topic,source\nT1,B1,x,s1\nT2,,y,s2\n,B3,x,s1\n');
    const auto = await readTable(f);
    assert.deepEqual(auto.textColumns, ['title', 'body']);
    assert.equal(auto.labelColumn, 'topic');
    const t = await readTable(f, { textColumns: ['title', 'body'] });
    assert.deepEqual(t.rows.map((r) => r.text), ['T1\nB1', 'T2', 'B3']);
    const bodyOnly = await readTable(f, { textColumns: ['body'], labelColumn: 'source' });
    assert.deepEqual(bodyOnly.textColumns, ['body']);
    assert.equal(bodyOnly.labelColumn, 'source');
    assert.deepEqual(bodyOnly.rows, [
      { line: 2, text: 'B1', label: 's1' },
      { line: 4, text: 'B3', label: 's1' },
    ]);
    assert.deepEqual(skips(bodyOnly.skipped), [[3, 'no text (column "body" is empty)']]);
    await rejectsWith(readTable(f, { textColumns: ['headline'] }), 'USAGE', /no column "headline"/, /"title", "body", "topic", "source"/);
    await rejectsWith(readTable(f, { labelColumn: 'cls' }), 'USAGE', /no column "cls"/, /"topic"/);
    await rejectsWith(readTable(await file('x.csv', 'a,b,c\n1,2,3\n4,5,6\n')), 'DATASET', /no text column and no path column/, /"a", "b", "c"/);
  });

  it('skips rows with no text, no label, the wrong number of fields, an unclosed quote', async () => {
    const f = await file('bad.csv', 'text,label\nok,a\n   ,b\nfine,\ntoo,many,fields\n"unclosed,b\nyes,a\nno,b\n');
    const t = await readTable(f);
    assert.deepEqual(lines(t.rows), [2, 7, 8]);
    assert.deepEqual(skips(t.skipped), [
      [3, 'no text (column "text" is empty)'],
      [4, 'no label (column "label" is empty)'],
      [5, '3 fields, expected 2'],
      [6, 'unparsable quoting: the quote opened on line 6 is never closed'],
    ]);
    for (const s of t.skipped) assert.equal(s.file, f);
    const kept = await readTable(f, { requireLabel: false });
    assert.deepEqual(kept.rows.find((r) => r.line === 4), { line: 4, text: 'fine' });
  });

  it('skips a row with invalid UTF-8 by its line, never with replacement characters', async () => {
    const enc = (s: string) => Buffer.from(s, 'utf8');
    const bytes = Buffer.concat([
      enc('text,label\nhello there,a\n'),
      enc('bad '), Buffer.from([0xff, 0xfe]), enc(' text,b\n'), // line 3
      enc('more,a\n"quoted\nsecond '), Buffer.from([0xc3]), enc(' line",b\n'), // lines 5-6, bad on 6
      enc('yes,b\nno,b\ncafé,a\n'),
    ]);
    const f = await file('utf8.csv', bytes);
    const t = await readTable(f);
    assert.deepEqual(lines(t.rows), [2, 4, 7, 8, 9]);
    assert.deepEqual(skips(t.skipped), [
      [3, 'invalid UTF-8 on line 3'],
      [5, 'invalid UTF-8 on line 6'],
    ]);
    assert.equal(t.rows.at(-1)!.text, 'café');
    for (const r of t.rows) assert.ok(!r.text!.includes('\uFFFD'));
  });

  it('rejects empty, header-only, binary and non-UTF-8 files', async () => {
    await rejectsWith(readTable(await file('empty.csv', '')), 'DATASET', /empty\.csv is empty \(0 bytes\)/);
    await rejectsWith(readTable(await file('header.csv', 'text,label\n')), 'DATASET', /header\.csv has a header \(text, label\) but no rows/);
    await rejectsWith(readTable(await file('blank.csv', '\n  \n\n')), 'DATASET', /blank\.csv has no rows/);
    const png = Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.alloc(64, 0)]);
    await rejectsWith(readTable(await file('image.csv', png)), 'DATASET', /image\.csv is a PNG image, not a CSV table/);
    await rejectsWith(readTable(await file('blob.tsv', Buffer.from([1, 2, 0, 200, 3, 10, 0, 0]))), 'DATASET', /blob\.tsv is not a text file/);
    const latin1 = Buffer.from('text,label\ncaf\xe9,a\nna\xefve,b\nd\xe9j\xe0,a\n', 'latin1');
    await rejectsWith(readTable(await file('latin1.csv', latin1)), 'DATASET', /latin1\.csv is not UTF-8 text: 3 of its 4 lines/);
    await rejectsWith(readTable(await file('doc.txt', 'hello')), 'DATASET', /not a table/);
  });
});

describe('TSV quoting, decided per file', () => {
  it('reads an unquoted TSV with quote characters as text', async () => {
    const f = await file('raw.tsv', 'label\ttext\nham\t"Wen u miss" gdeve\nham\t"whole quoted"\nspam\t"open only\nspam\tplain\n');
    const t = await readTable(f);
    assert.deepEqual(t.rows.map((r) => [r.line, r.text]), [
      [2, '"Wen u miss" gdeve'],
      [3, '"whole quoted"'],
      [4, '"open only'],
      [5, 'plain'],
    ]);
  });

  it('reads a quoted TSV (multi-line fields, doubled quotes)', async () => {
    const f = await file('quoted.tsv', 'label\ttext\nham\t"He said ""hi"""\nspam\t"two\nlines"\nham\tplain\nspam\tok\n');
    const t = await readTable(f);
    assert.deepEqual(t.rows.map((r) => [r.line, r.text]), [
      [2, 'He said "hi"'],
      [3, 'two\nlines'],
      [5, 'plain'],
      [6, 'ok'],
    ]);
    // One line per row, but doubled quotes inside quoted fields: a quoting writer (pandas, csv module).
    const g = await file('pandas.tab', 'label\ttext\nham\t"say ""x"" now"\nspam\tplain\n');
    assert.deepEqual((await readTable(g)).rows.map((r) => r.text), ['say "x" now', 'plain']);
  });
});

describe('JSONL', () => {
  it('reads one object a line, ignores blank lines, skips bad lines by number', async () => {
    const f = await file('d.jsonl', [
      '{"text":"good","label":"pos"}',
      '',
      '{"text":"bad","label":"neg"}',
      '{not json',
      '[1,2]',
      '{"text":"fine","label":"pos","extra":true}',
      '{"text":"meh","label":"neg"}',
      '{"text":["a"],"label":"neg"}',
      '{"text":"ok","label":1}',
      '{"label":"pos"}',
    ].join('\n') + '\n');
    const t = await readTable(f);
    assert.equal(t.format, 'jsonl');
    assert.deepEqual(t.columns, ['text', 'label', 'extra']);
    assert.deepEqual(t.rows.map((r) => [r.line, r.text, r.label]), [
      [1, 'good', 'pos'],
      [3, 'bad', 'neg'],
      [6, 'fine', 'pos'],
      [7, 'meh', 'neg'],
      [9, 'ok', '1'],
    ]);
    assert.equal(t.skipped.length, 4);
    assert.equal(t.skipped[0]!.line, 4);
    assert.match(t.skipped[0]!.reason, /^not valid JSON: /);
    assert.deepEqual(skips(t.skipped.slice(1)), [
      [5, 'not a JSON object (an array)'],
      [8, 'column "text" holds an array, not a string'],
      [10, 'no text (column "text" is empty)'],
    ]);
  });
});

describe('text datasets', () => {
  it('skips a label seen once; one class or none is an error naming the path', async () => {
    const f = await file('once.csv', 'text,label\na1,a\na2,a\nb1,b\nb2,b\nc1,c\n');
    const d = await scanTextData(f, { valSplit: 0.5 });
    assert.deepEqual(d.classes, ['a', 'b']);
    assert.deepEqual(skips(d.skipped), [[6, 'label "c" occurs once; at least 2 examples per class are needed']]);
    assert.equal(d.train.length + d.val.length, 4);
    const one = await file('one.csv', 'text,label\nx,a\ny,a\nz,b\n');
    await rejectsWith(scanTextData(one, {}), 'DATASET', new RegExp(`${escape(one)} has 1 class \\(a\\); at least 2 classes are needed`));
  });

  it('uses a split column: test validates without val, is kept apart with val; bad split values are skipped', async () => {
    const rows = 'a1,a,train\na2,a,train\nb1,b,train\nb2,b,train\na3,a,validation\nb3,b,dev\na4,a,test\nb4,b,TEST\nx,a,holdout\ny,a,\n';
    const f = await file('split.csv', `text,label,split\n${rows}`);
    const d = (await scanTextData(f, {})) as TextDataset;
    assert.deepEqual(d.split, { kind: 'column', column: 'split' });
    assert.deepEqual(lines(d.train), [2, 3, 4, 5]);
    assert.deepEqual(lines(d.val), [6, 7]);
    assert.deepEqual(lines(d.test!), [8, 9]);
    assert.deepEqual(skips(d.skipped), [
      [10, `split "holdout" ${SPLIT_REASON}`],
      [11, 'no split (column "split" is empty)'],
    ]);
    const g = await file('split2.csv', 'text,label,set\na1,a,train\na2,a,train\nb1,b,train\nb2,b,train\na4,a,test\nb4,b,test\n');
    const e = (await scanTextData(g, {})) as TextDataset;
    assert.deepEqual(lines(e.val), [6, 7]);
    assert.equal(e.test, undefined);
    const h = await file('split3.csv', 'text,label,split\na1,a,train\na2,a,train\nb1,b,train\nb2,b,train\nc1,c,val\nc2,c,val\n');
    await rejectsWith(scanTextData(h, {}), 'DATASET', /label\(s\) not present in training: c \(train classes: a, b\)/);
    // Evaluation reads the test rows.
    const labelled = await scanLabelledText(f, ['a', 'b']);
    assert.deepEqual(lines(labelled.samples), [8, 9]);
    await rejectsWith(scanLabelledText(h, ['a']), 'DATASET', /does not know: c \(known classes: a\)/);
  });

  it('reads a folder of train.csv + val.csv and reports leakage (NFC, whitespace; case kept)', async () => {
    const dir = await tree({
      'train.csv': 'text,label\nHello World,a\ncaf\u00e9 au lait,b\nsomething,a\nother thing,b\n',
      'val.csv': 'text,label\n"  Hello \n World ",a\ncafe\u0301 au lait,b\nhello world,a\nnew,b\n',
    });
    const d = await scanTextData(dir, {});
    assert.deepEqual(d.split, { kind: 'files', train: path.join(dir, 'train.csv'), val: path.join(dir, 'val.csv') });
    assert.deepEqual(d.classes, ['a', 'b']);
    assert.deepEqual(texts(d, 'val'), ['  Hello \n World ', 'cafe\u0301 au lait', 'hello world', 'new']);
    assert.deepEqual(lines(d.val), [2, 4, 5, 6]);
    assert.deepEqual(d.leaks!.map((l) => [l.val.line, l.train.line]), [
      [2, 2],
      [4, 3],
    ]);
    assert.equal(d.train.length + d.val.length, 8);
  });

  it('reads train.tsv + test.tsv, and a lone train.jsonl split at random', async () => {
    const dir = await tree({ 'train.tsv': 'text\tlabel\nx1\ta\nx2\ta\ny1\tb\ny2\tb\n', 'test.tsv': 'text\tlabel\nx3\ta\ny3\tb\n' });
    const d = await scanTextData(dir, {});
    assert.deepEqual(d.split, { kind: 'files', train: path.join(dir, 'train.tsv'), val: path.join(dir, 'test.tsv') });
    assert.deepEqual(texts(d, 'val'), ['x3', 'y3']);
    const labelled = await scanLabelledText(dir, ['a', 'b']);
    assert.equal(labelled.source, path.join(dir, 'test.tsv'));
    const lone = await tree({ 'train.jsonl': ['a', 'a', 'a', 'b', 'b', 'b'].map((l, i) => JSON.stringify({ text: `t${i}`, label: l })).join('\n') });
    const e = await scanTextData(lone, { valSplit: 0.34 });
    assert.deepEqual(e.split, { kind: 'random', valFraction: 0.34, seed: 0 });
    assert.equal(e.val.length, 2);
  });

  it('reads class folders of .txt documents, skipping other files, empty documents and invalid UTF-8', async () => {
    const dir = await tree({
      'pos/a.txt': 'good',
      'pos/b.txt': 'great\n',
      'pos/sub/c.txt': 'nice  one',
      'pos/notes.md': '# not a document',
      'pos/.hidden.txt': 'ignored',
      'neg/d.txt': 'bad',
      'neg/e.txt': '   \n\t',
      'neg/f.txt': 'awful',
      'neg/g.txt': Buffer.concat([Buffer.from('first line\nsecond '), Buffer.from([0xe2, 0x28]), Buffer.from('\n')]),
      'neg/h.txt': 'terrible',
    });
    const d = await scanTextData(dir, {});
    assert.equal(d.modality, 'text');
    assert.deepEqual(d.classes, ['neg', 'pos']);
    assert.deepEqual(d.split, { kind: 'random', valFraction: 0.2, seed: 0 });
    assert.deepEqual(
      d.skipped.map((s) => [path.relative(dir, s.file), s.line, s.reason]),
      [
        ['neg/e.txt', undefined, 'empty document'],
        ['neg/g.txt', undefined, 'invalid UTF-8 on line 2'],
        ['pos/notes.md', undefined, 'not a .txt document'],
      ],
    );
    assert.equal(d.val.length, 2);
    assert.equal(d.train.length, 4);
    const all = [...d.train, ...d.val];
    for (const s of all) assert.equal(s.line, undefined);
    assert.deepEqual(all.map((s) => s.text).sort(), ['awful', 'bad', 'good', 'great\n', 'nice  one', 'terrible']);
    const labelled = await scanLabelledText(dir, ['neg', 'pos']);
    assert.equal(labelled.source, dir);
    assert.equal(labelled.samples.length, 6);
    assert.equal((await detectData(dir)).kind, 'text-folders');
    assert.equal((await openDataset(dir, {})).modality, 'text');
  });

  it('reads train/ and val/ folders of documents; a validation class absent from training is an error', async () => {
    const dir = await tree({ 'train/x/1.txt': 'a', 'train/x/2.txt': 'b', 'train/y/3.txt': 'c', 'train/y/4.txt': 'd', 'val/x/5.txt': 'a', 'val/y/6.txt': 'f' });
    const d = await scanTextData(dir, {});
    assert.deepEqual(d.split, { kind: 'folders', train: path.join(dir, 'train'), val: path.join(dir, 'val') });
    assert.deepEqual(texts(d, 'val'), ['a', 'f']);
    assert.equal(d.leaks!.length, 1);
    const bad = await tree({ 'train/x/1.txt': 'a', 'train/x/2.txt': 'b', 'train/y/3.txt': 'c', 'train/y/4.txt': 'd', 'val/z/5.txt': 'e', 'val/z/6.txt': 'f' });
    await rejectsWith(scanTextData(bad, {}), 'DATASET', /label\(s\) not present in training: z/);
    await rejectsWith(scanTextData(dir, { valSplit: 1.5 }), 'USAGE', /valSplit/);
  });
});

describe('manifests', () => {
  it('reads a manifest of images by absolute path, skipping a missing file with its line', async () => {
    const rows = [...ANTS.map((p) => `${p},ants`), ...BEES.map((p) => `${p},bees`), '/nonexistent/graft/x.jpg,ants'];
    const f = await file('images.csv', `path,label\n${rows.join('\n')}\n`);
    const d = await scanManifest(f, {});
    assert.equal(d.modality, 'image');
    assert.deepEqual(d.classes, ['ants', 'bees']);
    assert.deepEqual(d.split, { kind: 'random', valFraction: 0.2, seed: 0 });
    assert.deepEqual(skips(d.skipped), [[6, '/nonexistent/graft/x.jpg: does not exist (or is a dangling symbolic link)']]);
    assert.equal(d.skipped[0]!.file, f);
    assert.equal(d.train.length, 2);
    assert.equal(d.val.length, 2);
    for (const s of [...d.train, ...d.val]) {
      assert.ok([...ANTS, ...BEES].includes(s.file));
      assert.equal(s.line, [...ANTS, ...BEES].indexOf(s.file) + 2);
      assert.equal(s.text, undefined);
    }
    const opened = await openDataset(f, {});
    assert.equal(opened.modality, 'image');
    const labelled = await openLabelled(f, ['ants', 'bees'], 'image');
    assert.equal(labelled.samples.length, 4);
  });

  it('reads a relative-path manifest with a split column; skips folders and non-media files', async () => {
    const dir = await fresh();
    await mkdir(path.join(dir, 'img/ants'), { recursive: true });
    await mkdir(path.join(dir, 'img/bees'), { recursive: true });
    for (const [i, src] of ANTS.entries()) await copyFile(src, path.join(dir, `img/ants/${i}.jpg`));
    for (const [i, src] of BEES.entries()) await copyFile(src, path.join(dir, `img/bees/${i}.jpg`));
    await writeFile(path.join(dir, 'notes.txt'), 'not an image');
    const manifest = path.join(dir, 'data.csv');
    await writeFile(
      manifest,
      'file,class,split\nimg/ants/0.jpg,ants,train\nimg/bees/0.jpg,bees,train\nimg/ants/1.jpg,ants,val\nimg/bees/1.jpg,bees,val\nimg/missing.jpg,bees,train\nimg,ants,train\nnotes.txt,bees,train\n',
    );
    const d = await scanManifest(manifest, {});
    assert.equal(d.modality, 'image');
    assert.deepEqual(d.split, { kind: 'column', column: 'split' });
    assert.deepEqual(d.train.map((s) => [path.relative(dir, s.file), s.line, named(d, s)]), [
      ['img/ants/0.jpg', 2, 'ants'],
      ['img/bees/0.jpg', 3, 'bees'],
    ]);
    assert.deepEqual(lines(d.val), [4, 5]);
    assert.deepEqual(skips(d.skipped), [
      [6, `${path.join(dir, 'img/missing.jpg')}: does not exist (or is a dangling symbolic link)`],
      [7, `${path.join(dir, 'img')}: not a regular file: a folder`],
      [8, `${path.join(dir, 'notes.txt')}: neither an image nor audio (unrecognised file signature)`],
    ]);
  });

  it('detects audio manifests, and reads a manifest with a text column as text', async () => {
    const wav = Buffer.concat([Buffer.from('RIFF'), Buffer.from([36, 0, 0, 0]), Buffer.from('WAVEfmt '), Buffer.alloc(28)]);
    assert.equal(sniffAudioType(wav), 'wav');
    assert.equal(sniffAudioType(Buffer.from('fLaC\0\0\0\0')), 'flac');
    assert.equal(sniffAudioType(Buffer.from('OggS\0\0\0\0')), 'ogg');
    assert.equal(sniffAudioType(Buffer.from('ID3\x04\0\0\0\0')), 'mp3');
    assert.equal(sniffAudioType(Buffer.from([0xff, 0xfb, 0x90, 0x64])), 'mp3');
    assert.equal(sniffAudioType(Buffer.from([0xff, 0xd8, 0xff, 0xe0])), undefined);
    const dir = await tree({ 'a1.wav': wav, 'a2.wav': wav, 'b1.wav': wav, 'b2.wav': wav, 'audio.csv': 'audio,label\na1.wav,yes\na2.wav,yes\nb1.wav,no\nb2.wav,no\n' });
    const d = await scanManifest(path.join(dir, 'audio.csv'), {});
    assert.equal(d.modality, 'audio');
    assert.deepEqual(d.classes, ['no', 'yes']);
    await rejectsWith(openDataset(path.join(dir, 'audio.csv'), { task: 'image' }), 'USAGE', /task is image.*manifest of files of audio/);
    const t = await file('texts.csv', 'text,label\nx1,a\nx2,a\ny1,b\ny2,b\n');
    assert.equal((await scanManifest(t, {})).modality, 'text');
  });
});

describe('openDataset', () => {
  it('chooses the modality from the data, and the task overrides or contradicts it', async () => {
    const csv = await file('t.csv', 'text,label\nx1,a\nx2,a\ny1,b\ny2,b\n');
    assert.equal((await detectData(csv)).kind, 'text-table');
    assert.equal((await openDataset(csv, {})).modality, 'text');
    assert.equal((await openDataset(csv, { task: 'text' })).modality, 'text');
    await rejectsWith(openDataset(csv, { task: 'image' }), 'USAGE', /task is image but .*t\.csv is a table of texts/);

    const tables = await tree({ 'train.csv': 'text,label\nx1,a\nx2,a\ny1,b\ny2,b\n', 'valid.csv': 'text,label\nx3,a\ny3,b\n' });
    assert.equal((await detectData(tables)).kind, 'text-tables');
    const d = await openDataset(tables, {});
    assert.equal(d.modality, 'text');
    assert.deepEqual(d.split, { kind: 'files', train: path.join(tables, 'train.csv'), val: path.join(tables, 'valid.csv') });
    await rejectsWith(openDataset(tables, { task: 'image' }), 'USAGE', /holds text tables/);

    const docs = await tree({ 'train/p/1.txt': 'a', 'train/p/2.txt': 'b', 'train/q/3.txt': 'c', 'train/q/4.txt': 'd' });
    assert.equal((await openDataset(docs, {})).modality, 'text');
    await rejectsWith(openDataset(docs, { task: 'image' }), 'USAGE', /class folders of \.txt documents/);

    const images = await openDataset(HYMENOPTERA, {});
    assert.equal(images.modality, 'image');
    assert.equal(images.split.kind, 'folders');
    assert.equal((await openDataset(HYMENOPTERA, { task: 'image' })).modality, 'image');
    await rejectsWith(openDataset(HYMENOPTERA, { task: 'text' }), 'USAGE', /task is text but .*holds no text tables or \.txt documents/);

    const manifest = await file('m.csv', `path,label\n${[...ANTS, ...BEES].map((p, i) => `${p},${i < 2 ? 'ants' : 'bees'}`).join('\n')}\n`);
    assert.equal((await detectData(manifest)).kind, 'manifest');
    await rejectsWith(openDataset(manifest, { task: 'text' }), 'USAGE', /manifest of files with no text column/);

    await rejectsWith(openDataset(path.join(tmp, 'nope'), {}), 'DATASET', /nope does not exist/);
    await rejectsWith(openDataset(await file('doc.txt', 'hi'), {}), 'DATASET', /is one \.txt document/);
  });

  it('openLabelled reads text, manifests and image folders, mapping labels to the classes', async () => {
    const csv = await file('eval.csv', 'text,label\nx1,b\nx2,a\n');
    const got = await openLabelled(csv, ['a', 'b'], 'text');
    assert.deepEqual(got.samples.map((s) => [s.line, s.label]), [
      [2, 1],
      [3, 0],
    ]);
    await rejectsWith(openLabelled(csv, ['a', 'c'], 'text'), 'DATASET', /does not know: b \(known classes: a, c\)/);
    const folder = await openLabelled(HYMENOPTERA, ['ants', 'bees'], 'image');
    assert.equal(folder.source, path.join(HYMENOPTERA, 'val'));
    assert.ok(folder.samples.length > 100);
  });
});

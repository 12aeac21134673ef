/**
 * Text datasets: a table (CSV/TSV/JSONL), a folder of train/val tables, or class folders of `.txt` documents,
 * read into labelled text samples and split like image folders.
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { GraftError, invalidParameter } from '../errors.js';
import { sortClasses, stratifiedSplit, type Dataset, type DatasetSplit, type Modality, type Sample, type Skipped } from './dataset.js';
import { readTable, tableFormat, type SplitName, type Table } from './table.js';
import { FileProblem, fileProblem, readRegularFile } from '../util/fs.js';
import { byCodeUnit, listFolder, walkFiles } from './walk.js';

/** A text dataset; `test` holds a table's or folder's test samples when it also has validation ones. */
export interface TextDataset extends Dataset {
  /** Held-out samples (a `test` split next to a `val` one): used neither to train nor to validate. */
  test?: Sample[];
}

export interface TextDataOptions {
  /** Fraction of each class held out for validation when the data has no split of its own (default 0.2). */
  valSplit?: number;
  /** Seed of the random split (default 0). */
  seed?: number;
  /** Table columns joined (with a newline) into the text; overrides detection. */
  textColumns?: string[];
  /** Table column holding the label; overrides detection. */
  labelColumn?: string;
}

/** A sample with its label still a name, and the part of the data it came from, if the data says so. */
export interface LabelledItem {
  sample: Omit<Sample, 'label'>;
  label: string;
  part?: SplitName;
}

/** Validation names for tables (`val.csv`) and folders (`val/`), in order of preference; `test` last. */
const VAL_NAMES = ['val', 'valid', 'validation', 'test'];
/** Table extensions in order of preference when a folder holds several `train.<ext>`. */
const TABLE_EXTS = ['.csv', '.tsv', '.tab', '.jsonl', '.ndjson'];

const fatal = new TextDecoder('utf-8', { fatal: true });
const bySource = (a: LabelledItem, b: LabelledItem) => byCodeUnit(a.sample.file, b.sample.file) || (a.sample.line ?? 0) - (b.sample.line ?? 0);

/** How texts are compared for leakage: NFC, trimmed, runs of whitespace as one space; case kept. */
export function normaliseForLeaks(text: string): string {
  return text.normalize('NFC').trim().replace(/\s+/g, ' ');
}

/** `valSplit` (default 0.2) and `seed` (default 0), checked as `scanImageFolder` checks them. */
export function checkSplitOptions(options: { valSplit?: number; seed?: number }): { valFraction: number; seed: number } {
  const valFraction = options.valSplit ?? 0.2;
  const seed = options.seed ?? 0;
  if (!(valFraction > 0 && valFraction < 1)) throw invalidParameter('valSplit', 'a fraction in (0, 1)', valFraction);
  if (!Number.isFinite(seed)) throw invalidParameter('seed', 'a finite number', seed);
  return { valFraction, seed };
}

/** The absolute path and whether it is a folder; a path that does not exist is a DATASET error. */
export async function requireExists(p: string): Promise<{ abs: string; isDirectory: boolean }> {
  const abs = path.resolve(p);
  const info = await stat(abs).catch(() => undefined);
  if (!info) throw new GraftError('DATASET', `Dataset path ${abs} does not exist`, { path: abs });
  return { abs, isDirectory: info.isDirectory() };
}

/**
 * Builds a dataset from labelled items, checked as a whole, for every source of labelled rows (tables, text
 * folders, manifests): a label seen exactly once is skipped (one example can neither train and validate nor be
 * split); fewer than 2 classes, a validation label absent from training, or no validation samples are DATASET
 * errors. With `split` `random` the items are split by `stratifiedSplit`; otherwise by their `part`: `train`
 * trains, `val` validates, `test` validates when there is no `val` and is kept apart in `test` when there is.
 * Leakage (validation texts also in training) is reported for text items.
 */
export function splitLabelled(
  root: string,
  modality: Modality,
  items: readonly LabelledItem[],
  skipped: Skipped[],
  split: DatasetSplit,
): TextDataset {
  const counts = new Map<string, number>();
  for (const it of items) counts.set(it.label, (counts.get(it.label) ?? 0) + 1);
  const kept: LabelledItem[] = [];
  for (const it of items) {
    if (counts.get(it.label) === 1) {
      skipped.push({ ...place(it.sample), reason: `label ${JSON.stringify(it.label)} occurs once; at least 2 examples per class are needed` });
    } else kept.push(it);
  }
  skipped.sort((a, b) => byCodeUnit(a.file, b.file) || (a.line ?? 0) - (b.line ?? 0));

  const noun = modality === 'text' && items.every((it) => it.sample.line === undefined) ? 'documents' : 'samples';
  const checkClasses = (labels: Iterable<string>, where: string): string[] => {
    const classes = sortClasses(labels);
    if (classes.length < 2) {
      const first = skipped[0] ? `; ${skipped.length} skipped, e.g. ${skipped[0].line !== undefined ? `line ${skipped[0].line}` : skipped[0].file}: ${skipped[0].reason}` : '';
      throw new GraftError(
        'DATASET',
        classes.length === 0
          ? `${where} has no usable ${noun}${first}`
          : `${where} has 1 class (${classes[0]}); at least 2 classes are needed${first}`,
        { path: where, classes },
      );
    }
    return classes;
  };
  const toSample = (it: LabelledItem, classes: readonly string[]): Sample => ({ ...it.sample, label: classes.indexOf(it.label) });

  let dataset: TextDataset;
  if (split.kind === 'random') {
    const classes = checkClasses(kept.map((it) => it.label), root);
    const byClass = classes.map((c) => kept.filter((it) => it.label === c));
    const parts = stratifiedSplit(byClass, split.valFraction, split.seed, bySource);
    dataset = {
      root,
      modality,
      classes,
      train: parts.train.map(({ item, label }) => ({ ...item.sample, label })),
      val: parts.val.map(({ item, label }) => ({ ...item.sample, label })),
      split,
      skipped,
    };
  } else {
    const train = kept.filter((it) => it.part === 'train');
    const hasVal = kept.some((it) => it.part === 'val');
    const val = kept.filter((it) => it.part === (hasVal ? 'val' : 'test'));
    const test = hasVal ? kept.filter((it) => it.part === 'test') : [];
    const trainWhere =
      split.kind === 'column' ? `The training rows (${split.column} = train) of ${root}`
      : split.kind === 'names' ? `The training files (not ${split.valWhere}) of ${root}`
      : split.train;
    const valWhere =
      split.kind === 'column' ? `The validation rows (${split.column} = val/test) of ${root}`
      : split.kind === 'names' ? `The validation files (${split.valWhere}) of ${root}`
      : split.val;
    const classes = checkClasses(train.map((it) => it.label), trainWhere);
    const extra = sortClasses([...val, ...test].map((it) => it.label).filter((l) => !classes.includes(l)));
    if (extra.length > 0) {
      throw new GraftError(
        'DATASET',
        `${valWhere} has label(s) not present in training: ${extra.join(', ')} (train classes: ${classes.join(', ')})`,
        { path: root, classes: extra },
      );
    }
    if (val.length === 0) throw new GraftError('DATASET', `${valWhere} has no usable ${noun}`, { path: root });
    dataset = {
      root,
      modality,
      classes,
      train: train.map((it) => toSample(it, classes)),
      val: val.map((it) => toSample(it, classes)),
      split,
      skipped,
    };
    if (test.length > 0) dataset.test = test.map((it) => toSample(it, classes));
  }
  if (modality === 'text') {
    const seen = new Map<string, Sample>();
    for (const s of dataset.train) {
      const key = normaliseForLeaks(s.text ?? '');
      if (!seen.has(key)) seen.set(key, s);
    }
    dataset.leaks = [];
    for (const s of dataset.val) {
      const t = seen.get(normaliseForLeaks(s.text ?? ''));
      if (t) dataset.leaks.push({ val: s, train: t });
    }
  }
  return dataset;
}

const place = (s: { file: string; line?: number }): { file: string; line?: number } => (s.line !== undefined ? { file: s.file, line: s.line } : { file: s.file });

/** Rows of a table as labelled text items (rows without text were skipped by `readTable`). */
function tableItems(table: Table, part?: SplitName): LabelledItem[] {
  if (table.textColumns.length === 0) {
    const what = table.pathColumn ? ` (its path column ${JSON.stringify(table.pathColumn)} makes it a manifest of files)` : '';
    throw new GraftError('DATASET', `${table.file} has no text column${what}; its columns: ${table.columns.join(', ')}`, {
      file: table.file,
      columns: table.columns,
    });
  }
  return table.rows.map((r) => ({ sample: { file: table.file, line: r.line, text: r.text! }, label: r.label!, part: part ?? r.split }));
}

function readTextTable(file: string, options: TextDataOptions, ignoreSplit = false): Promise<Table> {
  return readTable(file, { textColumns: options.textColumns, labelColumn: options.labelColumn, require: 'text', ignoreSplit });
}

/** A folder's sub-folders and regular files; an unreadable folder is a DATASET error naming it. */
async function readFolder(dir: string, skipped: Skipped[] = []): Promise<{ dirs: string[]; files: string[] }> {
  try {
    return await listFolder(dir, skipped);
  } catch (e) {
    throw new GraftError('DATASET', `${dir}: folder ${fileProblem(e)}`, { dir }, { cause: e });
  }
}

/**
 * The tables of a folder by stem: `train.<ext>` and the first of `names` with a table extension present
 * (compared lower-case; csv before tsv before jsonl when a stem has several).
 */
export async function findTables(dir: string, stems: readonly string[]): Promise<Map<string, string>> {
  const { files } = await readFolder(dir);
  const found = new Map<string, string>();
  for (const stem of stems) {
    for (const ext of TABLE_EXTS) {
      const f = files.find((name) => name.toLowerCase() === stem + ext);
      if (f) {
        found.set(stem, path.join(dir, f));
        break;
      }
    }
  }
  return found;
}

/** The train table of a folder and its validation table (`val`, `valid`, `validation`, then `test`), if any. */
export async function findTrainTables(dir: string): Promise<{ train?: string; val?: string; test?: string }> {
  const found = await findTables(dir, ['train', ...VAL_NAMES]);
  const valStem = VAL_NAMES.slice(0, -1).find((s) => found.has(s));
  return { train: found.get('train'), val: valStem ? found.get(valStem) : undefined, test: found.get('test') };
}

/** Why the bytes of a `.txt` document are not usable text, or its text. */
function documentText(bytes: Uint8Array): { text: string } | { reason: string } {
  const body = bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf ? bytes.subarray(3) : bytes;
  if (body.includes(0)) return { reason: 'not a text file (it holds NUL bytes: binary data or UTF-16)' };
  let text: string;
  try {
    text = fatal.decode(body);
  } catch {
    let line = 1;
    let start = 0;
    for (let i = 0; i <= body.length; i++) {
      if (i === body.length || body[i] === 10) {
        try {
          fatal.decode(body.subarray(start, i));
        } catch {
          return { reason: `invalid UTF-8 on line ${line}` };
        }
        line++;
        start = i + 1;
      }
    }
    return { reason: 'invalid UTF-8' };
  }
  if (text.trim() === '') return { reason: 'empty document' };
  return { text };
}

/** The `.txt` documents under each class folder of `dir` (recursively), as items of `part`. */
async function documentItems(dir: string, skipped: Skipped[], part?: SplitName): Promise<LabelledItem[]> {
  const { dirs, files } = await readFolder(dir, skipped);
  if (dirs.length === 0) {
    throw new GraftError('DATASET', `No class folders in ${dir}: expected one sub-folder per class, found ${files.length} file(s) and no folders`, { dir });
  }
  const items: LabelledItem[] = [];
  for (const label of dirs) {
    for (const file of await walkFiles(path.join(dir, label), skipped, dir)) {
      if (path.extname(file).toLowerCase() !== '.txt') {
        skipped.push({ file, reason: 'not a .txt document' });
        continue;
      }
      let bytes: Uint8Array;
      try {
        bytes = await readRegularFile(file);
      } catch (e) {
        if (!(e instanceof FileProblem)) throw e;
        skipped.push({ file, reason: e.problem });
        continue;
      }
      const got = documentText(bytes);
      if ('reason' in got) skipped.push({ file, reason: got.reason });
      else items.push({ sample: { file, text: got.text }, label, part });
    }
  }
  return items;
}

/** The sub-folder of `root` whose lower-cased name is the first of `names` present. */
async function findSubfolder(root: string, names: readonly string[]): Promise<string | undefined> {
  const { dirs } = await readFolder(root);
  for (const name of names) {
    const found = dirs.find((d) => d.toLowerCase() === name);
    if (found) return path.join(root, found);
  }
  return undefined;
}

/**
 * Reads a text-classification dataset (modality `text`) from
 * 1. a table (.csv/.tsv/.jsonl; see `readTable`). With a split column, rows go where it says: `train` trains,
 *    `val`/`validation`/`valid`/`dev` validate, and `test` validates when no row is `val`; when there are both,
 *    the `test` rows are kept apart in `test` — a test set is meant to be scored once, at the end, so it is
 *    neither trained on nor used for early stopping (evaluation reads it: `scanLabelledText`). A split column
 *    with only `train` rows, or none, means a seeded stratified split (`valSplit`, default 0.2, `seed`, default 0);
 * 2. a folder with `train.<ext>` and `val|valid|validation|test.<ext>` (both val and test: test kept apart, as
 *    above); a lone `train.<ext>` is split at random;
 * 3. class folders of `.txt` documents (one per file, recursively), optionally under `train/` and `val/`.
 * Texts are kept as read. See `splitLabelled` for the checks and the leakage report.
 */
export async function scanTextData(dataPath: string, options: TextDataOptions = {}): Promise<TextDataset> {
  const { valFraction, seed } = checkSplitOptions(options);
  const { abs, isDirectory } = await requireExists(dataPath);
  const random: DatasetSplit = { kind: 'random', valFraction, seed };

  if (!isDirectory) {
    if (path.extname(abs).toLowerCase() === '.txt') {
      throw new GraftError('DATASET', `${abs} is one .txt document; a text dataset is a table (.csv, .tsv, .jsonl) or a folder of class folders of .txt files`, { path: abs });
    }
    if (!tableFormat(abs)) throw new GraftError('DATASET', `${abs} is not a text dataset: expected a .csv, .tsv, .tab, .jsonl or .ndjson table or a folder`, { path: abs });
    const table = await readTextTable(abs, options);
    const items = tableItems(table);
    const skipped = [...table.skipped];
    const bySplit = table.splitColumn !== undefined && items.some((it) => it.part !== 'train');
    return splitLabelled(abs, 'text', items, skipped, bySplit ? { kind: 'column', column: table.splitColumn! } : random);
  }

  const tables = await findTrainTables(abs);
  if (tables.train) {
    const train = await readTextTable(tables.train, options, true);
    const skipped = [...train.skipped];
    const items = tableItems(train, 'train');
    const valFile = tables.val ?? tables.test;
    if (!valFile) return splitLabelled(abs, 'text', tableItems(train), skipped, random);
    for (const [file, part] of [[valFile, tables.val ? 'val' : 'test'], ...(tables.val && tables.test ? [[tables.test, 'test']] : [])] as Array<[string, SplitName]>) {
      const t = await readTextTable(file, options, true);
      skipped.push(...t.skipped);
      items.push(...tableItems(t, part));
    }
    return splitLabelled(abs, 'text', items, skipped, { kind: 'files', train: tables.train, val: valFile });
  }
  const skipped: Skipped[] = [];
  const trainDir = await findSubfolder(abs, ['train']);
  const valDir = trainDir && (await findSubfolder(abs, VAL_NAMES));
  if (trainDir && valDir) {
    const items = [...(await documentItems(trainDir, skipped, 'train')), ...(await documentItems(valDir, skipped, 'val'))];
    return splitLabelled(abs, 'text', items, skipped, { kind: 'folders', train: trainDir, val: valDir });
  }
  const items = await documentItems(trainDir ?? abs, skipped);
  return splitLabelled(trainDir ?? abs, 'text', items, skipped, random);
}

/** Maps labelled items to `classes`; a label the model does not know is a DATASET error. */
export function labelItems(source: string, items: readonly LabelledItem[], classes: readonly string[]): Sample[] {
  const unknown = sortClasses(items.map((it) => it.label).filter((l) => !classes.includes(l)));
  if (unknown.length > 0) {
    throw new GraftError('DATASET', `${source} has label(s) the model does not know: ${unknown.join(', ')} (known classes: ${classes.join(', ')})`, {
      path: source,
      classes: unknown,
    });
  }
  if (items.length === 0) throw new GraftError('DATASET', `No usable labelled samples in ${source}`, { path: source });
  return items.map((it) => ({ ...it.sample, label: classes.indexOf(it.label) }));
}

/** The rows of a table meant for evaluation: its `test` rows, else its `val` rows, else all of them. */
export function evaluationRows<T extends { part?: SplitName }>(items: readonly T[]): T[] {
  for (const part of ['test', 'val'] as const) {
    const some = items.filter((it) => it.part === part);
    if (some.length > 0) return some;
  }
  return [...items];
}

/**
 * Reads labelled texts for evaluation: a table (its test rows, else val rows, else all), a folder of tables
 * (`test.<ext>`, else `val|valid|validation.<ext>`, else `train.<ext>`), or class folders of `.txt` (under
 * `test/`, else `val/`…, else the folder itself). Labels are positions in `classes`.
 */
export async function scanLabelledText(
  dataPath: string,
  classes: readonly string[],
  options: Omit<TextDataOptions, 'valSplit' | 'seed'> = {},
): Promise<{ samples: Sample[]; skipped: Skipped[]; source: string }> {
  const { abs, isDirectory } = await requireExists(dataPath);
  if (!isDirectory) {
    const table = await readTextTable(abs, options);
    return { samples: labelItems(abs, evaluationRows(tableItems(table)), classes), skipped: table.skipped, source: abs };
  }
  const tables = await findTables(abs, ['test', 'val', 'valid', 'validation', 'train']);
  const first = [...tables.values()][0];
  if (first) {
    const table = await readTextTable(first, options, true);
    return { samples: labelItems(first, tableItems(table), classes), skipped: table.skipped, source: first };
  }
  const source = (await findSubfolder(abs, ['test', 'val', 'valid', 'validation'])) ?? abs;
  const skipped: Skipped[] = [];
  const items = await documentItems(source, skipped);
  return { samples: labelItems(source, items, classes), skipped, source };
}

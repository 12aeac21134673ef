/**
 * The one entry point to datasets: detects what a path holds (a text table, a manifest of files, a folder of
 * train/val tables, class folders of `.txt` documents or of images) and reads it with the right scanner.
 */
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { GraftError } from '../errors.js';
import { scanAudioFolder, scanImageFolder, scanLabelledFolder, type Dataset, type Modality, type Sample, type Skipped } from './dataset.js';
import { scanNamedFiles } from './names.js';
import { scanLabelledManifest, scanManifest } from './manifest.js';
import { readTable, tableFormat } from './table.js';
import { findTrainTables, requireExists, scanLabelledText, scanTextData } from './text.js';

export type Task = 'image' | 'text' | 'audio';

export interface OpenOptions {
  /** What to train on; overrides detection (a contradiction with the data is a USAGE error). */
  task?: Task;
  valSplit?: number;
  seed?: number;
  textColumns?: string[];
  labelColumn?: string;
  /** A folder of files labelled by their names (`names.ts`), and the rule choosing the validation files. */
  namePattern?: string;
  valWhere?: string;
}

/** What a dataset path holds, as `detectData` sees it. */
export type DataKind =
  | { kind: 'text-table'; file: string }
  | { kind: 'manifest'; file: string }
  | { kind: 'text-tables'; dir: string; train: string }
  | { kind: 'text-folders'; dir: string }
  | { kind: 'image-folders'; dir: string }
  | { kind: 'audio-folders'; dir: string };

const IMAGE_EXTENSION = /\.(jpe?g|jpe|png|gif|webp|tiff?|bmp|avif|heic|heif)$/i;
const AUDIO_EXTENSION = /\.(wav|wave|mp3|flac|ogg|oga|opus)$/i;

/** How many `.txt` documents, image and audio files (by extension) lie under the sub-folders of `dir`. */
async function countFiles(dir: string): Promise<{ texts: number; images: number; audio: number }> {
  let texts = 0;
  let images = 0;
  let audio = 0;
  const top = await readdir(dir, { withFileTypes: true });
  for (const entry of top) {
    if (entry.name.startsWith('.') || entry.isFile()) continue;
    const sub = path.join(dir, entry.name);
    const names = await readdir(sub, { recursive: true }).catch(() => [] as string[]);
    for (const name of names) {
      if (name.split(path.sep).some((part) => part.startsWith('.'))) continue;
      if (name.toLowerCase().endsWith('.txt')) texts++;
      else if (IMAGE_EXTENSION.test(name)) images++;
      else if (AUDIO_EXTENSION.test(name)) audio++;
    }
  }
  return { texts, images, audio };
}

/**
 * What a path holds: a table file is a manifest when it has a path column (unless `textColumns` are named),
 * else a text table; a folder with `train.<ext>` tables is text; a folder whose class folders (or
 * `train/<class>/`) hold `.txt` documents and no images is text; any other folder is an image folder.
 */
export async function detectData(dataPath: string, options: Pick<OpenOptions, 'textColumns' | 'labelColumn'> = {}): Promise<DataKind> {
  const { abs, isDirectory } = await requireExists(dataPath);
  if (!isDirectory) {
    if (!tableFormat(abs)) {
      const txt = path.extname(abs).toLowerCase() === '.txt';
      throw new GraftError(
        'DATASET',
        txt
          ? `${abs} is one .txt document; a text dataset is a table (.csv, .tsv, .jsonl) or a folder of class folders of .txt files`
          : `${abs} is a file but not a table (.csv, .tsv, .tab, .jsonl, .ndjson); a dataset is a table or a folder`,
        { path: abs },
      );
    }
    const table = await readTable(abs, { textColumns: options.textColumns, labelColumn: options.labelColumn, requireLabel: false });
    return table.pathColumn !== undefined ? { kind: 'manifest', file: abs } : { kind: 'text-table', file: abs };
  }
  const tables = await findTrainTables(abs);
  if (tables.train) return { kind: 'text-tables', dir: abs, train: tables.train };
  const { texts, images, audio } = await countFiles(abs);
  if (texts > 0 && images === 0 && audio === 0) return { kind: 'text-folders', dir: abs };
  return audio > images ? { kind: 'audio-folders', dir: abs } : { kind: 'image-folders', dir: abs };
}

const describe = (d: DataKind): string =>
  d.kind === 'text-table'
    ? `${d.file} is a table of texts`
    : d.kind === 'manifest'
      ? `${d.file} is a manifest of files`
      : d.kind === 'text-tables'
        ? `${d.dir} holds text tables (${path.basename(d.train)})`
        : d.kind === 'text-folders'
          ? `${d.dir} holds class folders of .txt documents`
          : d.kind === 'audio-folders'
            ? `${d.dir} holds class folders of audio files`
            : `${d.dir} holds no text tables or .txt documents`;

/**
 * Opens a dataset of whichever modality the data holds (see `detectData`): text through `scanTextData`,
 * manifests through `scanManifest` (image or audio; audio is not trainable yet and is returned for the caller
 * to say so), image folders through `scanImageFolder`. `task` says what the caller wants; data that cannot
 * serve it is a USAGE error.
 */
export async function openDataset(dataPath: string, options: OpenOptions = {}): Promise<Dataset> {
  const { task, valSplit, seed, textColumns, labelColumn, namePattern, valWhere } = options;
  if (valWhere !== undefined && namePattern === undefined) throw new GraftError('USAGE', 'a validation rule (valWhere) picks files by the fields of a name pattern: give the name pattern too');
  if (namePattern !== undefined) {
    const { abs, isDirectory } = await requireExists(dataPath);
    if (!isDirectory) throw new GraftError('USAGE', `a name pattern labels the files of a folder; ${abs} is a file`, { path: abs });
    const dataset = await scanNamedFiles(abs, { pattern: namePattern, ...(valWhere !== undefined ? { valWhere } : {}), ...(valSplit !== undefined ? { valSplit } : {}), ...(seed !== undefined ? { seed } : {}) });
    if (task && task !== dataset.modality) throw new GraftError('USAGE', `The task is ${task} but the files of ${abs} named like ${namePattern} are ${dataset.modality}`, { path: abs, task });
    return dataset;
  }
  const found = await detectData(dataPath, { textColumns, labelColumn });
  const contradiction = (why: string) =>
    new GraftError('USAGE', `The task is ${task} but ${why}`, { path: path.resolve(dataPath), task, found: found.kind });
  switch (found.kind) {
    case 'text-table':
      if (task === 'image') throw contradiction(`${describe(found)} (no path column to name image files)`);
      return scanTextData(found.file, { valSplit, seed, textColumns, labelColumn });
    case 'manifest': {
      if (task === 'text') {
        const table = await readTable(found.file, { requireLabel: false, labelColumn });
        if (table.textColumns.length === 0) throw contradiction(`${describe(found)} with no text column (columns: ${table.columns.join(', ')})`);
        return scanTextData(found.file, { valSplit, seed, textColumns, labelColumn });
      }
      const dataset = await scanManifest(found.file, { valSplit, seed, labelColumn });
      if (task && dataset.modality !== task) throw contradiction(`${describe(found)} of ${dataset.modality}`);
      return dataset;
    }
    case 'text-tables':
    case 'text-folders':
      if (task === 'image' || task === 'audio') throw contradiction(describe(found));
      return scanTextData(found.dir, { valSplit, seed, textColumns, labelColumn });
    case 'image-folders':
    case 'audio-folders': {
      if (task === 'text') throw contradiction(describe(found));
      // An explicit task decides between images and audio; otherwise the files' extensions did.
      const audio = task ? task === 'audio' : found.kind === 'audio-folders';
      return audio ? scanAudioFolder(found.dir, { valSplit, seed }) : scanImageFolder(found.dir, { valSplit, seed });
    }
  }
}

/**
 * Opens labelled data for evaluating a model of `modality` with `classes`: text through `scanLabelledText`,
 * a table file of another modality as a manifest (`scanLabelledManifest`), an image folder through
 * `scanLabelledFolder`.
 */
export async function openLabelled(
  dataPath: string,
  classes: readonly string[],
  modality: Modality,
  options: Pick<OpenOptions, 'textColumns' | 'labelColumn' | 'namePattern' | 'valWhere'> = {},
): Promise<{ samples: Sample[]; skipped: Skipped[]; source: string }> {
  const { abs, isDirectory } = await requireExists(dataPath);
  if (options.namePattern !== undefined) {
    // Files labelled by name: the rule's files when there is one, else all of them.
    const d = await openDataset(abs, { namePattern: options.namePattern, ...(options.valWhere !== undefined ? { valWhere: options.valWhere } : {}), task: modality });
    const unknown = d.classes.filter((c) => !classes.includes(c));
    if (unknown.length) throw new GraftError('DATASET', `${abs} has label(s) the model does not know: ${unknown.join(', ')} (known classes: ${classes.join(', ')})`, { dir: abs, classes: unknown });
    const picked = options.valWhere !== undefined ? d.val : [...d.train, ...d.val];
    return { samples: picked.map((s) => ({ ...s, label: classes.indexOf(d.classes[s.label]!) })), skipped: d.skipped, source: abs };
  }
  if (modality === 'text') return scanLabelledText(abs, classes, options);
  if (!isDirectory) {
    const got = await scanLabelledManifest(abs, classes, { labelColumn: options.labelColumn });
    if (got.modality !== modality) {
      throw new GraftError('USAGE', `The model takes ${modality} but the manifest ${abs} lists ${got.modality} files`, { path: abs, modality: got.modality });
    }
    return { samples: got.samples, skipped: got.skipped, source: got.source };
  }
  return scanLabelledFolder(abs, classes, modality);
}

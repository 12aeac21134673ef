import { stat } from 'node:fs/promises';
import path from 'node:path';
import { GraftError, invalidParameter } from '../errors.js';
import { mapLimit } from '../util/async.js';
import { FileProblem, fileProblem, readRegularFile } from '../util/fs.js';
import { byCodeUnit, listFolder, walkFiles } from './walk.js';
import { SNIFF_BYTES, whyNotAudio, whyNotImage } from './sniff.js';

export { sniffAudioType, sniffImageType, whyNotAudio, whyNotImage, type AudioFormat } from './sniff.js';
import { Random } from '../util/random.js';

/** What a sample holds: an image (or audio) file, or a text. */
export type Modality = 'image' | 'text' | 'audio';

/**
 * One labelled raw sample. `file` is always where it came from: the image/audio file itself, the `.txt`
 * document, or the table (CSV/TSV/JSONL) whose row `line` holds it.
 */
export interface Sample {
  /** Absolute path of the file the sample is (image, audio, .txt document) or comes from (a table). */
  file: string;
  /** Index into the dataset's `classes`. */
  label: number;
  /** The text of a text sample. */
  text?: string;
  /** 1-based line of a table row where the sample starts. */
  line?: number;
}

export interface Skipped {
  file: string;
  /** 1-based line, for a row of a table. */
  line?: number;
  reason: string;
}

/** `file:line` for a table row, `file` otherwise: how samples and skipped entries are named in messages. */
export function sampleName(s: { file: string; line?: number }): string {
  return s.line !== undefined ? `${s.file}:${s.line}` : s.file;
}

export type DatasetSplit =
  | { kind: 'folders'; train: string; val: string }
  | { kind: 'files'; train: string; val: string }
  | { kind: 'column'; column: string }
  /** Labels and split from file names (`--name-pattern`, `--val-where`). */
  | { kind: 'names'; pattern: string; valWhere: string }
  | { kind: 'random'; valFraction: number; seed: number };

/** A labelled dataset of one modality, split into training and validation samples. */
export interface Dataset {
  root: string;
  modality: Modality;
  /** Class names, sorted; a sample's label indexes this list. */
  classes: string[];
  train: Sample[];
  val: Sample[];
  split: DatasetSplit;
  /** Files or rows that are not usable samples, with why. */
  skipped: Skipped[];
  /** Text datasets: validation samples whose text also occurs in training (leakage), as val → train sample. */
  leaks?: Array<{ val: Sample; train: Sample }>;
}

/** An image-folder dataset (the v0 name, kept for the public API). */
export type ImageFolderDataset = Dataset;

/** Class names in a locale-independent order: numerically when every name is an integer, else by code unit. */
export function sortClasses(names: Iterable<string>): string[] {
  const all = [...new Set(names)];
  if (all.length > 0 && all.every((n) => /^-?\d+$/.test(n))) return all.sort((a, b) => Number(a) - Number(b) || (a < b ? -1 : a > b ? 1 : 0));
  return all.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

/**
 * Seeded stratified split: per class (in `classes` order), a shuffled `valFraction` (at least one, and at
 * least one left for training) goes to validation. `order` sorts each side back into a stable order.
 */
export function stratifiedSplit<T>(
  byClass: ReadonlyArray<readonly T[]>,
  valFraction: number,
  seed: number,
  order: (a: T, b: T) => number,
): { train: Array<{ item: T; label: number }>; val: Array<{ item: T; label: number }> } {
  const random = new Random(seed);
  const train: Array<{ item: T; label: number }> = [];
  const val: Array<{ item: T; label: number }> = [];
  byClass.forEach((items, label) => {
    const shuffled = random.shuffle([...items]);
    const nVal = Math.min(shuffled.length - 1, Math.max(1, Math.round(shuffled.length * valFraction)));
    val.push(...shuffled.slice(0, nVal).sort(order).map((item) => ({ item, label })));
    train.push(...shuffled.slice(nVal).sort(order).map((item) => ({ item, label })));
  });
  return { train, val };
}

/** Validation folder names, in order of preference. */
const VAL_NAMES = ['val', 'valid', 'validation', 'test'];

/** The media a folder scanner collects: image or audio files, told apart by their first bytes. */
export type MediaModality = 'image' | 'audio';

/** Why a file is not a usable image (or audio file) from its first bytes, or undefined. Never blocks: only regular files are read. */
async function checkFile(file: string, modality: MediaModality): Promise<string | undefined> {
  try {
    const head = await readRegularFile(file, SNIFF_BYTES);
    return modality === 'image' ? whyNotImage(head) : whyNotAudio(head);
  } catch (e) {
    if (e instanceof FileProblem) return e.problem;
    throw e;
  }
}

/** The folders and files of a dataset folder; an unreadable one is a DATASET error naming it. */
async function readFolder(dir: string, skipped: Skipped[]): Promise<{ dirs: string[]; files: string[] }> {
  try {
    return await listFolder(dir, skipped);
  } catch (e) {
    throw new GraftError('DATASET', `${dir}: folder ${fileProblem(e)}`, { dir }, { cause: e });
  }
}

/** Every usable image (or audio file) under a class folder, recursively, sorted; unusable files go to `skipped`. */
async function collectMedia(classDir: string, skipped: Skipped[], dataRoot: string, modality: MediaModality): Promise<string[]> {
  const all = await walkFiles(classDir, skipped, dataRoot);
  const reasons = await mapLimit(all, 32, (file) => checkFile(file, modality));
  const images: string[] = [];
  all.forEach((file, i) => {
    const reason = reasons[i];
    if (reason) skipped.push({ file, reason });
    else images.push(file);
  });
  return images;
}

/** The class folders of `dir` with their images (or audio files); throws when there are none. */
async function scanClasses(dir: string, skipped: Skipped[], modality: MediaModality = 'image'): Promise<Map<string, string[]>> {
  const { dirs, files } = await readFolder(dir, skipped);
  if (dirs.length === 0) {
    throw new GraftError(
      'DATASET',
      `No class folders in ${dir}: expected one sub-folder per class, found ${files.length} file(s) and no folders`,
      { dir },
    );
  }
  const classes = new Map<string, string[]>();
  for (const name of dirs) classes.set(name, await collectMedia(path.join(dir, name), skipped, dir, modality));
  return classes;
}

async function requireFolder(dir: string): Promise<string> {
  const root = path.resolve(dir);
  const info = await stat(root).catch(() => undefined);
  if (!info) throw new GraftError('DATASET', `Dataset folder ${root} does not exist`, { dir: root });
  if (!info.isDirectory()) throw new GraftError('DATASET', `Dataset path ${root} is not a folder`, { dir: root });
  return root;
}

/** The sub-folder of `root` whose lower-cased name is the first of `names` present, if any. */
async function findSubfolder(root: string, names: readonly string[]): Promise<string | undefined> {
  const { dirs } = await readFolder(root, []);
  for (const name of names) {
    const found = dirs.find((d) => d.toLowerCase() === name);
    if (found) return path.join(root, found);
  }
  return undefined;
}

function checkClasses(dir: string, classes: Map<string, string[]>, skipped: readonly Skipped[], modality: MediaModality): void {
  if (classes.size < 2) {
    const found = [...classes.keys()].join(', ');
    throw new GraftError('DATASET', `Dataset folder ${dir} has ${classes.size} class folder (${found}); at least 2 classes are needed`, {
      dir,
      classes: [...classes.keys()],
    });
  }
  const small = [...classes].filter(([, files]) => files.length < 2);
  if (small.length > 0) {
    // Say how many of a class's files were skipped, and why (the first reason): "(0)" alone reads as an empty folder.
    const list = small
      .map(([name, files]) => {
        const inClass = path.join(dir, name) + path.sep;
        const lost = skipped.filter((k) => k.file.startsWith(inClass));
        return lost.length ? `${name} (${files.length} usable; ${lost.length} skipped, e.g. ${path.basename(lost[0]!.file)}: ${lost[0]!.reason})` : `${name} (${files.length})`;
      })
      .join(', ');
    throw new GraftError('DATASET', `Classes with fewer than 2 usable ${modality === 'image' ? 'images' : 'audio files'} in ${dir}: ${list}`, {
      dir,
      classes: small.map(([name]) => name),
    });
  }
}

const toSamples = (files: readonly string[], label: number): Sample[] => files.map((file) => ({ file, label }));

/**
 * Reads an image-classification folder: `DIR/train/<class>/*` with `DIR/<val|valid|validation|test>/<class>/*`,
 * or `DIR/<class>/*` split at random (stratified, seeded) into train and validation.
 * Files that are not images are reported in `skipped`; only the first bytes of each file are read.
 */
export async function scanImageFolder(dir: string, options: { valSplit?: number; seed?: number } = {}): Promise<ImageFolderDataset> {
  return scanMediaFolder(dir, 'image', options);
}

/** Reads class folders of audio files, laid out as for images (`scanImageFolder`). */
export async function scanAudioFolder(dir: string, options: { valSplit?: number; seed?: number } = {}): Promise<Dataset> {
  return scanMediaFolder(dir, 'audio', options);
}

async function scanMediaFolder(dir: string, modality: MediaModality, options: { valSplit?: number; seed?: number }): Promise<Dataset> {
  const valFraction = options.valSplit ?? 0.2;
  const seed = options.seed ?? 0;
  if (!(valFraction > 0 && valFraction < 1)) throw invalidParameter('valSplit', 'a fraction in (0, 1)', valFraction);
  if (!Number.isFinite(seed)) throw invalidParameter('seed', 'a finite number', seed);
  const root = await requireFolder(dir);
  const skipped: Skipped[] = [];

  const trainDir = await findSubfolder(root, ['train']);
  const valDir = trainDir && (await findSubfolder(root, VAL_NAMES));
  if (trainDir && valDir) {
    const train = await scanClasses(trainDir, skipped, modality);
    checkClasses(trainDir, train, skipped, modality);
    const classes = [...train.keys()];
    const val = await scanClasses(valDir, skipped, modality);
    const extra = [...val.keys()].filter((name) => !train.has(name));
    if (extra.length > 0) {
      throw new GraftError(
        'DATASET',
        `Validation folder ${valDir} has class folder(s) not present in ${trainDir}: ${extra.join(', ')} (train classes: ${classes.join(', ')})`,
        { dir: valDir, classes: extra },
      );
    }
    return {
      root,
      classes,
      train: classes.flatMap((name, label) => toSamples(train.get(name)!, label)),
      val: classes.flatMap((name, label) => toSamples(val.get(name) ?? [], label)),
      modality,
      split: { kind: 'folders', train: trainDir, val: valDir },
      skipped,
    };
  }

  // A lone train/ folder is split like a plain class folder.
  const classDir = trainDir ?? root;
  const byClass = await scanClasses(classDir, skipped, modality);
  checkClasses(classDir, byClass, skipped, modality);
  const classes = [...byClass.keys()];
  const split = stratifiedSplit(classes.map((name) => byClass.get(name)!), valFraction, seed, byCodeUnit);
  const train: Sample[] = split.train.map(({ item, label }) => ({ file: item, label }));
  const val: Sample[] = split.val.map(({ item, label }) => ({ file: item, label }));
  return { root, modality, classes, train, val, split: { kind: 'random', valFraction, seed }, skipped };
}

/**
 * Reads a labelled evaluation folder: `DIR/test/<class>/*`, else `DIR/<val|valid|validation>/<class>/*`,
 * else `DIR/<class>/*`. Labels are the positions of the folder names in `classes`.
 */
export async function scanLabelledFolder(
  dir: string,
  classes: readonly string[],
  modality: MediaModality = 'image',
): Promise<{ samples: Sample[]; skipped: Skipped[]; source: string }> {
  const root = await requireFolder(dir);
  const source = (await findSubfolder(root, ['test', ...VAL_NAMES.slice(0, -1)])) ?? root;
  const skipped: Skipped[] = [];
  const found = await scanClasses(source, skipped, modality);
  const unknown = [...found.keys()].filter((name) => !classes.includes(name));
  if (unknown.length > 0) {
    throw new GraftError(
      'DATASET',
      `Folder ${source} has class folder(s) the model does not know: ${unknown.join(', ')} (known classes: ${classes.join(', ')})`,
      { dir: source, classes: unknown },
    );
  }
  const samples = [...found].flatMap(([name, files]) => toSamples(files, classes.indexOf(name)));
  if (samples.length === 0) throw new GraftError('DATASET', `No usable ${modality === 'image' ? 'images' : 'audio files'} in the class folders of ${source}`, { dir: source });
  return { samples, skipped, source };
}

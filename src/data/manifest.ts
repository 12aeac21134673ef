/**
 * Manifests: tables that list sample files (a `path` column, relative to the manifest's folder or absolute)
 * with their labels and optionally their split, for any modality.
 */
import path from 'node:path';
import { GraftError } from '../errors.js';
import { mapLimit } from '../util/async.js';
import { FileProblem, readRegularFile } from '../util/fs.js';
import { type Dataset, type DatasetSplit, type Modality, type Sample, type Skipped } from './dataset.js';
import { SNIFF_BYTES, sniffMedia } from './sniff.js';

export { sniffMedia } from './sniff.js';
import { readTable, type Table } from './table.js';
import { checkSplitOptions, evaluationRows, labelItems, scanTextData, splitLabelled, type LabelledItem } from './text.js';

export interface ManifestOptions {
  valSplit?: number;
  seed?: number;
  labelColumn?: string;
  pathColumn?: string;
  /** Used only when the manifest turns out to be a text table (a text column and no path column). */
  textColumns?: string[];
}

/**
 * The files of a manifest's rows, checked by their first bytes: missing files, folders and files that are
 * neither images nor audio are skipped with a reason naming the file (the entry names the manifest line). The
 * modality is the one most files have (ties: image); files of the other are skipped.
 */
async function manifestItems(table: Table, skipped: Skipped[]): Promise<{ modality: 'image' | 'audio'; items: LabelledItem[] }> {
  const base = path.dirname(table.file);
  const rows = table.rows.filter((r) => r.path !== undefined);
  const checked = await mapLimit(rows, 32, async (row) => {
    const file = path.resolve(base, row.path!);
    let head: Uint8Array;
    try {
      head = await readRegularFile(file, SNIFF_BYTES);
    } catch (e) {
      if (e instanceof FileProblem) return { row, file, reason: `${file}: ${e.problem}` };
      throw e;
    }
    const kind = sniffMedia(head);
    return 'reason' in kind ? { row, file, reason: `${file}: ${kind.reason}` } : { row, file, kind };
  });
  const count = { image: 0, audio: 0 };
  for (const c of checked) if ('kind' in c && c.kind) count[c.kind.modality]++;
  const modality = count.audio > count.image ? 'audio' : 'image';
  const items: LabelledItem[] = [];
  for (const c of checked) {
    if ('reason' in c && c.reason) skipped.push({ file: table.file, line: c.row.line, reason: c.reason });
    else if ('kind' in c && c.kind) {
      if (c.kind.modality !== modality) {
        skipped.push({ file: table.file, line: c.row.line, reason: `${c.file} is ${c.kind.modality} (${c.kind.format}) in a manifest of ${modality} files` });
      } else items.push({ sample: { file: c.file, line: c.row.line }, label: c.row.label!, part: c.row.split });
    }
  }
  skipped.sort((a, b) => (a.line ?? 0) - (b.line ?? 0));
  return { modality, items };
}

function readManifest(file: string, options: ManifestOptions): Promise<Table> {
  return readTable(file, { labelColumn: options.labelColumn, pathColumn: options.pathColumn, textColumns: options.textColumns, require: 'path' });
}

/**
 * Reads a manifest: a table with a path column, a label column and optionally a split column (see
 * `readTable` for the names), into a dataset whose samples are the files (`{ file, label, line }`, `line` the
 * manifest row). Modality `image` or `audio`, from the files' first bytes (audio is detected, not trainable
 * yet: the caller says so). Split by the split column as `scanTextData` does, else seeded and stratified.
 * A manifest with a text column and no path column is a text table: it is read by `scanTextData`.
 */
export async function scanManifest(file: string, options: ManifestOptions = {}): Promise<Dataset> {
  const { valFraction, seed } = checkSplitOptions(options);
  const table = await readManifest(file, options);
  if (table.pathColumn === undefined) {
    return scanTextData(table.file, { valSplit: valFraction, seed, textColumns: options.textColumns, labelColumn: options.labelColumn });
  }
  const skipped = [...table.skipped];
  const { modality, items } = await manifestItems(table, skipped);
  const bySplit = table.splitColumn !== undefined && items.some((it) => it.part !== 'train');
  const split: DatasetSplit = bySplit ? { kind: 'column', column: table.splitColumn! } : { kind: 'random', valFraction, seed };
  return splitLabelled(table.file, modality, items, skipped, split);
}

/**
 * Reads a manifest for evaluation: its `test` rows, else `val` rows, else all; labels are positions in
 * `classes` (an unknown label is a DATASET error).
 */
export async function scanLabelledManifest(
  file: string,
  classes: readonly string[],
  options: Omit<ManifestOptions, 'valSplit' | 'seed'> = {},
): Promise<{ samples: Sample[]; skipped: Skipped[]; source: string; modality: Modality }> {
  const table = await readManifest(file, options);
  if (table.pathColumn === undefined) {
    throw new GraftError('DATASET', `${table.file} has no path column; its columns: ${table.columns.join(', ')}`, { file: table.file, columns: table.columns });
  }
  const skipped = [...table.skipped];
  const { modality, items } = await manifestItems(table, skipped);
  return { samples: labelItems(table.file, evaluationRows(items), classes), skipped, source: table.file, modality };
}

/**
 * Tables of samples: CSV, TSV and JSONL files read into rows of text / file path / label / split, with every
 * unusable row skipped and reported by its 1-based line.
 *
 * The file is read as bytes and decoded as UTF-8 line by line (a fatal decoder per line where the whole file is
 * not valid UTF-8), so a row holding invalid UTF-8 is skipped by its line number instead of carrying U+FFFD
 * replacement characters into training. CSV and TSV go through csv-parse; the record boundaries (which lines a
 * row spans) come from a scanner in this file that follows csv-parse's quoting rules, which is what gives every
 * row its line and lets one unclosed quote cost one row instead of the rest of the file.
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { parse } from 'csv-parse/sync';
import { GraftError } from '../errors.js';
import { FileProblem, readRegularFile } from '../util/fs.js';
import { sniffImageType, type Skipped } from './dataset.js';

export type TableFormat = 'csv' | 'tsv' | 'jsonl';

/** Where a row belongs, from a split column: `val` also stands for validation/valid/dev. */
export type SplitName = 'train' | 'val' | 'test';

export interface TableRow {
  /** 1-based line where the row starts (the line of the JSON object for JSONL). */
  line: number;
  /** The text columns' values joined with a newline (empty ones left out), as written. */
  text?: string;
  /** The path column's value, trimmed. */
  path?: string;
  /** The label column's value, trimmed. */
  label?: string;
  split?: SplitName;
}

export interface Table {
  /** Absolute path of the table. */
  file: string;
  format: TableFormat;
  /** Whether the first row names the columns (always true for JSONL, whose keys name them). */
  header: boolean;
  /** Column names; without a header, the positions "1", "2", … */
  columns: string[];
  /** The columns joined into a row's text, in order (empty for a manifest of files). */
  textColumns: string[];
  labelColumn?: string;
  pathColumn?: string;
  splitColumn?: string;
  rows: TableRow[];
  /** Rows that are not usable, with why; sorted by line. */
  skipped: Skipped[];
}

export interface ReadTableOptions {
  /** Columns joined (with a newline) into the text; overrides detection. */
  textColumns?: string[];
  labelColumn?: string;
  pathColumn?: string;
  splitColumn?: string;
  /** Skip rows without a label (default true); false keeps them with `label` undefined. */
  requireLabel?: boolean;
  /**
   * What a row must have to be kept: its text or its path. Default: the text when the table has text columns,
   * else the path. Where the table lacks that column, the default applies.
   */
  require?: 'text' | 'path';
  /** Do not look for a split column (a folder of train/val tables, where the file says the split). */
  ignoreSplit?: boolean;
}

/** Table file extensions, lower-case, with the format each stands for. `.txt` is a document, not a table. */
export const TABLE_EXTENSIONS: Readonly<Record<string, TableFormat>> = {
  '.csv': 'csv',
  '.tsv': 'tsv',
  '.tab': 'tsv',
  '.jsonl': 'jsonl',
  '.ndjson': 'jsonl',
};

/** The table format of a file name, from its extension, or undefined when it is not a table. */
export function tableFormat(file: string): TableFormat | undefined {
  return TABLE_EXTENSIONS[path.extname(file).toLowerCase()];
}

// Column names recognised when detecting a table's columns (compared trimmed and lower-cased).
const TEXT_NAMES = ['text', 'sentence', 'content', 'sms', 'message', 'body', 'document', 'review', 'comment', 'tweet', 'utterance', 'description', 'abstract', 'question', 'query', 'passage'];
const TITLE_NAMES = ['title', 'headline', 'subject'];
const LABEL_NAMES = ['label', 'labels', 'class', 'category', 'target', 'sentiment', 'y', 'polarity', 'intent', 'topic', 'emotion', 'tag', 'genre', 'rating', 'stars'];
const PATH_NAMES = ['path', 'file', 'filename', 'file_name', 'filepath', 'file_path', 'image', 'image_path', 'img', 'audio', 'audio_path'];
const SPLIT_NAMES = ['split', 'set', 'subset', 'fold', 'partition'];
const KNOWN_NAMES = new Set([...TEXT_NAMES, ...TITLE_NAMES, ...LABEL_NAMES, ...PATH_NAMES, ...SPLIT_NAMES, 'id', 'idx', 'index']);

const SPLIT_VALUES: Readonly<Record<string, SplitName>> = { train: 'train', val: 'val', validation: 'val', valid: 'val', dev: 'val', test: 'test' };
const MEDIA_EXTENSION = /\.(jpe?g|png|gif|webp|tiff?|bmp|avif|heic|heif|wav|wave|flac|ogg|oga|opus|mp3|m4a)$/i;

const LF = 10;
const CR = 13;
const QUOTE = 34;

const fatal = new TextDecoder('utf-8', { fatal: true });
const lenient = new TextDecoder('utf-8');

/** Byte offsets where each line starts, and the end of the last one; lines end at CRLF, LF or a lone CR. */
function lineBounds(bytes: Uint8Array): Array<[number, number]> {
  const lines: Array<[number, number]> = [];
  let start = 0;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    if (b === LF || b === CR) {
      lines.push([start, i]);
      if (b === CR && bytes[i + 1] === LF) i++;
      start = i + 1;
    }
  }
  if (start < bytes.length) lines.push([start, bytes.length]);
  return lines;
}

/** The BOM-less text of a file and the 1-based lines that are not valid UTF-8. Throws for a non-text file. */
function decodeText(file: string, format: TableFormat, bytes: Uint8Array): { text: string; badLines: Set<number> } {
  if (bytes[0] === 0xff && bytes[1] === 0xfe) throw new GraftError('DATASET', `${file} is UTF-16 (little-endian) text; save it as UTF-8`, { file });
  if (bytes[0] === 0xfe && bytes[1] === 0xff) throw new GraftError('DATASET', `${file} is UTF-16 (big-endian) text; save it as UTF-8`, { file });
  const image = sniffImageType(bytes.subarray(0, 16));
  if (image) throw new GraftError('DATASET', `${file} is a ${image.toUpperCase()} image, not a ${format.toUpperCase()} table`, { file });
  // No UTF-8 text holds a NUL byte; binary files (and UTF-16 without a BOM) nearly always do.
  if (bytes.subarray(0, 65536).includes(0)) throw new GraftError('DATASET', `${file} is not a text file (it holds NUL bytes: binary data or UTF-16)`, { file });
  const body = bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf ? bytes.subarray(3) : bytes;
  const badLines = new Set<number>();
  try {
    return { text: fatal.decode(body), badLines };
  } catch {
    // Find the offending lines. Invalid bytes are all >= 0x80, so the lenient decoding keeps every quote,
    // delimiter and line break where it was: its lines are the byte lines, and only the bad ones hold U+FFFD.
    const lines = lineBounds(body);
    let nonBlank = 0;
    lines.forEach(([start, end], i) => {
      if (end > start) nonBlank++;
      try {
        fatal.decode(body.subarray(start, end));
      } catch {
        badLines.add(i + 1);
      }
    });
    if (badLines.size * 2 > nonBlank) {
      throw new GraftError('DATASET', `${file} is not UTF-8 text: ${badLines.size} of its ${nonBlank} lines are not valid UTF-8; save it as UTF-8`, { file });
    }
    return { text: lenient.decode(body), badLines };
  }
}

/** A record's characters in the text and the lines it spans. */
interface Span {
  start: number;
  end: number;
  line: number;
  lastLine: number;
}

/**
 * Splits text into records (line breaks outside quoted fields end them), the way csv-parse reads it with
 * `relax_quotes`: a field that starts with a quote is quoted until a quote not doubled; a quote anywhere else
 * is a plain character. A record whose quote is never closed is reported and the scan resumes on the line
 * after the record's first line, so one stray quote costs one row.
 */
function scanRecords(text: string, delimiter: number, quoting: boolean): { spans: Span[]; unclosed: Array<{ line: number; quoteLine: number }> } {
  const spans: Span[] = [];
  const unclosed: Array<{ line: number; quoteLine: number }> = [];
  const n = text.length;
  let i = 0;
  let line = 1;
  while (i < n) {
    const start = i;
    const startLine = line;
    let fieldStart = true;
    let inQuotes = false;
    let quoteLine = 0;
    let j = i;
    for (; j < n; j++) {
      const c = text.charCodeAt(j);
      if (inQuotes) {
        if (c === QUOTE) {
          if (text.charCodeAt(j + 1) === QUOTE) j++;
          else inQuotes = false;
        } else if (c === LF || (c === CR && text.charCodeAt(j + 1) !== LF)) line++;
        continue;
      }
      if (c === LF || c === CR) break;
      if (c === delimiter) fieldStart = true;
      else {
        if (c === QUOTE && fieldStart && quoting) {
          inQuotes = true;
          quoteLine = line;
        }
        fieldStart = false;
      }
    }
    if (inQuotes) {
      unclosed.push({ line: startLine, quoteLine });
      let k = start;
      while (k < n && text.charCodeAt(k) !== LF && text.charCodeAt(k) !== CR) k++;
      i = k < n && text.charCodeAt(k) === CR && text.charCodeAt(k + 1) === LF ? k + 2 : k + 1;
      line = startLine + 1;
      continue;
    }
    spans.push({ start, end: j, line: startLine, lastLine: line });
    if (j < n) {
      j += text.charCodeAt(j) === CR && text.charCodeAt(j + 1) === LF ? 2 : 1;
      line++;
    }
    i = j;
  }
  return { spans, unclosed };
}

/**
 * Fields of each span through csv-parse: the spans are parsed as one input (joined by LF, which `scanRecords`
 * guarantees is no record's content outside quotes); should csv-parse reject a record, that record is marked
 * with its message and parsing resumes after it.
 */
function parseSpans(text: string, spans: readonly Span[], delimiter: string, quoting: boolean): Array<string[] | { error: string }> {
  const out: Array<string[] | { error: string }> = [];
  const options = {
    delimiter,
    quote: quoting ? '"' : null,
    escape: quoting ? '"' : null,
    relax_quotes: true,
    relax_column_count: true,
    record_delimiter: '\n',
    skip_empty_lines: false,
  };
  let k = 0;
  while (k < spans.length) {
    const rest = spans.slice(k);
    const got: string[][] = [];
    try {
      parse(rest.map((s) => text.slice(s.start, s.end)).join('\n'), {
        ...options,
        on_record: (record: string[]) => {
          got.push(record);
          return null;
        },
      });
    } catch (e) {
      out.push(...got);
      out.push({ error: (e instanceof Error ? e.message : String(e)).split('\n')[0]! });
      k += got.length + 1;
      continue;
    }
    if (got.length === rest.length) {
      out.push(...got);
      break;
    }
    // Should the scanner and csv-parse ever disagree about where records end, parse each span alone.
    for (const s of rest) {
      try {
        const records = parse(text.slice(s.start, s.end), options);
        out.push(records.length === 1 ? records[0]! : { error: `csv-parse read ${records.length} records from one row` });
      } catch (e) {
        out.push({ error: (e instanceof Error ? e.message : String(e)).split('\n')[0]! });
      }
    }
    break;
  }
  return out;
}

/**
 * How a TSV is read, decided per file: many real TSVs are not quoted at all (a field may begin with a quote
 * that is part of the text, as in the SMS Spam Collection's `ham\t"Wen u miss someone…" gdeve..`), while
 * writers such as pandas or Python's csv module quote fields that hold quotes, tabs or line breaks.
 * Quote processing is used when
 *  - some line does not split on tabs into the first line's number of fields (only quoting explains a record
 *    spanning lines or holding a tab), or
 *  - every field that begins with a quote is a well-formed quoted field (closing quote at its end, inner quotes
 *    doubled) and either one of them holds a doubled quote or every field of the first line is quoted (the
 *    marks of a quoting writer);
 * otherwise quotes are plain characters and every line is one row.
 */
function tsvUsesQuotes(text: string, spansUnquoted: readonly Span[]): boolean {
  const nonBlank = spansUnquoted.filter((s) => text.slice(s.start, s.end).trim() !== '');
  if (nonBlank.length === 0) return false;
  const fieldsOf = (s: Span) => text.slice(s.start, s.end).split('\t');
  const width = fieldsOf(nonBlank[0]!).length;
  let doubled = false;
  let wellFormed = true;
  for (const s of nonBlank) {
    const fields = fieldsOf(s);
    if (fields.length !== width) return true;
    for (const f of fields) {
      if (f.charCodeAt(0) !== QUOTE) continue;
      const inner = f.slice(1, -1);
      if (f.length < 2 || f.charCodeAt(f.length - 1) !== QUOTE || inner.replace(/""/g, '').includes('"')) wellFormed = false;
      if (inner.includes('""')) doubled = true;
    }
  }
  if (!wellFormed) return false;
  const first = fieldsOf(nonBlank[0]!);
  return doubled || first.every((f) => f.length >= 2 && f.startsWith('"') && f.endsWith('"'));
}

/** A cell of a JSON object as a string: numbers and booleans written out, null/missing undefined. */
function jsonCell(value: unknown, column: string): string | undefined | { error: string } {
  if (value === null || value === undefined) return undefined;
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  return { error: `column "${column}" holds ${Array.isArray(value) ? 'an array' : 'an object'}, not a string` };
}

interface RawRecord {
  line: number;
  cells: Array<string | undefined | { error: string }>;
}

/**
 * Whether a first row names columns. It does when one of its cells is a known column name or one the options
 * name. Failing that it is data when a cell is empty, a number or a media file name (`x.jpg`), or when a cell's
 * value occurs again in the same column of the next rows (labels and split names repeat; column names do not);
 * otherwise it is a header.
 */
function isHeader(first: readonly string[], rest: readonly RawRecord[], named: ReadonlySet<string>): boolean {
  const cells = first.map((c) => c.trim());
  if (cells.some((c) => KNOWN_NAMES.has(c.toLowerCase()) || named.has(c.toLowerCase()))) return true;
  if (rest.length === 0) return false;
  if (cells.some((c) => c === '' || /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(c) || MEDIA_EXTENSION.test(c))) return false;
  const sample = rest.slice(0, 2000);
  return !cells.some((c, j) => sample.some((r) => { const v = r.cells[j]; return typeof v === 'string' && v.trim() === c; }));
}

/** The columns of each role, by the options or detected from the names (see `readTable`). */
function resolveColumns(
  file: string,
  columns: readonly string[],
  header: boolean,
  records: readonly RawRecord[],
  options: ReadTableOptions,
): { text: number[]; label?: number; path?: number; split?: number } {
  const lower = columns.map((c) => c.trim().toLowerCase());
  const listed = () => (header ? columns.map((c) => JSON.stringify(c)).join(', ') : `${columns.length} unnamed (no header; name them by position: ${columns.join(', ')})`);
  const named = (name: string, option: string): number => {
    const want = name.trim().toLowerCase();
    let i = columns.indexOf(name);
    if (i < 0) i = lower.indexOf(want);
    if (i < 0) throw new GraftError('USAGE', `${file} has no column ${JSON.stringify(name)} (${option}); its columns: ${listed()}`, { file, column: name, columns: [...columns] });
    return i;
  };
  const taken = new Set<number>();
  const detect = (names: readonly string[]): number | undefined => {
    if (!header) return undefined;
    for (const n of names) {
      const i = lower.indexOf(n);
      if (i >= 0 && !taken.has(i)) return i;
    }
    // Then a name made of words one of which is a known name: "review_text", "Label ID".
    for (const n of names) {
      const i = lower.findIndex((c, k) => !taken.has(k) && c.split(/[^a-z0-9]+/).includes(n));
      if (i >= 0) return i;
    }
    return undefined;
  };
  const take = (i: number | undefined) => {
    if (i !== undefined) taken.add(i);
    return i;
  };

  let text = options.textColumns?.map((c) => take(named(c, 'text column'))!) ?? [];
  let label = take(options.labelColumn !== undefined ? named(options.labelColumn, 'label column') : undefined);
  let pathCol = take(options.pathColumn !== undefined ? named(options.pathColumn, 'path column') : undefined);
  const split = take(options.splitColumn !== undefined ? named(options.splitColumn, 'split column') : options.ignoreSplit ? undefined : detect(SPLIT_NAMES));
  if (label === undefined) label = take(detect(LABEL_NAMES));
  if (pathCol === undefined && !options.textColumns) pathCol = take(detect(PATH_NAMES));
  if (text.length === 0) {
    // A title-like column goes before the body it heads: "title" + "text" → "title\ntext".
    const body = take(detect(TEXT_NAMES));
    const title = take(detect(TITLE_NAMES));
    text = [title, body].filter((i): i is number => i !== undefined);
  }
  // Positional roles, for the columns that names did not settle.
  const free = columns.map((_, i) => i).filter((i) => !taken.has(i));
  const meanLength = (i: number) => {
    const sample = records.slice(0, 2000);
    let total = 0;
    for (const r of sample) {
      const v = r.cells[i];
      if (typeof v === 'string') total += v.length;
    }
    return total / Math.max(1, sample.length);
  };
  const looksLikePaths = (i: number) => {
    const values = records.slice(0, 200).map((r) => r.cells[i]).filter((v): v is string => typeof v === 'string' && v.trim() !== '');
    return values.length > 0 && values.every((v) => MEDIA_EXTENSION.test(v.trim()));
  };
  const asContent = (i: number) => {
    if (looksLikePaths(i) && !options.textColumns) pathCol = i;
    else text = [i];
  };
  if (text.length === 0 && pathCol === undefined) {
    if (columns.length === 1 && free.length === 1) asContent(free[0]!);
    else if (label === undefined && free.length === 2 && columns.length === 2) {
      // Two columns and no names to go by: the one with the longer values is the content, the other the label
      // (ties: the second is the content).
      const [a, b] = free as [number, number];
      const content = meanLength(a) > meanLength(b) ? a : b;
      asContent(content);
      label = content === a ? b : a;
    } else if (label !== undefined && free.length === 1 && columns.length === 2) asContent(free[0]!);
  } else if (label === undefined && free.length === 1 && columns.length === 2) label = free[0];

  if (text.length === 0 && pathCol === undefined) {
    throw new GraftError(
      'DATASET',
      `${file} has no text column and no path column; its columns: ${listed()}. Name the text with textColumns (--text-column)`,
      { file, columns: [...columns] },
    );
  }
  if (label === undefined && (options.requireLabel ?? true)) {
    throw new GraftError('DATASET', `${file} has no label column; its columns: ${listed()}. Name it with labelColumn (--label-column)`, {
      file,
      columns: [...columns],
    });
  }
  return { text, label, path: pathCol, split };
}

/** Reads the rows of a CSV/TSV (header, records, skipped rows by line). */
function delimitedRecords(text: string, badLines: ReadonlySet<number>, format: 'csv' | 'tsv', skipped: (line: number, reason: string) => void): RawRecord[] {
  const delimiter = format === 'tsv' ? '\t' : ',';
  let quoting = true;
  let scanned = scanRecords(text, delimiter.charCodeAt(0), true);
  if (format === 'tsv') {
    const plain = scanRecords(text, 9, false);
    quoting = tsvUsesQuotes(text, plain.spans);
    if (!quoting) scanned = plain;
  }
  for (const u of scanned.unclosed) {
    skipped(u.line, `unparsable quoting: the quote opened on line ${u.quoteLine} is never closed`);
  }
  const spans: Span[] = [];
  for (const s of scanned.spans) {
    const raw = text.slice(s.start, s.end);
    if (raw.trim() === '') continue; // blank lines are no rows
    let bad: number | undefined;
    for (let l = s.line; l <= s.lastLine && bad === undefined; l++) if (badLines.has(l)) bad = l;
    if (bad !== undefined) skipped(s.line, `invalid UTF-8 on line ${bad}`);
    else spans.push(s);
  }
  const parsed = parseSpans(text, spans, delimiter, quoting);
  const records: RawRecord[] = [];
  parsed.forEach((p, i) => {
    const line = spans[i]!.line;
    if (Array.isArray(p)) records.push({ line, cells: p });
    else skipped(line, `unparsable quoting: ${p.error}`);
  });
  return records;
}

/** Reads the objects of a JSONL file; the columns are their keys in order of first appearance. */
function jsonRecords(text: string, badLines: ReadonlySet<number>, skipped: (line: number, reason: string) => void): { columns: string[]; records: RawRecord[] } {
  const objects: Array<{ line: number; value: Record<string, unknown> }> = [];
  const keys = new Map<string, number>();
  let line = 0;
  for (const raw of text.split(/\r\n|\n|\r/)) {
    line++;
    if (raw.trim() === '') continue;
    if (badLines.has(line)) {
      skipped(line, `invalid UTF-8 on line ${line}`);
      continue;
    }
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch (e) {
      skipped(line, `not valid JSON: ${(e instanceof Error ? e.message : String(e)).split('\n')[0]}`);
      continue;
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      skipped(line, `not a JSON object (${Array.isArray(value) ? 'an array' : value === null ? 'null' : typeof value})`);
      continue;
    }
    const object = value as Record<string, unknown>;
    for (const k of Object.keys(object)) if (!keys.has(k)) keys.set(k, keys.size);
    objects.push({ line, value: object });
  }
  const columns = [...keys.keys()];
  return { columns, records: objects.map(({ line, value }) => ({ line, cells: columns.map((c) => jsonCell(value[c], c)) })) };
}

/**
 * Reads a CSV, TSV or JSONL table (by extension: .csv, .tsv/.tab, .jsonl/.ndjson) into rows.
 *
 * - CSV through csv-parse with RFC 4180 quoting (quoted fields may hold delimiters, line breaks and doubled
 *   quotes; a quote inside an unquoted field is a plain character); a UTF-8 BOM is dropped; CRLF, LF or CR.
 *   TSV the same with tabs, quoting decided per file (see `tsvUsesQuotes`). JSONL: one object per line.
 * - Header: see `isHeader`. Without one, columns are named by position ("1", "2", …).
 * - Columns by name (trimmed, case-insensitive; then a name with a known word, like `review_text`):
 *   text ← text, sentence, content, sms, message, body, document, review, comment, tweet, … (with a
 *   title/headline/subject column in front when there is one); label ← label, labels, class, category, target,
 *   sentiment, y, …; path ← path, file, filename, image, audio, …; split ← split, set, subset, fold, partition.
 *   The options name columns instead (USAGE error when absent). Two columns that names do not settle: the one
 *   with the longer values is the text (or the path, when its values are media file names), the other the
 *   label. No text and no path column is a DATASET error, as is no label column unless `requireLabel` is false.
 * - Rows are skipped, by line, for: invalid UTF-8, an unclosed quote, the wrong number of fields, a JSONL line
 *   that is not a JSON object, no text (or path), no label, a split value not train/val/validation/valid/dev/test.
 * - An empty file, one with only a header, a binary file or one that is not UTF-8 is a DATASET error.
 */
export async function readTable(file: string, options: ReadTableOptions = {}): Promise<Table> {
  const abs = path.resolve(file);
  const format = tableFormat(abs);
  if (!format) {
    throw new GraftError('DATASET', `${abs} is not a table: expected a .csv, .tsv, .tab, .jsonl or .ndjson file`, { file: abs });
  }
  const info = await stat(abs).catch(() => undefined);
  if (!info) throw new GraftError('DATASET', `Table ${abs} does not exist`, { file: abs });
  if (!info.isFile()) throw new GraftError('DATASET', `Table ${abs} is not a file`, { file: abs });
  let bytes: Uint8Array;
  try {
    bytes = await readRegularFile(abs);
  } catch (e) {
    if (e instanceof FileProblem) throw new GraftError('DATASET', `Table ${abs}: ${e.problem}`, { file: abs }, { cause: e });
    throw e;
  }
  if (bytes.length === 0) throw new GraftError('DATASET', `Table ${abs} is empty (0 bytes)`, { file: abs });
  const { text, badLines } = decodeText(abs, format, bytes);

  const skipped: Skipped[] = [];
  const skip = (line: number, reason: string) => skipped.push({ file: abs, line, reason });
  let columns: string[];
  let records: RawRecord[];
  let header: boolean;
  if (format === 'jsonl') {
    ({ columns, records } = jsonRecords(text, badLines, skip));
    header = true;
    if (records.length === 0) {
      throw new GraftError('DATASET', `Table ${abs} has no rows${skipped.length ? ` (${skipped.length} unusable line(s): ${skipped[0]!.reason})` : ''}`, { file: abs });
    }
  } else {
    records = delimitedRecords(text, badLines, format, skip);
    if (records.length === 0) {
      throw new GraftError('DATASET', `Table ${abs} has no rows${skipped.length ? ` (${skipped.length} unusable line(s): ${skipped[0]!.reason})` : ''}`, { file: abs });
    }
    const first = records[0]!;
    const firstCells = first.cells.map((c) => (typeof c === 'string' ? c : ''));
    const named = new Set(
      [...(options.textColumns ?? []), options.labelColumn, options.pathColumn, options.splitColumn].filter((n): n is string => n !== undefined).map((n) => n.trim().toLowerCase()),
    );
    header = isHeader(firstCells, records.slice(1), named);
    if (header) {
      columns = firstCells.map((c) => c.trim());
      records = records.slice(1);
      if (records.length === 0) throw new GraftError('DATASET', `Table ${abs} has a header (${columns.join(', ')}) but no rows`, { file: abs });
    } else {
      columns = firstCells.map((_, i) => String(i + 1));
    }
  }

  const roles = resolveColumns(abs, columns, header, records, options);
  const requireLabel = options.requireLabel ?? true;
  const need: 'text' | 'path' =
    options.require === 'path' && roles.path !== undefined ? 'path' : options.require === 'text' && roles.text.length > 0 ? 'text' : roles.text.length > 0 ? 'text' : 'path';
  const textNames = roles.text.map((i) => JSON.stringify(columns[i]));
  const used = [...roles.text, roles.label, roles.path, roles.split].filter((i): i is number => i !== undefined);
  const rows: TableRow[] = [];
  for (const record of records) {
    const { line, cells } = record;
    if (format !== 'jsonl' && cells.length !== columns.length) {
      skip(line, `${cells.length} field${cells.length === 1 ? '' : 's'}, expected ${columns.length}`);
      continue;
    }
    const broken = used.map((i) => cells[i]).find((c): c is { error: string } => typeof c === 'object');
    if (broken) {
      skip(line, broken.error);
      continue;
    }
    const value = (i: number | undefined) => (i === undefined ? undefined : (cells[i] as string | undefined));
    const parts = roles.text.map((i) => value(i)).filter((v): v is string => v !== undefined && v.trim() !== '');
    const row: TableRow = { line };
    if (roles.text.length > 0) {
      if (parts.length > 0) row.text = parts.join('\n');
      else if (need === 'text') {
        skip(line, `no text (${textNames.length === 1 ? `column ${textNames[0]} is empty` : `columns ${textNames.join(', ')} are empty`})`);
        continue;
      }
    }
    if (roles.path !== undefined) {
      const p = value(roles.path)?.trim();
      if (p) row.path = p;
      else if (need === 'path') {
        skip(line, `no path (column ${JSON.stringify(columns[roles.path])} is empty)`);
        continue;
      }
    }
    const label = value(roles.label)?.trim();
    if (label) row.label = label;
    else if (requireLabel) {
      skip(line, `no label (column ${JSON.stringify(columns[roles.label!])} is empty)`);
      continue;
    }
    if (roles.split !== undefined) {
      const raw = value(roles.split)?.trim() ?? '';
      const split = SPLIT_VALUES[raw.toLowerCase()];
      if (!split) {
        skip(line, raw === '' ? `no split (column ${JSON.stringify(columns[roles.split])} is empty)` : `split ${JSON.stringify(raw)} is not one of train, val, validation, valid, dev, test`);
        continue;
      }
      row.split = split;
    }
    rows.push(row);
  }
  skipped.sort((a, b) => a.line! - b.line!);
  const name = (i: number | undefined) => (i === undefined ? undefined : columns[i]);
  return {
    file: abs,
    format,
    header,
    columns,
    textColumns: roles.text.map((i) => columns[i]!),
    labelColumn: name(roles.label),
    pathColumn: name(roles.path),
    splitColumn: name(roles.split),
    rows,
    skipped,
  };
}

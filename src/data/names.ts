/**
 * Labels (and the split) taken from file names: a folder of files named like `{label}_{speaker}_{index}.wav`
 * (the Free Spoken Digit Dataset's layout), read with a name pattern and an optional validation rule:
 *
 *   graft train recordings/ --name-pattern '{label}_{speaker}_{index}.wav' --val-where 'index<5'
 *
 * A pattern is the file name with `{field}` for each varying part (`{label}` is required) and `*` for any text;
 * it must match the whole name. A rule is `field<op>value` with op one of `= != < <= > >=` (`=` and `!=` take a
 * comma-separated list): numbers compare as numbers, anything else as text. Without a rule the split is random,
 * stratified and seeded, as for class folders.
 */
import path from 'node:path';
import { GraftError } from '../errors.js';
import { mapLimit } from '../util/async.js';
import { FileProblem, readRegularFile } from '../util/fs.js';
import { type Dataset, type Skipped } from './dataset.js';
import { checkSplitOptions, splitLabelled, type LabelledItem } from './text.js';
import { SNIFF_BYTES, sniffMedia } from './sniff.js';
import { byCodeUnit, walkFiles } from './walk.js';

export interface NamePattern {
  /** The pattern as given. */
  source: string;
  fields: string[];
  /** The captured fields of a base name, or undefined when it does not match. */
  match(name: string): Record<string, string> | undefined;
}

/** Parses `{label}_{speaker}_{index}.wav`-style patterns. */
export function parseNamePattern(source: string): NamePattern {
  const fields: string[] = [];
  let regex = '^';
  const re = /\{([A-Za-z_][A-Za-z0-9_]*)\}|\*|[^{}*]+|[{}]/g;
  for (const m of source.matchAll(re)) {
    if (m[1] !== undefined) {
      if (fields.includes(m[1])) throw new GraftError('USAGE', `name pattern ${JSON.stringify(source)} names {${m[1]}} twice`, { pattern: source });
      fields.push(m[1]);
      regex += '(.+?)';
    } else if (m[0] === '*') regex += '.*?';
    else if (m[0] === '{' || m[0] === '}') throw new GraftError('USAGE', `name pattern ${JSON.stringify(source)}: a field is {name}, letters, digits and _`, { pattern: source });
    else regex += m[0].replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  }
  regex += '$';
  if (!fields.includes('label')) throw new GraftError('USAGE', `name pattern ${JSON.stringify(source)} has no {label} field; e.g. '{label}_{speaker}_{index}.wav'`, { pattern: source });
  if (path.basename(source) !== source) throw new GraftError('USAGE', `name pattern ${JSON.stringify(source)} matches file names, not paths (no / in it)`, { pattern: source });
  const compiled = new RegExp(regex, 'u');
  return {
    source,
    fields,
    match(name) {
      const m = compiled.exec(name);
      if (!m) return undefined;
      return Object.fromEntries(fields.map((f, i) => [f, m[i + 1]!]));
    },
  };
}

export interface SplitRule {
  source: string;
  field: string;
  /** Whether a file with these fields validates. */
  validates(fields: Readonly<Record<string, string>>): boolean;
}

const NUMBER = /^[+-]?\d+(\.\d+)?$/;

/** Parses `index<5`, `speaker=jackson,nicolas`, `take!=3`. */
export function parseSplitRule(source: string, pattern: NamePattern): SplitRule {
  const m = /^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|!=|=|<|>)\s*(.+?)\s*$/.exec(source);
  if (!m) throw new GraftError('USAGE', `validation rule ${JSON.stringify(source)} is not field<op>value (op = != < <= > >=), e.g. 'index<5' or 'speaker=jackson'`, { rule: source });
  const [, field, op, value] = m as unknown as [string, string, string, string];
  if (!pattern.fields.includes(field)) throw new GraftError('USAGE', `validation rule ${JSON.stringify(source)} names ${field}, which the name pattern ${JSON.stringify(pattern.source)} does not capture (fields: ${pattern.fields.join(', ')})`, { rule: source });
  const ordered = op !== '=' && op !== '!=';
  if (ordered && !NUMBER.test(value)) throw new GraftError('USAGE', `validation rule ${JSON.stringify(source)}: ${op} compares numbers`, { rule: source });
  const values = value.split(',').map((v) => v.trim());
  const equal = (x: string, v: string) => (NUMBER.test(x) && NUMBER.test(v) ? Number(x) === Number(v) : x === v);
  return {
    source,
    field,
    validates(fields) {
      const x = fields[field]!;
      if (op === '=') return values.some((v) => equal(x, v));
      if (op === '!=') return !values.some((v) => equal(x, v));
      if (!NUMBER.test(x)) return false;
      const a = Number(x), b = Number(value);
      return op === '<' ? a < b : op === '<=' ? a <= b : op === '>' ? a > b : a >= b;
    },
  };
}

export interface NamedFilesOptions {
  pattern: string;
  /** A rule choosing the validation files; without one, a random split. */
  valWhere?: string;
  valSplit?: number;
  seed?: number;
}

/**
 * Reads a folder (recursively) of files labelled by their names. Files whose names do not match the pattern,
 * and files that are neither images nor audio, are skipped with a reason; the modality is that of most files.
 */
export async function scanNamedFiles(dir: string, options: NamedFilesOptions): Promise<Dataset> {
  const { valFraction, seed } = checkSplitOptions(options);
  const pattern = parseNamePattern(options.pattern);
  const rule = options.valWhere !== undefined ? parseSplitRule(options.valWhere, pattern) : undefined;
  const root = path.resolve(dir);
  const skipped: Skipped[] = [];
  const files = (await walkFiles(root, skipped, root)).sort(byCodeUnit);
  const checked = await mapLimit(files, 32, async (file) => {
    const fields = pattern.match(path.basename(file));
    if (!fields) return { file, reason: `name does not match the pattern ${pattern.source}` };
    let head: Uint8Array;
    try {
      head = await readRegularFile(file, SNIFF_BYTES);
    } catch (e) {
      if (e instanceof FileProblem) return { file, reason: e.problem };
      throw e;
    }
    const kind = sniffMedia(head);
    return 'reason' in kind ? { file, reason: kind.reason } : { file, fields, modality: kind.modality };
  });
  const count = { image: 0, audio: 0 };
  for (const c of checked) if (c.modality) count[c.modality]++;
  if (count.image + count.audio === 0) {
    const unmatched = checked.filter((c) => c.reason?.startsWith('name does not match')).length;
    throw new GraftError('DATASET', `${root}: no image or audio file whose name matches ${pattern.source} (${files.length} files, ${unmatched} with other names${files[0] ? `, e.g. ${path.basename(files[0])}` : ''})`, { dir: root, pattern: pattern.source });
  }
  const modality = count.audio > count.image ? 'audio' : 'image';
  const items: LabelledItem[] = [];
  for (const c of checked) {
    if (c.reason) skipped.push({ file: c.file, reason: c.reason });
    else if (c.modality !== modality) skipped.push({ file: c.file, reason: `${c.modality} in a folder of ${modality} files` });
    else items.push({ sample: { file: c.file }, label: c.fields!.label!, ...(rule ? { part: rule.validates(c.fields!) ? ('val' as const) : ('train' as const) } : {}) });
  }
  return splitLabelled(root, modality, items, skipped, rule ? { kind: 'names', pattern: pattern.source, valWhere: rule.source } : { kind: 'random', valFraction, seed });
}

/** A training job's request: its mode and options, checked, and the `graft train` flags they become. */
import { badRequest } from './http.js';

export type JobMode = 'extract' | 'fine-tune';

export interface JobOptions {
  epochs?: number;
  lr?: number;
  unfreeze?: number;
  head?: 'auto' | 'logistic' | 'mlp' | 'linear';
  seed?: number;
  valSplit?: number;
  model?: string;
  batchSize?: number;
  /** Data augmentation, as graft train's --augment, --views and --tta. */
  augment?: 'none' | 'light' | 'standard' | 'strong';
  views?: number;
  tta?: boolean;
}

/** A fine-tuning job without `unfreeze` unfreezes this many of the backbone's last blocks. */
export const DEFAULT_UNFREEZE = 2;

const isInt = (v: unknown, min: number, max: number): v is number => typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max;
const isNumber = (v: unknown, min: number, max: number): v is number => typeof v === 'number' && Number.isFinite(v) && v > min && v <= max;

/** A job request's mode and options, checked; anything unknown or out of range is a 400 naming it. */
export function parseJobRequest(body: Record<string, unknown>): { mode: JobMode; options: JobOptions } {
  const mode = body.mode;
  if (mode !== 'extract' && mode !== 'fine-tune') throw badRequest(`"mode" must be "extract" or "fine-tune", got ${JSON.stringify(mode)}`, { field: 'mode' });
  const raw = body.options ?? {};
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw badRequest('"options" must be an object', { field: 'options' });
  const options: JobOptions = {};
  const bad = (name: string, expected: string, v: unknown) => badRequest(`options.${name} must be ${expected}, got ${JSON.stringify(v)}`, { field: `options.${name}` });
  for (const [key, v] of Object.entries(raw as Record<string, unknown>)) {
    if (v === undefined || v === null) continue;
    switch (key) {
      case 'epochs':
        if (!isInt(v, 1, 10_000)) throw bad(key, 'an integer from 1 to 10000', v);
        options.epochs = v;
        break;
      case 'lr':
        if (!isNumber(v, 0, 10)) throw bad(key, 'a number in (0, 10]', v);
        options.lr = v;
        break;
      case 'unfreeze':
        if (!isInt(v, 1, 1000)) throw bad(key, 'an integer from 1 to 1000', v);
        if (mode === 'extract') throw badRequest('options.unfreeze is for mode "fine-tune" (feature extraction keeps the backbone frozen)', { field: 'options.unfreeze' });
        options.unfreeze = v;
        break;
      case 'head':
        if (v !== 'auto' && v !== 'logistic' && v !== 'mlp' && v !== 'linear') throw bad(key, '"auto", "logistic", "mlp" or "linear"', v);
        options.head = v;
        break;
      case 'seed':
        if (!isInt(v, 0, 2 ** 31 - 1)) throw bad(key, 'a non-negative integer', v);
        options.seed = v;
        break;
      case 'valSplit':
        if (!(typeof v === 'number' && v > 0 && v < 1)) throw bad(key, 'a number between 0 and 1 (exclusive)', v);
        options.valSplit = v;
        break;
      case 'model':
        // eslint-disable-next-line no-control-regex
        if (typeof v !== 'string' || v.length === 0 || v.length > 1024 || v.startsWith('-') || /[\u0000-\u001f\u007f]/.test(v)) throw bad(key, 'a model file path or a zoo or hub name', v);
        options.model = v;
        break;
      case 'batchSize':
        if (!isInt(v, 1, 4096)) throw bad(key, 'an integer from 1 to 4096', v);
        options.batchSize = v;
        break;
      case 'augment':
        if (v !== 'none' && v !== 'light' && v !== 'standard' && v !== 'strong') throw bad(key, '"none", "light", "standard" or "strong"', v);
        options.augment = v;
        break;
      case 'views':
        if (!isInt(v, 0, 64)) throw bad(key, 'an integer from 0 to 64', v);
        options.views = v;
        break;
      case 'tta':
        if (typeof v !== 'boolean') throw bad(key, 'true or false', v);
        options.tta = v;
        break;
      default:
        throw badRequest(`unknown option ${JSON.stringify(key)} (known: epochs, lr, unfreeze, head, seed, valSplit, model, batchSize, augment, views, tta)`, { field: `options.${key}` });
    }
  }
  if (mode === 'fine-tune' && options.unfreeze === undefined) options.unfreeze = DEFAULT_UNFREEZE;
  return { mode, options };
}

/** `graft train`'s flags for a job's options. */
export function trainFlags(options: JobOptions): string[] {
  const flags: string[] = [];
  if (options.epochs !== undefined) flags.push('--epochs', String(options.epochs));
  if (options.lr !== undefined) flags.push('--lr', String(options.lr));
  if (options.unfreeze !== undefined) flags.push('--unfreeze', String(options.unfreeze));
  if (options.head !== undefined) flags.push('--head', options.head);
  if (options.seed !== undefined) flags.push('--seed', String(options.seed));
  if (options.valSplit !== undefined) flags.push('--val-split', String(options.valSplit));
  if (options.model !== undefined) flags.push(`--model=${options.model}`);
  if (options.batchSize !== undefined) flags.push('--batch-size', String(options.batchSize));
  if (options.augment !== undefined) flags.push('--augment', options.augment);
  if (options.views !== undefined) flags.push('--views', String(options.views));
  if (options.tta) flags.push('--tta');
  return flags;
}


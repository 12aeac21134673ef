/**
 * What the server accepts as a sample and as a name: an upload's content is judged by its first bytes (its
 * signature), never by its file name or declared type; names are checked against the contract's rules.
 */
import sharp from 'sharp';
import { sniffAudioType, sniffImageType, whyNotAudio } from '../data/sniff.js';
import { badRequest } from './http.js';

export type Task = 'image' | 'text' | 'audio';
export const TASKS: readonly Task[] = ['image', 'text', 'audio'];

/** An accepted sample: its format (`jpeg`, `png`, `wav`, …, `text`) and, for a text, the text. */
export type Checked = { ok: true; format: string; text?: string } | { ok: false; reason: string };

const IMAGE_TYPES: Record<string, string> = { jpeg: 'image/jpeg', png: 'image/png', gif: 'image/gif', webp: 'image/webp', tiff: 'image/tiff', bmp: 'image/bmp', avif: 'image/avif', heif: 'image/heif' };
const AUDIO_TYPES: Record<string, string> = { wav: 'audio/wav', mp3: 'audio/mpeg', ogg: 'audio/ogg', flac: 'audio/flac' };
const EXTENSIONS: Record<string, string> = { jpeg: 'jpg', png: 'png', gif: 'gif', webp: 'webp', tiff: 'tif', bmp: 'bmp', avif: 'avif', heif: 'heic', wav: 'wav', mp3: 'mp3', ogg: 'ogg', flac: 'flac', text: 'txt' };

/** The content type a stored sample is served with. */
export function contentTypeOf(format: string): string {
  return IMAGE_TYPES[format] ?? AUDIO_TYPES[format] ?? (format === 'text' ? 'text/plain; charset=utf-8' : 'application/octet-stream');
}

/** The file extension graft's dataset readers expect for a format. */
export function extensionOf(format: string): string {
  return EXTENSIONS[format] ?? 'bin';
}

/** What non-matching bytes look like, for a rejection reason. */
function lookalike(bytes: Uint8Array): string {
  const image = sniffImageType(bytes);
  if (image) return `a ${image.toUpperCase()} image`;
  const audio = sniffAudioType(bytes);
  if (audio) return `${audio.toUpperCase()} audio`;
  const head = String.fromCharCode(...bytes.subarray(0, 5));
  if (head.startsWith('%PDF')) return 'a PDF document';
  if (head.startsWith('PK\x03\x04')) return 'a ZIP archive';
  if (isText(bytes)) return 'text';
  return 'unrecognised data';
}

function isText(bytes: Uint8Array): boolean {
  if (bytes.includes(0)) return false;
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    return true;
  } catch {
    return false;
  }
}

/** Checks an upload for a project of `task`; a reason says what is wrong, in one line. */
export async function checkSample(task: Task, bytes: Uint8Array): Promise<Checked> {
  if (bytes.length === 0) return { ok: false, reason: 'empty file (0 bytes)' };
  if (task === 'image') {
    const format = sniffImageType(bytes.subarray(0, 64));
    if (!format) return { ok: false, reason: `not an image: the content looks like ${lookalike(bytes.subarray(0, 64))} (judged by its signature, not its name)` };
    try {
      // Reads the header only: a format the decoder cannot open, or a corrupt header, is refused now.
      const meta = await sharp(bytes, { failOn: 'error' }).metadata();
      if (!meta.width || !meta.height) return { ok: false, reason: `a ${format.toUpperCase()} image without dimensions` };
    } catch (e) {
      return { ok: false, reason: `cannot read the ${format.toUpperCase()} image: ${(e as Error).message.split('\n')[0]}` };
    }
    return { ok: true, format };
  }
  if (task === 'audio') {
    const why = whyNotAudio(bytes.subarray(0, 64));
    if (why) return { ok: false, reason: why };
    return { ok: true, format: sniffAudioType(bytes.subarray(0, 64))! };
  }
  if (!isText(bytes)) return { ok: false, reason: `not UTF-8 text: the content looks like ${lookalike(bytes.subarray(0, 64))}` };
  const text = new TextDecoder('utf-8').decode(bytes).replace(/^\uFEFF/, '');
  if (text.trim() === '') return { ok: false, reason: 'no text (only white space)' };
  return { ok: true, format: 'text', text };
}

/** Checks one text of a JSON upload. */
export function checkText(text: unknown): Checked {
  if (typeof text !== 'string') return { ok: false, reason: `not a string (${text === null ? 'null' : typeof text})` };
  if (text.trim() === '') return { ok: false, reason: 'no text (only white space)' };
  if (text.includes('\u0000')) return { ok: false, reason: 'contains a NUL character' };
  if (text.length > MAX_TEXT) return { ok: false, reason: `longer than ${MAX_TEXT} characters` };
  return { ok: true, format: 'text', text };
}

const MAX_TEXT = 100_000;

// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

/** A sample's display name from an upload's file name: its last path segment, control characters removed, at most 255 characters. */
export function sampleName(raw: string | undefined, fallback: string): string {
  // eslint-disable-next-line no-control-regex
  const base = (raw ?? '').split(/[/\\]/).pop()!.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, '').trim();
  return (base || fallback).slice(0, 255);
}

/** Project names: 1-64 letters, digits, spaces, `-`, `_`, `.`, not starting with `.`. */
export function checkProjectName(name: unknown): string {
  if (typeof name !== 'string') throw badRequest('"name" must be a string', { field: 'name' });
  const n = name.trim();
  if (!/^[\p{L}\p{N} _.-]{1,64}$/u.test(n) || n.startsWith('.')) {
    throw badRequest(`invalid project name ${JSON.stringify(name)}: use 1-64 letters, digits, spaces, "-", "_" or "." (not starting with ".")`, { field: 'name' });
  }
  return n;
}

/** Class names: 1-64 characters, no `/`, `\` or control characters, not `.` or `..`. */
export function checkClassName(name: unknown): string {
  if (typeof name !== 'string') throw badRequest('a class name must be a string', { field: 'name' });
  const n = name.trim();
  if (n.length < 1 || n.length > 64 || /[/\\]/.test(n) || CONTROL.test(n) || n === '.' || n === '..') {
    throw badRequest(`invalid class name ${JSON.stringify(name)}: use 1-64 characters without "/", "\\" or control characters (not "." or "..")`, { field: 'name' });
  }
  return n;
}

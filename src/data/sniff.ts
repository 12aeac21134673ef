/**
 * What a file is, from its first bytes (never its name): the image and audio formats graft reads, and for
 * anything else a one-line reason that says what it looks like.
 */
/** How many first bytes tell what a file is (an Ogg stream's codec is named after its first page header). */
export const SNIFF_BYTES = 64;

const ascii = (bytes: Uint8Array, start: number, end: number) => String.fromCharCode(...bytes.subarray(start, end));
const HEIF_BRANDS = new Set(['heic', 'heix', 'heim', 'heis', 'hevc', 'hevx', 'mif1', 'msf1']);

/** The image format announced by a file's first bytes (at least 12 are needed), or undefined. */
export function sniffImageType(bytes: Uint8Array): string | undefined {
  const b = bytes;
  if (b.length < 2) return undefined;
  if (b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'jpeg';
  if (b[0] === 0x89 && ascii(b, 1, 4) === 'PNG') return 'png';
  if (ascii(b, 0, 4) === 'GIF8') return 'gif';
  if (ascii(b, 0, 4) === 'RIFF' && ascii(b, 8, 12) === 'WEBP') return 'webp';
  if ((b[0] === 0x49 && b[1] === 0x49 && b[2] === 42 && b[3] === 0) || (b[0] === 0x4d && b[1] === 0x4d && b[2] === 0 && b[3] === 42)) return 'tiff';
  if (ascii(b, 0, 2) === 'BM' && b.length >= 14) return 'bmp';
  if (ascii(b, 4, 8) === 'ftyp') {
    const brand = ascii(b, 8, 12);
    if (brand === 'avif' || brand === 'avis') return 'avif';
    if (HEIF_BRANDS.has(brand)) return 'heif';
  }
  return undefined;
}

/** Why bytes cannot be an image, judged from the first 16; undefined when they look like one. */
export function whyNotImage(head: Uint8Array): string | undefined {
  if (head.length === 0) return 'empty file (0 bytes)';
  return sniffImageType(head) ? undefined : 'not an image (unrecognised file signature)';
}


/** The codec of an Ogg stream, from the first packet of its first page; undefined when `head` is too short. */
export function oggCodec(b: Uint8Array): 'vorbis' | 'flac' | 'opus' | 'speex' | 'other' | undefined {
  if (b.length < 27) return undefined;
  const p = 27 + b[26]!;
  if (b.length < p + 8) return undefined;
  if (ascii(b, p, p + 7) === '\x01vorbis') return 'vorbis';
  if (ascii(b, p, p + 5) === '\x7fFLAC') return 'flac';
  if (ascii(b, p, p + 8) === 'OpusHead') return 'opus';
  if (ascii(b, p, p + 8) === 'Speex   ') return 'speex';
  return 'other';
}

/** An MPEG audio frame header at `at`: 11 sync bits, then no reserved version, layer, bit rate or sample rate. */
export const mpegSync = (b: Uint8Array, at: number) =>
  b[at] === 0xff && (b[at + 1]! & 0xe0) === 0xe0 && (b[at + 1]! & 0x18) !== 0x08 && (b[at + 1]! & 0x06) !== 0 && (b[at + 2]! & 0xf0) !== 0xf0 && (b[at + 2]! & 0x0c) !== 0x0c;

/** What decodeAudio reads: 'ogg' is Ogg Vorbis; FLAC in an Ogg container is 'flac'. */
export type AudioFormat = 'wav' | 'mp3' | 'ogg' | 'flac';

/**
 * The audio format graft can decode that a file's first bytes announce, or undefined. 16 bytes tell every
 * format; with fewer than 36, an Ogg file counts as Vorbis whatever its codec (decoding tells).
 */
export function sniffAudioType(head: Uint8Array): AudioFormat | undefined {
  const tag = ascii(head, 0, 4);
  if ((tag === 'RIFF' || tag === 'RF64' || tag === 'BW64') && (head.length < 12 || ascii(head, 8, 12) === 'WAVE')) return 'wav';
  if (tag === 'fLaC') return 'flac';
  if (tag === 'OggS') {
    const codec = oggCodec(head);
    return codec === undefined || codec === 'vorbis' ? 'ogg' : codec === 'flac' ? 'flac' : undefined;
  }
  if (ascii(head, 0, 3) === 'ID3' || (head.length >= 3 && mpegSync(head, 0))) return 'mp3';
  return undefined;
}

/** Audio that graft does not decode, named. */
function otherAudio(b: Uint8Array): string | undefined {
  const tag = ascii(b, 0, 4);
  if (tag === 'OggS') return { opus: 'Ogg Opus', speex: 'Ogg Speex' }[oggCodec(b) as string] ?? 'an Ogg stream of an unknown codec';
  if (tag === 'RIFX') return 'big-endian (RIFX) WAV';
  if (tag === 'FORM' && /^AIF[FC]$/.test(ascii(b, 8, 12))) return 'AIFF';
  if (tag === 'caff') return 'Core Audio (CAF)';
  if (tag === '.snd') return 'Sun/NeXT AU';
  if (tag === 'wvpk') return 'WavPack';
  if (tag === 'MAC ') return "Monkey's Audio";
  if (ascii(b, 0, 5) === '#!AMR') return 'AMR';
  if (tag === 'MThd') return 'MIDI (notes, not sound)';
  if (b[0] === 0xff && (b[1]! & 0xf6) === 0xf0) return 'AAC (ADTS)';
  if (ascii(b, 4, 8) === 'ftyp') return 'MP4/M4A';
  if (tag === '\x1aE\xdf\xa3') return 'WebM/Matroska';
  return undefined;
}

/** What a file that is not audio looks like, where its first bytes tell. */
function lookalike(b: Uint8Array): string | undefined {
  const image = sniffImageType(b);
  if (image) return `a ${image.toUpperCase()} image`;
  const tag = ascii(b, 0, 4);
  if (tag === '%PDF') return 'a PDF document';
  if (tag === 'PK\x03\x04') return 'a ZIP archive';
  if (b[0] === 0x1f && b[1] === 0x8b) return 'a gzip archive';
  if (tag === 'RIFF') return `a RIFF ${JSON.stringify(ascii(b, 8, 12))} file, not WAVE`;
  if (b.every((c) => c === 9 || c === 10 || c === 13 || (c >= 32 && c !== 127))) return 'text';
  return undefined;
}

/** Why a file cannot be decoded as audio, judged from its first bytes (64 suffice); undefined when it looks decodable. */
export function whyNotAudio(head: Uint8Array): string | undefined {
  if (head.length === 0) return 'empty file (0 bytes)';
  if (sniffAudioType(head)) return undefined;
  const audio = otherAudio(head);
  if (audio) return `unsupported audio format (${audio})`;
  const like = lookalike(head.subarray(0, 64));
  return like ? `not audio (looks like ${like})` : 'not audio (unrecognised file signature)';
}

/** What a file's first bytes say it is: an image or audio (with its format), or why it is neither. */
export function sniffMedia(head: Uint8Array): { modality: 'image' | 'audio'; format: string } | { reason: string } {
  if (head.length === 0) return { reason: 'empty file (0 bytes)' };
  const image = sniffImageType(head);
  if (image) return { modality: 'image', format: image };
  const audio = sniffAudioType(head);
  if (audio) return { modality: 'audio', format: audio };
  return { reason: 'neither an image nor audio (unrecognised file signature)' };
}

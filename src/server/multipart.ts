/** multipart/form-data uploads, read with busboy within the upload limit (bytes) and a file-count limit. */
import type { IncomingMessage } from 'node:http';
import busboy from 'busboy';
import { badRequest, bodyTooLarge, checkLength, HttpError, tooLarge } from './http.js';
import { sampleName } from './samples.js';

export interface UploadedFile {
  /** The part's file name (its last path segment), or the field name when it has none. */
  name: string;
  bytes: Uint8Array;
}

export interface MultipartLimits {
  maxBytes: number;
  maxFiles: number;
  /** What the file limit is, for its 413 message. */
  filesWhat: string;
}

/** Every file part of a multipart body (other fields are ignored). */
export function readMultipart(req: IncomingMessage, limits: MultipartLimits): Promise<UploadedFile[]> {
  checkLength(req, limits.maxBytes);
  return new Promise((resolve, reject) => {
    let parser: busboy.Busboy;
    try {
      parser = busboy({ headers: req.headers, limits: { files: limits.maxFiles, fileSize: limits.maxBytes, fields: 100, fieldSize: 64 << 10 } });
    } catch (e) {
      reject(badRequest(`malformed multipart/form-data request: ${(e as Error).message}`));
      return;
    }
    const files: Array<Promise<UploadedFile>> = [];
    let size = 0;
    let failed = false;
    const fail = (e: HttpError) => {
      if (failed) return;
      failed = true;
      req.unpipe(parser);
      reject(e); // the caller's error answer drains the rest of the body
    };
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limits.maxBytes) fail(bodyTooLarge(limits.maxBytes));
    });
    parser.on('file', (field, stream, info) => {
      const chunks: Buffer[] = [];
      files.push(
        new Promise((done) => {
          stream.on('data', (c: Buffer) => chunks.push(c));
          stream.on('end', () => done({ name: sampleName(info.filename, field || `file${files.length}`), bytes: Buffer.concat(chunks) }));
        }),
      );
    });
    parser.on('filesLimit', () => fail(tooLarge(`more than ${limits.maxFiles} files in one request (${limits.filesWhat})`, { limit: limits.maxFiles })));
    parser.on('error', (e: Error) => fail(badRequest(`malformed multipart/form-data request: ${e.message}`)));
    parser.on('close', () => {
      if (!failed) Promise.all(files).then(resolve, reject);
    });
    req.pipe(parser);
  });
}

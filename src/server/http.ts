/**
 * The HTTP layer of `graft serve`: errors as the API's JSON, a small router, bodies read within a byte limit,
 * bearer-token checks and the headers every response carries.
 */
import crypto from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { GraftError } from '../errors.js';

/** The API's error codes (the JSON `error.code`), each with its HTTP status. */
export const API_STATUS = {
  BAD_REQUEST: 400,
  UNAUTHORIZED: 401,
  NOT_FOUND: 404,
  CONFLICT: 409,
  TOO_LARGE: 413,
  UNSUPPORTED_MEDIA: 415,
  INTERNAL: 500,
} as const;
export type ApiCode = keyof typeof API_STATUS;

/**
 * A GraftError that an API request answers with: `api` is the JSON code, `status` the HTTP status. Client
 * mistakes are USAGE errors, the server's own failures IO errors.
 */
export class HttpError extends GraftError {
  readonly api: ApiCode;

  constructor(api: ApiCode, message: string, context: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(api === 'INTERNAL' ? 'IO' : 'USAGE', message, context, options);
    this.name = 'HttpError';
    this.api = api;
  }

  get status(): number {
    return API_STATUS[this.api];
  }
}

export const badRequest = (message: string, context: Record<string, unknown> = {}) => new HttpError('BAD_REQUEST', message, context);
export const notFound = (what: string, id: string) => new HttpError('NOT_FOUND', `${what} ${JSON.stringify(id)} not found`, { id });
export const conflict = (message: string, context: Record<string, unknown> = {}) => new HttpError('CONFLICT', message, context);
export const tooLarge = (message: string, context: Record<string, unknown> = {}) => new HttpError('TOO_LARGE', message, context);

/** Any error as the one the API answers with: graft's input errors are 400, anything else 500. */
export function toHttpError(e: unknown): HttpError {
  if (e instanceof HttpError) return e;
  if (e instanceof GraftError) {
    const client = e.code === 'USAGE' || e.code === 'DATASET' || e.code === 'IMAGE' || e.code === 'AUDIO' || e.code === 'CONFIG';
    return new HttpError(client ? 'BAD_REQUEST' : 'INTERNAL', e.message, { ...e.context }, { cause: e });
  }
  return new HttpError('INTERNAL', `internal error: ${e instanceof Error ? e.message : String(e)}`, {}, { cause: e });
}

/** Headers on every response. */
export function baseHeaders(res: ServerResponse): void {
  res.setHeader('X-Content-Type-Options', 'nosniff');
  res.setHeader('Referrer-Policy', 'no-referrer');
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.statusCode = status;
  res.setHeader('Content-Type', 'application/json; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('Content-Length', Buffer.byteLength(text));
  res.end(text);
}

export function sendNoContent(res: ServerResponse): void {
  res.statusCode = 204;
  res.end();
}

export function sendError(res: ServerResponse, error: HttpError): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  sendJson(res, error.status, { error: { code: error.api, message: error.message } });
}

/** Bytes with a content type (a file, a tensor, a zip). */
export function sendBytes(res: ServerResponse, bytes: Uint8Array, contentType: string, headers: Record<string, string> = {}): void {
  res.statusCode = 200;
  res.setHeader('Content-Type', contentType);
  res.setHeader('Content-Length', bytes.byteLength);
  for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
  res.end(bytes);
}

export interface Context {
  req: IncomingMessage;
  res: ServerResponse;
  url: URL;
  params: Record<string, string>;
}

export type Handler = (ctx: Context) => Promise<void> | void;

interface Route {
  method: string;
  pattern: RegExp;
  keys: string[];
  handler: Handler;
}

/** Routes like `/v1/projects/:pid`; a `:name` segment matches one path segment. */
export class Router {
  private readonly routes: Route[] = [];

  add(method: string, path: string, handler: Handler): this {
    const keys: string[] = [];
    const source = path
      .split('/')
      .map((part) => {
        if (!part.startsWith(':')) return part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
        keys.push(part.slice(1));
        return '([^/]+)';
      })
      .join('/');
    this.routes.push({ method, pattern: new RegExp(`^${source}$`), keys, handler });
    return this;
  }

  /** The handler for a request and its path parameters; a path known under other methods is a 404 naming them. */
  match(method: string, pathname: string): { handler: Handler; params: Record<string, string> } {
    const allowed: string[] = [];
    for (const r of this.routes) {
      const m = r.pattern.exec(pathname);
      if (!m) continue;
      if (r.method !== method) {
        allowed.push(r.method);
        continue;
      }
      const params: Record<string, string> = {};
      r.keys.forEach((k, i) => {
        params[k] = safeDecode(m[i + 1]!);
      });
      return { handler: r.handler, params };
    }
    throw new HttpError('NOT_FOUND', allowed.length ? `${method} ${pathname} is not supported (use ${[...new Set(allowed)].join(', ')})` : `no such endpoint: ${pathname}`, { method, path: pathname });
  }
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw badRequest(`malformed URL segment ${JSON.stringify(s)}`);
  }
}

/** Refuses a body whose declared length is over `limit` before reading any of it. */
export function checkLength(req: IncomingMessage, limit: number): void {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) throw bodyTooLarge(limit, declared);
}

export const bodyTooLarge = (limit: number, size?: number) =>
  tooLarge(`request body ${size !== undefined ? `of ${size} bytes ` : ''}is over the upload limit of ${limit} bytes (--max-upload)`, { limit, ...(size !== undefined ? { size } : {}) });

/**
 * The whole body, refused with 413 as soon as it passes `limit` bytes. The rest of a refused body is read and
 * dropped (see drain), so that the client, still sending, gets the answer rather than a reset connection.
 */
export function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  checkLength(req, limit);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size <= limit) chunks.push(chunk);
      else {
        req.off('data', onData);
        req.off('end', onEnd);
        reject(bodyTooLarge(limit));
      }
    };
    const onEnd = () => resolve(Buffer.concat(chunks));
    req.on('data', onData);
    req.once('end', onEnd);
    req.once('error', reject);
  });
}

/**
 * Reads and drops what is left of a request answered early (an error before its body was read), for at most
 * `ms`; then the connection is closed.
 */
export function drain(req: IncomingMessage, ms = 30_000): void {
  if (req.complete) return;
  const timer = setTimeout(() => req.socket.destroy(), ms);
  timer.unref();
  req.once('end', () => clearTimeout(timer));
  req.once('close', () => clearTimeout(timer));
  req.resume();
}

/** The media type of a request, lower case, without parameters. */
export function mediaType(req: IncomingMessage): string {
  return (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
}

/** A JSON object body (`application/json`). */
export async function readJson(req: IncomingMessage, limit: number): Promise<Record<string, unknown>> {
  const type = mediaType(req);
  if (type !== 'application/json') throw new HttpError('UNSUPPORTED_MEDIA', `expected an application/json body, got ${type ? JSON.stringify(type) : 'none'}`, { contentType: type });
  const text = (await readBody(req, limit)).toString('utf8');
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw badRequest(`the body is not valid JSON: ${(e as Error).message}`);
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw badRequest('the body must be a JSON object');
  return doc as Record<string, unknown>;
}

/**
 * Whether an Authorization header carries `Bearer <token>`. Both sides are hashed to equal lengths first and
 * compared with crypto.timingSafeEqual, so the time taken says nothing about how much of the token matched.
 */
export function bearerMatches(header: string | undefined, token: string): boolean {
  const m = /^Bearer[ ]+(\S+)\s*$/i.exec(header ?? '');
  const given = crypto.createHash('sha256').update(m ? m[1]! : '').digest();
  const expected = crypto.createHash('sha256').update(token).digest();
  return crypto.timingSafeEqual(given, expected) && m !== null;
}

/** A query parameter as an integer in [min, max], or `fallback` when absent. */
export function intParam(url: URL, name: string, fallback: number, min: number, max: number): number {
  const raw = url.searchParams.get(name);
  if (raw === null || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw badRequest(`query parameter ${name} must be an integer in [${min}, ${max}], got ${JSON.stringify(raw)}`, { name, value: raw });
  return n;
}

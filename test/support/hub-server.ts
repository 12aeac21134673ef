/**
 * A miniature Hugging Face hub on 127.0.0.1 for tests: the endpoints @huggingface/hub calls
 * (paths-info, model info, resolve with Range) in the hub's layout, plus the failures a real network
 * produces on demand: a redirect to a CDN path, 404s, a transfer cut off midway, content that does not
 * match its announced checksum, a private repo that wants a token.
 */
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface ServedFile {
  content: Uint8Array;
  /** Served from LFS (sha256 oid, resolve redirects to /cdn/…); otherwise a plain git file. */
  lfs?: boolean;
  /** Announce this sha256 instead of the real one (a corrupted mirror). */
  announcedSha256?: string;
  /** Cut the connection after this many bytes on the next N full (non-Range) transfers. */
  cutAfter?: number;
  cutTimes?: number;
}

export interface ServedRepo {
  files: Record<string, ServedFile>;
  commit?: string;
  /** Requires `Authorization: Bearer <token>`. */
  token?: string;
}

export interface HubServer {
  url: string;
  /** Every request as "METHOD path [range]". */
  log: string[];
  close(): Promise<void>;
}

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const gitOid = (b: Uint8Array) => createHash('sha1').update(`blob ${b.byteLength}\0`).update(b).digest('hex');

export async function startHubServer(repos: Record<string, ServedRepo>): Promise<HubServer> {
  const log: string[] = [];
  const commitOf = (name: string) => repos[name]!.commit ?? createHash('sha1').update(name).digest('hex');
  const oidOf = (f: ServedFile) => (f.lfs ? (f.announcedSha256 ?? sha256(f.content)) : gitOid(f.content));

  const json = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) => {
    res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
    res.end(JSON.stringify(body));
  };
  const notFound = (res: ServerResponse, code: string) => json(res, 404, { error: `${code}` }, { 'X-Error-Code': code });

  /** Finds "owner/name" at the start of a path and returns [repo, rest]. */
  const splitRepo = (path: string): [string, ServedRepo, string] | undefined => {
    const parts = path.split('/');
    const name = `${parts[0]}/${parts[1]}`;
    const repo = repos[name];
    return repo ? [name, repo, parts.slice(2).join('/')] : undefined;
  };
  const authorized = (req: IncomingMessage, repo: ServedRepo) => !repo.token || req.headers.authorization === `Bearer ${repo.token}`;

  const sendBytes = (req: IncomingMessage, res: ServerResponse, file: ServedFile, etag: string) => {
    const range = req.headers.range;
    const total = file.content.byteLength;
    const headers: Record<string, string> = { ETag: `"${etag}"`, 'Accept-Ranges': 'bytes', 'Content-Type': 'application/octet-stream' };
    if (range) {
      const m = /^bytes=(\d+)-(\d*)$/.exec(range);
      if (!m) return json(res, 416, { error: 'bad range' });
      const start = Number(m[1]);
      const end = m[2] ? Math.min(Number(m[2]), total - 1) : total - 1;
      res.writeHead(206, { ...headers, 'Content-Range': `bytes ${start}-${end}/${total}`, 'Content-Length': String(end - start + 1) });
      return res.end(Buffer.from(file.content.subarray(start, end + 1)));
    }
    res.writeHead(200, { ...headers, 'Content-Length': String(total) });
    if (file.cutAfter !== undefined && (file.cutTimes ?? 1) > 0) {
      file.cutTimes = (file.cutTimes ?? 1) - 1;
      res.write(Buffer.from(file.content.subarray(0, file.cutAfter)), () => setTimeout(() => res.socket?.destroy(), 20));
      return;
    }
    res.end(Buffer.from(file.content));
  };

  const server: Server = createServer((req, res) => {
    const url = new URL(req.url!, 'http://x');
    const path = decodeURIComponent(url.pathname);
    log.push(`${req.method} ${path}${req.headers.range ? ` ${req.headers.range}` : ''}`);
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      let m: RegExpExecArray | null;
      if ((m = /^\/api\/models\/(.+)\/paths-info\/([^/]+)$/.exec(path)) && req.method === 'POST') {
        const hit = splitRepo(m[1]!);
        if (!hit || !authorized(req, hit[1])) return notFound(res, 'RepoNotFound');
        const { paths } = JSON.parse(body) as { paths: string[] };
        const out = paths
          .filter((p) => hit[1].files[p])
          .map((p) => {
            const f = hit[1].files[p]!;
            return {
              type: 'file',
              path: p,
              size: f.content.byteLength,
              oid: gitOid(f.content),
              ...(f.lfs ? { lfs: { oid: oidOf(f), size: f.content.byteLength, pointerSize: 134 } } : {}),
              lastCommit: { id: commitOf(hit[0]), title: 'upload', date: '2026-01-01T00:00:00.000Z' },
            };
          });
        return json(res, 200, out);
      }
      if ((m = /^\/api\/models\/(.+)\/revision\/([^/]+)$/.exec(path))) {
        const hit = splitRepo(m[1]!);
        if (!hit || !authorized(req, hit[1])) return notFound(res, 'RepoNotFound');
        return json(res, 200, { _id: 'x', id: hit[0], sha: commitOf(hit[0]), private: !!hit[1].token, lastModified: '2026-01-01T00:00:00.000Z' });
      }
      if ((m = /^\/cdn\/([^/]+)\/([0-9a-f]+)$/.exec(path))) {
        const repo = repos[m[1]!.replace('--', '/')];
        const file = repo && Object.values(repo.files).find((f) => f.lfs && oidOf(f) === m![2]);
        if (!file) return notFound(res, 'EntryNotFound');
        return sendBytes(req, res, file, m[2]!);
      }
      const hit = splitRepo(path.slice(1));
      if (hit && (m = /^resolve\/([^/]+)\/(.+)$/.exec(hit[2]))) {
        if (!authorized(req, hit[1])) return notFound(res, 'RepoNotFound');
        const file = hit[1].files[m[2]!];
        if (!file) return notFound(res, 'EntryNotFound');
        const headers = { 'X-Repo-Commit': commitOf(hit[0]), 'X-Linked-Size': String(file.content.byteLength) };
        if (file.lfs) {
          res.writeHead(302, { ...headers, 'X-Linked-ETag': `"${oidOf(file)}"`, Location: `/cdn/${hit[0].replace('/', '--')}/${oidOf(file)}` });
          return res.end();
        }
        for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
        return sendBytes(req, res, file, gitOid(file.content));
      }
      notFound(res, 'RepoNotFound');
    });
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    log,
    close: () =>
      new Promise<void>((ok) => {
        server.closeAllConnections();
        server.close(() => ok());
      }),
  };
}

/**
 * Files from the Hugging Face hub, offline-first, in the hub's own cache layout (shared with Python's
 * huggingface_hub and transformers.js):
 *
 *   <cache>/models--<owner>--<name>/blobs/<sha256 or git oid>        the bytes
 *   <cache>/models--<owner>--<name>/snapshots/<commit>/<path>        symlink to the blob
 *   <cache>/models--<owner>--<name>/refs/<revision>                  the commit a branch pointed to
 *
 * The protocol (paths-info, resolve URLs, redirects, credentials) is spoken by `@huggingface/hub`. What
 * graft adds: the cache is consulted before the network; transfers resume from `<blob>.incomplete` with a
 * Range request; every file is verified (LFS sha256, or the git blob oid of small files) before it is
 * moved into place; offline mode never opens a socket; errors name the repo, the file and what to do.
 */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readFile, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { GraftError } from '../errors.js';

export const DEFAULT_ENDPOINT = 'https://huggingface.co';

export interface HubOptions {
  /** Hub or mirror base URL. Default: `HF_ENDPOINT`, else https://huggingface.co. */
  endpoint?: string;
  /** Access token for private or gated repos. Default: `HF_TOKEN` (or `HUGGING_FACE_HUB_TOKEN`). */
  token?: string;
  /** Cache root. Default: `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`. */
  cacheDir?: string;
  /** Never touch the network. Default: `HF_HUB_OFFLINE=1`. */
  offline?: boolean;
  /** Called as bytes arrive. */
  onProgress?: (progress: DownloadProgress) => void;
  /** For tests and proxies. */
  fetch?: typeof fetch;
}

export interface DownloadProgress {
  repo: string;
  path: string;
  received: number;
  total: number;
  /** Bytes already on disk from an interrupted earlier transfer. */
  resumedFrom: number;
}

/** One file of one hub repository. */
export interface HubFileRef {
  repo: string;
  path: string;
  /** Branch, tag or commit. Default `main`. */
  revision?: string;
  /** Expected sha256 of the content, when known in advance (a pinned zoo entry). */
  sha256?: string;
}

export interface HubSettings {
  endpoint: string;
  token: string | undefined;
  cacheDir: string;
  offline: boolean;
}

const truthy = (v: string | undefined) => !!v && ['1', 'true', 'yes', 'on'].includes(v.toLowerCase());

/** Options merged over the environment, the way huggingface_hub reads it. */
export function hubSettings(options: HubOptions = {}, env: NodeJS.ProcessEnv = process.env): HubSettings {
  const home = env.HF_HOME ?? join(env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'huggingface');
  return {
    endpoint: (options.endpoint ?? env.HF_ENDPOINT ?? DEFAULT_ENDPOINT).replace(/\/+$/, ''),
    token: options.token ?? env.HF_TOKEN ?? env.HUGGING_FACE_HUB_TOKEN ?? undefined,
    cacheDir: options.cacheDir ?? env.HF_HUB_CACHE ?? env.HUGGINGFACE_HUB_CACHE ?? join(home, 'hub'),
    offline: options.offline ?? truthy(env.HF_HUB_OFFLINE),
  };
}

/** `<cache>/models--owner--name`. */
export function repoFolder(cacheDir: string, repo: string): string {
  return join(cacheDir, ['models', ...repo.split('/')].join('--'));
}

const COMMIT = /^[0-9a-f]{40}$/;

/** The local path of a cached file, or undefined. Reads only the disk. */
export async function cachedFile(ref: HubFileRef, options: HubOptions = {}): Promise<string | undefined> {
  const { cacheDir } = hubSettings(options);
  const folder = repoFolder(cacheDir, ref.repo);
  const revision = ref.revision ?? 'main';
  let commit = revision;
  if (!COMMIT.test(revision)) {
    try {
      commit = (await readFile(join(folder, 'refs', revision), 'utf8')).trim();
    } catch {
      return undefined;
    }
  }
  const file = join(folder, 'snapshots', commit, ref.path);
  try {
    const s = await stat(file); // follows the symlink: a dangling one is a miss
    return s.isFile() ? file : undefined;
  } catch {
    return undefined;
  }
}

type HubModule = typeof import('@huggingface/hub');
let hubModule: Promise<HubModule> | undefined;
const loadHub = () => (hubModule ??= import('@huggingface/hub'));

function hubError(ref: HubFileRef, message: string, context: Record<string, unknown> = {}, cause?: unknown): GraftError {
  return new GraftError('HUB', `${ref.repo}: ${ref.path}: ${message}`, { repo: ref.repo, file: ref.path, ...context }, cause ? { cause } : undefined);
}

/** Translates what the hub client threw into an error a user can act on. */
function explain(ref: HubFileRef, settings: HubSettings, e: unknown): GraftError {
  if (e instanceof GraftError) return e;
  const status = (e as { statusCode?: number }).statusCode;
  const where = { endpoint: settings.endpoint };
  if (status === 401 || status === 403)
    return hubError(ref, `access denied by ${settings.endpoint} (HTTP ${status}); gated or private repositories need a token in HF_TOKEN`, where, e);
  if (status === 404)
    return hubError(ref, `repository not found at ${settings.endpoint} (HTTP 404); check the name, or set HF_TOKEN if it is private`, where, e);
  if (status !== undefined) return hubError(ref, `${settings.endpoint} answered HTTP ${status}: ${(e as Error).message}`, where, e);
  if (e instanceof TypeError && /hf_/.test(e.message)) return hubError(ref, `the token in HF_TOKEN is not a Hugging Face token (${e.message})`, where, e);
  const cause = (e as { cause?: { code?: string; message?: string } }).cause;
  const detail = cause?.code ?? cause?.message ?? (e as Error).message;
  return hubError(ref, `cannot reach ${settings.endpoint} (${detail}); set HF_HUB_OFFLINE=1 (or --offline) to use only the cache`, where, e);
}

/**
 * The local path of a hub file: from the cache when present (no network), else downloaded, verified and
 * stored in the cache. Throws GraftError 'HUB' with the repo and file in its message.
 */
export async function hubFile(ref: HubFileRef, options: HubOptions = {}): Promise<string> {
  const settings = hubSettings(options);
  const hit = await cachedFile(ref, settings);
  if (hit) return hit;
  if (settings.offline)
    throw hubError(
      ref,
      `not in the cache (${settings.cacheDir}) and offline mode is on (HF_HUB_OFFLINE=1 or --offline); run \`graft pull\` where the hub is reachable, or turn offline mode off`,
      { cacheDir: settings.cacheDir, offline: true },
    );
  try {
    return await download(ref, settings, options);
  } catch (e) {
    throw explain(ref, settings, e);
  }
}

async function download(ref: HubFileRef, settings: HubSettings, options: HubOptions): Promise<string> {
  const hub = await loadHub();
  const revision = ref.revision ?? 'main';
  const credentials = { hubUrl: settings.endpoint, ...(settings.token ? { accessToken: settings.token } : {}), ...(options.fetch ? { fetch: options.fetch } : {}) };
  const repo = { type: 'model' as const, name: ref.repo };

  const [info] = await hub.pathsInfo({ ...credentials, repo, paths: [ref.path], revision, expand: true });
  if (!info || info.type !== 'file')
    throw hubError(ref, `no such file in the repository at revision ${revision} (${settings.endpoint})`, { endpoint: settings.endpoint, revision });
  const commit = COMMIT.test(revision) ? revision : (await hub.modelInfo({ ...credentials, name: ref.repo, revision, additionalFields: ['sha'] })).sha;
  if (typeof commit !== 'string' || !COMMIT.test(commit)) throw hubError(ref, `${settings.endpoint} did not tell the commit of revision ${revision}`);

  const lfsSha = info.lfs?.oid;
  if (ref.sha256 && lfsSha && ref.sha256 !== lfsSha)
    throw hubError(ref, `the hub now serves a different file (sha256 ${lfsSha}) than the one pinned (${ref.sha256})`, { expected: ref.sha256, actual: lfsSha });
  const expected = ref.sha256 ?? lfsSha;
  const etag = lfsSha ?? info.oid;
  const total = info.lfs?.size ?? info.size;
  if (!etag || !/^[0-9a-f]{40,64}$/.test(etag) || !(total >= 0)) throw hubError(ref, `${settings.endpoint} described the file without a valid id or size`);
  const folder = repoFolder(settings.cacheDir, ref.repo);
  const blob = join(folder, 'blobs', etag);
  const pointer = join(folder, 'snapshots', commit, ref.path);
  await mkdir(dirname(blob), { recursive: true });
  await mkdir(dirname(pointer), { recursive: true });

  async function fetchBlob(): Promise<void> {
    const incomplete = `${blob}.incomplete`;
    const hash = expected ? createHash('sha256') : gitBlobHash(total);
    const have = await resumeFrom(incomplete, total, hash);
    if (have < total) {
      const web = await hub.downloadFile({ ...credentials, repo, path: ref.path, revision, xet: false });
      if (!web) throw hubError(ref, `no such file in the repository at revision ${revision}`);
      await transfer(ref, web, incomplete, have, total, hash, options.onProgress);
    }
    const digest = hash.digest('hex');
    const want = expected ?? etag;
    if (digest !== want) {
      await rm(incomplete, { force: true });
      throw hubError(ref, `downloaded bytes fail verification: ${expected ? 'sha256' : 'git oid'} ${digest}, expected ${want}; the partial file was removed, run again to retry`, {
        expected: want,
        actual: digest,
      });
    }
    await rename(incomplete, blob);
  }


  if (!(await isFile(blob))) {
    const release = await lockBlob(blob);
    try {
      // Another process may have finished the same blob while this one waited for the lock.
      if (!(await isFile(blob))) await fetchBlob();
    } finally {
      await release();
    }
  }
  await rm(pointer, { force: true });
  await symlink(relative(dirname(pointer), blob), pointer);
  if (!COMMIT.test(revision)) {
    await mkdir(join(folder, 'refs'), { recursive: true });
    const refFile = join(folder, 'refs', revision);
    await writeFile(`${refFile}.tmp`, commit);
    await rename(`${refFile}.tmp`, refFile);
  }
  return pointer;
}

/**
 * One writer per blob across processes: `<blob>.lock` holds the writer's pid. A lock whose process is gone
 * is stale and taken over; otherwise wait for it (another graft downloading the same file).
 */
async function lockBlob(blob: string): Promise<() => Promise<void>> {
  const lock = `${blob}.lock`;
  for (;;) {
    try {
      const handle = await open(lock, 'wx');
      await handle.write(String(process.pid));
      await handle.close();
      return () => rm(lock, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const holder = Number(await readFile(lock, 'utf8').catch(() => ''));
    let alive = holder > 0;
    if (alive && holder !== process.pid) {
      try {
        process.kill(holder, 0);
      } catch (e) {
        alive = (e as NodeJS.ErrnoException).code === 'EPERM';
      }
    }
    if (!alive) await rm(lock, { force: true });
    else await new Promise((r) => setTimeout(r, 250));
  }
}

/** Git's blob id, for small non-LFS files: sha1("blob <size>\0" + content). */
function gitBlobHash(size: number): Hash {
  return createHash('sha1').update(`blob ${size}\0`);
}

const isFile = (p: string) => stat(p).then((s) => s.isFile(), () => false);

/** Feeds the bytes of an earlier interrupted transfer to the hash; returns how many there are (0 if unusable). */
async function resumeFrom(incomplete: string, total: number, hash: Hash): Promise<number> {
  let size: number;
  try {
    size = (await stat(incomplete)).size;
  } catch {
    return 0;
  }
  if (size > total) {
    await rm(incomplete, { force: true });
    return 0;
  }
  for await (const chunk of createReadStream(incomplete)) hash.update(chunk as Buffer);
  return size;
}

interface RangeBlob {
  slice(start?: number, end?: number): { stream(): ReadableStream<Uint8Array> };
}

/** Streams bytes [have, total) into `incomplete`, appending; an interruption leaves what arrived for next time. */
async function transfer(
  ref: HubFileRef,
  web: RangeBlob,
  incomplete: string,
  have: number,
  total: number,
  hash: Hash,
  onProgress?: (p: DownloadProgress) => void,
): Promise<void> {
  const file = await open(incomplete, 'a');
  let received = have;
  try {
    const stream = (have > 0 ? web.slice(have) : web.slice(0)).stream();
    for await (const chunk of stream as unknown as AsyncIterable<Uint8Array>) {
      if (received + chunk.byteLength > total) throw hubError(ref, `the server sent more than the ${total} bytes announced${have ? ' (it ignored the resume request)' : ''}; the partial file was removed, run again to download it from the start`);
      await file.write(chunk);
      hash.update(chunk);
      received += chunk.byteLength;
      onProgress?.({ repo: ref.repo, path: ref.path, received, total, resumedFrom: have });
    }
  } catch (e) {
    await file.close();
    if (e instanceof GraftError) {
      await rm(incomplete, { force: true });
      throw e;
    }
    throw hubError(ref, `transfer interrupted after ${received} of ${total} bytes (${(e as Error).message || e}); run again to resume`, { received, total }, e);
  }
  await file.close();
  if (received !== total) throw hubError(ref, `transfer ended after ${received} of ${total} bytes; run again to resume`, { received, total });
}

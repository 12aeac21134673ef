import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { GraftError } from '../src/errors.js';
import { cachedFile, hubFile, hubSettings, repoFolder, type DownloadProgress } from '../src/hub/hub.js';
import { startHubServer, type HubServer, type ServedFile } from './support/hub-server.js';

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const model = new Uint8Array(randomBytes(300_000));
const config = new TextEncoder().encode(JSON.stringify({ image_mean: [0.5, 0.5, 0.5] }));
const cut: ServedFile = { content: new Uint8Array(randomBytes(200_000)), lfs: true, cutAfter: 70_000, cutTimes: 1 };
const corrupt: ServedFile = { content: new Uint8Array(randomBytes(5_000)), lfs: true, announcedSha256: 'a'.repeat(64) };
const secret = new Uint8Array(randomBytes(1000));
const twice = new Uint8Array(randomBytes(100_000));

let server: HubServer;
let cacheDir: string;
const opts = () => ({ endpoint: server.url, cacheDir, offline: false, token: undefined });
const rejectsHub = async (p: Promise<unknown>, pattern: RegExp) =>
  assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof GraftError, String(e));
    assert.equal(e.code, 'HUB');
    assert.match(e.message, pattern);
    return true;
  });

before(async () => {
  server = await startHubServer({
    'acme/vision': { files: { 'onnx/model.onnx': { content: model, lfs: true }, 'preprocessor_config.json': { content: config } }, commit: 'c'.repeat(40) },
    'acme/flaky': { files: { 'model.onnx': cut } },
    'acme/corrupt': { files: { 'model.onnx': corrupt } },
    'acme/twice': { files: { 'model.onnx': { content: twice, lfs: true } } },
    'acme/stale': { files: { 'model.onnx': { content: twice, lfs: true } } },
    'acme/private': { files: { 'model.onnx': { content: secret, lfs: true } }, token: 'hf_secret' },
  });
  cacheDir = await mkdtemp(join(tmpdir(), 'graft-hub-'));
});
after(async () => {
  await server.close();
  await rm(cacheDir, { recursive: true, force: true });
});

describe('hub client', () => {
  test('downloads an LFS file through the redirect into the hub cache layout, then serves it from the cache', async () => {
    const progress: DownloadProgress[] = [];
    const path = await hubFile({ repo: 'acme/vision', path: 'onnx/model.onnx' }, { ...opts(), onProgress: (p) => progress.push(p) });
    assert.deepEqual(new Uint8Array(readFileSync(path)), model);
    const folder = repoFolder(cacheDir, 'acme/vision');
    assert.equal(folder, join(cacheDir, 'models--acme--vision'));
    assert.equal(path, join(folder, 'snapshots', 'c'.repeat(40), 'onnx', 'model.onnx'));
    assert.ok(lstatSync(path).isSymbolicLink());
    assert.equal(readlinkSync(path), join('..', '..', '..', 'blobs', sha256(model)));
    assert.equal(readFileSync(join(folder, 'refs', 'main'), 'utf8'), 'c'.repeat(40));
    assert.ok(server.log.some((l) => l.startsWith('GET /cdn/acme--vision/')), 'followed the redirect to the CDN path');
    assert.equal(progress.at(-1)!.received, model.byteLength);
    assert.equal(progress.at(-1)!.total, model.byteLength);

    const requests = server.log.length;
    const again = await hubFile({ repo: 'acme/vision', path: 'onnx/model.onnx' }, opts());
    assert.equal(again, path);
    assert.equal(server.log.length, requests, 'a cached file costs no request');
  });

  test('concurrent requests for one file download it once; a lock left by a dead process is taken over', async () => {
    const ref = { repo: 'acme/twice', path: 'model.onnx' };
    const before = server.log.filter((l) => l.startsWith('GET /cdn/acme--twice/')).length;
    const [a, b] = await Promise.all([hubFile(ref, opts()), hubFile(ref, opts())]);
    assert.equal(a, b);
    assert.deepEqual(new Uint8Array(readFileSync(a)), twice);
    assert.equal(server.log.filter((l) => l.startsWith('GET /cdn/acme--twice/') && !l.includes('bytes=0-0')).length - before, 1);
    const stale = { repo: 'acme/stale', path: 'model.onnx' };
    const blob = join(repoFolder(cacheDir, 'acme/stale'), 'blobs', sha256(twice));
    mkdirSync(dirname(blob), { recursive: true });
    writeFileSync(`${blob}.lock`, '999999999');
    assert.deepEqual(new Uint8Array(readFileSync(await hubFile(stale, opts()))), twice);
    assert.ok(!existsSync(`${blob}.lock`));
  });

  test('a small git file is verified by its git blob id', async () => {
    const path = await hubFile({ repo: 'acme/vision', path: 'preprocessor_config.json' }, opts());
    assert.deepEqual(JSON.parse(readFileSync(path, 'utf8')), { image_mean: [0.5, 0.5, 0.5] });
    const gitOid = createHash('sha1').update(`blob ${config.byteLength}\0`).update(config).digest('hex');
    assert.ok(existsSync(join(repoFolder(cacheDir, 'acme/vision'), 'blobs', gitOid)));
  });

  test('404s name the repo and the file', async () => {
    await rejectsHub(hubFile({ repo: 'acme/vision', path: 'onnx/missing.onnx' }, opts()), /acme\/vision: onnx\/missing\.onnx: no such file in the repository/);
    await rejectsHub(hubFile({ repo: 'acme/nothing', path: 'model.onnx' }, opts()), /acme\/nothing: model\.onnx: repository not found at http:\/\/127\.0\.0\.1:\d+ \(HTTP 404\).*HF_TOKEN/);
  });

  test('an interrupted transfer keeps what arrived and resumes with a Range request', async () => {
    const ref = { repo: 'acme/flaky', path: 'model.onnx' };
    await rejectsHub(hubFile(ref, opts()), /transfer interrupted after \d+ of 200000 bytes.*run again to resume/);
    const blob = join(repoFolder(cacheDir, 'acme/flaky'), 'blobs', sha256(cut.content));
    const partial = statSync(`${blob}.incomplete`).size;
    assert.ok(partial > 0 && partial < 200_000, `partial ${partial}`);
    const path = await hubFile(ref, opts());
    assert.ok(server.log.some((l) => l.endsWith(`bytes=${partial}-199999`)), server.log.join('\n'));
    assert.deepEqual(new Uint8Array(readFileSync(path)), cut.content);
    assert.ok(!existsSync(`${blob}.incomplete`));
  });

  test('content that does not match its checksum is rejected and removed', async () => {
    await rejectsHub(hubFile({ repo: 'acme/corrupt', path: 'model.onnx' }, opts()), /fail verification: sha256 [0-9a-f]{64}, expected a{64}; the partial file was removed/);
    const folder = repoFolder(cacheDir, 'acme/corrupt');
    assert.ok(!existsSync(join(folder, 'blobs', 'a'.repeat(64))));
    assert.ok(!existsSync(join(folder, 'blobs', `${'a'.repeat(64)}.incomplete`)));
    assert.equal(await cachedFile({ repo: 'acme/corrupt', path: 'model.onnx' }, opts()), undefined);
  });

  test('a pinned sha256 that the hub no longer serves is an error before any transfer', async () => {
    const pinned = 'b'.repeat(64);
    await rejectsHub(hubFile({ repo: 'acme/private', path: 'model.onnx', sha256: pinned }, { ...opts(), token: 'hf_secret' }), /different file .* than the one pinned/);
  });

  test('private repos need HF_TOKEN', async () => {
    await rejectsHub(hubFile({ repo: 'acme/private', path: 'model.onnx' }, opts()), /HF_TOKEN/);
    const path = await hubFile({ repo: 'acme/private', path: 'model.onnx' }, { ...opts(), token: 'hf_secret' });
    assert.deepEqual(new Uint8Array(readFileSync(path)), secret);
  });

  test('offline mode never touches the network and names the missing file', async () => {
    const noNetwork = (() => {
      throw new Error('network used in offline mode');
    }) as unknown as typeof fetch;
    const off = { ...opts(), offline: true, fetch: noNetwork };
    const hit = await hubFile({ repo: 'acme/vision', path: 'onnx/model.onnx' }, off);
    assert.deepEqual(new Uint8Array(readFileSync(hit)), model);
    await rejectsHub(hubFile({ repo: 'acme/vision', path: 'onnx/model_fp16.onnx' }, off), new RegExp(`acme/vision: onnx/model_fp16\\.onnx: not in the cache \\(${cacheDir}\\) and offline mode is on`));
  });

  test('an unreachable endpoint is a clear error', async () => {
    await rejectsHub(hubFile({ repo: 'acme/x', path: 'model.onnx' }, { ...opts(), endpoint: 'http://127.0.0.1:9' }), /cannot reach http:\/\/127\.0\.0\.1:9 .*HF_HUB_OFFLINE=1/);
  });

  test('settings come from the environment like huggingface_hub', () => {
    const s = hubSettings({}, { HF_ENDPOINT: 'https://mirror.example/', HF_TOKEN: 'hf_x', HF_HUB_OFFLINE: '1', HF_HOME: '/data/hf' });
    assert.deepEqual(s, { endpoint: 'https://mirror.example', token: 'hf_x', cacheDir: '/data/hf/hub', offline: true });
    assert.equal(hubSettings({}, { HF_HUB_CACHE: '/c', HF_HOME: '/h' }).cacheDir, '/c');
    assert.equal(hubSettings({}, {}).endpoint, 'https://huggingface.co');
    assert.equal(hubSettings({ offline: false }, { HF_HUB_OFFLINE: '1' }).offline, false);
  });
});

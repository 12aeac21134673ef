/**
 * `graft serve`: one process, an HTTP server on Node's own `http`. Training runs in child processes (jobs.ts)
 * and inference on worker threads (predictor.ts), so requests stay responsive while a model trains.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { GraftError } from '../errors.js';
import { createApi } from './api.js';
import { JobManager } from './jobs.js';
import { ModelStore } from './models.js';
import { Predictor } from './predictor.js';
import { Store } from './store.js';

export interface ServeOptions {
  host: string;
  port: number;
  dataDir: string;
  token?: string;
  /** Bytes (default 200 MiB). */
  maxUpload?: number;
  /** Samples per project (default 10000). */
  maxSamples?: number;
  /** Training jobs at once (default 1). */
  maxJobs?: number;
  /** ONNX Runtime threads and decoding workers for prediction (default: every core). */
  threads?: number;
  /** The graft executable jobs run (default: this checkout's bin/graft.js). */
  bin?: string;
}

export interface RunningServer {
  url: string;
  port: number;
  dataDir: string;
  /** Stops accepting requests, stops the training processes (their jobs fail) and unloads the models. */
  close(): Promise<void>;
}

export const DEFAULTS = { maxUpload: 200 * 2 ** 20, maxSamples: 10_000, maxJobs: 1 } as const;

export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127(\.\d{1,3}){3}$/.test(h) || /^::ffff:127(\.\d{1,3}){3}$/.test(h);
}

const hostForUrl = (host: string) => (host.includes(':') && !host.startsWith('[') ? `[${host}]` : host);

/** Refuses a data folder another running server holds; otherwise claims it (a pid file). */
async function claim(dataDir: string): Promise<string> {
  const file = join(dataDir, 'serve.pid');
  const pid = Number(await readFile(file, 'utf8').catch(() => ''));
  if (Number.isInteger(pid) && pid > 0 && pid !== process.pid) {
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes('serve')) throw new GraftError('USAGE', `${dataDir} is in use by another graft serve (pid ${pid}); stop it or give another --data-dir`, { dataDir, pid });
  }
  await writeFile(file, String(process.pid));
  return file;
}

export async function startServer(options: ServeOptions): Promise<RunningServer> {
  if (!isLoopback(options.host) && !options.token) {
    throw new GraftError('USAGE', `--host ${options.host} would expose the server beyond this machine: give --token T too (clients then send "Authorization: Bearer T")`, { host: options.host });
  }
  const dataDir = resolve(options.dataDir);
  await mkdir(dataDir, { recursive: true });
  const pidFile = await claim(dataDir);
  const maxUpload = options.maxUpload ?? DEFAULTS.maxUpload;
  const maxSamples = options.maxSamples ?? DEFAULTS.maxSamples;
  const store = await Store.open(dataDir, maxSamples);
  const models = await ModelStore.open(dataDir);
  const jobs = await JobManager.open({ dataDir, store, models, maxJobs: options.maxJobs ?? DEFAULTS.maxJobs, cacheDir: join(dataDir, 'cache'), ...(options.bin ? { bin: options.bin } : {}) });
  const predictor = new Predictor(models, options.threads ? { threads: options.threads } : {});
  const allowedHosts = new Set<string>();
  const handler = createApi({ store, models, jobs, predictor, maxUpload, maxSamples, allowedHosts, ...(options.token ? { token: options.token } : {}) });
  const server: Server = createServer(handler);
  await new Promise<void>((done, fail) => {
    server.once('error', (e: NodeJS.ErrnoException) =>
      fail(new GraftError('USAGE', `cannot listen on ${options.host}:${options.port}: ${e.code === 'EADDRINUSE' ? 'the port is in use' : e.code === 'EACCES' ? 'permission denied' : e.message}`, { host: options.host, port: options.port }, { cause: e })),
    );
    server.listen(options.port, options.host, () => done());
  });
  const port = (server.address() as AddressInfo).port;
  for (const name of [hostForUrl(options.host), 'localhost', '127.0.0.1', '[::1]']) allowedHosts.add(`${name.toLowerCase()}:${port}`);
  let closing: Promise<void> | undefined;
  return {
    url: `http://${hostForUrl(options.host)}:${port}/`,
    port,
    dataDir,
    close: () =>
      (closing ??= (async () => {
        const closed = new Promise((done) => server.close(done));
        server.closeAllConnections();
        await jobs.shutdown();
        await predictor.close();
        await closed;
        await rm(pidFile, { force: true });
      })()),
  };
}

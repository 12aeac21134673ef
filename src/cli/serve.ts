/** `graft serve`: the HTTP server (src/server) as a command. */
import { homedir } from 'node:os';
import { join } from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import { parseSize } from '../backbone/cache.js';
import { startServer } from '../server/server.js';

interface ServeFlags {
  host: string;
  port: number;
  dataDir?: string;
  token?: string;
  maxUpload?: number;
  maxSamples?: number;
  maxJobs?: number;
  json: boolean;
}

const integer = (name: string, min: number, max = Number.MAX_SAFE_INTEGER) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be an integer from ${min} to ${max}, got "${v}"`);
  return n;
};

const size = (v: string) => {
  try {
    return parseSize(v);
  } catch (e) {
    throw new InvalidArgumentError(`--max-upload: ${(e as Error).message}`);
  }
};

/** `$GRAFT_SERVE_DIR`, else ~/.local/share/graft/serve. */
export function defaultServeDir(): string {
  return process.env.GRAFT_SERVE_DIR || join(homedir(), '.local', 'share', 'graft', 'serve');
}

async function serve(flags: ServeFlags): Promise<void> {
  const token = flags.token ?? (process.env.GRAFT_SERVE_TOKEN || undefined);
  const server = await startServer({
    host: flags.host,
    port: flags.port,
    dataDir: flags.dataDir ?? defaultServeDir(),
    ...(token ? { token } : {}),
    ...(flags.maxUpload !== undefined ? { maxUpload: flags.maxUpload } : {}),
    ...(flags.maxSamples !== undefined ? { maxSamples: flags.maxSamples } : {}),
    ...(flags.maxJobs !== undefined ? { maxJobs: flags.maxJobs } : {}),
  });
  process.stdout.write(flags.json ? `${JSON.stringify({ url: server.url, dataDir: server.dataDir })}\n` : `graft serve listening on ${server.url}\n`);
  await new Promise<void>((done) => {
    const stop = () => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      void server.close().then(done);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
}

export function registerServe(cmd: Command): void {
  cmd
    .command('serve')
    .description('an HTTP server (JSON API under /v1 and a web page) for projects, training jobs and predictions')
    .option('--host <host>', 'address to listen on; anything but loopback needs --token', '127.0.0.1')
    .option('--port <n>', 'port (0: any free port)', integer('--port', 0, 65535), 7860)
    .option('--data-dir <dir>', 'where projects, jobs and models are kept (default $GRAFT_SERVE_DIR or ~/.local/share/graft/serve)')
    .option('--token <t>', 'require "Authorization: Bearer T" on every API request (also $GRAFT_SERVE_TOKEN)')
    .option('--max-upload <size>', 'largest request body, e.g. 200M (default 200M)', size)
    .option('--max-samples <n>', 'most samples per project (default 10000)', integer('--max-samples', 1))
    .option('--max-jobs <n>', 'training jobs running at once; more wait in a queue (default 1)', integer('--max-jobs', 1, 64))
    .option('--json', 'print the listening line as JSON ({"url", "dataDir"})', false)
    .action((flags: ServeFlags) => serve(flags));
}

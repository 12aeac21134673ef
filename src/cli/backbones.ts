/** `graft models`, `graft pull`, `graft import`: the backbone commands. */
import { relative, resolve } from 'node:path';
import { isCached, pullModel } from '../backbone/resolve.js';
import { ZOO } from '../backbone/zoo.js';
import { importTfjs } from '../convert/import.js';
import { hubSettings, type HubOptions } from '../hub/hub.js';
import { createProgress } from './progress.js';

export interface HubFlags {
  offline?: boolean;
  json: boolean;
}

export const hubOptions = (flags: { offline?: boolean }): HubOptions => (flags.offline ? { offline: true } : {});

const emit = (doc: unknown): void => void process.stdout.write(JSON.stringify(doc, null, 2) + "\n");

export function formatBytes(n: number): string {
  return n >= 1e9 ? `${(n / 1e9).toFixed(1)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(n >= 1e8 ? 0 : 1)} MB` : n >= 1e3 ? `${Math.round(n / 1e3)} kB` : `${n} B`;
}

export async function models(flags: HubFlags): Promise<void> {
  const hub = hubOptions(flags);
  const rows = await Promise.all(
    ZOO.map(async (e) => ({
      name: e.name,
      task: e.task,
      description: e.description,
      licence: e.licence,
      bytes: e.bytes,
      featureDim: e.featureDim,
      source: e.source,
      cached: await isCached(e, { hub }),
    })),
  );
  if (flags.json) return emit({ cacheDir: hubSettings(hub).cacheDir, models: rows });
  const table = [
    ['name', 'task', 'size', 'features', 'licence', 'cached'],
    ...rows.map((r) => [r.name, r.task, formatBytes(r.bytes), String(r.featureDim), r.licence.split(' ')[0]!, r.source.kind === 'bundled' ? 'bundled' : r.cached ? 'yes' : 'no']),
  ];
  const widths = table[0]!.map((_, c) => Math.max(...table.map((r) => r[c]!.length)));
  const lines = table.map((r) => r.map((cell, c) => cell.padEnd(widths[c]!)).join('  ').trimEnd());
  process.stdout.write(`${lines.join('\n')}\n\n${rows.map((r) => `${r.name}: ${r.description}`).join('\n')}\nhub cache: ${hubSettings(hub).cacheDir}\n`);
}

export async function pull(name: string, flags: HubFlags): Promise<void> {
  const progress = createProgress();
  let current = '';
  const { entry, files } = await pullModel(name, {
    hub: {
      ...hubOptions(flags),
      onProgress: (p) => {
        if (p.path !== current) {
          progress.stop();
          progress.start(p.path, p.total);
          current = p.path;
        }
        progress.update(p.received, p.resumedFrom ? `resumed at ${formatBytes(p.resumedFrom)}` : '');
      },
    },
  });
  progress.stop();
  if (flags.json) return emit({ model: entry.name, files });
  process.stdout.write(`${entry.name}: ${files.length} file${files.length === 1 ? '' : 's'} ready\n${files.map((f) => `  ${f.path} (${formatBytes(f.bytes)}) → ${f.local}`).join('\n')}\n`);
}

export async function importCommand(source: string, flags: { out: string; json: boolean }): Promise<void> {
  const result = await importTfjs(source, resolve(flags.out));
  if (flags.json) return emit(result);
  const show = (p: string) => relative(process.cwd(), p) || p;
  process.stdout.write(
    `imported ${result.format} model ${show(result.source)} → ${show(result.model)}\n` +
      `  input ${result.inputName} [${result.inputShape.join(', ')}] (${result.config.layout}), outputs ${result.outputs.join(', ')}\n` +
      `  features: ${result.config.cut ?? '(automatic cut)'}${result.labels ? `; labels: ${result.labels.join(', ')}` : ''}\n` +
      `  train on it: graft train DATA --model ${show(result.model)}\n`,
  );
}

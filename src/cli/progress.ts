/**
 * Progress on stderr: a live bar on a terminal, a few plain lines otherwise (logs, CI, pipes). With an events
 * file (`graft train --events FILE`), the same progress is also appended there as NDJSON, one event a line, for
 * a program to follow (`graft serve` relays it to its clients).
 */
import { appendFileSync } from 'node:fs';
import cliProgress from 'cli-progress';

import type { EpochEvent, ProgressEvent } from '../train/events.js';
export type { EpochEvent, ProgressEvent } from '../train/events.js';

export interface Progress {
  start(label: string, total: number): void;
  update(done: number, extra?: string): void;
  stop(): void;
  log(line: string): void;
  /** An epoch's results (the events file only: the bar shows them through update()). */
  epoch(e: EpochEvent): void;
}

/** Appends events to `file`; a write that fails turns the events off with one notice, never the run. */
function eventWriter(file: string | undefined): (e: ProgressEvent) => void {
  let broken = file === undefined;
  return (e) => {
    if (broken) return;
    try {
      appendFileSync(file!, JSON.stringify(e) + '\n');
    } catch (err) {
      broken = true;
      process.stderr.write(`graft: warning: --events ${file}: ${(err as Error).message}; no more events are written\n`);
    }
  };
}

const PROGRESS_EVERY_MS = 250;

export function createProgress(quiet = false, options: { events?: string } = {}): Progress {
  const emit = eventWriter(options.events);
  const tty = process.stderr.isTTY === true;
  let bar: cliProgress.SingleBar | undefined;
  let label = '';
  let total = 0;
  let lastPrinted = -1;
  let lastEvent = 0;
  return {
    start(l, t) {
      label = l;
      total = t;
      lastPrinted = -1;
      emit({ type: 'phase', phase: l, total: t });
      if (quiet) return;
      if (tty) {
        bar = new cliProgress.SingleBar(
          { stream: process.stderr, format: `${l.padEnd(10)} {bar} {value}/{total} {extra}`, hideCursor: true, clearOnComplete: false },
          cliProgress.Presets.shades_classic,
        );
        bar.start(t, 0, { extra: '' });
      }
    },
    update(done, extra = '') {
      const now = Date.now();
      if (done >= total || now - lastEvent >= PROGRESS_EVERY_MS) {
        lastEvent = now;
        emit({ type: 'progress', phase: label, done, total });
      }
      if (quiet) return;
      if (bar) bar.update(done, { extra });
      else {
        // Plain output: at most every 25% (and the end).
        const quarter = total > 0 ? Math.floor((done / total) * 4) : 4;
        if (quarter > lastPrinted) {
          lastPrinted = quarter;
          process.stderr.write(`${label}: ${done}/${total} ${extra}\n`);
        }
      }
    },
    stop() {
      bar?.stop();
      bar = undefined;
    },
    epoch(e) {
      emit({ type: 'epoch', ...e });
    },
    log(line) {
      emit({ type: 'log', message: line });
      if (quiet) return;
      if (bar) bar.stop();
      process.stderr.write(line + '\n');
      bar = undefined;
    },
  };
}

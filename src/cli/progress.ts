/** Progress on stderr: a live bar on a terminal, a few plain lines otherwise (logs, CI, pipes). */
import cliProgress from 'cli-progress';

export interface Progress {
  start(label: string, total: number): void;
  update(done: number, extra?: string): void;
  stop(): void;
  log(line: string): void;
}

export function createProgress(quiet = false): Progress {
  const tty = process.stderr.isTTY === true;
  let bar: cliProgress.SingleBar | undefined;
  let label = '';
  let total = 0;
  let lastPrinted = -1;
  return {
    start(l, t) {
      label = l;
      total = t;
      lastPrinted = -1;
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
    log(line) {
      if (quiet) return;
      if (bar) bar.stop();
      process.stderr.write(line + '\n');
      bar = undefined;
    },
  };
}

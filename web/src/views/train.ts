/**
 * Training: mode and options (an "Advanced" part for the backbone model, batch size, seed, …), the Train button,
 * progress from the job's event stream (read with fetch), epoch curves drawn as they arrive, the log, and Cancel.
 */
import { api, followJob, type EpochRecord, type Job, type JobOptions, type Project } from '../api.js';
import { h, progressBar, replace } from '../dom.js';
import { lineChart } from '../charts.js';
import { attempt, errorMessage, field, toast } from '../ui.js';

export interface TrainContext {
  project(): Project;
  /** A job finished; `modelId` is set when it succeeded. */
  finished(job: Job): void;
}

const LOG_LINES = 200;

/** The phases that count epochs (the others, features and augmented views, count samples). */
const EPOCH_PHASES = new Set(['train', 'head', 'fine-tune']);

/** Words for graft's progress phases (others are shown as they come). */
function phaseLabel(phase: string | undefined): string {
  if (!phase) return 'starting';
  const known: Record<string, string> = { features: 'computing features', head: 'training the head', train: 'training', 'fine-tune': 'fine-tuning', finetune: 'fine-tuning', eval: 'evaluating' };
  return known[phase] ?? phase;
}
const ACTIVE: ReadonlySet<Job['state']> = new Set(['queued', 'running']);

export class TrainView {
  readonly el = h('section', { class: 'panel train', 'data-testid': 'train-panel' });
  private readonly mode = h('select', { 'data-testid': 'train-mode' },
    h('option', { value: 'extract' }, 'Train the new head (fast)'),
    h('option', { value: 'fine-tune' }, 'Fine-tune the backbone too'));
  private readonly epochs = h('input', { type: 'number', min: 1, max: 1000, step: 1, placeholder: 'auto', 'data-testid': 'train-epochs' });
  private readonly lr = h('input', { type: 'number', min: 0, step: 'any', placeholder: 'auto', 'data-testid': 'train-lr' });
  private readonly model = h('input', { type: 'text', placeholder: 'default backbone', spellcheck: false, 'data-testid': 'train-model' });
  private readonly batchSize = h('input', { type: 'number', min: 1, max: 4096, step: 1, placeholder: 'auto', 'data-testid': 'train-batch-size' });
  private readonly seed = h('input', { type: 'number', step: 1, placeholder: 'auto', 'data-testid': 'train-seed' });
  private readonly valSplit = h('input', { type: 'number', min: 0.05, max: 0.9, step: 0.05, placeholder: '0.2', 'data-testid': 'train-val-split' });
  private readonly head = h('select', { 'data-testid': 'train-head' }, h('option', { value: '' }, 'default'), h('option', { value: 'mlp' }, 'mlp'), h('option', { value: 'linear' }, 'linear'));
  private readonly augment = h('select', { 'data-testid': 'train-augment' },
    h('option', { value: '' }, 'none'), h('option', { value: 'light' }, 'light'), h('option', { value: 'standard' }, 'standard'), h('option', { value: 'strong' }, 'strong'));
  private readonly tta = h('input', { type: 'checkbox', 'data-testid': 'train-tta' });
  private readonly unfreeze = h('input', { type: 'number', min: 0, step: 1, placeholder: 'auto', 'data-testid': 'train-unfreeze' });
  private readonly start = h('button', { type: 'button', class: 'primary', 'data-testid': 'train-start' }, 'Train model');
  private readonly cancel = h('button', { type: 'button', class: 'danger', 'data-testid': 'train-cancel', disabled: true }, 'Cancel');
  private readonly state = h('div', { class: 'job-state', 'data-testid': 'train-state', 'aria-live': 'polite' }, 'Not trained yet');
  private readonly progress = progressBar('train-progress');
  private readonly charts = h('div', { class: 'charts', 'data-testid': 'train-charts' });
  private readonly log = h('pre', { class: 'log', 'data-testid': 'train-log' });
  private readonly error = h('div', { class: 'error hidden', role: 'alert', 'data-testid': 'train-error' });
  private job: Job | null = null;
  private history: EpochRecord[] = [];
  private follow: AbortController | null = null;
  private logCount = 0;

  constructor(private readonly ctx: TrainContext) {
    const unfreezeField = field('Unfreeze last N blocks', this.unfreeze);
    const syncMode = () => unfreezeField.classList.toggle('hidden', this.mode.value !== 'fine-tune');
    this.mode.addEventListener('change', syncMode);
    syncMode();
    const advanced = h('details', { class: 'advanced', 'data-testid': 'train-advanced' },
      h('summary', { 'data-testid': 'train-advanced-toggle' }, 'Advanced'),
      field('Backbone model (path or name)', this.model, 'An ONNX file on the server, or a name from `graft models`'),
      field('Batch size', this.batchSize),
      field('Validation split', this.valSplit),
      field('Seed', this.seed),
      field('Head', this.head),
      field('Augmentation', this.augment, 'Crops, flips, rotations and colour changes of the training images (4 views each), or shifts, gain and noise of clips'),
      field('Test-time augmentation', this.tta, 'Images: average each prediction with the mirrored image'),
      unfreezeField,
    );
    this.start.addEventListener('click', () => void this.train());
    this.cancel.addEventListener('click', () => void this.doCancel());
    this.progress.set(0, '');
    replace(this.el,
      h('h2', {}, 'Training'),
      h('div', { class: 'form' }, field('Mode', this.mode), field('Epochs', this.epochs), field('Learning rate', this.lr), advanced),
      h('div', { class: 'tools' }, this.start, this.cancel),
      this.state,
      this.progress.el,
      this.error,
      this.charts,
      h('details', { class: 'log-box' }, h('summary', {}, 'Log'), this.log),
    );
    this.drawCharts();
  }

  private options(): JobOptions {
    const num = (el: HTMLInputElement) => (el.value.trim() === '' ? undefined : Number(el.value));
    const o: JobOptions = {
      epochs: num(this.epochs),
      lr: num(this.lr),
      batchSize: num(this.batchSize),
      seed: num(this.seed),
      valSplit: num(this.valSplit),
      model: this.model.value.trim() || undefined,
      head: this.head.value || undefined,
      unfreeze: this.mode.value === 'fine-tune' ? num(this.unfreeze) : undefined,
      augment: this.augment.value || undefined,
      tta: this.tta.checked || undefined,
    };
    for (const k of Object.keys(o) as Array<keyof JobOptions>) if (o[k] === undefined || (typeof o[k] === 'number' && !Number.isFinite(o[k]))) delete o[k];
    return o;
  }

  private async train(): Promise<void> {
    const p = this.ctx.project();
    const usable = p.classes.filter((c) => c.count > 0).length;
    if (usable < 2) {
      toast('Add samples to at least two classes first.', 'error');
      return;
    }
    this.start.disabled = true;
    const job = await attempt('Start training', () => api.startJob(p.id, this.mode.value as 'extract' | 'fine-tune', this.options()));
    if (!job) {
      this.start.disabled = false;
      return;
    }
    this.history = [];
    replace(this.log);
    this.logCount = 0;
    this.attach(job);
  }

  private async doCancel(): Promise<void> {
    if (!this.job) return;
    this.cancel.disabled = true;
    const job = await attempt('Cancel', () => api.cancelJob(this.job!.id));
    if (job) this.show(job);
  }

  /** Shows a job, and follows its events while it is queued or running. */
  attach(job: Job): void {
    this.follow?.abort();
    this.follow = null;
    this.history = [...(job.history ?? [])];
    this.show(job);
    if (!ACTIVE.has(job.state)) return;
    const ctrl = new AbortController();
    this.follow = ctrl;
    followJob(job.id, {
      job: (j) => {
        this.history = [...(j.history ?? [])];
        this.show(j);
      },
      epoch: (e) => {
        this.history.push(e);
        if (this.job) this.show({ ...this.job, phase: e.phase ?? this.job.phase, epoch: e.epoch, epochs: e.epochs ?? this.job.epochs });
      },
      log: (m) => this.addLog(m.message),
      progress: (p) => {
        if (this.job) this.show({ ...this.job, progress: p });
      },
      end: (j) => {
        this.history = [...(j.history ?? this.history)];
        this.show(j);
      },
    }, ctrl.signal)
      .then((final) => {
        if (final && this.follow === ctrl) {
          this.follow = null;
          this.ctx.finished(final);
        }
      })
      .catch((err: unknown) => toast(`Training progress: ${errorMessage(err)}`, 'error'));
  }

  private addLog(message: string): void {
    this.log.appendChild(document.createTextNode(message + '\n'));
    if (++this.logCount > LOG_LINES) this.log.firstChild?.remove();
    this.log.scrollTop = this.log.scrollHeight;
  }

  private show(job: Job): void {
    this.job = job;
    const active = ACTIVE.has(job.state);
    this.start.disabled = active;
    this.cancel.disabled = !active;
    this.el.dataset.state = job.state;
    const elapsed = job.startedAt ? ((job.finishedAt ? Date.parse(job.finishedAt) : Date.now()) - Date.parse(job.startedAt)) / 1000 : 0;
    const mem = job.memory ? ` · server memory ${(job.memory.peakRssBytes / 2 ** 20).toFixed(0)} MB peak` : '';
    let line: string;
    switch (job.state) {
      case 'queued':
        line = 'Queued: waiting for another job to finish';
        this.progress.set(null, 'waiting');
        break;
      case 'running': {
        const phase = phaseLabel(job.phase);
        const p = job.progress;
        if (p && p.phase === job.phase && !EPOCH_PHASES.has(p.phase) && p.total > 0) {
          // Extraction (features, augmented views): how many samples so far.
          this.progress.set(p.done / p.total, `${phaseLabel(p.phase)}: ${p.done} / ${p.total}`);
        } else if (job.epochs && job.epoch !== undefined) {
          this.progress.set(job.epoch / job.epochs, `${phase}: epoch ${job.epoch} / ${job.epochs}`);
        } else this.progress.set(null, phase);
        line = `Training (${phase}) · ${elapsed.toFixed(0)} s${mem}`;
        break;
      }
      case 'succeeded': {
        const acc = job.metrics?.accuracy;
        this.progress.set(1, 'done');
        line = `Done in ${elapsed.toFixed(1)} s${acc !== undefined ? ` · validation accuracy ${(acc * 100).toFixed(1)}%` : ''}${mem}`;
        break;
      }
      case 'failed':
        this.progress.set(0, 'failed');
        line = 'Failed';
        break;
      case 'cancelled':
        this.progress.set(0, 'cancelled');
        line = 'Cancelled';
        break;
    }
    this.state.textContent = line;
    this.error.classList.toggle('hidden', !job.error);
    this.error.textContent = job.error ?? '';
    this.drawCharts();
  }

  private drawCharts(): void {
    const hist = this.history;
    if (!hist.length) {
      replace(this.charts);
      return;
    }
    const breaks: number[] = [];
    hist.forEach((e, i) => {
      if (i > 0 && e.phase !== hist[i - 1]!.phase) breaks.push(i);
    });
    replace(this.charts,
      lineChart('Loss', [
        { name: 'train', cls: 's1', values: hist.map((e) => e.trainLoss) },
        { name: 'validation', cls: 's2', values: hist.map((e) => e.valLoss) },
      ], { testid: 'chart-loss', breaks }),
      lineChart('Validation accuracy', [
        { name: 'accuracy', cls: 's3', values: hist.map((e) => e.valAccuracy) },
        ...(hist.some((e) => e.valMacroF1 !== undefined) ? [{ name: 'macro F1', cls: 's4', values: hist.map((e) => e.valMacroF1) }] : []),
      ], { testid: 'chart-accuracy', yMax: 1, percent: true, breaks }),
    );
  }

  dispose(): void {
    this.follow?.abort();
    this.follow = null;
  }
}

/**
 * Export: download the model as a zip, and check the exported model.onnx right here — run it with
 * onnxruntime-web (WASM) on the exact tensor the server feeds (POST /preprocess) and compare its probabilities
 * with the server's /predict for the same file.
 */
import { api, fetchBlob, type Model, type Project } from '../api.js';
import { formatBytes, h, replace } from '../dom.js';
import { loadOrt } from '../ort.js';
import type * as Ort from 'onnxruntime-web';
import { attempt, dispositionName, errorMessage, saveBlob } from '../ui.js';

/** A left-right mirror of preprocessed images [N, 3, H, W] (NCHW) or [N, H, W, 3] (NHWC). */
function mirrorTensor(x: Float32Array, dims: readonly number[], layout: 'NCHW' | 'NHWC'): Float32Array {
  const w = layout === 'NCHW' ? dims[3]! : dims[2]!;
  const c = layout === 'NCHW' ? 1 : dims[3]!;
  const out = new Float32Array(x.length);
  const row = w * c;
  for (let base = 0; base < x.length; base += row) {
    for (let j = 0; j < w; j++) for (let k = 0; k < c; k++) out[base + j * c + k] = x[base + (w - 1 - j) * c + k]!;
  }
  return out;
}

/** The largest |a[i] - b[i]| (Infinity when the lengths differ). */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

export class ExportView {
  readonly el = h('section', { class: 'panel export', 'data-testid': 'export-panel' });
  private session: Ort.InferenceSession | null = null;
  private outputName: string | null = null;
  /** The layout to mirror in when the model was trained with test-time augmentation (graft.json's inference.tta). */
  private tta: 'NCHW' | 'NHWC' | null = null;
  private readonly status = h('div', { class: 'check-status', 'data-testid': 'export-check-status', 'aria-live': 'polite' });
  private readonly table = h('div', { class: 'check-table' });
  private file: File | null = null;

  constructor(project: Project, private readonly model: Model | null) {
    if (!model) {
      replace(this.el, h('h2', {}, 'Export'), h('p', { class: 'empty' }, 'Train a model first.'));
      return;
    }
    const download = h('button', { type: 'button', class: 'primary', 'data-testid': 'export-download' }, 'Download model (.zip)');
    download.addEventListener('click', () => void attempt('Download', async () => {
      download.disabled = true;
      try {
        const { blob, res } = await fetchBlob(api.downloadUrl(model.id));
        saveBlob(blob, dispositionName(res.headers.get('Content-Disposition'), `${project.name}-${model.id}.zip`));
      } finally {
        download.disabled = false;
      }
    }));
    const parts: Array<HTMLElement | null> = [
      h('h2', {}, 'Export'),
      h('p', { class: 'muted' }, 'The zip holds model.onnx (backbone and head in one graph: ', project.task === 'image' ? 'an image tensor' : 'the model inputs', ' in, class probabilities out), graft.json, the validation report and usage snippets.'),
      h('div', { class: 'tools' }, download),
      h('p', { class: 'muted' }, 'Labels: ', h('span', { 'data-testid': 'export-labels' }, model.labels.join(', '))),
    ];
    if (project.task === 'image') {
      const input = h('input', { type: 'file', accept: 'image/*', class: 'visually-hidden', 'data-testid': 'export-check-file' });
      const pick = h('button', { type: 'button', 'data-testid': 'export-check-pick' }, 'Choose an image');
      const chosen = h('span', { class: 'muted', 'data-testid': 'export-check-chosen' });
      const run = h('button', { type: 'button', 'data-testid': 'export-check-run', disabled: true }, 'Run model.onnx in this browser');
      pick.addEventListener('click', () => input.click());
      input.addEventListener('change', () => {
        this.file = input.files?.[0] ?? null;
        input.value = '';
        chosen.textContent = this.file ? this.file.name : '';
        run.disabled = !this.file;
      });
      run.addEventListener('click', async () => {
        run.disabled = true;
        try {
          await this.check();
        } finally {
          run.disabled = !this.file;
        }
      });
      parts.push(
        h('h3', {}, 'Check the export in the browser'),
        h('p', { class: 'muted' }, 'Runs the exported model.onnx with onnxruntime-web (WebAssembly) on the server\'s preprocessed tensor and compares with the server\'s prediction.'),
        h('div', { class: 'tools' }, pick, input, chosen, run),
        this.status,
        this.table,
      );
    } else {
      parts.push(h('p', { class: 'muted' }, 'The in-browser check runs image models; this project\'s model needs its own preprocessing (see README.md in the zip).'));
    }
    replace(this.el, ...parts);
  }

  private async check(): Promise<void> {
    const model = this.model;
    const file = this.file;
    if (!model || !file) return;
    this.el.dataset.check = 'running';
    replace(this.table);
    const say = (t: string) => {
      this.status.textContent = t;
    };
    try {
      const t0 = performance.now();
      say('Loading onnxruntime-web…');
      const ort = await loadOrt();
      if (!this.session) {
        say('Downloading model.onnx…');
        const manifest = (await (await api.modelFile(model.id, 'graft.json')).json()) as { model?: { output?: string }; inference?: { tta?: string }; config?: { layout?: string } };
        this.tta = manifest.inference?.tta === 'flip' ? (manifest.config?.layout === 'NHWC' ? 'NHWC' : 'NCHW') : null;
        const bytes = new Uint8Array(await (await api.modelFile(model.id, 'model.onnx')).arrayBuffer());
        say(`Creating the session (${formatBytes(bytes.length)})…`);
        this.session = await ort.InferenceSession.create(bytes, { executionProviders: ['wasm'], graphOptimizationLevel: 'all' });
        this.outputName = manifest.model?.output ?? this.session.outputNames[0] ?? null;
      }
      say('Preprocessing on the server…');
      const [tensor, server] = await Promise.all([api.preprocess(model.id, file), api.predictFiles(model.id, [file])]);
      const row = server.predictions[0];
      if (!row) throw new Error(server.skipped[0] ? `${server.skipped[0].name}: ${server.skipped[0].reason}` : 'the server made no prediction');
      say('Running in the browser…');
      const t1 = performance.now();
      const out = await this.session.run({ [tensor.input]: new ort.Tensor('float32', tensor.data, tensor.dims) });
      const t2 = performance.now();
      const value = out[this.outputName ?? ''] ?? Object.values(out)[0];
      if (!value) throw new Error('the model gave no output');
      const browser = Array.from(value.data as Float32Array);
      for (const v of Object.values(out)) v.dispose();
      if (this.tta) {
        // The model was trained with test-time augmentation: as the server does, average with the mirrored image.
        const mirrored = await this.session.run({ [tensor.input]: new ort.Tensor('float32', mirrorTensor(tensor.data, tensor.dims, this.tta), tensor.dims) });
        const m = (mirrored[this.outputName ?? ''] ?? Object.values(mirrored)[0])!.data as Float32Array;
        for (let i = 0; i < browser.length; i++) browser[i] = (browser[i]! + m[i]!) / 2;
        for (const v of Object.values(mirrored)) v.dispose();
      }
      const diff = maxAbsDiff(browser, row.probabilities);
      const ok = diff <= 1e-4;
      const table = h('table', { class: 'compare', 'data-testid': 'export-compare' },
        h('thead', {}, h('tr', {}, h('th', {}, 'class'), h('th', {}, 'server'), h('th', {}, 'browser'), h('th', {}, '|diff|'))));
      const body = h('tbody');
      model.labels.forEach((label, i) => {
        const a = row.probabilities[i] ?? NaN;
        const b = browser[i] ?? NaN;
        body.appendChild(h('tr', {}, h('th', { scope: 'row' }, label), h('td', {}, a.toFixed(6)), h('td', { 'data-testid': 'export-browser-prob' }, b.toFixed(6)), h('td', {}, Math.abs(a - b).toExponential(2))));
      });
      table.appendChild(body);
      replace(this.table,
        h('p', { class: ok ? 'ok' : 'error' }, 'max |diff| = ', h('strong', { 'data-testid': 'export-maxdiff', 'data-value': String(diff) }, diff.toExponential(2)), ok ? ' — matches the server (≤ 1e-4)' : ' — does NOT match the server'),
        table);
      say(`Browser inference ${(t2 - t1).toFixed(0)} ms (total ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
      this.el.dataset.check = ok ? 'match' : 'mismatch';
    } catch (err) {
      say(`Check failed: ${errorMessage(err)}`);
      this.el.dataset.check = 'error';
    }
  }

  dispose(): void {
    void this.session?.release().catch(() => undefined);
    this.session = null;
  }
}

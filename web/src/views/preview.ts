/** Preview: try the trained model on an uploaded file, the webcam (live), a microphone clip or typed text. */
import { api, type Model, type PredictResult, type Project } from '../api.js';
import { h, replace } from '../dom.js';
import { probabilityBars } from '../charts.js';
import { captureFrame, openCamera, recordClip, stamp, stopStream } from '../media.js';
import { attempt, errorMessage, toast } from '../ui.js';

export class PreviewView {
  readonly el = h('section', { class: 'panel preview', 'data-testid': 'preview-panel' });
  private readonly result = h('div', { class: 'preview-result', 'data-testid': 'preview-result', 'aria-live': 'polite' });
  private readonly media = h('div', { class: 'preview-media' });
  private stream: MediaStream | null = null;
  private live = false;
  private objectUrl: string | null = null;
  private liveButton: HTMLButtonElement | null = null;

  constructor(private readonly project: Project, private readonly model: Model | null) {
    if (!model) {
      replace(this.el, h('h2', {}, 'Preview'), h('p', { class: 'empty' }, 'Train a model first.'));
      return;
    }
    const task = project.task;
    const tools = h('div', { class: 'tools' });
    if (task === 'text') {
      const area = h('textarea', { rows: 3, placeholder: 'Type a text to classify', 'data-testid': 'preview-text' });
      const go = h('button', { type: 'button', class: 'primary', 'data-testid': 'preview-text-run' }, 'Classify');
      go.addEventListener('click', () => void attempt('Predict', async () => {
        const t = area.value.trim();
        if (t) this.showResult(await api.predictTexts(model.id, [t]));
      }));
      tools.append(area, go);
    } else {
      const input = h('input', { type: 'file', accept: task === 'image' ? 'image/*' : 'audio/*,.wav,.mp3,.flac,.ogg,.oga', class: 'visually-hidden', 'data-testid': 'preview-file' });
      const pick = h('button', { type: 'button', 'data-testid': 'preview-upload' }, task === 'image' ? 'Choose an image' : 'Choose a clip');
      pick.addEventListener('click', () => input.click());
      input.addEventListener('change', () => {
        const f = input.files?.[0];
        input.value = '';
        if (f) void this.predictFile(f);
      });
      tools.append(pick, input);
      if (task === 'image') {
        const cam = h('button', { type: 'button', 'data-testid': 'preview-webcam' }, 'Webcam (live)');
        cam.addEventListener('click', () => void this.toggleLive(cam));
        tools.appendChild(cam);
      } else {
        const mic = h('button', { type: 'button', 'data-testid': 'preview-mic' }, 'Record 2 s');
        mic.addEventListener('click', () => void this.recordAndPredict(mic));
        tools.appendChild(mic);
      }
      const drop = h('div', { class: 'dropzone', 'data-testid': 'preview-dropzone' }, h('span', { class: 'muted' }, 'Drop a file here'), tools);
      drop.addEventListener('dragover', (e) => {
        e.preventDefault();
        drop.classList.add('over');
      });
      drop.addEventListener('dragleave', () => drop.classList.remove('over'));
      drop.addEventListener('drop', (e) => {
        e.preventDefault();
        drop.classList.remove('over');
        const f = e.dataTransfer?.files[0];
        if (f) void this.predictFile(f);
      });
      replace(this.el, h('h2', {}, 'Preview'), drop, this.media, this.result);
      return;
    }
    replace(this.el, h('h2', {}, 'Preview'), tools, this.result);
  }

  private async predictFile(file: File): Promise<void> {
    if (!this.model) return;
    this.stopLive();
    if (this.objectUrl) URL.revokeObjectURL(this.objectUrl);
    this.objectUrl = URL.createObjectURL(file);
    if (this.project.task === 'image') replace(this.media, h('img', { src: this.objectUrl, alt: file.name, class: 'preview-image', 'data-testid': 'preview-image' }));
    else replace(this.media, h('audio', { src: this.objectUrl, controls: true }));
    this.result.dataset.state = 'running';
    const res = await attempt('Predict', () => api.predictFiles(this.model!.id, [file]));
    if (res) this.showResult(res);
  }

  private showResult(res: PredictResult): void {
    const row = res.predictions[0];
    if (!row) {
      const why = res.skipped[0];
      replace(this.result, h('p', { class: 'error', 'data-testid': 'preview-skipped' }, why ? `${why.name}: ${why.reason}` : 'No prediction'));
      this.result.dataset.state = 'skipped';
      return;
    }
    const labels = this.model?.labels ?? [];
    const rows = row.probabilities.length === labels.length
      ? labels.map((label, i) => ({ label, probability: row.probabilities[i]! }))
      : row.predictions;
    const top = [...rows].sort((a, b) => b.probability - a.probability)[0];
    replace(this.result,
      top ? h('p', { class: 'top' }, 'Looks like ', h('strong', { 'data-testid': 'preview-top' }, top.label)) : null,
      probabilityBars(rows, 'preview-bars'));
    this.result.dataset.state = 'done';
  }

  private async toggleLive(button: HTMLButtonElement): Promise<void> {
    if (this.stream) {
      this.stopLive();
      return;
    }
    const video = h('video', { class: 'webcam', 'data-testid': 'preview-video' });
    try {
      this.stream = await openCamera(video);
    } catch (err) {
      toast(`Webcam: ${errorMessage(err)}`, 'error');
      return;
    }
    button.textContent = 'Stop webcam';
    this.liveButton = button;
    replace(this.media, video);
    this.live = true;
    let n = 0;
    // One request at a time: the next frame is taken when the last answer is in, so a slow server is never flooded.
    while (this.live && this.model) {
      const started = performance.now();
      const frame = await captureFrame(video, `frame-${n++}.jpg`, 224);
      if (frame) {
        try {
          this.showResult(await api.predictFiles(this.model.id, [frame]));
        } catch (err) {
          toast(`Predict: ${errorMessage(err)}`, 'error');
          break;
        }
      }
      await new Promise((r) => setTimeout(r, Math.max(0, 250 - (performance.now() - started))));
    }
  }

  private async recordAndPredict(button: HTMLButtonElement): Promise<void> {
    button.disabled = true;
    try {
      const clip = await recordClip(2, `mic-${stamp()}.wav`);
      await this.predictFile(clip);
    } catch (err) {
      toast(`Microphone: ${errorMessage(err)}`, 'error');
    } finally {
      button.disabled = false;
    }
  }

  private stopLive(): void {
    this.live = false;
    stopStream(this.stream);
    this.stream = null;
    if (this.liveButton) this.liveButton.textContent = 'Webcam (live)';
    this.liveButton = null;
  }

  dispose(): void {
    this.stopLive();
    if (this.objectUrl) URL.revokeObjectURL(this.objectUrl);
  }
}

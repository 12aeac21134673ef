/**
 * Class cards: an editable name, the sample count, upload by drag-and-drop or file picker (in chunks, with a
 * progress bar and the rejected files listed), webcam capture for image projects, microphone clips for audio
 * ones, a text box for text ones, and a bounded, paged grid of lazily loaded thumbnails.
 */
import { api, fetchBlob, type ClassInfo, type Project, type Rejected, type Sample } from '../api.js';
import { confirmButton, formatBytes, h, progressBar, replace } from '../dom.js';
import { captureFrame, openCamera, recordClip, stamp, stopStream } from '../media.js';
import { ThumbLoader } from '../thumbs.js';
import { attempt, errorMessage, toast } from '../ui.js';

/** Files per upload request. */
export const UPLOAD_CHUNK = 20;
/** Thumbnails per page of a class grid. */
export const PAGE = 24;

const ACCEPT: Record<Project['task'], string> = {
  image: 'image/*',
  audio: 'audio/*,.wav,.mp3,.flac,.ogg,.oga,.opus',
  text: '.txt,text/plain',
};

export interface ClassesContext {
  project(): Project;
  /** Re-reads the project (counts, classes) and updates every view. */
  refresh(): Promise<void>;
}

export class ClassesView {
  readonly el = h('section', { class: 'panel classes', 'data-testid': 'classes-panel' });
  private readonly cards = new Map<string, ClassCard>();
  private readonly list = h('div', { class: 'class-list' });

  constructor(private readonly ctx: ClassesContext) {
    const name = h('input', { type: 'text', placeholder: 'New class name', maxlength: 64, 'data-testid': 'new-class-name', 'aria-label': 'New class name' });
    const add = h('button', { type: 'button', 'data-testid': 'add-class' }, '+ Add a class');
    const submit = async () => {
      const p = this.ctx.project();
      const n = name.value.trim() || nextClassName(p);
      const ok = await attempt('Add class', () => api.addClass(p.id, n));
      if (ok) {
        name.value = '';
        await this.ctx.refresh();
      }
    };
    add.addEventListener('click', () => void submit());
    name.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') void submit();
    });
    const zipInput = h('input', { type: 'file', accept: '.zip,application/zip', class: 'visually-hidden', 'data-testid': 'import-zip-input' });
    const zipButton = h('button', { type: 'button', 'data-testid': 'import-zip' }, 'Import a .zip of class folders');
    const zipStatus = h('span', { class: 'muted', 'data-testid': 'import-zip-status' });
    const zipRejected = h('ul', { class: 'rejected', 'data-testid': 'import-zip-rejected' });
    zipButton.addEventListener('click', () => zipInput.click());
    zipInput.addEventListener('change', () => {
      const f = zipInput.files?.[0];
      zipInput.value = '';
      if (!f) return;
      void (async () => {
        zipButton.disabled = true;
        zipStatus.textContent = `Importing ${f.name} (${formatBytes(f.size)})…`;
        replace(zipRejected);
        const res = await attempt('Import', () => api.importZip(this.ctx.project().id, f));
        zipButton.disabled = false;
        zipStatus.textContent = res ? `Imported ${res.added} sample${res.added === 1 ? '' : 's'}${res.rejected.length ? `, ${res.rejected.length} rejected` : ''}` : 'Import failed';
        for (const r of res?.rejected.slice(0, 20) ?? []) zipRejected.appendChild(h('li', {}, h('span', { class: 'file' }, r.name), ': ', r.reason));
        await this.ctx.refresh();
      })();
    });
    replace(this.el, h('h2', {}, 'Classes'), this.list, h('div', { class: 'add-class' }, name, add),
      h('div', { class: 'tools import' }, zipButton, zipInput, zipStatus), zipRejected);
    this.update(ctx.project());
  }

  /** Brings the cards in line with the project: new cards for new classes, counts and names updated in place. */
  update(p: Project): void {
    const seen = new Set<string>();
    for (const c of p.classes) {
      seen.add(c.id);
      let card = this.cards.get(c.id);
      if (!card) {
        card = new ClassCard(this.ctx, c);
        this.cards.set(c.id, card);
      } else card.update(c);
      this.list.appendChild(card.el); // keeps the project's order
    }
    for (const [id, card] of this.cards) {
      if (!seen.has(id)) {
        card.dispose();
        card.el.remove();
        this.cards.delete(id);
      }
    }
    if (!p.classes.length) this.list.appendChild(h('p', { class: 'empty', 'data-testid': 'no-classes' }, 'No classes yet: add one below.'));
    else this.list.querySelector('.empty')?.remove();
  }

  dispose(): void {
    for (const c of this.cards.values()) c.dispose();
    this.cards.clear();
  }
}

function samplesText(n: number): string {
  return `${n} sample${n === 1 ? '' : 's'}`;
}

function nextClassName(p: Project): string {
  const names = new Set(p.classes.map((c) => c.name));
  for (let i = p.classes.length + 1; ; i++) if (!names.has(`Class ${i}`)) return `Class ${i}`;
}

class ClassCard {
  readonly el: HTMLElement;
  private info: ClassInfo;
  private readonly nameInput: HTMLInputElement;
  private readonly count = h('span', { class: 'count', 'data-testid': 'class-count' });
  private readonly grid = h('div', { class: 'sample-grid', 'data-testid': 'sample-grid' });
  private readonly more = h('button', { type: 'button', class: 'link', 'data-testid': 'samples-more' }, 'Show more');
  private readonly shown = h('span', { class: 'muted', 'data-testid': 'samples-shown' });
  private readonly upload = progressBar('upload-progress');
  private readonly rejected = h('ul', { class: 'rejected', 'data-testid': 'upload-rejected' });
  private readonly capture = h('div', { class: 'capture' });
  private readonly thumbs = new ThumbLoader();
  private loaded = 0;
  private total = 0;
  /** Bumped by every reload: a page that arrives for an older one is dropped. */
  private generation = 0;
  private busy = false;
  private readonly queue: File[] = [];
  private stream: MediaStream | null = null;

  constructor(private readonly ctx: ClassesContext, info: ClassInfo) {
    this.info = info;
    const task = ctx.project().task;
    this.nameInput = h('input', { type: 'text', class: 'class-name', value: info.name, maxlength: 64, 'aria-label': 'Class name', 'data-testid': 'class-name' });
    this.nameInput.addEventListener('change', () => void this.rename());
    this.nameInput.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') this.nameInput.blur();
    });
    const del = confirmButton('Delete', 'Delete class?', { class: 'danger small', 'data-testid': 'class-delete' }, async () => {
      await attempt('Delete class', () => api.deleteClass(ctx.project().id, this.info.id));
      await ctx.refresh();
    });

    const fileInput = h('input', { type: 'file', multiple: true, accept: ACCEPT[task], class: 'visually-hidden', 'data-testid': 'class-file-input' });
    fileInput.addEventListener('change', () => {
      const files = [...(fileInput.files ?? [])];
      fileInput.value = '';
      this.enqueue(files);
    });
    const pick = h('button', { type: 'button', 'data-testid': 'class-upload' }, 'Upload files');
    pick.addEventListener('click', () => fileInput.click());

    const tools = h('div', { class: 'tools' }, pick, fileInput);
    if (task === 'image') {
      const cam = h('button', { type: 'button', 'data-testid': 'class-webcam' }, 'Webcam');
      cam.addEventListener('click', () => void this.toggleWebcam());
      tools.appendChild(cam);
    } else if (task === 'audio') {
      const secs = h('select', { 'aria-label': 'Clip length', 'data-testid': 'class-mic-seconds' }, ...[1, 2, 3, 5].map((n) => h('option', { value: n, selected: n === 2 }, `${n} s`)));
      const mic = h('button', { type: 'button', 'data-testid': 'class-mic' }, 'Record clip');
      mic.addEventListener('click', () => void this.recordAudio(mic, Number(secs.value)));
      tools.append(mic, secs);
    }
    const textBox = task === 'text' ? this.textEntry() : null;

    const drop = h('div', { class: 'dropzone', 'data-testid': 'class-dropzone' }, h('span', { class: 'muted' }, task === 'text' ? 'Drop .txt files here (one example each), or type below' : 'Drop files here'), tools);
    drop.addEventListener('dragover', (e) => {
      e.preventDefault();
      drop.classList.add('over');
    });
    drop.addEventListener('dragleave', () => drop.classList.remove('over'));
    drop.addEventListener('drop', (e) => {
      e.preventDefault();
      drop.classList.remove('over');
      this.enqueue([...(e.dataTransfer?.files ?? [])]);
    });

    this.more.addEventListener('click', () => void this.loadPage());
    this.upload.el.classList.add('hidden');
    this.total = info.count; // the first page is loaded below, not by update()
    this.el = h('article', { class: 'class-card', 'data-testid': 'class-card', 'data-class-id': info.id },
      h('header', {}, this.nameInput, this.count, del),
      drop,
      textBox,
      this.capture,
      this.upload.el,
      this.rejected,
      this.grid,
      h('div', { class: 'grid-footer' }, this.shown, this.more),
    );
    this.update(info);
    void this.reload();
  }

  update(info: ClassInfo): void {
    const changed = info.count !== this.total;
    this.info = info;
    if (document.activeElement !== this.nameInput) this.nameInput.value = info.name;
    this.count.textContent = samplesText(info.count);
    this.el.dataset.className = info.name;
    if (changed && !this.busy) void this.reload();
  }

  private async rename(): Promise<void> {
    const name = this.nameInput.value.trim();
    if (!name || name === this.info.name) {
      this.nameInput.value = this.info.name;
      return;
    }
    const res = await attempt('Rename class', () => api.renameClass(this.ctx.project().id, this.info.id, name));
    if (!res) this.nameInput.value = this.info.name;
    else this.info = res;
    await this.ctx.refresh();
  }

  private textEntry(): HTMLElement {
    const area = h('textarea', { rows: 3, placeholder: 'One example per line', 'data-testid': 'class-text-input', 'aria-label': 'Text examples' });
    const add = h('button', { type: 'button', 'data-testid': 'class-text-add' }, 'Add examples');
    add.addEventListener('click', async () => {
      const texts = area.value.split(/\r?\n/).map((t) => t.trim()).filter(Boolean);
      if (!texts.length) return;
      add.disabled = true;
      const res = await attempt('Add texts', () => api.uploadTexts(this.ctx.project().id, this.info.id, texts));
      add.disabled = false;
      if (res) {
        area.value = '';
        this.showRejected(res.rejected);
        await this.ctx.refresh();
      }
    });
    return h('div', { class: 'text-entry' }, area, add);
  }

  /** Queues files for upload; one upload loop per card sends them in chunks. */
  enqueue(files: File[]): void {
    if (!files.length) return;
    this.queue.push(...files);
    if (!this.busy) void this.drain();
  }

  private async drain(): Promise<void> {
    this.busy = true;
    replace(this.rejected);
    this.upload.el.classList.remove('hidden');
    let done = 0;
    let bytes = 0;
    let added = 0;
    const rejected: Rejected[] = [];
    try {
      while (this.queue.length) {
        const total = done + this.queue.length;
        const chunk = this.queue.splice(0, UPLOAD_CHUNK);
        this.upload.set(done / total, `Uploading ${done} / ${total} files (${formatBytes(bytes)})`);
        try {
          const res = await api.uploadFiles(this.ctx.project().id, this.info.id, chunk);
          added += res.added.length;
          rejected.push(...res.rejected);
        } catch (err) {
          for (const f of chunk) rejected.push({ name: f.name, reason: errorMessage(err) });
          if (err instanceof Error && /TOO_LARGE|UNAUTHORIZED|NOT_FOUND/.test(errorMessage(err))) {
            for (const f of this.queue.splice(0)) rejected.push({ name: f.name, reason: 'not sent' });
          }
        }
        done += chunk.length;
        bytes += chunk.reduce((a, f) => a + f.size, 0);
        this.count.textContent = samplesText(this.info.count + added);
      }
      this.upload.set(1, `Uploaded ${added} of ${done} files (${formatBytes(bytes)})${rejected.length ? `, ${rejected.length} rejected` : ''}`);
      this.upload.el.dataset.done = 'true';
    } finally {
      this.busy = false;
      this.showRejected(rejected);
      // The refresh updates this card's count, which reloads its first page of thumbnails.
      await this.ctx.refresh();
    }
  }

  private showRejected(rejected: Rejected[]): void {
    replace(this.rejected);
    const max = 20;
    for (const r of rejected.slice(0, max)) this.rejected.appendChild(h('li', {}, h('span', { class: 'file' }, r.name), ': ', r.reason));
    if (rejected.length > max) this.rejected.appendChild(h('li', {}, `… and ${rejected.length - max} more`));
  }

  /** Shows the first page of the class's samples again. */
  private async reload(): Promise<void> {
    const gen = ++this.generation;
    this.thumbs.clear();
    replace(this.grid);
    this.loaded = 0;
    await this.loadPage(gen);
  }

  private async loadPage(gen = this.generation): Promise<void> {
    const p = this.ctx.project();
    this.more.disabled = true;
    const res = await attempt('Load samples', () => api.samples(p.id, this.info.id, this.loaded, PAGE));
    if (gen !== this.generation) return;
    this.more.disabled = false;
    if (!res) return;
    this.total = res.total;
    for (const sample of res.samples) this.grid.appendChild(this.tile(p, sample));
    this.loaded += res.samples.length;
    this.shown.textContent = this.total ? `Showing ${this.loaded} of ${this.total}` : 'No samples yet';
    this.more.classList.toggle('hidden', this.loaded >= this.total);
  }

  private tile(p: Project, sample: Sample): HTMLElement {
    const title = `${sample.name} (${formatBytes(sample.bytes)})`;
    let body: HTMLElement;
    if (p.task === 'image') {
      const img = h('img', { alt: sample.name, title, width: 64, height: 64 });
      this.thumbs.watch(img, api.thumbnailUrl(p.id, sample.id));
      body = img;
    } else if (p.task === 'audio') {
      const play = h('button', { type: 'button', class: 'small', title, 'aria-label': `Play ${sample.name}` }, '▶');
      play.addEventListener('click', () => void playSample(p.id, sample.id));
      body = h('div', { class: 'audio-tile' }, play, h('span', { class: 'name' }, sample.name));
    } else {
      body = h('div', { class: 'text-tile', title: sample.text ?? sample.name }, sample.text ?? sample.name);
    }
    const tile = h('div', { class: `tile ${p.task}`, 'data-testid': 'sample-thumb', 'data-sample-id': sample.id }, body);
    const del = h('button', { type: 'button', class: 'tile-delete', 'aria-label': `Delete ${sample.name}`, 'data-testid': 'sample-delete' }, '×');
    del.addEventListener('click', async () => {
      const ok = await attempt('Delete sample', () => api.deleteSample(p.id, sample.id).then(() => true));
      if (!ok) return;
      if (body instanceof HTMLImageElement) this.thumbs.release(body);
      tile.remove();
      this.loaded--;
      await this.ctx.refresh();
    });
    tile.appendChild(del);
    return tile;
  }

  private async toggleWebcam(): Promise<void> {
    if (this.stream) {
      this.closeWebcam();
      return;
    }
    const video = h('video', { class: 'webcam', 'data-testid': 'class-webcam-video' });
    try {
      this.stream = await openCamera(video);
    } catch (err) {
      toast(`Webcam: ${errorMessage(err)}`, 'error');
      return;
    }
    const hold = h('button', { type: 'button', class: 'primary', 'data-testid': 'class-webcam-hold' }, 'Hold to record');
    const one = h('button', { type: 'button', 'data-testid': 'class-webcam-snap' }, 'Capture one');
    const close = h('button', { type: 'button', 'data-testid': 'class-webcam-close' }, 'Close');
    let timer: number | undefined;
    let n = 0;
    const snap = async () => {
      const f = await captureFrame(video, `webcam-${stamp()}-${n++}.jpg`);
      if (f) this.enqueue([f]);
    };
    const start = () => {
      if (timer === undefined) timer = window.setInterval(() => void snap(), 200);
    };
    const stop = () => {
      window.clearInterval(timer);
      timer = undefined;
    };
    hold.addEventListener('pointerdown', start);
    for (const ev of ['pointerup', 'pointerleave', 'pointercancel'] as const) hold.addEventListener(ev, stop);
    one.addEventListener('click', () => void snap());
    close.addEventListener('click', () => this.closeWebcam());
    replace(this.capture, video, h('div', { class: 'tools' }, hold, one, close));
  }

  private closeWebcam(): void {
    stopStream(this.stream);
    this.stream = null;
    replace(this.capture);
  }

  private async recordAudio(button: HTMLButtonElement, seconds: number): Promise<void> {
    button.disabled = true;
    const label = button.textContent ?? '';
    button.textContent = 'Recording…';
    try {
      const clip = await recordClip(seconds, `mic-${stamp()}.wav`);
      this.enqueue([clip]);
    } catch (err) {
      toast(`Microphone: ${errorMessage(err)}`, 'error');
    } finally {
      button.disabled = false;
      button.textContent = label;
    }
  }

  dispose(): void {
    this.closeWebcam();
    this.thumbs.clear();
    this.queue.length = 0;
  }
}

let playing: { audio: HTMLAudioElement; url: string } | null = null;

async function playSample(pid: string, sid: string): Promise<void> {
  await attempt('Play', async () => {
    const { blob } = await fetchBlob(api.contentUrl(pid, sid));
    if (playing) {
      playing.audio.pause();
      URL.revokeObjectURL(playing.url);
    }
    const url = URL.createObjectURL(blob);
    const audio = new Audio(url);
    playing = { audio, url };
    await audio.play();
  });
}

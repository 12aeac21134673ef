/** graft serve's page: wires the views together. */
import { api, initToken, type Job, type Model, type Project } from './api.js';
import { confirmButton, formatBytes, h, replace } from './dom.js';
import { ClassesView } from './views/classes.js';
import { ExportView } from './views/export.js';
import { renderInsights } from './views/insights.js';
import { PreviewView } from './views/preview.js';
import { ProjectsView } from './views/projects.js';
import { TrainView } from './views/train.js';
import { attempt, toast } from './ui.js';

class Workspace {
  readonly el = h('div', { class: 'workspace', 'data-testid': 'workspace' });
  private readonly classes: ClassesView;
  private readonly train: TrainView;
  private readonly insights = h('section', { class: 'panel insights', 'data-testid': 'insights-panel' });
  private readonly modelBar = h('div', { class: 'model-bar' });
  private readonly previewSlot = h('div');
  private readonly exportSlot = h('div');
  private readonly title: HTMLInputElement;
  private preview: PreviewView | null = null;
  private exporter: ExportView | null = null;
  private models: Model[] = [];
  private model: Model | null = null;
  private refreshing: Promise<void> | null = null;

  constructor(private project: Project, private readonly app: App) {
    const ctx = { project: () => this.project, refresh: () => this.refresh() };
    this.classes = new ClassesView(ctx);
    this.train = new TrainView({ project: () => this.project, finished: (j) => void this.jobFinished(j) });
    this.title = h('input', { type: 'text', class: 'project-title', value: project.name, maxlength: 64, 'aria-label': 'Project name', 'data-testid': 'project-title' });
    this.title.addEventListener('change', () => void this.rename());
    const del = confirmButton('Delete project', 'Really delete?', { class: 'danger small', 'data-testid': 'project-delete' }, async () => {
      const ok = await attempt('Delete project', () => api.deleteProject(this.project.id).then(() => true));
      if (ok) this.app.closed(this.project.id);
    });
    replace(this.el,
      h('div', { class: 'project-header' }, this.title, h('span', { class: 'badge', 'data-testid': 'project-task-badge' }, project.task), del),
      h('div', { class: 'columns' },
        h('div', { class: 'col' }, this.classes.el),
        h('div', { class: 'col' }, this.train.el, this.insights),
        h('div', { class: 'col' }, this.modelBar, this.previewSlot, this.exportSlot)),
    );
    this.showModel(null);
    void this.loadJobsAndModels();
  }

  private async rename(): Promise<void> {
    const name = this.title.value.trim();
    if (!name || name === this.project.name) {
      this.title.value = this.project.name;
      return;
    }
    const p = await attempt('Rename project', () => api.renameProject(this.project.id, name));
    if (p) this.setProject(p);
    else this.title.value = this.project.name;
  }

  private setProject(p: Project): void {
    this.project = p;
    if (document.activeElement !== this.title) this.title.value = p.name;
    this.classes.update(p);
    this.app.projects.upsert(p);
  }

  /** Re-reads the project; concurrent calls share one request. */
  refresh(): Promise<void> {
    this.refreshing ??= (async () => {
      try {
        const p = await attempt('Refresh project', () => api.project(this.project.id));
        if (p) this.setProject(p);
      } finally {
        this.refreshing = null;
      }
    })();
    return this.refreshing;
  }

  private async loadJobsAndModels(): Promise<void> {
    const [jobs, models] = await Promise.all([attempt('Load jobs', () => api.jobs(this.project.id)), attempt('Load models', () => api.models(this.project.id))]);
    this.models = sortNewest(models ?? []);
    this.renderModelBar();
    if (this.models[0]) this.showModel(this.models[0]);
    const latest = sortNewest(jobs ?? [])[0];
    if (latest) this.train.attach(latest);
  }

  private async jobFinished(job: Job): Promise<void> {
    window.dispatchEvent(new Event('graft:health'));
    if (job.state === 'succeeded' && job.modelId) {
      const m = await attempt('Load model', () => api.model(job.modelId!));
      if (m) {
        this.models = sortNewest([m, ...this.models.filter((x) => x.id !== m.id)]);
        this.renderModelBar();
        this.showModel(m);
      }
    } else if (job.state === 'failed') toast(`Training failed: ${job.error ?? 'unknown error'}`, 'error');
  }

  private renderModelBar(): void {
    if (this.models.length < 2) {
      replace(this.modelBar);
      return;
    }
    const sel = h('select', { 'data-testid': 'model-select', 'aria-label': 'Model' },
      ...this.models.map((m) => h('option', { value: m.id, selected: m.id === this.model?.id }, `${new Date(m.createdAt).toLocaleString()} · ${(m.metrics.accuracy * 100).toFixed(1)}%`)));
    sel.addEventListener('change', () => {
      const m = this.models.find((x) => x.id === sel.value);
      if (m) this.showModel(m);
    });
    replace(this.modelBar, h('label', { class: 'field' }, h('span', { class: 'field-label' }, 'Model'), sel));
  }

  private showModel(m: Model | null): void {
    this.model = m;
    this.el.dataset.modelId = m?.id ?? '';
    renderInsights(this.insights, m);
    this.preview?.dispose();
    this.exporter?.dispose();
    this.preview = new PreviewView(this.project, m);
    this.exporter = new ExportView(this.project, m);
    replace(this.previewSlot, this.preview.el);
    replace(this.exportSlot, this.exporter.el);
    const sel = this.modelBar.querySelector('select');
    if (sel && m) sel.value = m.id;
  }

  dispose(): void {
    this.classes.dispose();
    this.train.dispose();
    this.preview?.dispose();
    this.exporter?.dispose();
  }
}

function sortNewest<T extends { createdAt: string }>(xs: T[]): T[] {
  return [...xs].sort((a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt));
}

class App {
  readonly projects = new ProjectsView((p) => this.open(p.id));
  private readonly main = h('main', { class: 'main', 'data-testid': 'main' });
  private workspace: Workspace | null = null;

  constructor(root: HTMLElement) {
    const status = h('span', { class: 'server', 'data-testid': 'server-status' }, 'connecting…');
    const memory = h('span', { class: 'memory muted', 'data-testid': 'memory' });
    replace(root,
      h('header', { class: 'top' }, h('h1', {}, 'graft'), h('span', { class: 'muted' }, 'transfer learning on ONNX Runtime'), h('span', { class: 'spacer' }), memory, status),
      h('div', { class: 'layout' }, this.projects.el, this.main));
    this.welcome();
    void this.start(status, memory);
    window.addEventListener('hashchange', () => this.route());
  }

  private async start(status: HTMLElement, memory: HTMLElement): Promise<void> {
    const v = await attempt('Connect', () => api.version());
    status.textContent = v ? `graft ${v.version} · onnxruntime ${v.onnxruntime}` : 'not connected';
    const ps = await this.projects.load();
    if (!this.route() && ps.length === 1) this.open(ps[0]!.id);
    const tick = async () => {
      const hl = await api.health().catch(() => null);
      const perf = performance as Performance & { memory?: { usedJSHeapSize: number } };
      memory.textContent = [
        hl ? `server ${formatBytes(hl.memory.rssBytes)} RSS` : '',
        hl && (hl.jobs.running || hl.jobs.queued) ? `${hl.jobs.running} running, ${hl.jobs.queued} queued` : '',
        perf.memory ? `page ${formatBytes(perf.memory.usedJSHeapSize)} heap` : '',
      ].filter(Boolean).join(' · ');
    };
    void tick();
    window.setInterval(() => void tick(), 15_000);
    window.addEventListener('graft:health', () => void tick());
  }

  /** Opens the project named in `#project=ID`; false when there is none. */
  private route(): boolean {
    const m = /(?:^#|&)project=([a-z0-9]+)/.exec(location.hash);
    if (!m) return false;
    void this.show(m[1]!);
    return true;
  }

  open(pid: string): void {
    if (location.hash !== `#project=${pid}`) location.hash = `project=${pid}`;
    else void this.show(pid);
  }

  private showing = 0;

  private async show(pid: string): Promise<void> {
    const seq = ++this.showing;
    const p = await attempt('Open project', () => api.project(pid));
    if (!p || seq !== this.showing) return; // another project was asked for meanwhile
    this.workspace?.dispose();
    this.workspace = new Workspace(p, this);
    this.projects.select(pid);
    replace(this.main, this.workspace.el);
  }

  closed(pid: string): void {
    this.projects.remove(pid);
    this.workspace?.dispose();
    this.workspace = null;
    this.projects.select(null);
    history.replaceState(null, '', location.pathname);
    this.welcome();
  }

  private welcome(): void {
    replace(this.main, h('div', { class: 'welcome', 'data-testid': 'welcome' },
      h('h2', {}, 'Teach a model with your own examples'),
      h('ol', {},
        h('li', {}, 'Create a project and name its classes.'),
        h('li', {}, 'Drop in examples for each class (or use the webcam / microphone).'),
        h('li', {}, 'Press Train and watch it learn; look under the hood.'),
        h('li', {}, 'Try it live, then export the model (ONNX) and run it anywhere.'))));
  }
}

initToken();
const root = document.getElementById('app');
if (root) new App(root);

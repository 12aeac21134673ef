/** The project list and the form that creates a project. */
import { api, type Project, type Task } from '../api.js';
import { h, replace } from '../dom.js';
import { attempt, field } from '../ui.js';

export class ProjectsView {
  readonly el = h('nav', { class: 'projects', 'aria-label': 'Projects', 'data-testid': 'projects-panel' });
  private readonly list = h('ul', { class: 'project-list', 'data-testid': 'project-list' });
  private projects: Project[] = [];
  private current: string | null = null;

  constructor(private readonly open: (p: Project) => void) {
    const name = h('input', { type: 'text', maxlength: 64, placeholder: 'My project', 'data-testid': 'project-name', pattern: '[A-Za-z0-9 _.\\-]{1,64}' });
    const task = h('select', { 'data-testid': 'project-task' }, h('option', { value: 'image' }, 'Images'), h('option', { value: 'audio' }, 'Audio'), h('option', { value: 'text' }, 'Text'));
    const create = h('button', { type: 'submit', class: 'primary', 'data-testid': 'project-create' }, 'Create project');
    const form = h('form', { class: 'new-project', 'data-testid': 'project-form' }, h('h2', {}, 'New project'), field('Name', name, 'letters, digits, space, - _ .'), field('Kind', task), create);
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      void (async () => {
        const n = name.value.trim() || `Project ${this.projects.length + 1}`;
        create.disabled = true;
        const p = await attempt('Create project', () => api.createProject(n, task.value as Task, ['Class 1', 'Class 2']));
        create.disabled = false;
        if (!p) return;
        name.value = '';
        this.upsert(p);
        this.open(p);
      })();
    });
    replace(this.el, h('h2', {}, 'Projects'), this.list, form);
  }

  async load(): Promise<Project[]> {
    const ps = await attempt('Load projects', () => api.projects());
    if (ps) {
      this.projects = ps;
      this.render();
    }
    return this.projects;
  }

  upsert(p: Project): void {
    const i = this.projects.findIndex((x) => x.id === p.id);
    if (i >= 0) this.projects[i] = p;
    else this.projects.push(p);
    this.render();
  }

  remove(pid: string): void {
    this.projects = this.projects.filter((p) => p.id !== pid);
    this.render();
  }

  select(pid: string | null): void {
    this.current = pid;
    this.render();
  }

  private render(): void {
    replace(this.list);
    if (!this.projects.length) this.list.appendChild(h('li', { class: 'empty' }, 'No projects yet.'));
    for (const p of this.projects) {
      const b = h('button', { type: 'button', class: 'project-item', 'data-testid': 'project-item', 'data-project-id': p.id, 'aria-current': p.id === this.current ? 'page' : null },
        h('span', { class: 'name' }, p.name),
        h('span', { class: 'muted' }, `${p.task} · ${plural(p.classes.length, 'class', 'classes')} · ${plural(p.sampleCount, 'sample', 'samples')}`));
      b.addEventListener('click', () => this.open(p));
      this.list.appendChild(h('li', {}, b));
    }
  }
}

function plural(n: number, one: string, many: string): string {
  return `${n} ${n === 1 ? one : many}`;
}

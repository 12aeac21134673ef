/** "Under the hood": the trained model's accuracy, per-class precision/recall/F1 and confusion matrix. */
import { api, fetchBlob, type ClassMetrics, type Metrics, type Model } from '../api.js';
import { h, percent, replace } from '../dom.js';
import { confusionTable } from '../charts.js';
import { attempt, dispositionName, saveBlob } from '../ui.js';

/** perClass as graft writes it (a record by label) or as an array of {label, ...}, in the labels' order. */
export function perClassRows(m: Metrics, labels: string[]): Array<ClassMetrics & { label: string }> {
  const pc = m.perClass;
  if (!pc) return [];
  if (Array.isArray(pc)) return pc.map((r, i) => ({ ...r, label: r.label ?? labels[i] ?? String(i) }));
  const order = labels.length ? labels.filter((l) => l in pc) : Object.keys(pc);
  for (const k of Object.keys(pc)) if (!order.includes(k)) order.push(k);
  return order.map((label) => ({ ...pc[label]!, label }));
}

export function renderInsights(el: HTMLElement, model: Model | null): void {
  if (!model) {
    replace(el, h('h2', {}, 'Under the hood'), h('p', { class: 'empty' }, 'Train a model to see how well it does on the validation samples.'));
    return;
  }
  const m = model.metrics;
  const labels = m.labels ?? model.labels;
  const table = h('table', { class: 'per-class', 'data-testid': 'per-class-table' },
    h('thead', {}, h('tr', {}, h('th', {}, 'class'), h('th', {}, 'accuracy (recall)'), h('th', {}, 'precision'), h('th', {}, 'F1'), h('th', {}, 'samples'))));
  const body = h('tbody');
  for (const r of perClassRows(m, labels)) {
    body.appendChild(h('tr', { 'data-testid': 'per-class-row' },
      h('th', { scope: 'row', title: r.label }, r.label),
      h('td', { 'data-testid': 'per-class-recall' }, percent(r.recall)),
      h('td', {}, percent(r.precision)),
      h('td', {}, r.f1.toFixed(3)),
      h('td', {}, r.support)));
  }
  table.appendChild(body);
  const report = h('button', { type: 'button', 'data-testid': 'report-download' }, 'Download report.html');
  report.addEventListener('click', () => void attempt('Report', async () => {
    const { blob, res } = await fetchBlob(api.reportUrl(model.jobId));
    saveBlob(new Blob([blob], { type: 'text/html' }), dispositionName(res.headers.get('Content-Disposition'), 'report.html'));
  }));
  replace(el,
    h('h2', {}, 'Under the hood'),
    h('div', { class: 'stats' },
      h('div', { class: 'stat' }, h('span', { class: 'stat-value', 'data-testid': 'metric-accuracy' }, percent(m.accuracy)), h('span', { class: 'stat-label' }, 'validation accuracy')),
      m.macroF1 !== undefined ? h('div', { class: 'stat' }, h('span', { class: 'stat-value', 'data-testid': 'metric-macro-f1' }, m.macroF1.toFixed(3)), h('span', { class: 'stat-label' }, 'macro F1')) : null,
      m.count !== undefined ? h('div', { class: 'stat' }, h('span', { class: 'stat-value', 'data-testid': 'metric-count' }, m.count), h('span', { class: 'stat-label' }, 'validation samples')) : null,
    ),
    h('p', { class: 'muted' }, 'Backbone: ', h('code', {}, model.backbone)),
    h('h3', {}, 'Per class'),
    table,
    m.confusion ? h('h3', {}, 'Confusion matrix') : null,
    m.confusion ? confusionTable(labels, m.confusion) : null,
    h('div', { class: 'tools' }, report),
  );
}

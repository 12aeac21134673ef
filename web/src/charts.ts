/** Hand-made SVG and HTML charts: epoch curves, probability bars, a confusion matrix. No chart library. */
import { h, s, percent } from './dom.js';

export interface Series { name: string; cls: string; values: Array<number | undefined> }

function niceMax(v: number): number {
  if (!(v > 0) || !Number.isFinite(v)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  // Multiples whose quarters are round numbers too.
  for (const m of [1, 2, 4, 6, 8, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/**
 * A line chart of per-epoch values. `x` labels are the points' positions (1-based); `breaks` marks the
 * indices where a new phase starts (e.g. head → fine-tune), drawn as dashed verticals.
 */
export function lineChart(title: string, series: Series[], opts: { yMax?: number; breaks?: number[]; testid: string; percent?: boolean }): SVGSVGElement {
  const W = 420, H = 190, L = 44, R = 10, T = 22, B = 26;
  const n = Math.max(0, ...series.map((x) => x.values.length));
  const all = series.flatMap((x) => x.values.filter((v): v is number => v !== undefined && Number.isFinite(v)));
  const yMax = opts.yMax ?? niceMax(Math.max(0, ...all));
  const px = (i: number) => L + (n <= 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (n - 1));
  const py = (v: number) => T + (H - T - B) * (1 - Math.max(0, Math.min(yMax, v)) / yMax);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': title, 'data-testid': opts.testid, 'data-points': n });
  svg.appendChild(s('text', { x: L, y: 14, class: 'chart-title' }, title));
  for (let k = 0; k <= 4; k++) {
    const v = (yMax * k) / 4;
    const y = py(v);
    svg.appendChild(s('line', { x1: L, x2: W - R, y1: y, y2: y, class: 'grid' }));
    svg.appendChild(s('text', { x: L - 4, y: y + 4, class: 'tick', 'text-anchor': 'end' }, opts.percent ? `${Math.round(v * 100)}%` : String(Number(v.toPrecision(3)))));
  }
  const step = Math.max(1, Math.ceil(n / 10));
  for (let i = 0; i < n; i += step) svg.appendChild(s('text', { x: px(i), y: H - 8, class: 'tick', 'text-anchor': 'middle' }, i + 1));
  for (const b of opts.breaks ?? []) {
    if (b > 0 && b < n) svg.appendChild(s('line', { x1: (px(b - 1) + px(b)) / 2, x2: (px(b - 1) + px(b)) / 2, y1: T, y2: H - B, class: 'phase-break' }));
  }
  let lx = W - R;
  for (const ser of [...series].reverse()) {
    const pts: string[] = [];
    ser.values.forEach((v, i) => {
      if (v !== undefined && Number.isFinite(v)) pts.push(`${px(i).toFixed(1)},${py(v).toFixed(1)}`);
    });
    if (pts.length > 1) svg.appendChild(s('polyline', { points: pts.join(' '), class: `line ${ser.cls}` }));
    for (const p of pts.length === 1 ? pts : pts.slice(-1)) {
      const [x, y] = p.split(',');
      svg.appendChild(s('circle', { cx: x, cy: y, r: 2.5, class: `dot ${ser.cls}` }));
    }
    const label = s('text', { x: lx, y: 14, class: `legend ${ser.cls}`, 'text-anchor': 'end' }, ser.name);
    svg.appendChild(label);
    lx -= ser.name.length * 6.5 + 14;
  }
  return svg;
}

/** Probability bars, one per label, in the order given (highest first when sorted by the caller). */
export function probabilityBars(rows: Array<{ label: string; probability: number }>, testid: string): HTMLElement {
  const list = h('div', { class: 'bars', 'data-testid': testid });
  for (const r of rows) {
    const fill = h('div', { class: 'bar-fill' });
    fill.style.width = `${Math.max(0, Math.min(1, r.probability)) * 100}%`;
    list.appendChild(
      h('div', { class: 'bar-row', 'data-testid': 'prob-bar' },
        h('span', { class: 'bar-label', title: r.label, 'data-testid': 'prob-label' }, r.label),
        h('div', { class: 'bar-track' }, fill),
        h('span', { class: 'bar-value', 'data-testid': 'prob-value' }, percent(r.probability))),
    );
  }
  return list;
}

/** The confusion matrix as a table: rows are the true class, columns the predicted one; cells shaded by row share. */
export function confusionTable(labels: string[], confusion: number[][]): HTMLTableElement {
  const table = h('table', { class: 'confusion', 'data-testid': 'confusion-matrix' });
  const head = h('tr', {}, h('th', { class: 'corner' }, 'true \\ predicted'));
  for (const l of labels) head.appendChild(h('th', { scope: 'col', title: l }, l));
  table.appendChild(h('thead', {}, head));
  const body = h('tbody');
  confusion.forEach((row, i) => {
    const total = row.reduce((a, b) => a + b, 0);
    const tr = h('tr', {}, h('th', { scope: 'row', title: labels[i] ?? '' }, labels[i] ?? String(i)));
    row.forEach((v, j) => {
      const td = h('td', { class: i === j ? 'diag' : 'off', 'data-testid': `confusion-${i}-${j}` }, v);
      const share = total ? v / total : 0;
      td.style.backgroundColor = i === j ? `rgba(46, 125, 50, ${0.12 + 0.6 * share})` : `rgba(198, 40, 40, ${share ? 0.12 + 0.6 * share : 0})`;
      tr.appendChild(td);
    });
    body.appendChild(tr);
  });
  table.appendChild(body);
  return table;
}

/**
 * OUT/report.html: one self-contained HTML page about a training run — dataset, learning curves, confusion matrix,
 * per-class scores, calibration, the LR finder's curve and the samples worth a look.
 *
 * The page loads nothing: no scripts, no fonts, no CDN, no network. Styles are inline CSS, thumbnails are JPEG data
 * URLs, and every chart is hand-made inline SVG rather than a charting library's output — no dependency to install,
 * nothing to load, and the file still opens years later, offline, from an e-mail attachment.
 *
 * Every label, file name and text that comes from the data passes through escapeHtml() before it reaches the page.
 */
import sharp from 'sharp';
import type { EpochRecord } from '../train/trainer.js';
import type { Metrics } from './metrics.js';
import type { Diagnostics, SampleRef } from './diagnostics.js';

export interface ReportInput {
  /** e.g. 'graft · hymenoptera'. */
  title: string;
  /** ISO time. */
  createdAt: string;
  task: 'image' | 'text' | 'audio';
  dataset: {
    root: string;
    classes: string[];
    trainPerClass: number[];
    valPerClass: number[];
    split: string;
    skipped: Array<{ file: string; line?: number; reason: string }>;
  };
  backbone: { name: string; featureDim: number };
  /** Learning curves: one entry per training phase ('head', 'fine-tune' …), each epoch's record. */
  phases: Array<{ name: string; history: EpochRecord[] }>;
  metrics: Metrics;
  diagnostics: Diagnostics;
  lrFind?: { lrs: number[]; smoothed: number[]; suggestion: number };
  /** Small JPEG data URLs by file path, for image samples shown (top losses, mislabel candidates). */
  thumbnails?: Record<string, string>;
}

/** Longest list of rows (skipped files, samples, near-duplicates) the page shows; the rest are counted. */
const MAX_ROWS = 50;

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Text made safe for HTML (and SVG) element content and quoted attribute values. */
export function escapeHtml(value: unknown): string {
  return String(value).replace(/[&<>"']/g, (c) => ESCAPES[c]!);
}

const esc = escapeHtml;

// ---------------------------------------------------------------------------------------------------------------------
// Number formatting

const DASH = '—';
const fixed = (x: number | undefined, digits = 3): string => (x === undefined || !Number.isFinite(x) ? DASH : x.toFixed(digits));
const pct = (x: number | undefined): string => (x === undefined || !Number.isFinite(x) ? DASH : `${(x * 100).toFixed(1)}%`);
const sci = (x: number): string => (Number.isFinite(x) ? x.toExponential(1) : DASH);
/** Short tick label: plain for ordinary magnitudes, exponent notation for tiny or huge ones. */
function tickLabel(x: number): string {
  if (x === 0) return '0';
  const a = Math.abs(x);
  if (a < 1e-3 || a >= 1e5) return x.toExponential(0);
  return String(Number(x.toPrecision(3)));
}
/** SVG coordinate: two decimals are plenty. */
const c = (x: number): string => String(Math.round(x * 100) / 100);

// ---------------------------------------------------------------------------------------------------------------------
// Hand-made SVG charts

const COLORS = { train: '#2563eb', val: '#dc2626', acc: '#059669', f1: '#d97706', lr: '#7c3aed', grid: '#e5e7eb', axis: '#6b7280' };

interface Plot {
  left: number;
  top: number;
  width: number;
  height: number;
  x: (v: number) => number;
  y: (v: number) => number;
}

function plot(left: number, top: number, width: number, height: number, xDomain: [number, number], yDomain: [number, number], logX = false): Plot {
  const tx = (v: number): number => (logX ? Math.log10(v) : v);
  const [x0, x1] = [tx(xDomain[0]), tx(xDomain[1])];
  const [y0, y1] = yDomain;
  const xSpan = x1 - x0 || 1;
  const ySpan = y1 - y0 || 1;
  return {
    left,
    top,
    width,
    height,
    x: (v) => left + ((tx(v) - x0) / xSpan) * width,
    y: (v) => top + height - ((Math.min(Math.max(v, y0), y1) - y0) / ySpan) * height,
  };
}

/** About `count` round tick values covering [min, max]. */
function niceTicks(min: number, max: number, count = 5): number[] {
  if (!(max > min)) return [min];
  const raw = (max - min) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) ?? 10 * magnitude;
  const ticks: number[] = [];
  for (let v = Math.ceil(min / step - 1e-9) * step; v <= max + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

/** Powers of ten inside [min, max] (with 2× and 5× steps when the range spans under two decades). */
function logTicks(min: number, max: number): number[] {
  const lo = Math.floor(Math.log10(min));
  const hi = Math.ceil(Math.log10(max));
  const multiples = hi - lo <= 2 ? [1, 2, 5] : [1];
  const ticks: number[] = [];
  for (let e = lo; e <= hi; e++) for (const m of multiples) {
    const v = m * 10 ** e;
    if (v >= min * (1 - 1e-9) && v <= max * (1 + 1e-9)) ticks.push(v);
  }
  return ticks;
}

/** Grid lines, axis lines and tick labels of a plot. */
function axes(p: Plot, xTicks: number[], yTicks: number[], xLabel: string, yLabel: string, xFormat = tickLabel): string {
  const parts: string[] = [];
  for (const t of yTicks) {
    const y = p.y(t);
    parts.push(`<line x1="${c(p.left)}" x2="${c(p.left + p.width)}" y1="${c(y)}" y2="${c(y)}" stroke="${COLORS.grid}"/>`);
    parts.push(`<text x="${c(p.left - 6)}" y="${c(y + 4)}" text-anchor="end" class="tick">${esc(tickLabel(t))}</text>`);
  }
  for (const t of xTicks) {
    const x = p.x(t);
    parts.push(`<line x1="${c(x)}" x2="${c(x)}" y1="${c(p.top + p.height)}" y2="${c(p.top + p.height + 4)}" stroke="${COLORS.axis}"/>`);
    parts.push(`<text x="${c(x)}" y="${c(p.top + p.height + 16)}" text-anchor="middle" class="tick">${esc(xFormat(t))}</text>`);
  }
  parts.push(
    `<rect x="${c(p.left)}" y="${c(p.top)}" width="${c(p.width)}" height="${c(p.height)}" fill="none" stroke="${COLORS.axis}"/>`,
    `<text x="${c(p.left + p.width / 2)}" y="${c(p.top + p.height + 32)}" text-anchor="middle" class="label">${esc(xLabel)}</text>`,
    `<text transform="translate(${c(p.left - 42)} ${c(p.top + p.height / 2)}) rotate(-90)" text-anchor="middle" class="label">${esc(yLabel)}</text>`,
  );
  return parts.join('');
}

/** Path data through the points, broken where a value is missing or not finite. */
function pathData(points: Array<[number, number] | null>): string {
  let d = '';
  let pen = false;
  for (const point of points) {
    if (point === null || !Number.isFinite(point[0]) || !Number.isFinite(point[1])) {
      pen = false;
      continue;
    }
    d += `${pen ? 'L' : 'M'}${c(point[0])},${c(point[1])}`;
    pen = true;
  }
  return d;
}

function legend(x: number, y: number, items: Array<{ name: string; color: string; dashed?: boolean }>): string {
  return items
    .map((item, i) => {
      const ix = x + i * 150;
      const dash = item.dashed ? ' stroke-dasharray="5 3"' : '';
      return `<line x1="${c(ix)}" x2="${c(ix + 22)}" y1="${c(y)}" y2="${c(y)}" stroke="${item.color}" stroke-width="2"${dash}/><text x="${c(ix + 28)}" y="${c(y + 4)}" class="tick">${esc(item.name)}</text>`;
    })
    .join('');
}

interface Series {
  name: string;
  color: string;
  dashed?: boolean;
  values: number[];
}

/** Lines (with a dot and a tooltip per point) of series sharing the plot's x positions `xs`. */
function lines(p: Plot, xs: number[], series: Series[], tooltip: (i: number) => string): string {
  return series
    .map((s) => {
      const points = s.values.map((v, i): [number, number] | null => (Number.isFinite(v) ? [p.x(xs[i]!), p.y(v)] : null));
      const dash = s.dashed ? ' stroke-dasharray="5 3"' : '';
      const dots = points
        .map((pt, i) => (pt === null ? '' : `<circle cx="${c(pt[0])}" cy="${c(pt[1])}" r="2.5" fill="${s.color}"><title>${esc(`${s.name}: ${fixed(s.values[i], 4)} · ${tooltip(i)}`)}</title></circle>`))
        .join('');
      const d = pathData(points);
      return (d ? `<path class="series" d="${d}" fill="none" stroke="${s.color}" stroke-width="2"${dash}/>` : '') + dots;
    })
    .join('');
}

const svgOpen = (id: string, width: number, height: number, label: string): string =>
  `<svg class="chart" id="${id}" xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="${esc(label)}">`;

/** Loss (top panel) and validation accuracy / macro-F1 (bottom panel) per epoch, phases one after another. */
function curvesSvg(phases: ReportInput['phases']): string {
  const rows: Array<{ phase: string; record: EpochRecord }> = [];
  const bounds: Array<{ name: string; start: number; end: number }> = [];
  for (const phase of phases) {
    if (phase.history.length === 0) continue;
    const start = rows.length + 1;
    for (const record of phase.history) rows.push({ phase: phase.name, record });
    bounds.push({ name: phase.name, start, end: rows.length });
  }
  if (rows.length === 0) return '<p class="muted">No training history recorded.</p>';

  const width = 820;
  const panel = 200;
  const left = 64;
  const plotWidth = width - left - 24;
  const top1 = 48;
  const top2 = top1 + panel + 58;
  const height = top2 + panel + 44;
  const xs = rows.map((_, i) => i + 1);
  const xDomain: [number, number] = [0.5, rows.length + 0.5];
  const losses = rows.flatMap(({ record }) => [record.trainLoss, record.valLoss]).filter(Number.isFinite);
  const lossMax = losses.length > 0 ? Math.max(...losses) * 1.05 || 1 : 1;
  const lossPlot = plot(left, top1, plotWidth, panel, xDomain, [0, lossMax]);
  const scorePlot = plot(left, top2, plotWidth, panel, xDomain, [0, 1]);
  const xTicks = rows.length <= 20 ? xs : niceTicks(1, rows.length, 10).filter((t) => Number.isInteger(t) && t >= 1);
  const tooltip = (i: number): string => `${rows[i]!.phase} epoch ${rows[i]!.record.epoch} · lr ${sci(rows[i]!.record.lr)}`;

  const separators = bounds
    .map((b, i) => {
      const mid = (lossPlot.x(b.start - 0.5) + lossPlot.x(b.end + 0.5)) / 2;
      const label = `<text x="${c(mid)}" y="${c(top1 - 8)}" text-anchor="middle" class="phase">${esc(b.name)}</text>`;
      if (i === 0) return label;
      const x = lossPlot.x(b.start - 0.5);
      const line = (top: number): string =>
        `<line class="phase-separator" x1="${c(x)}" x2="${c(x)}" y1="${c(top)}" y2="${c(top + panel)}" stroke="#374151" stroke-dasharray="4 3"/>`;
      return line(top1) + line(top2) + label;
    })
    .join('');

  return [
    svgOpen('curves', width, height, 'Learning curves'),
    axes(lossPlot, xTicks, niceTicks(0, lossMax, 4), 'epoch', 'loss'),
    lines(lossPlot, xs, [
      { name: 'training loss', color: COLORS.train, values: rows.map((r) => r.record.trainLoss) },
      { name: 'validation loss', color: COLORS.val, values: rows.map((r) => r.record.valLoss) },
    ], tooltip),
    axes(scorePlot, xTicks, niceTicks(0, 1, 5), 'epoch', 'validation score'),
    lines(scorePlot, xs, [
      { name: 'validation accuracy', color: COLORS.acc, values: rows.map((r) => r.record.valAccuracy) },
      { name: 'validation macro-F1', color: COLORS.f1, dashed: true, values: rows.map((r) => r.record.valMacroF1) },
    ], tooltip),
    separators,
    legend(left, 14, [
      { name: 'training loss', color: COLORS.train },
      { name: 'validation loss', color: COLORS.val },
      { name: 'val accuracy', color: COLORS.acc },
      { name: 'val macro-F1', color: COLORS.f1, dashed: true },
    ]),
    '</svg>',
  ].join('');
}

/** Reliability diagram: each bin's accuracy against its mean confidence, with the diagonal of perfect calibration. */
function calibrationSvg(bins: Diagnostics['calibration']['bins']): string {
  const size = 360;
  const left = 60;
  const top = 16;
  const inner = size - left - 16;
  const height = top + inner + 44;
  const p = plot(left, top, inner, inner, [0, 1], [0, 1]);
  const ticks = niceTicks(0, 1, 5);
  const bars = bins
    .filter((b) => b.count > 0)
    .map((b) => {
      const x = p.x(b.lower);
      const w = Math.max(1, p.x(b.upper) - x - 1);
      const y = p.y(b.accuracy);
      const title = `${fixed(b.lower, 2)}–${fixed(b.upper, 2)}: ${b.count} samples, confidence ${pct(b.confidence)}, accuracy ${pct(b.accuracy)}`;
      return `<rect class="bin" x="${c(x + 0.5)}" y="${c(y)}" width="${c(w)}" height="${c(p.top + p.height - y)}" fill="${COLORS.train}" fill-opacity="0.35"><title>${esc(title)}</title></rect>`;
    })
    .join('');
  const used = bins.filter((b) => b.count > 0);
  const points = used.map((b): [number, number] => [p.x(b.confidence), p.y(b.accuracy)]);
  const dots = points.map(([x, y]) => `<circle cx="${c(x)}" cy="${c(y)}" r="3" fill="${COLORS.train}"/>`).join('');
  return [
    svgOpen('calibration', size, height, 'Reliability diagram'),
    axes(p, ticks, ticks, 'confidence', 'accuracy'),
    bars,
    `<line class="diagonal" x1="${c(p.x(0))}" y1="${c(p.y(0))}" x2="${c(p.x(1))}" y2="${c(p.y(1))}" stroke="${COLORS.axis}" stroke-dasharray="5 4"/>`,
    points.length > 0 ? `<path class="series" d="${pathData(points)}" fill="none" stroke="${COLORS.train}" stroke-width="2"/>` : '',
    dots,
    '</svg>',
  ].join('');
}

/** Smoothed loss against learning rate on a log axis, the suggestion marked. */
function lrFindSvg(lrFind: NonNullable<ReportInput['lrFind']>): string {
  const pairs = lrFind.lrs
    .map((lr, i): [number, number] => [lr, lrFind.smoothed[i]!])
    .filter(([lr, loss]) => lr > 0 && Number.isFinite(lr) && Number.isFinite(loss));
  if (pairs.length === 0) return '<p class="muted">The LR finder recorded no usable points.</p>';
  const width = 620;
  const height = 300;
  const left = 64;
  const top = 24;
  const lrMin = Math.min(...pairs.map(([lr]) => lr));
  const lrMax = Math.max(...pairs.map(([lr]) => lr), lrMin * 10);
  const losses = pairs.map(([, loss]) => loss);
  const lo = Math.min(...losses);
  const hi = Math.max(...losses);
  // The loss explodes at the end of the sweep; keep the interesting part readable (what rises above is not drawn).
  const start = losses[0]!;
  const yMax = start > lo ? Math.min(hi, start + 1.5 * (start - lo)) : hi;
  const yMin = Math.max(0, lo - 0.05 * (yMax - lo || 1));
  const p = plot(left, top, width - left - 20, height - top - 48, [lrMin, lrMax], [yMin, yMax > yMin ? yMax : yMin + 1], true);
  const parts = [
    svgOpen('lr-find', width, height, 'Learning-rate finder'),
    axes(p, logTicks(lrMin, lrMax), niceTicks(yMin, yMax, 4), 'learning rate (log scale)', 'smoothed loss', (v) => v.toExponential(0)),
    // Points above the plot (the explosion) are left out rather than drawn flat along the top edge.
    `<path class="series" d="${pathData(pairs.map(([lr, loss]) => (loss <= yMax * (1 + 1e-9) ? [p.x(lr), p.y(loss)] : null)))}" fill="none" stroke="${COLORS.lr}" stroke-width="2"/>`,
  ];
  const s = lrFind.suggestion;
  if (s > 0 && Number.isFinite(s)) {
    const x = p.x(Math.min(Math.max(s, lrMin), lrMax));
    const nearest = pairs.reduce((best, pair) => (Math.abs(Math.log(pair[0] / s)) < Math.abs(Math.log(best[0] / s)) ? pair : best));
    parts.push(
      `<line class="suggestion" x1="${c(x)}" x2="${c(x)}" y1="${c(p.top)}" y2="${c(p.top + p.height)}" stroke="${COLORS.val}" stroke-dasharray="5 3"/>`,
      `<circle cx="${c(x)}" cy="${c(p.y(nearest[1]))}" r="4.5" fill="${COLORS.val}"><title>suggested ${esc(sci(s))}</title></circle>`,
      `<text x="${c(x + 6)}" y="${c(p.top + 14)}" class="label" fill="${COLORS.val}">suggested ${esc(sci(s))}</text>`,
    );
  }
  parts.push('</svg>');
  return parts.join('');
}

// ---------------------------------------------------------------------------------------------------------------------
// Tables and sample cards

function more(total: number, shown: number, what: string): string {
  return total > shown ? `<p class="muted more">… and ${total - shown} more ${esc(what)} not shown.</p>` : '';
}

function datasetSection(d: ReportInput['dataset']): string {
  const sum = (xs: number[]): number => xs.reduce((s, v) => s + v, 0);
  const rows = d.classes
    .map((name, i) => `<tr><th scope="row">${esc(name)}</th><td class="num">${d.trainPerClass[i] ?? 0}</td><td class="num">${d.valPerClass[i] ?? 0}</td></tr>`)
    .join('');
  const skippedRows = d.skipped
    .slice(0, MAX_ROWS)
    .map((s) => `<tr><td class="path">${esc(s.file)}</td><td class="num">${s.line ?? ''}</td><td>${esc(s.reason)}</td></tr>`)
    .join('');
  const skipped =
    d.skipped.length === 0
      ? '<p class="muted">No files were skipped.</p>'
      : `<h3>Skipped files (${d.skipped.length})</h3><div class="scroll"><table id="skipped"><thead><tr><th>file</th><th>line</th><th>reason</th></tr></thead><tbody>${skippedRows}</tbody></table></div>${more(d.skipped.length, MAX_ROWS, 'skipped files')}`;
  return `<section id="dataset"><h2>Dataset</h2>
<p><span class="muted">root</span> <code class="path">${esc(d.root)}</code><br><span class="muted">split</span> ${esc(d.split)}</p>
<table class="counts"><thead><tr><th>class</th><th class="num">train</th><th class="num">validation</th></tr></thead><tbody>${rows}</tbody>
<tfoot><tr><th scope="row">total (${d.classes.length} classes)</th><td class="num">${sum(d.trainPerClass)}</td><td class="num">${sum(d.valPerClass)}</td></tr></tfoot></table>
${skipped}</section>`;
}

function confusionTable(m: Metrics): string {
  const head = m.labels.map((l) => `<th scope="col" class="num">${esc(l)}</th>`).join('');
  const body = m.confusion
    .map((row, i) => {
      const total = row.reduce((s, v) => s + v, 0);
      const cells = row
        .map((v, j) => {
          const rate = total === 0 ? 0 : v / total;
          const rgb = i === j ? '37, 99, 235' : '220, 38, 38';
          const ink = rate > 0.55 ? ' color:#fff;' : '';
          return `<td class="num cell" style="background: rgba(${rgb}, ${c(rate * 0.9)});${ink}" title="${esc(`${m.labels[i]} → ${m.labels[j]}: ${v} of ${total} (${pct(rate)})`)}">${v}</td>`;
        })
        .join('');
      return `<tr><th scope="row">${esc(m.labels[i])}</th>${cells}<td class="num muted">${total}</td></tr>`;
    })
    .join('');
  return `<div class="scroll"><table id="confusion" class="chart confusion"><thead><tr><th>true \\ predicted</th>${head}<th class="num muted">total</th></tr></thead><tbody>${body}</tbody></table></div>
<p class="muted">Rows: true class; columns: predicted class. Shading: the cell's share of its row (blue on the diagonal, red off it).</p>`;
}

function perClassTable(m: Metrics): string {
  const classes = m.labels.map((l) => m.perClass[l]);
  const mean = (pick: (x: NonNullable<(typeof classes)[number]>) => number): number =>
    classes.length === 0 ? 0 : classes.reduce((s, x) => s + (x ? pick(x) : 0), 0) / classes.length;
  const rows = m.labels
    .map((l) => {
      const x = m.perClass[l];
      return `<tr><th scope="row">${esc(l)}</th><td class="num">${fixed(x?.precision)}</td><td class="num">${fixed(x?.recall)}</td><td class="num">${fixed(x?.f1)}</td><td class="num">${x?.support ?? 0}</td></tr>`;
    })
    .join('');
  return `<table id="per-class"><thead><tr><th>class</th><th class="num">precision</th><th class="num">recall</th><th class="num">F1</th><th class="num">support</th></tr></thead><tbody>${rows}</tbody>
<tfoot><tr><th scope="row">macro average</th><td class="num">${fixed(mean((x) => x.precision))}</td><td class="num">${fixed(mean((x) => x.recall))}</td><td class="num">${fixed(m.macroF1)}</td><td class="num">${m.count}</td></tr>
<tr><th scope="row">accuracy</th><td class="num" colspan="3">${fixed(m.accuracy)} (${pct(m.accuracy)})</td><td class="num">${m.count}</td></tr>${
    m.loss !== undefined ? `<tr><th scope="row">loss</th><td class="num" colspan="3">${fixed(m.loss, 4)}</td><td></td></tr>` : ''
  }</tfoot></table>`;
}

function calibrationSection(d: Diagnostics['calibration'], labels: string[]): string {
  const names = [...labels, ...Object.keys(d.perClass).filter((k) => !labels.includes(k))];
  const rows = names
    .filter((l) => d.perClass[l] !== undefined)
    .map((l) => `<tr><th scope="row">${esc(l)}</th><td class="num">${fixed(d.perClass[l], 4)}</td></tr>`)
    .join('');
  return `<section id="calibration-section"><h2>Calibration</h2>
<div class="row"><figure>${calibrationSvg(d.bins)}<figcaption>Reliability diagram: bars are each confidence bin's accuracy, dots its mean confidence; the dashed diagonal is perfect calibration.</figcaption></figure>
<div><p class="big">ECE <strong>${fixed(d.ece, 4)}</strong></p><table id="ece"><thead><tr><th>class</th><th class="num">one-vs-rest ECE</th></tr></thead><tbody>${rows}</tbody></table></div></div></section>`;
}

function displayPath(file: string, root: string): string {
  const base = root.replace(/[\\/]+$/, '');
  return base && (file.startsWith(base + '/') || file.startsWith(base + '\\')) ? file.slice(base.length + 1) : file;
}

/** What a sample looks like on the page: its thumbnail (images), its excerpt (texts), its file name (always). */
function sampleMedia(ref: SampleRef, input: ReportInput, placeholder = true): string {
  const where = `${displayPath(ref.file, input.dataset.root)}${ref.line !== undefined ? `:${ref.line}` : ''}`;
  const name = `<div class="path" title="${esc(ref.file)}">${esc(where)}</div>`;
  if (input.task === 'image') {
    const src = input.thumbnails?.[ref.file];
    const img = src !== undefined && src.startsWith('data:image/')
      ? `<img class="thumb" src="${esc(src)}" alt="${esc(where)}">`
      : placeholder
        ? '<div class="thumb none">no preview</div>'
        : '';
    return img + name;
  }
  if (input.task === 'text') return `<blockquote class="excerpt">${esc(ref.text ?? '')}</blockquote>${name}`;
  return name;
}

function sampleCards(id: string, count: number, cards: string[]): string {
  if (count === 0) return '<p class="muted">None.</p>';
  return `<div class="cards" id="${id}">${cards.join('')}</div>${more(count, cards.length, 'samples')}`;
}

function samplesSection(input: ReportInput): string {
  const d = input.diagnostics;
  const losses = d.topLosses.slice(0, MAX_ROWS).map(
    (s) => `<div class="card">${sampleMedia(s, input)}<dl><dt>label</dt><dd>${esc(s.label)}</dd><dt>predicted</dt><dd>${esc(s.predicted)}</dd><dt>p(label)</dt><dd>${fixed(s.probability)}</dd><dt>loss</dt><dd>${fixed(s.loss)}</dd></dl></div>`,
  );
  const mislabeled = d.mislabeled.slice(0, MAX_ROWS).map(
    (s) => `<div class="card">${sampleMedia(s, input)}<dl><dt>given</dt><dd>${esc(s.given)} <span class="muted">(p ${fixed(s.givenProbability)})</span></dd><dt>suggested</dt><dd>${esc(s.suggested)} <span class="muted">(p ${fixed(s.suggestedProbability)})</span></dd></dl></div>`,
  );
  const dupRows = d.nearDuplicates
    .slice(0, MAX_ROWS)
    .map((n) => `<tr><td>${sampleMedia(n.val, input, false)}</td><td>${sampleMedia(n.train, input, false)}</td><td class="num">${fixed(n.cosine, 4)}</td></tr>`)
    .join('');
  const dups =
    d.nearDuplicates.length === 0
      ? '<p class="muted">No validation sample nearly duplicates a training sample.</p>'
      : `<div class="scroll"><table id="near-duplicates"><thead><tr><th>validation sample</th><th>training sample</th><th class="num">cosine</th></tr></thead><tbody>${dupRows}</tbody></table></div>${more(d.nearDuplicates.length, MAX_ROWS, 'pairs')}`;
  const pairs =
    d.confusedPairs.length === 0
      ? ''
      : `<h3>Most confused pairs</h3><ul id="confused-pairs">${d.confusedPairs
          .slice(0, MAX_ROWS)
          .map((p) => `<li><strong>${esc(p.actual)}</strong> taken for <strong>${esc(p.predicted)}</strong>: ${p.count} (${pct(p.rate)} of ${esc(p.actual)})</li>`)
          .join('')}</ul>`;
  return `<section id="samples"><h2>Samples worth a look</h2>${pairs}
<h3>Top losses <span class="muted">(validation samples the model is most wrong about)</span></h3>${sampleCards('top-losses', d.topLosses.length, losses)}
<h3>Mislabel candidates <span class="muted">(training samples whose label the out-of-fold prediction doubts)</span></h3>${sampleCards('mislabeled', d.mislabeled.length, mislabeled)}
<h3>Near-duplicates <span class="muted">(validation samples nearly identical to a training sample: leakage)</span></h3>${dups}</section>`;
}

const CSS = `
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #111827; background: #f9fafb; }
main { max-width: 1120px; margin: 0 auto; padding: 16px 24px 48px; }
header { border-bottom: 1px solid #e5e7eb; margin-bottom: 8px; }
h1 { font-size: 24px; margin: 8px 0 4px; }
h2 { font-size: 19px; margin: 28px 0 8px; padding-top: 8px; border-top: 1px solid #e5e7eb; }
h3 { font-size: 15px; margin: 18px 0 6px; }
section { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 4px 18px 16px; margin: 16px 0; }
section > h2:first-child { border-top: 0; margin-top: 8px; }
.muted { color: #6b7280; font-weight: normal; }
.meta { display: flex; flex-wrap: wrap; gap: 6px 24px; margin: 6px 0 12px; }
.kpis { display: flex; flex-wrap: wrap; gap: 12px; margin: 8px 0 12px; }
.kpi { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 8px 14px; min-width: 120px; }
.kpi strong { display: block; font-size: 20px; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { padding: 4px 10px; border-bottom: 1px solid #f3f4f6; text-align: left; vertical-align: top; }
thead th { border-bottom: 2px solid #e5e7eb; }
tfoot th, tfoot td { border-top: 2px solid #e5e7eb; font-weight: 600; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.confusion td.cell { text-align: center; min-width: 44px; }
.scroll { overflow-x: auto; max-width: 100%; }
.path { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; overflow-wrap: anywhere; }
code.path { font-size: 13px; }
svg.chart { display: block; max-width: 100%; height: auto; background: #fff; }
svg text { font-family: inherit; fill: #374151; }
svg .tick { font-size: 11px; }
svg .label { font-size: 12px; }
svg .phase { font-size: 12px; font-weight: 600; }
figure { margin: 0; }
figcaption { color: #6b7280; font-size: 12px; max-width: 560px; }
.row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.big { font-size: 18px; margin: 8px 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 12px; }
.card { border: 1px solid #e5e7eb; border-radius: 6px; padding: 8px; background: #fff; }
.thumb { display: block; max-width: 112px; max-height: 112px; margin-bottom: 6px; border-radius: 4px; }
.thumb.none { width: 112px; height: 60px; background: #f3f4f6; color: #9ca3af; font-size: 12px; display: flex; align-items: center; justify-content: center; }
.excerpt { margin: 0 0 6px; padding: 4px 8px; border-left: 3px solid #d1d5db; background: #f9fafb; font-size: 13px; overflow-wrap: anywhere; }
dl { display: grid; grid-template-columns: auto 1fr; gap: 2px 8px; margin: 6px 0 0; font-size: 13px; }
dt { color: #6b7280; }
dd { margin: 0; overflow-wrap: anywhere; }
`;

/** The whole report as one HTML5 document with no external resource. */
export function renderReport(input: ReportInput): string {
  const { metrics: m, diagnostics: d } = input;
  const kpi = (name: string, value: string): string => `<div class="kpi"><span class="muted">${esc(name)}</span><strong>${esc(value)}</strong></div>`;
  const lr = input.lrFind
    ? `<section id="lr-find-section"><h2>Learning-rate finder</h2><figure>${lrFindSvg(input.lrFind)}<figcaption>Smoothed training loss while the learning rate grows exponentially; the dashed line marks the suggested rate (${esc(sci(input.lrFind.suggestion))}).</figcaption></figure></section>`
    : '';
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(input.title)}</title>
<style>${CSS}</style>
</head>
<body>
<main>
<header>
<h1>${esc(input.title)}</h1>
<div class="meta"><span><span class="muted">created</span> <time datetime="${esc(input.createdAt)}">${esc(input.createdAt)}</time></span><span><span class="muted">task</span> ${esc(input.task)}</span><span><span class="muted">backbone</span> ${esc(input.backbone.name)} <span class="muted">(${esc(input.backbone.featureDim)}-dimensional features)</span></span></div>
<div class="kpis">${kpi('accuracy', pct(m.accuracy))}${kpi('macro-F1', fixed(m.macroF1))}${m.loss !== undefined ? kpi('loss', fixed(m.loss)) : ''}${kpi('ECE', fixed(d.calibration.ece))}${kpi('validation samples', String(m.count))}</div>
</header>
${datasetSection(input.dataset)}
<section id="curves-section"><h2>Learning curves</h2>${curvesSvg(input.phases)}</section>
<section id="metrics"><h2>Confusion matrix</h2>${confusionTable(m)}<h2>Per-class scores</h2>${perClassTable(m)}</section>
${calibrationSection(d.calibration, m.labels)}
${lr}
${samplesSection(input)}
</main>
</body>
</html>
`;
}

/**
 * Thumbnails of the readable images among `files`: `data:image/jpeg;base64,…`, at most size×size (aspect kept, never
 * enlarged, EXIF orientation applied), JPEG quality 70. Files sharp cannot read are left out.
 */
export async function thumbnails(files: readonly string[], size = 112): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const file of new Set(files)) {
    try {
      const jpeg = await sharp(file)
        .rotate()
        .resize(size, size, { fit: 'inside', withoutEnlargement: true })
        .flatten({ background: '#ffffff' })
        .jpeg({ quality: 70 })
        .toBuffer();
      out[file] = `data:image/jpeg;base64,${jpeg.toString('base64')}`;
    } catch {
      // unreadable or not an image: no thumbnail
    }
  }
  return out;
}

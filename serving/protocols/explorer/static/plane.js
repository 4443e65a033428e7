// The latent plane: the test-set scatter coloured by class (MNIST: by digit) and the prior's
// 1, 2, 3 sigma ellipses on a canvas, with an SVG overlay for what moves (pointer, pins, the
// walk, the drawn image's marker, sample markers). Plane coordinates (u, v) are the latent
// itself for a 2-D model, or the PCA plane of the shipped sample for a larger one:
// z = mean + u * components[0] + v * components[1].

import { DIGIT_COLOURS } from "./digits.js";

const SVG = "http://www.w3.org/2000/svg";
const MARGIN = 34;

export function dot(a, b) {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

export class Projection {
  constructor(plane) {
    this.mean = plane.mean;
    this.components = plane.components;
    this.dim = plane.mean.length;
    this.labels = plane.axis_labels;
  }

  toLatent([u, v]) {
    const [c0, c1] = this.components;
    return this.mean.map((m, i) => m + u * c0[i] + v * c1[i]);
  }

  project(z) {
    const centred = z.map((x, i) => x - this.mean[i]);
    return [dot(centred, this.components[0]), dot(centred, this.components[1])];
  }

  // A D x D covariance seen in the plane: C S C^T (2 x 2).
  projectCovariance(cov) {
    const [c0, c1] = this.components;
    const sc0 = cov.map((row) => dot(row, c0));
    const sc1 = cov.map((row) => dot(row, c1));
    return [[dot(c0, sc0), dot(c0, sc1)], [dot(c1, sc0), dot(c1, sc1)]];
  }
}

// matplotlib's tab20, which training/analyze_images.py uses past 10 classes: the page's
// scatter then has the colours of the model folder's latent_scatter.png.
const TAB20 = [
  "#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896",
  "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7",
  "#bcbd22", "#dbdb8d", "#17becf", "#9edae5",
];

// `count` distinguishable colours: tab10 (the digit colours) up to 10, tab20 up to 20, and
// past that hues spread by the golden angle, which never repeats a hue.
export function classColours(count) {
  if (count <= DIGIT_COLOURS.length) return DIGIT_COLOURS.slice(0, count);
  if (count <= TAB20.length) return TAB20.slice(0, count);
  return Array.from({ length: count }, (_, i) => `hsl(${(i * 137.508) % 360}, 65%, ${i % 2 ? 38 : 55}%)`);
}

// What the scatter's labels mean and how they are drawn: {names, colours, counts, order}.
// A model folder that names its classes (latent_sample.json "classes") is keyed by those
// names, and its largest classes are drawn first so that the rare ones stay visible on top;
// MNIST's files name none and keep their digit key and drawing order.
export function scatterKey(scatter) {
  const names = scatter.classes || DIGIT_COLOURS.map((_, digit) => String(digit));
  const counts = names.map(() => 0);
  for (const label of scatter.labels) counts[label] += 1;
  const order = scatter.labels.map((_, i) => i);
  if (scatter.classes) order.sort((a, b) => counts[scatter.labels[b]] - counts[scatter.labels[a]]);
  return { names, colours: classColours(names.length), counts, order };
}

function el(name, attrs = {}) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

export class Plane {
  constructor(canvas, svg) {
    this.canvas = canvas;
    this.svg = svg;
    this.size = canvas.width;
    const dpr = window.devicePixelRatio || 1;
    canvas.style.width = `${this.size}px`;
    canvas.style.height = `${this.size}px`;
    canvas.width = Math.round(this.size * dpr);
    canvas.height = Math.round(this.size * dpr);
    this.dpr = dpr;
    // Marks beyond the plot (a sample far out, a drawn digit off the scale) stay inside it.
    const defs = el("defs");
    const clip = el("clipPath", { id: "plot-clip" });
    const inner = this.size - 2 * MARGIN;
    clip.appendChild(el("rect", { x: MARGIN, y: MARGIN, width: inner, height: inner }));
    defs.appendChild(clip);
    svg.appendChild(defs);
    this.layers = {};
    for (const name of ["samples", "walk", "pins", "drawn", "cursor"]) {
      this.layers[name] = el("g", { class: name, "clip-path": "url(#plot-clip)" });
      svg.appendChild(this.layers[name]);
    }
    this.box = { u0: -3, u1: 3, v0: -3, v1: 3 };
  }

  // Fit the view to the scatter and the prior's 3-sigma ellipse, same scale on both axes.
  fit(points, extraBoxes = []) {
    let u0 = Infinity, u1 = -Infinity, v0 = Infinity, v1 = -Infinity;
    for (const [u, v] of points) {
      u0 = Math.min(u0, u); u1 = Math.max(u1, u);
      v0 = Math.min(v0, v); v1 = Math.max(v1, v);
    }
    for (const b of extraBoxes) {
      u0 = Math.min(u0, b.u0); u1 = Math.max(u1, b.u1);
      v0 = Math.min(v0, b.v0); v1 = Math.max(v1, b.v1);
    }
    if (!Number.isFinite(u0)) { u0 = -3; u1 = 3; v0 = -3; v1 = 3; }
    const span = Math.max(u1 - u0, v1 - v0) * 1.08;
    const cu = (u0 + u1) / 2, cv = (v0 + v1) / 2;
    this.box = { u0: cu - span / 2, u1: cu + span / 2, v0: cv - span / 2, v1: cv + span / 2 };
  }

  get scale() {
    return (this.size - 2 * MARGIN) / (this.box.u1 - this.box.u0);
  }

  // Plane point -> pixel offset within the canvas (CSS pixels); v grows upwards.
  toPixel([u, v]) {
    return [MARGIN + (u - this.box.u0) * this.scale, MARGIN + (this.box.v1 - v) * this.scale];
  }

  fromPixel([x, y]) {
    return [this.box.u0 + (x - MARGIN) / this.scale, this.box.v1 - (y - MARGIN) / this.scale];
  }

  // Plane point -> page coordinates (what a pointer event reports as clientX/Y).
  toClient(uv) {
    const rect = this.canvas.getBoundingClientRect();
    const [x, y] = this.toPixel(uv);
    return [rect.left + x, rect.top + y];
  }

  inside([x, y]) {
    return x >= MARGIN && y >= MARGIN && x <= this.size - MARGIN && y <= this.size - MARGIN;
  }

  // `colours[label]` fills each point; `order` is the drawing order of the points' indices.
  draw({ points, labels, colours, order, ellipses, box, axisLabels }) {
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    ctx.clearRect(0, 0, this.size, this.size);
    ctx.fillStyle = "#fbfbf8";
    ctx.fillRect(MARGIN, MARGIN, this.size - 2 * MARGIN, this.size - 2 * MARGIN);
    this.#grid(ctx, axisLabels);
    ctx.save();
    ctx.beginPath();
    ctx.rect(MARGIN, MARGIN, this.size - 2 * MARGIN, this.size - 2 * MARGIN);
    ctx.clip();
    ctx.globalAlpha = 0.55;
    // A few hundred points get larger dots than MNIST's 2,000, so they still read as a cloud.
    const radius = points.length >= 1000 ? 2.1 : 3.2;
    // Each point's fill as drawn, for the browser tests.
    this.pointColours = labels.map((label) => colours[label]);
    for (const i of order) {
      const [x, y] = this.toPixel(points[i]);
      ctx.fillStyle = this.pointColours[i];
      ctx.beginPath();
      ctx.arc(x, y, radius, 0, 2 * Math.PI);
      ctx.fill();
    }
    ctx.globalAlpha = 1;
    ctx.strokeStyle = "#222";
    ctx.setLineDash([5, 4]);
    for (const { centre, cov, k } of ellipses) {
      const l11 = Math.sqrt(Math.max(cov[0][0], 0));
      const l21 = l11 > 0 ? cov[1][0] / l11 : 0;
      const l22 = Math.sqrt(Math.max(cov[1][1] - l21 * l21, 0));
      ctx.lineWidth = 1.2;
      ctx.beginPath();
      for (let s = 0; s <= 96; s++) {
        const t = (2 * Math.PI * s) / 96;
        const a = Math.cos(t), b = Math.sin(t);
        const p = this.toPixel([centre[0] + k * l11 * a, centre[1] + k * (l21 * a + l22 * b)]);
        if (s === 0) ctx.moveTo(...p); else ctx.lineTo(...p);
      }
      ctx.stroke();
      const label = this.toPixel([centre[0] + k * l11 * Math.SQRT1_2, centre[1] + k * (l21 + l22) * Math.SQRT1_2]);
      ctx.fillStyle = "#222";
      ctx.font = "11px system-ui, sans-serif";
      ctx.fillText(`${k}σ`, label[0] + 3, label[1] - 3);
    }
    if (box) {
      const [x0, y0] = this.toPixel([box.low[0], box.high[1]]);
      const [x1, y1] = this.toPixel([box.high[0], box.low[1]]);
      ctx.lineWidth = 1.2;
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    }
    ctx.restore();
  }

  #grid(ctx, axisLabels) {
    const { u0, u1, v0, v1 } = this.box;
    const step = niceStep((u1 - u0) / 6);
    ctx.strokeStyle = "#e4e4de";
    ctx.fillStyle = "#666";
    ctx.lineWidth = 1;
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "center";
    for (let u = Math.ceil(u0 / step) * step; u <= u1; u += step) {
      const [x] = this.toPixel([u, 0]);
      ctx.beginPath(); ctx.moveTo(x, MARGIN); ctx.lineTo(x, this.size - MARGIN); ctx.stroke();
      ctx.fillText(fmtTick(u), x, this.size - MARGIN + 14);
    }
    ctx.textAlign = "right";
    for (let v = Math.ceil(v0 / step) * step; v <= v1; v += step) {
      const [, y] = this.toPixel([0, v]);
      ctx.beginPath(); ctx.moveTo(MARGIN, y); ctx.lineTo(this.size - MARGIN, y); ctx.stroke();
      ctx.fillText(fmtTick(v), MARGIN - 4, y + 4);
    }
    ctx.textAlign = "center";
    ctx.fillStyle = "#333";
    ctx.fillText(axisLabels[0], this.size / 2, this.size - 6);
    ctx.save();
    ctx.translate(11, this.size / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText(axisLabels[1], 0, 0);
    ctx.restore();
    ctx.textAlign = "start";
    ctx.strokeStyle = "#bbb";
    ctx.strokeRect(MARGIN, MARGIN, this.size - 2 * MARGIN, this.size - 2 * MARGIN);
  }

  // Called on every pointer move: moves two circles rather than rebuilding them.
  setCursor(uv) {
    const g = this.layers.cursor;
    if (!uv) {
      g.replaceChildren();
      return;
    }
    if (!g.firstChild) {
      g.appendChild(el("circle", { r: 7, class: "cursor" }));
      g.appendChild(el("circle", { r: 1.5, class: "cursor-dot" }));
    }
    const [x, y] = this.toPixel(uv);
    for (const circle of g.children) {
      circle.setAttribute("cx", x);
      circle.setAttribute("cy", y);
    }
  }

  setPins(pins) {
    const g = this.layers.pins;
    g.replaceChildren();
    pins.forEach((pin, i) => {
      const [x, y] = this.toPixel(pin.uv);
      g.appendChild(el("circle", { cx: x, cy: y, r: 8, class: "pin" }));
      const t = el("text", { x, y: y + 4, class: "pin-label", "text-anchor": "middle" });
      t.textContent = String.fromCharCode(65 + i);
      g.appendChild(t);
    });
  }

  setWalk(uvs) {
    const g = this.layers.walk;
    g.replaceChildren();
    if (!uvs || uvs.length < 2) return;
    const pts = uvs.map((uv) => this.toPixel(uv));
    g.appendChild(el("polyline", { points: pts.map((p) => p.join(",")).join(" "), class: "walk" }));
    for (const [x, y] of pts) g.appendChild(el("circle", { cx: x, cy: y, r: 2.5, class: "walk-dot" }));
  }

  // The drawn digit's latent: a marker at its plane point, carrying the latent itself.
  setDrawn(uv, latent) {
    const g = this.layers.drawn;
    g.replaceChildren();
    if (!uv) return;
    const [x, y] = this.toPixel(uv);
    const r = 9;
    const star = el("path", {
      id: "drawn-marker",
      d: `M${x},${y - r} L${x + r * 0.3},${y - r * 0.3} L${x + r},${y} L${x + r * 0.3},${y + r * 0.3} ` +
        `L${x},${y + r} L${x - r * 0.3},${y + r * 0.3} L${x - r},${y} L${x - r * 0.3},${y - r * 0.3} Z`,
      class: "drawn",
      "data-x": x,
      "data-y": y,
      "data-latent": JSON.stringify(latent),
    });
    g.appendChild(star);
  }

  setSamples(uvs) {
    const g = this.layers.samples;
    g.replaceChildren();
    for (const uv of uvs || []) {
      const [x, y] = this.toPixel(uv);
      g.appendChild(el("path", { d: `M${x - 3},${y - 3} L${x + 3},${y + 3} M${x - 3},${y + 3} L${x + 3},${y - 3}`, class: "sample" }));
    }
  }
}

function niceStep(raw) {
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

function fmtTick(x) {
  const r = Math.round(x * 100) / 100;
  return Object.is(r, -0) ? "0" : String(r);
}

// The explorer page: wires the model picker, the latent plane (live decode, pins, walk),
// the per-dimension sliders, the sampling panel and the drawing pad to the server.
// Each panel has its own coalescing runner (coalesce.js): at most one request in flight.
// window.explorer exposes the state for the browser tests.

import { Api, ApiError, floats, median, tensor } from "./api.js";
import { Latest } from "./coalesce.js";
import {
  DIGIT_COLOURS, SIDE, clearDigit, digitCanvases, heightFor, paintDigit, paintMap, setImageShape,
} from "./digits.js";
import { DrawPad } from "./draw.js";
import { Plane, Projection, scatterKey } from "./plane.js";

const WALK_STEPS = 12;
const PRIOR_LABELS = {
  standard_normal: "standard normal N(0, I)",
  fitted_gaussian: "Gaussian fitted to the training latents",
  bounding_box_uniform: "uniform in the training latents' bounding box",
};

const $ = (id) => document.getElementById(id);

const api = new Api();
const plane = new Plane($("plane"), $("overlay"));
const state = {
  models: [],
  model: null, // the explorer's data for the chosen model (GET explorer/models/{name})
  projection: null,
  key: null, // the scatter's {names, colours, counts, order} (plane.js scatterKey)
  cursor: null, // {z, uv} last decoded point
  pins: [],
  drawn: null, // {input: Float32Array(C * H * W), latent: [...], uv}
  samples: null, // {seed, prior, temperature, count, images: Float32Array}
  errors: new Map(),
};

// --- errors -----------------------------------------------------------------------------

function showError(source, err) {
  const message = err instanceof ApiError ? err.message : String(err && err.message ? err.message : err);
  state.errors.set(source, message);
  renderErrors();
}

function clearError(source) {
  if (state.errors.delete(source)) renderErrors();
}

function renderErrors() {
  const box = $("error");
  box.replaceChildren();
  for (const [source, message] of state.errors) {
    const line = document.createElement("div");
    line.textContent = `${source}: ${message}`;
    box.appendChild(line);
  }
  box.hidden = state.errors.size === 0;
}

// --- live decode (plane hover and sliders) -----------------------------------------------

// Each run names the model it asked; a reply that arrives after the user picked another
// model is dropped (the choice has started its own runs).
const decoder = new Latest(async ({ z, uv }) => {
  const model = state.model;
  const t0 = performance.now();
  const out = await api.infer(model.v2.decoder, [latentTensor(model, 1, z)]);
  api.decodeTimes.push(performance.now() - t0);
  if (model !== state.model) return;
  clearError("decode");
  const images = floats(out[model.tensors.decoder_output]);
  paintDigit($("decoded"), images.data);
  $("decoded").dataset.latent = JSON.stringify(z);
  state.cursor = { z, uv };
  showCoords($("decoded-at"), z, uv);
  $("decoded-near").textContent = nearestDigits(uv, z.length);
  renderSpeed();
}, (err) => showError("decode", err));

// The decoder's input for `n` latents (flat values), shaped as the model's latent.
function latentTensor(model, n, values) {
  return tensor(model.tensors.decoder_input, "FP32", [n, ...model.latent_shape], values);
}

// A latent map C x h x w as one canvas per channel in `container`.
function paintMaps(container, model, data) {
  const [c, h, w] = model.latent_shape;
  const existing = [...container.querySelectorAll("canvas")];
  for (const canvas of existing.slice(c)) canvas.remove();
  for (let k = 0; k < c; k++) {
    let canvas = existing[k];
    if (!canvas) {
      canvas = document.createElement("canvas");
      canvas.className = "map";
      container.appendChild(canvas);
    }
    canvas.width = 64;
    canvas.height = Math.round((64 * h) / w);
    canvas.title = `latent channel ${k + 1} of ${c} (${h} x ${w}, stretched to its min..max)`;
    paintMap(canvas, data, k * h * w, h, w);
  }
}

function renderSpeed() {
  const t = api.decodeTimes;
  const recent = t.slice(-200);
  if (t.length) $("speed").textContent = `decode round trip p50 ${median(recent).toFixed(1)} ms (last ${recent.length === 1 ? "call" : `${recent.length} calls`})`;
}

function fmt(x) {
  return (x >= 0 ? " " : "") + x.toFixed(3);
}

function showCoords(node, z, uv) {
  if (z.length === 2) {
    node.textContent = `z = (${fmt(z[0])}, ${fmt(z[1])})`;
  } else {
    node.textContent = `plane (${fmt(uv[0])}, ${fmt(uv[1])})  z = [${z.map((x) => x.toFixed(2)).join(", ")}]`;
  }
}

// The test digits nearest a point of a 2-D latent: far from all of them is one of the
// walkthrough's gaps, where the decoder has seen nothing to imitate.
function nearestDigits(uv, dim) {
  const { points, labels } = state.model.scatter;
  if (dim !== 2 || !points.length) return "";
  const near = points
    .map(([u, v], i) => [Math.hypot(u - uv[0], v - uv[1]), labels[i]])
    .sort((a, b) => a[0] - b[0])
    .slice(0, 5);
  return `nearest test digits: ${near.map(([, label]) => label).join(" ")} (${near[0][0].toFixed(2)} away)`;
}

function decodeAt(uv) {
  const z = state.projection.toLatent(uv);
  plane.setCursor(uv);
  setSliders(z);
  decoder.push({ z, uv });
}

function planePoint(event) {
  const rect = $("plane").getBoundingClientRect();
  return [event.clientX - rect.left, event.clientY - rect.top];
}

$("overlay").addEventListener("pointermove", (event) => {
  if (!state.model) return;
  const p = planePoint(event);
  if (plane.inside(p)) decodeAt(plane.fromPixel(p));
});

$("overlay").addEventListener("click", (event) => {
  if (!state.model) return;
  const p = planePoint(event);
  if (!plane.inside(p)) return;
  const uv = plane.fromPixel(p);
  addPin({ uv, z: state.projection.toLatent(uv) });
});

// --- sliders (one per latent dimension, for models with more than two) --------------------

function buildSliders(model) {
  const box = $("sliders");
  box.replaceChildren();
  $("sliders-box").hidden = model.latent_dim <= 2 || model.spatial;
  if (model.latent_dim <= 2 || model.spatial) return;
  const [lo, hi] = model.slider_range;
  for (let i = 0; i < model.latent_dim; i++) {
    const row = document.createElement("label");
    row.className = "slider";
    const name = document.createElement("span");
    name.textContent = `z${i + 1}`;
    const input = document.createElement("input");
    Object.assign(input, { type: "range", min: lo, max: hi, step: 0.01, value: 0 });
    input.dataset.dim = i;
    const value = document.createElement("output");
    value.textContent = "0.00";
    input.addEventListener("input", () => {
      value.textContent = Number(input.value).toFixed(2);
      const z = sliderLatent();
      const uv = state.projection.project(z);
      plane.setCursor(uv);
      decoder.push({ z, uv });
    });
    row.append(name, input, value);
    box.appendChild(row);
  }
}

function sliderLatent() {
  return [...$("sliders").querySelectorAll("input")].map((s) => Number(s.value));
}

function setSliders(z) {
  const inputs = $("sliders").querySelectorAll("input");
  inputs.forEach((input, i) => {
    input.value = z[i];
    input.nextElementSibling.textContent = Number(input.value).toFixed(2);
  });
}

$("sliders-zero").addEventListener("click", () => {
  const z = new Array(state.model.latent_dim).fill(0);
  setSliders(z);
  const uv = state.projection.project(z);
  plane.setCursor(uv);
  decoder.push({ z, uv });
});

// --- pins and the walk between them ------------------------------------------------------

function addPin(pin) {
  state.pins = state.pins.length >= 2 ? [pin] : [...state.pins, pin];
  plane.setPins(state.pins);
  renderPins();
  if (state.pins.length === 2) walker.push(state.pins);
  else {
    plane.setWalk(null);
    digitCanvases($("walk"), 0, 0);
    $("walk-ends").textContent = "(pin two points on the plane)";
  }
}

function renderPins() {
  const box = $("pins");
  box.replaceChildren();
  state.pins.forEach((pin, i) => {
    const row = document.createElement("div");
    row.className = "pin-row";
    row.textContent = `${String.fromCharCode(65 + i)}  ` + (pin.z.length === 2
      ? `(${fmt(pin.z[0])}, ${fmt(pin.z[1])})`
      : `plane (${fmt(pin.uv[0])}, ${fmt(pin.uv[1])})`);
    box.appendChild(row);
  });
  if (state.pins.length) {
    const clear = document.createElement("button");
    clear.type = "button";
    clear.textContent = "clear pins";
    clear.addEventListener("click", () => {
      state.pins = [];
      plane.setPins([]);
      plane.setWalk(null);
      digitCanvases($("walk"), 0, 0);
      renderPins();
    });
    box.appendChild(clear);
  }
}

const walker = new Latest(async ([a, b]) => {
  const zs = [];
  for (let s = 0; s < WALK_STEPS; s++) {
    const t = s / (WALK_STEPS - 1);
    zs.push(a.z.map((x, i) => x + t * (b.z[i] - x)));
  }
  const model = state.model;
  const out = await api.infer(model.v2.decoder, [latentTensor(model, WALK_STEPS, zs.flat())]);
  if (model !== state.model) return;
  clearError("walk");
  const images = floats(out[model.tensors.decoder_output]);
  const canvases = digitCanvases($("walk"), WALK_STEPS, 56);
  canvases.forEach((c, i) => paintDigit(c, images.data, i));
  plane.setWalk(zs.map((z) => state.projection.project(z)));
  $("walk-ends").textContent = "A → B, straight line in the latent space";
}, (err) => showError("walk", err));

// --- sampling panel ----------------------------------------------------------------------

const sampler = new Latest(async (request) => {
  const inputs = [
    tensor("count", "INT64", [1], [request.count]),
    tensor("seed", "UINT64", [1], [request.seed]),
    tensor("prior", "BYTES", [1], [request.prior]),
    tensor("temperature", "FP32", [1], [request.temperature]),
  ];
  const model = state.model;
  const out = await api.infer(model.v2.sampler, inputs);
  if (model !== state.model) return;
  clearError("sample");
  const images = floats(out.images);
  const latents = floats(out.latents);
  const canvases = digitCanvases($("samples"), request.count, 56);
  canvases.forEach((c, i) => paintDigit(c, images.data, i));
  const d = model.latent_dim;
  if (model.spatial) {
    paintMaps($("sample-latent"), model, latents.data);
  } else {
    const uvs = [];
    for (let i = 0; i < request.count; i++) {
      uvs.push(state.projection.project(Array.from(latents.data.slice(i * d, (i + 1) * d))));
    }
    plane.setSamples(uvs);
  }
  state.samples = { ...request, images: images.data, latents: latents.data };
}, (err) => showError("sample", err));

function sampleRequest() {
  return {
    prior: $("prior").value,
    temperature: Number($("temperature").value),
    seed: Math.max(0, Math.floor(Number($("seed").value))),
    count: Math.max(1, Math.floor(Number($("count").value))),
  };
}

$("sample-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (state.model) sampler.push(sampleRequest());
});

$("prior").addEventListener("change", () => {
  drawPlaneBase();
  renderMix();
});

function renderMix() {
  const box = $("mix");
  box.replaceChildren();
  const mix = state.model && state.model.digit_mix && state.model.digit_mix[$("prior").value];
  if (!mix) return;
  const title = document.createElement("p");
  title.className = "muted";
  title.textContent = `classifier's digit mix of ${mix.count} samples from this prior (temperature 1)` +
    (mix.well_formed_fraction != null ? `, ${(100 * mix.well_formed_fraction).toFixed(0)}% well formed` : "");
  const bars = document.createElement("div");
  bars.className = "bars";
  const top = Math.max(...mix.digit_share, 0.2);
  mix.digit_share.forEach((share, digit) => {
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.title = `${digit}: ${(100 * share).toFixed(1)}%`;
    const fill = document.createElement("span");
    fill.style.height = `${(100 * share) / top}%`;
    fill.style.background = DIGIT_COLOURS[digit];
    const label = document.createElement("em");
    label.textContent = digit;
    bar.append(fill, label);
    bars.appendChild(bar);
  });
  box.append(title, bars);
}

// --- drawing pad -------------------------------------------------------------------------

const encoder = new Latest(async (input) => {
  const model = state.model;
  const t = model.tensors;
  const out = await api.infer(model.v2.encoder, [tensor(t.encoder_input, "FP32", [1, ...model.image_shape], input)]);
  const latent = Array.from(floats(out[t.encoder_outputs[0]]).data);
  const decoded = await api.infer(model.v2.decoder, [latentTensor(model, 1, latent)]);
  if (model !== state.model) return;
  clearError("encode");
  paintDigit($("draw-recon"), floats(decoded[t.decoder_output]).data);
  if (model.spatial) {
    state.drawn = { input, latent, uv: null };
    paintMaps($("draw-latent"), model, latent);
    $("draw-at").textContent = `latent ${model.latent_shape.join(" x ")}: one map per channel`;
    return;
  }
  const uv = state.projection.project(latent);
  state.drawn = { input, latent, uv };
  plane.setDrawn(uv, latent);
  showCoords($("draw-at"), latent, uv);
}, (err) => showError("encode", err));

const pad = new DrawPad($("draw"), () => {
  if (!state.model) return;
  const input = isMnistShape(state.model) ? pad.mnistInput() : pad.imageInput(state.model.image_shape);
  if (!input) return;
  paintDigit($("draw-input"), input);
  encoder.push(input);
});

$("draw-clear").addEventListener("click", () => {
  pad.clear();
  clearDigit($("draw-input"));
  clearDigit($("draw-recon"));
  state.drawn = null;
  plane.setDrawn(null);
  $("draw-at").textContent = "";
  $("draw-latent").replaceChildren();
});

function isMnistShape(model) {
  const [c, h, w] = model.image_shape;
  return c === 1 && h === SIDE && w === SIDE;
}

// --- model choice ------------------------------------------------------------------------

function drawPlaneBase() {
  const m = state.model;
  if (m.spatial) return;
  const proj = state.projection;
  const prior = $("prior").value || m.default_prior;
  const ellipses = [];
  let box = null;
  const spec = m.priors[prior];
  if (spec && spec.covariance) {
    const centre = proj.project(spec.mean);
    const cov = proj.projectCovariance(spec.covariance);
    for (const k of [1, 2, 3]) ellipses.push({ centre, cov, k });
  } else if (spec && spec.low && m.latent_dim === 2) {
    box = spec;
  }
  const { colours, order } = state.key;
  plane.draw({
    points: m.scatter.points, labels: m.scatter.labels, colours, order, ellipses, box, axisLabels: proj.labels,
  });
  const shown = m.scatter.classes ? `test images in ${m.scatter.classes.length} classes` : "test digits";
  $("plane-note").textContent =
    `${m.scatter.points.length} ${shown} (${m.scatter.source}); ` +
    (ellipses.length ? `dashed: the ${PRIOR_LABELS[prior] || prior} at 1, 2, 3 sigma`
      : box ? `rectangle: the ${PRIOR_LABELS[prior]}` : "");
}

function fitView(model, proj) {
  const boxes = [];
  const spec = model.priors[model.default_prior];
  if (spec && spec.covariance) {
    const c = proj.project(spec.mean);
    const cov = proj.projectCovariance(spec.covariance);
    const su = 3 * Math.sqrt(cov[0][0]), sv = 3 * Math.sqrt(cov[1][1]);
    boxes.push({ u0: c[0] - su, u1: c[0] + su, v0: c[1] - sv, v1: c[1] + sv });
  }
  const box = model.priors.bounding_box_uniform;
  if (box && model.latent_dim === 2) {
    boxes.push({ u0: box.low[0], u1: box.high[0], v0: box.low[1], v1: box.high[1] });
  }
  plane.fit(model.scatter.points, boxes);
}

// The scatter's key: the digits for MNIST, else the model's own class names with the
// number of test images of each.
function renderLegend(model) {
  const box = $("legend");
  box.replaceChildren();
  if (model.spatial) return;
  const { names, colours, counts } = state.key;
  names.forEach((name, label) => {
    const item = document.createElement("span");
    item.className = "key";
    const swatch = document.createElement("i");
    swatch.style.background = colours[label];
    item.append(swatch, name);
    if (model.scatter.classes) {
      item.title = `${counts[label]} of the ${model.scatter.labels.length} test images`;
      const count = document.createElement("small");
      count.textContent = ` ${counts[label]}`;
      item.appendChild(count);
    }
    box.appendChild(item);
  });
  const marks = document.createElement("span");
  marks.className = "marks muted";
  marks.textContent = `○ pointer   A B pins   × samples   ✦ your ${isMnistShape(model) ? "digit" : "image"}`;
  box.appendChild(marks);
}

async function chooseModel(name) {
  const model = await api.getJson(`explorer/models/${encodeURIComponent(name)}`);
  clearError("models");
  state.model = model;
  state.projection = model.plane ? new Projection(model.plane) : null;
  state.key = model.scatter ? scatterKey(model.scatter) : null;
  state.pins = [];
  state.drawn = null;
  state.samples = null;
  state.cursor = null;
  setImageShape(model.image_shape);
  pad.colour = !isMnistShape(model);
  // Behind other models' images, white: black showed at their rounded corners.
  document.body.classList.toggle("colour", pad.colour);
  fitCanvases(model);
  // A spatial latent has no plane: no plane, pointer decode or walk; the latent is shown as
  // channel maps beside the reconstruction and the samples.
  for (const id of ["plane-panel", "decode-panel", "walk-panel"]) $(id).hidden = model.spatial;
  for (const id of ["draw-latent", "sample-latent"]) {
    $(id).hidden = !model.spatial;
    $(id).replaceChildren();
  }
  $("plane-title").textContent = model.spatial ? "" : model.latent_dim === 2
    ? `Latent plane of ${model.name} (${model.kind.toUpperCase()}, 2-D)`
    : `PCA plane of ${model.name} (${model.kind.toUpperCase()}, ${model.latent_dim}-D; ` +
      `${(100 * model.plane.explained_variance_ratio).toFixed(0)}% of the variance)`;
  const prior = $("prior");
  prior.replaceChildren();
  for (const name of Object.keys(model.priors)) {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name + (name === model.default_prior ? " (default)" : "");
    prior.appendChild(option);
  }
  prior.value = model.default_prior;
  if (!model.spatial) fitView(model, state.projection);
  drawPlaneBase();
  renderLegend(model);
  renderMix();
  buildSliders(model);
  plane.setCursor(null);
  plane.setPins([]);
  plane.setWalk(null);
  plane.setSamples(null);
  plane.setDrawn(null);
  renderPins();
  digitCanvases($("walk"), 0, 0);
  digitCanvases($("samples"), 0, 0);
  $("walk-ends").textContent = "(pin two points on the plane)";
  for (const id of ["decoded", "draw-input", "draw-recon"]) clearDigit($(id));
  $("draw-at").textContent = "";
  pad.clear();
  // Start with something to look at: the prior's centre decoded, and a grid of samples.
  if (!model.spatial) {
    decodeAt(state.projection.project(model.priors[model.default_prior].mean || new Array(model.latent_dim).fill(0)));
  }
  sampler.push(sampleRequest());
  await Promise.all([decoder.idle(), sampler.idle()]);
}

// The fixed image canvases at the model's aspect ratio, and the pad's caption.
function fitCanvases(model) {
  for (const id of ["decoded", "draw-input", "draw-recon"]) {
    const canvas = $(id);
    canvas.height = heightFor(canvas.width);
  }
  const [c, h, w] = model.image_shape;
  $("draw-sent").textContent = `sent (${c === 3 ? "RGB " : ""}${h} x ${w})`;
  $("draw-title").textContent = isMnistShape(model) ? "Draw a digit" : "Draw or drop an image";
}

// The repository can change under the page (a new version published, a model loaded or
// unloaded): the listing is polled, and the picker and the chosen model follow it.
const REFRESH_MS = 5000;

function modelLabel(m) {
  const latent = m.spatial ? m.latent_shape.join(" x ") : `${m.latent_dim}-D`;
  const versions = m.versions && m.versions.length > 1 ? `versions ${m.versions.join(", ")}` : `v${m.version}`;
  return `${m.name} ${versions} (${m.kind}, ${latent}, ${m.image_shape.join(" x ")})`;
}

function listingKey(listing) {
  return JSON.stringify(listing.models.map((m) => [m.name, m.versions]));
}

function fillPicker(listing) {
  state.models = listing.models;
  state.listingKey = listingKey(listing);
  const select = $("model");
  select.replaceChildren();
  for (const m of listing.models) {
    const option = document.createElement("option");
    option.value = m.name;
    option.textContent = modelLabel(m);
    select.appendChild(option);
  }
}

async function loadModels() {
  let listing;
  try {
    listing = await api.getJson("explorer/models");
  } catch (err) {
    showError("models", err);
    return;
  }
  clearError("models");
  fillPicker(listing);
  const select = $("model");
  const wanted = new URLSearchParams(location.search).get("model");
  const names = listing.models.map((m) => m.name);
  const first = names.includes(wanted) ? wanted : names.includes(listing.default_model) ? listing.default_model : names[0];
  if (!first) {
    // The HTTP port answers while the models still load and warm up: ask again shortly.
    showError("models", "no model is ready yet (still loading?); trying again");
    await new Promise((resolve) => setTimeout(resolve, 1000));
    return loadModels();
  }
  select.value = first;
  try {
    await chooseModel(first);
  } catch (err) {
    showError("models", err);
  }
}

async function refreshModels() {
  let listing;
  try {
    listing = await api.getJson("explorer/models");
  } catch {
    return; // a passing failure: the next poll tries again
  }
  if (listingKey(listing) === state.listingKey) return;
  const chosen = state.model ? state.model.name : null;
  const before = state.models.find((m) => m.name === chosen);
  fillPicker(listing);
  const now = listing.models.find((m) => m.name === chosen);
  const select = $("model");
  try {
    if (now) {
      select.value = chosen;
      // A new default version may have other shapes or a new latent sample: reload it.
      if (!before || before.version !== now.version) await chooseModel(chosen);
    } else if (listing.models.length) {
      select.value = listing.models[0].name;
      await chooseModel(select.value);
    }
  } catch (err) {
    showError("models", err);
  }
}

setInterval(refreshModels, REFRESH_MS);

$("model").addEventListener("change", async () => {
  try {
    await chooseModel($("model").value);
  } catch (err) {
    showError("models", err);
  }
});

const tokenInput = $("token");
tokenInput.value = sessionStorage.getItem("latentserve-token") || "";
api.token = tokenInput.value.trim();
tokenInput.addEventListener("change", () => {
  api.token = tokenInput.value.trim();
  sessionStorage.setItem("latentserve-token", api.token);
  loadModels();
});

window.explorer = {
  api,
  plane,
  state,
  panels: { decoder, walker, sampler, encoder },
  pad,
  chooseModel,
  async idle() {
    await Promise.all([decoder.idle(), walker.idle(), sampler.idle(), encoder.idle()]);
  },
  refreshModels,
  ready: loadModels(),
};

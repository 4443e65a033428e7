// Painting float images (values in [0, 1]) of the chosen model's shape C x H x W onto
// canvases: grey level round(255 * v) in all three channels for a grey model (white ink on
// black as in MNIST), the three channels for an RGB one, scaled up without smoothing, so
// every screen pixel of a cell holds the exact value. Latent maps (C x h x w) are painted
// one channel per canvas, each stretched to its own min..max.

export const SIDE = 28;
export const PIXELS = SIDE * SIDE;

export const DIGIT_COLOURS = [
  "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
];

// The chosen model's image shape [C, H, W]; MNIST's until a model is chosen.
let shape = [1, SIDE, SIDE];
const scratch = document.createElement("canvas");
const scratchCtx = scratch.getContext("2d");

export function setImageShape(imageShape) {
  shape = imageShape.slice();
}

export function imageShape() {
  return shape.slice();
}

export function gray(v) {
  return Math.max(0, Math.min(255, Math.round(v * 255)));
}

// Paint image `index` of a flat N x C x H x W array onto `canvas`.
export function paintDigit(canvas, data, index = 0) {
  const [c, h, w] = shape;
  paintPlanes(canvas, h, w, (i, rgb) => {
    const offset = index * c * h * w;
    for (let k = 0; k < 3; k++) rgb[k] = gray(data[offset + (c === 1 ? 0 : k * h * w) + i]);
  });
}

// One latent channel map (h x w values), stretched to its own min..max, in grey.
export function paintMap(canvas, data, offset, h, w) {
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < h * w; i++) {
    lo = Math.min(lo, data[offset + i]);
    hi = Math.max(hi, data[offset + i]);
  }
  const span = hi > lo ? hi - lo : 1;
  paintPlanes(canvas, h, w, (i, rgb) => {
    rgb.fill(gray((data[offset + i] - lo) / span));
  });
}

function paintPlanes(canvas, h, w, pixel) {
  scratch.width = w;
  scratch.height = h;
  const pixels = scratchCtx.createImageData(w, h);
  const rgb = [0, 0, 0];
  for (let i = 0; i < h * w; i++) {
    pixel(i, rgb);
    pixels.data.set(rgb, 4 * i);
    pixels.data[4 * i + 3] = 255;
  }
  scratchCtx.putImageData(pixels, 0, 0);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(scratch, 0, 0, canvas.width, canvas.height);
}

// Canvas height for `width` px at the chosen image's aspect ratio.
export function heightFor(width) {
  return Math.round((width * shape[1]) / shape[2]);
}

// A row/grid of `count` digit canvases `size` px wide inside `container` (reusing canvases),
// as high as the chosen image's aspect ratio makes them.
export function digitCanvases(container, count, size) {
  const existing = [...container.querySelectorAll("canvas")];
  for (const c of existing.slice(count)) c.remove();
  const canvases = existing.slice(0, count);
  while (canvases.length < count) {
    const c = document.createElement("canvas");
    c.className = "digit";
    container.appendChild(c);
    canvases.push(c);
  }
  const height = heightFor(size);
  for (const c of canvases) {
    if (c.width !== size || c.height !== height) {
      c.width = size;
      c.height = height;
    }
  }
  return canvases;
}

export function clearDigit(canvas) {
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
}

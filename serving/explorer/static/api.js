// How the page talks to latentserve: the v2 (Open Inference Protocol) REST API on the same
// HTTP port, with JSON tensors, plus the explorer's own model-data endpoint. Paths are
// relative, so the page also works behind a reverse proxy that serves it under a prefix.
// Every call sends the bearer token when one is set, and a failed call throws an ApiError
// carrying the server's {"error": "..."} message and HTTP status.

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

export class Api {
  constructor() {
    this.token = "";
    // Round-trip times (ms) of decode calls, for the speed readout and the browser test.
    this.decodeTimes = [];
  }

  headers(extra = {}) {
    const h = { ...extra };
    if (this.token) h.Authorization = `Bearer ${this.token}`;
    return h;
  }

  async getJson(path) {
    return this.#send(path, { headers: this.headers() });
  }

  async #send(path, init) {
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(`cannot reach the server (${err.message})`, 0);
    }
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = null;
    }
    if (!response.ok) {
      const message = body && typeof body.error === "string" ? body.error : text || response.statusText;
      throw new ApiError(`${response.status}: ${message}`, response.status);
    }
    return body;
  }

  // POST /v2/models/{model}/infer with JSON tensors; returns {outputName: {shape, data}}.
  async infer(model, inputs, outputs) {
    const body = { inputs };
    if (outputs) body.outputs = outputs.map((name) => ({ name }));
    const reply = await this.#send(`v2/models/${encodeURIComponent(model)}/infer`, {
      method: "POST",
      headers: this.headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(body),
    });
    const byName = {};
    for (const out of reply.outputs || []) byName[out.name] = out;
    return byName;
  }
}

// One tensor in the v2 JSON form: flat row-major data with its shape.
export function tensor(name, datatype, shape, data) {
  return { name, datatype, shape, data: Array.from(data) };
}

// A v2 output as {shape, data: Float32Array}.
export function floats(output) {
  return { shape: output.shape, data: Float32Array.from(output.data) };
}

export function median(values) {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

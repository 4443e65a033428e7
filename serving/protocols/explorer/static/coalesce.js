// Coalescing request runner: one per panel. push(args) asks for a run with the newest
// arguments; while a run is in flight, newer pushes replace each other, so a fast pointer
// costs one request per round trip, never a queue, and at most one request per panel is
// ever in flight. idle() resolves once nothing is running or waiting.

export class Latest {
  constructor(run, onError) {
    this.run = run;
    this.onError = onError;
    this.pending = null;
    this.inFlight = 0;
    this.maxInFlight = 0;
    this.runs = 0;
    this.waiters = [];
  }

  push(args) {
    this.pending = { args };
    if (!this.inFlight) this.#pump();
  }

  idle() {
    if (!this.inFlight && !this.pending) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  async #pump() {
    while (this.pending) {
      const { args } = this.pending;
      this.pending = null;
      this.inFlight += 1;
      this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
      try {
        await this.run(args);
      } catch (err) {
        if (this.onError) this.onError(err);
      } finally {
        this.inFlight -= 1;
        this.runs += 1;
      }
    }
    const waiters = this.waiters;
    this.waiters = [];
    for (const resolve of waiters) resolve();
  }
}

/**
 * A progress bar for long work (replay): redrawn in place on a terminal, a plain line every 10%
 * otherwise (logs, CI), silent when given no stream.
 */
export class Progress {
  private lastDraw = 0;
  private lastDecile = -1;
  private readonly t0 = Date.now();

  constructor(private readonly out: NodeJS.WriteStream | null, private readonly total: number, private readonly label: string) {}

  update(done: number, note = ''): void {
    if (!this.out) return;
    const now = Date.now();
    const frac = this.total > 0 ? Math.min(1, done / this.total) : 1;
    if (this.out.isTTY) {
      if (now - this.lastDraw < 200) return;
      this.lastDraw = now;
      const width = 30;
      const filled = Math.round(frac * width);
      const rate = done / Math.max((now - this.t0) / 1000, 1e-3);
      const eta = rate > 0 ? Math.round((this.total - done) / rate) : 0;
      this.out.write(`\r${this.label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(frac * 100).toFixed(0).padStart(3)}% ${done}/${this.total} events ${note} eta ${eta}s  `);
    } else {
      const decile = Math.floor(frac * 10);
      if (decile === this.lastDecile) return;
      this.lastDecile = decile;
      this.out.write(`${this.label}: ${(frac * 100).toFixed(0)}% (${done}/${this.total} events) ${note}\n`);
    }
  }

  done(done: number, note = ''): void {
    this.lastDraw = 0;
    this.update(done, note);
    if (this.out?.isTTY) this.out.write('\n');
  }

  stop(): void {}
}

// The status bar's state machine and the session's numbers. No `vscode` import.

export type State = 'starting' | 'ready' | 'thinking' | 'error' | 'disabled';

export class Status {
  state: State = 'starting';
  enabled = true;
  lastLatencyMs: number | undefined;
  error: string | undefined;
  requests = 0;
  shown = 0;
  accepted = 0;
  private latencies: number[] = [];
  private pending = 0;

  constructor(private readonly onChange: (s: Status) => void = () => {}) {}

  private set(state: State): void {
    // Disabled wins over everything but an error, which the user must see.
    this.state = !this.enabled && state !== 'error' ? 'disabled' : state;
    this.onChange(this);
  }

  starting(): void { this.error = undefined; this.set('starting'); }
  ready(): void { this.error = undefined; this.pending = 0; this.set('ready'); }
  failed(message: string): void { this.error = message; this.pending = 0; this.set('error'); }

  setEnabled(on: boolean): void {
    this.enabled = on;
    this.set(on ? (this.error ? 'error' : 'ready') : 'disabled');
  }

  /** A request went out; returns the function to call when it is answered. */
  thinking(now: () => number = Date.now): (gotSuggestion: boolean) => void {
    const t0 = now();
    this.requests++;
    this.pending++;
    this.set('thinking');
    let done = false;
    return (gotSuggestion: boolean) => {
      if (done) return;
      done = true;
      this.pending = Math.max(0, this.pending - 1);
      if (gotSuggestion) {
        this.shown++;
        this.lastLatencyMs = now() - t0;
        this.latencies.push(this.lastLatencyMs);
        if (this.latencies.length > 1000) this.latencies.shift();
      }
      if (this.state === 'thinking' && this.pending === 0) this.set('ready');
    };
  }

  accept(): void { this.accepted++; this.onChange(this); }

  text(): string {
    const latency = this.lastLatencyMs === undefined ? '' : ` ${Math.round(this.lastLatencyMs)} ms`;
    switch (this.state) {
      case 'starting': return '$(loading~spin) ghost';
      case 'thinking': return `$(sync~spin) ghost${latency}`;
      case 'error': return '$(error) ghost';
      case 'disabled': return '$(circle-slash) ghost';
      default: return `$(sparkle) ghost${latency}`;
    }
  }

  tooltip(): string {
    if (this.state === 'error') return `ghost-lsp: ${this.error ?? 'error'} (click to restart)`;
    if (this.state === 'disabled') return 'ghost-lsp: suggestions off (click to turn on)';
    return `ghost-lsp: ${this.state}; ${this.shown} shown, ${this.accepted} accepted (click to toggle)`;
  }

  percentile(p: number): number | undefined {
    if (!this.latencies.length) return undefined;
    const sorted = [...this.latencies].sort((a, b) => a - b);
    return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
  }

  stats(): Record<string, number | string | undefined> {
    return {
      state: this.state,
      requests: this.requests,
      shown: this.shown,
      accepted: this.accepted,
      acceptRate: this.shown ? +(this.accepted / this.shown).toFixed(3) : undefined,
      latencyP50Ms: this.percentile(0.5),
      latencyP90Ms: this.percentile(0.9),
      lastLatencyMs: this.lastLatencyMs,
    };
  }
}

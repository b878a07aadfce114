// Settings → what the server gets, and where the server executable is. No `vscode` import:
// unit-tested with node's own test runner.
import * as path from 'path';

export interface GhostConfig {
  enabled: boolean;
  serverPath: string;
  serverArgs: string[];
  model: string;
  remoteUrl: string;
  maxNewTokens: number;
  temperature: number;
  topP: number;
  debounceMs: number;
  exclude: string[];
  completionItems: boolean;
  server: Record<string, unknown>;
}

export const DEFAULTS: GhostConfig = {
  enabled: true,
  serverPath: '',
  serverArgs: ['serve'],
  model: '',
  remoteUrl: '',
  maxNewTokens: 48,
  temperature: 0.6,
  topP: 0.95,
  debounceMs: 30,
  exclude: ['**/.env', '**/.env.*', '**/secrets/**', '*.pem', '*.key', '**/.ssh/**', '**/.git/**'],
  completionItems: false,
  server: {},
};

/** Reads each key through `get` (e.g. WorkspaceConfiguration.get), falling back to the defaults. */
export function readConfig(get: (key: string) => unknown): GhostConfig {
  const out: Record<string, unknown> = {};
  for (const [key, dflt] of Object.entries(DEFAULTS)) {
    const v = get(key);
    out[key] = v === undefined || v === null || typeof v !== typeof dflt ? dflt : v;
  }
  return out as unknown as GhostConfig;
}

/** The server's settings section (camelCase keys, as the server reads them): sent as
 * initializationOptions and again in each didChangeConfiguration. Client-only keys
 * (serverPath, serverArgs) stay here; `server` passes other settings through and wins. */
export function serverSettings(c: GhostConfig): Record<string, unknown> {
  const s: Record<string, unknown> = {
    enabled: c.enabled,
    maxNewTokens: c.maxNewTokens,
    temperature: c.temperature,
    topP: c.topP,
    debounceMs: c.debounceMs,
    exclude: c.exclude,
    completionItems: c.completionItems,
  };
  if (c.model) s.model = c.model;
  if (c.remoteUrl) s.remoteUrl = c.remoteUrl;
  return { ...s, ...c.server };
}

/** Settings whose change needs a new server process rather than a notification. */
export function needsRestart(a: GhostConfig, b: GhostConfig): boolean {
  return a.serverPath !== b.serverPath || JSON.stringify(a.serverArgs) !== JSON.stringify(b.serverArgs);
}

export interface Found { command: string; from: string }

/** The ghost-lsp executable: the setting; else each workspace folder's .venv/venv; else
 * $VIRTUAL_ENV; else $PATH. `isFile` is injected so tests need no real files. */
export function findServer(serverPath: string, folders: string[], env: NodeJS.ProcessEnv,
                           isFile: (p: string) => boolean, platform = process.platform): Found | undefined {
  const exe = platform === 'win32' ? 'ghost-lsp.exe' : 'ghost-lsp';
  const bin = platform === 'win32' ? 'Scripts' : 'bin';
  if (serverPath) {
    const p = folders.length && !path.isAbsolute(serverPath) ? path.join(folders[0], serverPath) : serverPath;
    return { command: p, from: 'setting ghost.serverPath' };
  }
  for (const folder of folders) {
    for (const venv of ['.venv', 'venv']) {
      const p = path.join(folder, venv, bin, exe);
      if (isFile(p)) return { command: p, from: `workspace ${venv}` };
    }
  }
  if (env.VIRTUAL_ENV) {
    const p = path.join(env.VIRTUAL_ENV, bin, exe);
    if (isFile(p)) return { command: p, from: '$VIRTUAL_ENV' };
  }
  for (const dir of (env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const p = path.join(dir, exe);
    if (isFile(p)) return { command: p, from: '$PATH' };
  }
  return undefined;
}

// ghost-lsp for VS Code: starts `ghost-lsp serve`, shows its inline completions as ghost
// text, keeps the server's settings in step with the workspace's, and shows a status item.
import * as fs from 'fs';
import * as vscode from 'vscode';
import {
  DidChangeConfigurationNotification, LanguageClient, LanguageClientOptions, ServerOptions, State as ClientState,
} from 'vscode-languageclient/node';
import { GhostConfig, findServer, needsRestart, readConfig, serverSettings } from './config';
import { Status } from './status';

const ACCEPT = 'ghost.accept';
let client: LanguageClient | undefined;
let config: GhostConfig;
let status: Status;
let serverFrom = '';

function currentConfig(): GhostConfig {
  const ws = vscode.workspace.getConfiguration('ghost');
  return readConfig((key) => ws.get(key));
}

function isFile(p: string): boolean {
  try { return fs.statSync(p).isFile(); } catch { return false; }
}

function makeClient(log: vscode.LogOutputChannel): LanguageClient | undefined {
  const folders = (vscode.workspace.workspaceFolders ?? []).map((f) => f.uri.fsPath);
  const found = findServer(config.serverPath, folders, process.env, isFile);
  if (!found) {
    status.failed('ghost-lsp executable not found');
    void vscode.window.showErrorMessage(
      'ghost-lsp: no `ghost-lsp` in the workspace .venv/venv, $VIRTUAL_ENV or PATH. Install it (pip install ghost-lsp) or set "ghost.serverPath".');
    return undefined;
  }
  serverFrom = `${found.command} (${found.from})`;
  log.info(`server: ${serverFrom} ${config.serverArgs.join(' ')}`);
  const serverOptions: ServerOptions = {
    command: found.command, args: config.serverArgs, options: { cwd: folders[0] },
  };
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: 'file', language: 'python' }, { scheme: 'untitled', language: 'python' }],
    initializationOptions: serverSettings(config),
    outputChannel: log,
    middleware: {
      provideInlineCompletionItems: async (document, position, context, token, next) => {
        if (!config.enabled) return undefined;
        const done = status.thinking();
        try {
          const result = await next(document, position, context, token);
          const items = Array.isArray(result) ? result : result?.items;
          done(!!items && items.length > 0);
          return result;
        } catch (e) {
          done(false);
          throw e;
        }
      },
      executeCommand: async (command, args, next) => {
        if (command === ACCEPT) status.accept();
        return next(command, args);
      },
    },
  };
  const c = new LanguageClient('ghost-lsp', 'ghost-lsp', serverOptions, clientOptions);
  c.onDidChangeState((e) => {
    if (e.newState === ClientState.Running) status.ready();
    else if (e.newState === ClientState.Starting) status.starting();
    else if (e.newState === ClientState.Stopped && status.state !== 'error') status.failed('server stopped');
  });
  return c;
}

async function start(log: vscode.LogOutputChannel): Promise<void> {
  status.starting();
  client = makeClient(log);
  if (!client) return;
  try {
    await client.start();
  } catch (e) {
    status.failed(String(e));
    log.error(`could not start the server: ${e}`);
  }
}

async function stop(): Promise<void> {
  const c = client;
  client = undefined;
  if (c) {
    try { await c.stop(5000); } catch { /* already gone */ }
  }
}

/** Which model answers (the server's ghost/health): its id, and whether it was learned from this workspace. */
async function serverModel(): Promise<string> {
  if (!client?.isRunning()) return '-';
  try {
    const h = await client.sendRequest<{ model?: string | null; learned_model?: boolean }>('ghost/health');
    return h?.model ? `${h.model}${h.learned_model ? ' (learned from this workspace)' : ''}` : 'not loaded';
  } catch {
    return '-';
  }
}

async function statsText(): Promise<string> {
  const s = status.stats();
  const info = client?.initializeResult?.serverInfo;
  const lines = Object.entries(s).map(([k, v]) => `${k}: ${v ?? '-'}`);
  lines.unshift(`model: ${await serverModel()}`);
  lines.unshift(`server: ${info ? `${info.name} ${info.version ?? ''}` : 'not running'} — ${serverFrom}`);
  return lines.join('\n');
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  // vscode-languageclient 11 writes through LogOutputChannel methods: a plain channel breaks activation.
  const log = vscode.window.createOutputChannel('ghost-lsp', { log: true });
  const item = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  status = new Status((s) => {
    item.text = s.text();
    item.tooltip = s.tooltip();
    item.command = s.state === 'error' ? 'ghost-lsp.restart' : 'ghost-lsp.toggle';
  });
  config = currentConfig();
  status.setEnabled(config.enabled);
  item.show();
  context.subscriptions.push(log, item);

  context.subscriptions.push(
    vscode.commands.registerCommand('ghost-lsp.toggle', async () => {
      await vscode.workspace.getConfiguration('ghost').update('enabled', !config.enabled, vscode.ConfigurationTarget.Global);
    }),
    vscode.commands.registerCommand('ghost-lsp.restart', async () => {
      await stop();
      await start(log);
    }),
    vscode.commands.registerCommand('ghost-lsp.showStats', async () => {
      const text = await statsText();
      log.info(`stats:\n${text}`);
      log.show(true);
      void vscode.window.showInformationMessage(text.split('\n').slice(0, 4).join(' · '));
      return status.stats();
    }),
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (!e.affectsConfiguration('ghost')) return;
      const next = currentConfig();
      const restart = needsRestart(config, next);
      config = next;
      status.setEnabled(config.enabled);
      if (restart) {
        await stop();
        await start(log);
      } else if (client?.isRunning()) {
        await client.sendNotification(DidChangeConfigurationNotification.type, { settings: { ghost: serverSettings(config) } });
      }
    }),
  );
  await start(log);
}

export async function deactivate(): Promise<void> {
  await stop();
}

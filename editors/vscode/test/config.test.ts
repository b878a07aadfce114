import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { test } from 'node:test';
import { DEFAULTS, findServer, needsRestart, readConfig, serverSettings } from '../src/config';

test('defaults become the server section, client-only keys left out', () => {
  const s = serverSettings(readConfig(() => undefined));
  assert.equal(s.maxNewTokens, 48);
  assert.equal(s.completionItems, false);
  assert.ok(!('serverPath' in s) && !('serverArgs' in s) && !('model' in s) && !('remoteUrl' in s));
});

test('user values, wrong types fall back, `server` passes extra keys through and wins', () => {
  const user: Record<string, unknown> = {
    model: '/m', remoteUrl: 'http://gpu:8000', temperature: 0.2, maxNewTokens: 'lots',
    exclude: ['*.secret'], server: { n: 3, temperature: 0.3 },
  };
  const c = readConfig((k) => user[k]);
  assert.equal(c.maxNewTokens, DEFAULTS.maxNewTokens);
  const s = serverSettings(c);
  assert.deepEqual([s.model, s.remoteUrl, s.n, s.temperature, s.exclude], ['/m', 'http://gpu:8000', 3, 0.3, ['*.secret']]);
});

test('restart only when the command changes', () => {
  const a = readConfig(() => undefined);
  assert.equal(needsRestart(a, { ...a, temperature: 1 }), false);
  assert.equal(needsRestart(a, { ...a, serverPath: '/x' }), true);
  assert.equal(needsRestart(a, { ...a, serverArgs: ['serve', '--log-level', 'DEBUG'] }), true);
});

test('server discovery: setting, workspace venv, $VIRTUAL_ENV, $PATH, none', () => {
  const ws = '/w';
  const files = new Set([path.join(ws, 'venv', 'bin', 'ghost-lsp'), '/ve/bin/ghost-lsp', '/usr/local/bin/ghost-lsp']);
  const isFile = (p: string) => files.has(p);
  const env = { VIRTUAL_ENV: '/ve', PATH: '/usr/bin:/usr/local/bin' };
  assert.deepEqual(findServer('tools/ghost-lsp', [ws], env, isFile, 'linux'),
    { command: path.join(ws, 'tools/ghost-lsp'), from: 'setting ghost.serverPath' });
  assert.equal(findServer('', [ws], env, isFile, 'linux')?.from, 'workspace venv');
  assert.equal(findServer('', ['/other'], env, isFile, 'linux')?.command, '/ve/bin/ghost-lsp');
  assert.equal(findServer('', [], { PATH: env.PATH }, isFile, 'linux')?.command, '/usr/local/bin/ghost-lsp');
  assert.equal(findServer('', [], { PATH: '/nope' }, isFile, 'linux'), undefined);
});

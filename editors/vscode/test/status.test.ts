import * as assert from 'node:assert/strict';
import { test } from 'node:test';
import { Status } from '../src/status';

test('starting → ready → thinking → ready with the latency', () => {
  const seen: string[] = [];
  const s = new Status((x) => seen.push(x.state));
  s.ready();
  let t = 1000;
  const done = s.thinking(() => t);
  assert.equal(s.state, 'thinking');
  t = 1042;
  done(true);
  assert.deepEqual(seen, ['ready', 'thinking', 'ready']);
  assert.equal(s.lastLatencyMs, 42);
  assert.match(s.text(), /ghost 42 ms/);
  done(true); // a second call changes nothing
  assert.equal(s.shown, 1);
});

test('overlapping requests stay thinking until the last answers; empty answers keep the latency', () => {
  const s = new Status();
  s.ready();
  const a = s.thinking(() => 0);
  const b = s.thinking(() => 0);
  a(false);
  assert.equal(s.state, 'thinking');
  b(false);
  assert.equal(s.state, 'ready');
  assert.equal(s.lastLatencyMs, undefined);
  assert.equal(s.stats().requests, 2);
});

test('disabled wins over ready/thinking, not over an error; turning on again restores', () => {
  const s = new Status();
  s.ready();
  s.setEnabled(false);
  assert.equal(s.state, 'disabled');
  s.thinking()(true);
  assert.equal(s.state, 'disabled');
  s.failed('server stopped');
  assert.equal(s.state, 'error');
  assert.match(s.tooltip(), /server stopped/);
  s.setEnabled(true);
  assert.equal(s.state, 'error');
  s.ready();
  assert.equal(s.state, 'ready');
});

test('stats: accept rate and percentiles', () => {
  const s = new Status();
  s.ready();
  for (const ms of [10, 20, 30, 40]) {
    let t = 0;
    const done = s.thinking(() => t);
    t = ms;
    done(true);
  }
  s.accept();
  const st = s.stats();
  assert.equal(st.acceptRate, 0.25);
  assert.equal(st.latencyP50Ms, 30);
  assert.equal(st.latencyP90Ms, 40);
});

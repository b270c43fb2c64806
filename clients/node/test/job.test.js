// Tests of the burro-job library. Each test starts a job in a child Node
// process, gives it a payload on standard input and plays the server on a
// Unix socket or TCP listener that the test creates.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { Job, PayloadError, parseAddress } from '../index.js';

const LIBRARY_URL = new URL('../index.js', import.meta.url).href;
const JOB_ID = '0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b';
const TEST_TIMEOUT_MS = 30000;

/**
 * Listens on a fresh Unix socket (or 127.0.0.1 port) and records every line
 * that arrives, in arrival order, with the index of its connection.
 */
async function listen(transport, onMessage) {
  const received = [];
  const sockets = [];
  const closed = [];
  const server = net.createServer((socket) => {
    const connection = sockets.length;
    sockets.push(socket);
    closed.push(new Promise((resolve) => socket.once('close', resolve)));
    socket.on('error', () => {});
    socket.setEncoding('utf8');
    let pending = '';
    socket.on('data', (chunk) => {
      pending += chunk;
      let newline = pending.indexOf('\n');
      while (newline >= 0) {
        const line = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        const entry = { connection, line, message: JSON.parse(line), at: performance.now() };
        received.push(entry);
        onMessage?.(entry.message, socket, entry);
        newline = pending.indexOf('\n');
      }
    });
  });

  let address;
  let directory = null;
  if (transport === 'tcp') {
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    address = `tcp://127.0.0.1:${server.address().port}`;
  } else {
    directory = fs.mkdtempSync(path.join(os.tmpdir(), 'burro-job-'));
    address = path.join(directory, 'job.sock');
    await new Promise((resolve) => server.listen(address, resolve));
  }

  const stop = async () => {
    // A connection the job left open must not hold up the test.
    await Promise.race([Promise.all(closed), new Promise((resolve) => setTimeout(resolve, 2000))]);
    for (const socket of sockets) {
      socket.destroy();
    }
    await new Promise((resolve) => server.close(resolve));
    if (directory !== null) {
      fs.rmSync(directory, { recursive: true, force: true });
    }
  };
  return { address, received, sockets, stop };
}

/**
 * Runs `body` as an ES module in a child process, with `runJob` and `Job`
 * imported from the library, and waits until the child exits. The options
 * `payload` and `env` are functions of the listener's address.
 */
async function runWorker(body, options = {}) {
  const { transport = 'unix', data = {}, onMessage, env = () => ({}), payload, stdin } = options;
  const listener = await listen(transport, onMessage);
  const source = `import { runJob, Job } from ${JSON.stringify(LIBRARY_URL)};\n${body}`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', source], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { PATH: process.env.PATH, ...env(listener.address) },
  });

  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (chunk) => (stdout += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk) => (stderr += chunk));

  const started = performance.now();
  const exited = new Promise((resolve) => {
    child.once('close', (code, signal) => resolve({ code, signal, at: performance.now() }));
  });
  child.stdin.on('error', () => {});
  if (stdin !== undefined) {
    child.stdin.end(stdin);
  } else {
    const line = payload?.(listener.address) ?? { jobId: JOB_ID, name: 'node-test', data, socketPath: listener.address };
    child.stdin.end(`${JSON.stringify(line)}\n`);
  }

  const { code, signal, at } = await exited;
  await listener.stop();
  const messages = listener.received.map((entry) => entry.message);
  return { code, signal, started, exitedAt: at, stdout, stderr, received: listener.received, messages, address: listener.address };
}

// Builds the exact line the library must send, with the timestamp it sent.
function expectedLine(received, fields) {
  const { type, ...rest } = fields;
  return JSON.stringify({ type, jobId: JOB_ID, timestamp: received.message.timestamp, ...rest });
}

function types(run) {
  return run.messages.map((message) => message.type);
}

test('sends exact lines for every message type', { timeout: TEST_TIMEOUT_MS }, async () => {
  const before = Date.now();
  const run = await runWorker(`
    await runJob(async (job) => {
      job.progress(25, 'quarter', { step: 1 });
      job.progress(50.5);
      job.log('warning', 'spelled out', { width: 120 });
      job.debug('d');
      job.info('i', { k: 'v' });
      job.warn('w');
      job.error('e');
      return { echo: job.data, name: job.name, id: job.jobId };
    }, { heartbeatInterval: 60000 });
  `, { data: { b: [1, 2], a: 'x' } });
  const after = Date.now();

  assert.equal(run.code, 0, run.stderr);
  assert.equal(run.stderr, '');
  const expected = [
    { type: 'started', protocol: 2 },
    { type: 'progress', percent: 25, message: 'quarter', data: { step: 1 } },
    { type: 'progress', percent: 50.5 },
    { type: 'log', level: 'warn', message: 'spelled out', data: { width: 120 } },
    { type: 'log', level: 'debug', message: 'd' },
    { type: 'log', level: 'info', message: 'i', data: { k: 'v' } },
    { type: 'log', level: 'warn', message: 'w' },
    { type: 'log', level: 'error', message: 'e' },
    { type: 'completed', result: { echo: { b: [1, 2], a: 'x' }, name: 'node-test', id: JOB_ID } },
  ];
  assert.equal(run.received.length, expected.length, JSON.stringify(run.messages));
  run.received.forEach((entry, index) => {
    assert.equal(entry.line, expectedLine(entry, expected[index]));
    assert.equal(entry.connection, 0);
    assert.ok(Number.isInteger(entry.message.timestamp));
    assert.ok(entry.message.timestamp >= before, `timestamp ${entry.message.timestamp} before the run`);
    assert.ok(entry.message.timestamp <= after, `timestamp ${entry.message.timestamp} after the run`);
  });
});

test('tcp transport sends the same lines', { timeout: TEST_TIMEOUT_MS }, async () => {
  const run = await runWorker(`
    await runJob((job) => {
      job.progress(50, 'half');
      return { echo: job.data };
    });
  `, { transport: 'tcp', data: 'tcp' });

  assert.ok(run.address.startsWith('tcp://127.0.0.1:'));
  assert.equal(run.code, 0, run.stderr);
  assert.deepEqual(types(run), ['started', 'progress', 'completed']);
  assert.equal(run.received[2].line, expectedLine(run.received[2], { type: 'completed', result: { echo: 'tcp' } }));
});

test('undefined return value completes with null', { timeout: TEST_TIMEOUT_MS }, async () => {
  const run = await runWorker(`await runJob(() => {});`);

  assert.equal(run.code, 0, run.stderr);
  assert.deepEqual(types(run), ['started', 'completed']);
  assert.equal(run.received[1].line, expectedLine(run.received[1], { type: 'completed', result: null }));
});

test('calls after complete are no-ops', { timeout: TEST_TIMEOUT_MS }, async () => {
  const run = await runWorker(`
    await runJob(async (job) => {
      const first = await job.complete({ first: true });
      const results = [first];
      results.push(await job.progress(90, 'late'));
      results.push(await job.info('late'));
      results.push(await job.fail('late failure'));
      results.push(await job.complete({ second: true }));
      console.log(JSON.stringify({ finished: job.finished, outcome: job.outcome, results }));
      return { ignored: true };
    });
  `);

  assert.equal(run.code, 0, run.stderr);
  assert.deepEqual(types(run), ['started', 'completed']);
  assert.deepEqual(run.messages[1].result, { first: true });
  assert.deepEqual(JSON.parse(run.stdout), {
    finished: true,
    outcome: 'completed',
    results: [true, false, false, false, false],
  });
});

test('thrown error fails with message and stack', { timeout: TEST_TIMEOUT_MS }, async () => {
  const run = await runWorker(`
    await runJob(async (job) => {
      job.progress(10);
      await new Promise((resolve) => setTimeout(resolve, 20));
      throw new Error('boom in handler');
    });
  `);

  assert.equal(run.code, 1);
  assert.deepEqual(types(run), ['started', 'progress', 'failed']);
  const failed = run.received[2];
  assert.equal(failed.message.error, 'boom in handler');
  assert.match(failed.message.stack, /^Error: boom in handler\n\s+at /);
  assert.deepEqual(Object.keys(failed.message), ['type', 'jobId', 'timestamp', 'error', 'stack']);
});

test('sync throw of a non-error fails without stack', { timeout: TEST_TIMEOUT_MS }, async () => {
  const run = await runWorker(`
    await runJob(() => {
      throw 'plain text';
    });
  `);

  assert.equal(run.code, 1);
  assert.deepEqual(types(run), ['started', 'failed']);
  assert.equal(run.received[1].line, expectedLine(run.received[1], { type: 'failed', error: 'plain text' }));
});

test('job.fail exits with status 1', { timeout: TEST_TIMEOUT_MS }, async () => {
  const run = await runWorker(`
    await runJob((job) => {
      job.fail('bad input', 'custom stack');
      return 'ignored';
    });
  `);

  assert.equal(run.code, 1);
  assert.deepEqual(types(run), ['started', 'failed']);
  assert.equal(
    run.received[1].line,
    expectedLine(run.received[1], { type: 'failed', error: 'bad input', stack: 'custom stack' }),
  );
});

test('unserialisable result fails the job', { timeout: TEST_TIMEOUT_MS }, async () => {
  const run = await runWorker(`
    await runJob(() => {
      const loop = {};
      loop.self = loop;
      return loop;
    });
  `);

  assert.equal(run.code, 1);
  assert.deepEqual(types(run), ['started', 'failed']);
  assert.match(run.messages[1].error, /circular/i);
});

test('invalid arguments throw in the caller', { timeout: TEST_TIMEOUT_MS }, async () => {
  const run = await runWorker(`
    await runJob((job) => {
      const errors = [];
      const attempt = (call) => {
        try {
          call();
          errors.push(null);
        } catch (error) {
          errors.push(error.name);
        }
      };
      attempt(() => job.progress('50'));
      attempt(() => job.progress(Number.NaN));
      attempt(() => job.progress(10, 'list data', [1, 2]));
      attempt(() => job.log('verbose', 'x'));
      attempt(() => job.info('number data', 5));
      attempt(() => job.progress(1, 'big', { n: 10n }));
      return { errors };
    });
  `);

  assert.equal(run.code, 0, run.stderr);
  assert.deepEqual(types(run), ['started', 'completed']);
  assert.deepEqual(run.messages[1].result.errors, [
    'TypeError',
    'TypeError',
    'TypeError',
    'TypeError',
    'TypeError',
    'TypeError',
  ]);
});

test('cancel message aborts job.signal', { timeout: TEST_TIMEOUT_MS }, async () => {
  const run = await runWorker(`
    await runJob(async (job) => {
      const before = job.signal.aborted;
      job.progress(1, 'waiting for cancel');
      await new Promise((resolve) => job.signal.addEventListener('abort', resolve, { once: true }));
      return {
        before,
        aborted: job.signal.aborted,
        reasonName: job.signal.reason.name,
        reasonMessage: job.signal.reason.message,
        cancelReason: job.cancelReason,
      };
    }, { heartbeatInterval: 60000 });
  `, {
    onMessage(message, socket) {
      if (message.type === 'progress') {
        // Lines the library must skip come first: blank, invalid JSON, an
        // unknown type and a JSON value that is not an object.
        socket.write('\n');
        socket.write('not json\n');
        socket.write(`${JSON.stringify({ type: 'future', jobId: JOB_ID })}\n`);
        socket.write('[1,2]\n');
        // The cancel line arrives in two pieces.
        const cancel = JSON.stringify({ type: 'cancel', jobId: JOB_ID, reason: 'cancel requested' });
        socket.write(cancel.slice(0, 10));
        setTimeout(() => socket.write(`${cancel.slice(10)}\n`), 50);
      }
    },
  });

  assert.equal(run.code, 0, run.stderr);
  assert.deepEqual(types(run), ['started', 'progress', 'completed']);
  assert.deepEqual(run.messages[2].result, {
    before: false,
    aborted: true,
    reasonName: 'AbortError',
    reasonMessage: 'the server cancelled the job: cancel requested',
    cancelReason: 'cancel requested',
  });
  assert.match(run.stderr, /ignoring a server line that is not valid JSON: "not json"/);
});

test('exits promptly after complete', { timeout: TEST_TIMEOUT_MS }, async () => {
  let completedAt = null;
  const run = await runWorker(`
    await runJob(() => {
      // Handles that would keep a plain Node process alive for a minute.
      setInterval(() => {}, 1000);
      setTimeout(() => {}, 60000);
      return 'done';
    });
  `, {
    onMessage(message, _socket, entry) {
      if (message.type === 'completed') {
        completedAt = entry.at;
      }
    },
  });

  assert.equal(run.code, 0, run.stderr);
  assert.notEqual(completedAt, null);
  const lingered = run.exitedAt - completedAt;
  assert.ok(lingered < 1500, `the process exited ${lingered.toFixed(0)} ms after completed`);
});

test('heartbeats are sent on the timer', { timeout: TEST_TIMEOUT_MS }, async () => {
  const run = await runWorker(`
    await runJob(async () => {
      await new Promise((resolve) => setTimeout(resolve, 500));
      return 'rested';
    }, { heartbeatInterval: 50 });
  `);

  assert.equal(run.code, 0, run.stderr);
  const kinds = types(run);
  assert.equal(kinds[0], 'started');
  assert.equal(kinds.at(-1), 'completed');
  const heartbeats = run.received.filter((entry) => entry.message.type === 'heartbeat');
  assert.ok(heartbeats.length >= 4, `only ${heartbeats.length} heartbeats`);
  for (const entry of heartbeats) {
    assert.equal(entry.line, expectedLine(entry, { type: 'heartbeat' }));
  }
});

test('heartbeat timer does not keep the process alive', { timeout: TEST_TIMEOUT_MS }, async () => {
  // The job never connects, so the heartbeat timer is the only handle left.
  const run = await runWorker(`
    const job = await Job.fromStdin();
    job.startHeartbeat(60000);
    console.log('scheduled');
  `);

  assert.equal(run.code, 0, run.stderr);
  assert.equal(run.stdout, 'scheduled\n');
  assert.deepEqual(run.messages, []);
  assert.ok(run.exitedAt - run.started < 10000);
});

test('writes keep the order of the calls', { timeout: TEST_TIMEOUT_MS }, async () => {
  const count = 3000;
  const run = await runWorker(`
    await runJob(async (job) => {
      for (let i = 0; i < ${count}; i += 1) {
        job.progress(i % 101, String(i));
        if (i % 500 === 0) {
          await new Promise((resolve) => setImmediate(resolve));
        }
      }
      return { sent: ${count} };
    });
  `);

  assert.equal(run.code, 0, run.stderr);
  const progress = run.messages.filter((message) => message.type === 'progress');
  assert.equal(progress.length, count);
  progress.forEach((message, index) => assert.equal(message.message, String(index)));
  assert.equal(run.messages.at(-1).type, 'completed');
});

test('reconnects when the server closes the connection', { timeout: TEST_TIMEOUT_MS }, async () => {
  const run = await runWorker(`
    await runJob(async (job) => {
      await new Promise((resolve) => setTimeout(resolve, 300));
      job.progress(75, 'after reconnect');
      return 'ok';
    }, { heartbeatInterval: 60000 });
  `, {
    onMessage(message, socket) {
      if (message.type === 'started') {
        socket.destroy();
      }
    },
  });

  assert.equal(run.code, 0, run.stderr);
  assert.deepEqual(types(run), ['started', 'progress', 'completed']);
  assert.deepEqual(
    run.received.map((entry) => entry.connection),
    [0, 1, 1],
  );
});

test('environment supplies a missing socket path', { timeout: TEST_TIMEOUT_MS }, async () => {
  const run = await runWorker(`await runJob((job) => ({ name: job.name, data: job.data, socketPath: job.socketPath }));`, {
    payload: () => ({ jobId: JOB_ID }),
    env: (address) => ({ DONKEYLABS_SOCKET_PATH: address, DONKEYLABS_JOB_NAME: 'from-env' }),
  });

  assert.equal(run.code, 0, run.stderr);
  assert.deepEqual(types(run), ['started', 'completed']);
  assert.deepEqual(run.messages[1].result, { name: 'from-env', data: null, socketPath: run.address });
});

test('environment supplies a missing tcp port', { timeout: TEST_TIMEOUT_MS }, async () => {
  const run = await runWorker(`await runJob((job) => ({ socketPath: job.socketPath }));`, {
    transport: 'tcp',
    payload: () => ({ jobId: JOB_ID }),
    env: (address) => ({ DONKEYLABS_TCP_PORT: address.split(':').at(-1) }),
  });

  assert.equal(run.code, 0, run.stderr);
  assert.deepEqual(types(run), ['started', 'completed']);
  assert.deepEqual(run.messages[1].result, { socketPath: run.address });
});

test('payload errors exit with status 2', { timeout: TEST_TIMEOUT_MS }, async () => {
  const cases = [
    { stdin: '', error: /no job payload on standard input/ },
    { stdin: '{"jobId": \n', error: /the job payload is not valid JSON/ },
    { stdin: '[1, 2]\n', error: /the job payload must be a JSON object, got array/ },
    { stdin: '{"socketPath": "/nonexistent"}\n', error: /no jobId and DONKEYLABS_JOB_ID is not set/ },
    { stdin: '{"jobId": "x"}\n', error: /no socketPath and neither DONKEYLABS_SOCKET_PATH nor DONKEYLABS_TCP_PORT is set/ },
    { stdin: `{"jobId": "x", "socketPath": "tcp://127.0.0.1:port"}\n`, error: /invalid TCP address/ },
  ];
  for (const { stdin, error } of cases) {
    const run = await runWorker(`await runJob(() => 'never');`, { stdin });
    assert.equal(run.code, 2, `input ${JSON.stringify(stdin)}: ${run.stderr}`);
    assert.match(run.stderr, error);
    assert.match(run.stderr, /^burro-job: cannot start the job: /);
    assert.deepEqual(run.messages, []);
  }
});

test('missing socket fails after the reconnect timeout', { timeout: TEST_TIMEOUT_MS }, async () => {
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'burro-job-'));
  const missing = path.join(directory, 'absent.sock');
  const run = await runWorker(`await runJob(() => 'never', { reconnectTimeout: 300 });`, {
    payload: () => ({ jobId: JOB_ID, socketPath: missing }),
  });
  fs.rmSync(directory, { recursive: true, force: true });

  assert.equal(run.code, 2);
  assert.match(run.stderr, /connecting to .*absent\.sock failed: .*ENOENT/);
  assert.ok(run.exitedAt - run.started < 10000);
});

test('parseAddress reads unix paths and tcp addresses', () => {
  assert.deepEqual(parseAddress('/tmp/job.sock'), { path: '/tmp/job.sock' });
  assert.deepEqual(parseAddress('tcp://127.0.0.1:41000'), { host: '127.0.0.1', port: 41000 });
  assert.deepEqual(parseAddress('tcp://[::1]:8080'), { host: '::1', port: 8080 });
  assert.deepEqual(parseAddress('tcp://:9000'), { host: '127.0.0.1', port: 9000 });
  assert.throws(() => parseAddress(''), TypeError);
  assert.throws(() => parseAddress('tcp://127.0.0.1'), /expected tcp:\/\/HOST:PORT/);
  assert.throws(() => parseAddress('tcp://127.0.0.1:70000'), /expected tcp:\/\/HOST:PORT/);
});

test('Job.fromPayload validates and falls back to the environment', () => {
  const env = { DONKEYLABS_JOB_ID: 'env-id', DONKEYLABS_JOB_NAME: 'env-name', DONKEYLABS_TCP_PORT: '41001' };
  const job = Job.fromPayload({}, env);
  assert.equal(job.jobId, 'env-id');
  assert.equal(job.name, 'env-name');
  assert.equal(job.data, null);
  assert.equal(job.socketPath, 'tcp://127.0.0.1:41001');
  assert.equal(job.signal.aborted, false);
  assert.equal(job.finished, false);

  const fromPayload = Job.fromPayload({ jobId: 'p', name: 'n', data: [1], socketPath: '/s' }, env);
  assert.equal(fromPayload.jobId, 'p');
  assert.equal(fromPayload.name, 'n');
  assert.deepEqual(fromPayload.data, [1]);
  assert.equal(fromPayload.socketPath, '/s');

  assert.throws(() => Job.fromPayload('text', {}), PayloadError);
  assert.throws(() => Job.fromPayload(null, {}), /got null/);
  assert.throws(() => Job.fromPayload({ jobId: 'x' }, {}), /no socketPath/);
});

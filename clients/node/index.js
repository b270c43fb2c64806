/**
 * Job-side library for burro external jobs (the Donkeylabs external-job
 * protocol), for Node.js 18 or newer, with no dependencies.
 *
 * burro starts a job process and writes one JSON line to its standard input:
 *
 *     {"jobId": "...", "name": "...", "data": <any JSON>, "socketPath": "..."}
 *
 * `socketPath` is the path of a Unix socket, or `tcp://127.0.0.1:PORT` with
 * the TCP transport. The job reports back over that socket with
 * newline-delimited JSON messages. `runJob` does all of that:
 *
 *     import { runJob } from 'burro-job';
 *
 *     await runJob(async (job) => {
 *       const images = job.data.images;
 *       for (const [index, image] of images.entries()) {
 *         job.progress((index * 100) / images.length, 'resizing', { image });
 *         await resize(image, { signal: job.signal });
 *       }
 *       return { resized: images.length };
 *     });
 *
 * `runJob` sends `started`, sends `heartbeat` on a timer, and sends
 * `completed` with the handler's return value, or `failed` with the error's
 * message and stack (then the process exits with status 1).
 *
 * Cancellation: `started` announces protocol 2, so on a cancel request the
 * server sends `{"type": "cancel", "reason": ...}` on the connection instead
 * of signalling the process at once. The library then aborts `job.signal`.
 * The server sends SIGTERM to the process group if the job is still running
 * after its cancel grace period.
 *
 * Ordering: every message goes through one queue, so lines reach the socket
 * in the order of the calls. The queue is written from the event loop. A
 * handler that runs synchronous code for a long time delays every message,
 * heartbeats included, until it awaits something, and the server may judge a
 * job silent for two heartbeat timeouts as dead.
 *
 * Connection loss: when a write fails because the connection broke, the
 * library reconnects to the same address. It retries with a backoff that
 * grows from 50 ms to 1 s for up to `reconnectTimeout` milliseconds (30 000
 * by default), and then writes the failed line again in full. Lines that the
 * kernel accepted before the break was detected may be lost. When the time
 * runs out, the message is dropped with a note on standard error, and each
 * later message makes one connection attempt and is dropped if it fails.
 * `completed` and `failed` always get the full retry window. The new
 * connection does not announce protocol 2 again, so a cancel after a
 * reconnect arrives as SIGTERM.
 */

import net from 'node:net';
import process from 'node:process';

/** Protocol version announced in `started`. Version 2 means that the job reads server messages. */
export const PROTOCOL_VERSION = 2;

/** Levels accepted by `Job#log`. */
export const LOG_LEVELS = Object.freeze(['debug', 'info', 'warn', 'error']);

/** Milliseconds between heartbeats in `runJob`. */
export const DEFAULT_HEARTBEAT_INTERVAL = 5000;

/** Milliseconds to keep reconnecting before a message is dropped. */
export const DEFAULT_RECONNECT_TIMEOUT = 30000;

const FIRST_BACKOFF_MS = 50;
const MAX_BACKOFF_MS = 1000;
const CONNECT_TIMEOUT_MS = 5000;

// Upper bound of the wait for the server to close its side after the job
// closed its own. The shim closes its side at once, so this is rarely reached.
const CLOSE_TIMEOUT_MS = 2000;

// A server line longer than this without a newline is discarded, so a broken
// peer cannot make the reader's buffer grow without bound.
const MAX_SERVER_LINE = 1 << 20;

/** The job payload on standard input is missing or invalid. */
export class PayloadError extends Error {
  constructor(message) {
    super(message);
    this.name = 'PayloadError';
  }
}

function warn(text) {
  // The server stores standard error as the job's error log.
  try {
    process.stderr.write(`burro-job: ${text}\n`);
  } catch {
    // Nothing is left to report to.
  }
}

function sleep(milliseconds) {
  return new Promise((resolve) => setTimeout(resolve, milliseconds));
}

function isPlainObject(value) {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Parses a Unix socket path or `tcp://HOST:PORT` into the options of
 * `net.createConnection`.
 *
 * @param {string} address
 * @returns {{path: string} | {host: string, port: number}}
 * @throws {TypeError} when the address is empty or malformed.
 */
export function parseAddress(address) {
  if (typeof address !== 'string' || address === '') {
    throw new TypeError('the socket address is empty');
  }
  if (!address.startsWith('tcp://')) {
    return { path: address };
  }
  const rest = address.slice('tcp://'.length);
  const colon = rest.lastIndexOf(':');
  const portText = colon < 0 ? '' : rest.slice(colon + 1);
  if (!/^[0-9]+$/.test(portText) || Number(portText) > 65535) {
    throw new TypeError(`invalid TCP address ${JSON.stringify(address)}: expected tcp://HOST:PORT`);
  }
  const host = rest.slice(0, colon).replace(/^\[(.*)\]$/, '$1') || '127.0.0.1';
  return { host, port: Number(portText) };
}

function openSocket(address) {
  const target = parseAddress(address);
  return new Promise((resolve, reject) => {
    const socket = net.createConnection(target);
    const timer = setTimeout(() => {
      socket.destroy(new Error(`connecting to ${address} timed out after ${CONNECT_TIMEOUT_MS} ms`));
    }, CONNECT_TIMEOUT_MS);
    const onError = (error) => {
      clearTimeout(timer);
      reject(error);
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('error', onError);
      resolve(socket);
    });
  });
}

function writeLine(socket, line) {
  return new Promise((resolve, reject) => {
    if (socket.destroyed || !socket.writable) {
      reject(new Error('the connection is closed'));
      return;
    }
    socket.write(line, (error) => (error ? reject(error) : resolve()));
  });
}

// Ends the connection and waits until the server closed its side too, so
// every queued byte has left the process before it exits.
function endSocket(socket) {
  return new Promise((resolve) => {
    if (socket.destroyed) {
      resolve();
      return;
    }
    const timer = setTimeout(() => {
      socket.destroy();
      resolve();
    }, CLOSE_TIMEOUT_MS);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
    socket.end();
  });
}

// Reads standard input up to the first newline or the end of input.
function readFirstLine(stream) {
  return new Promise((resolve, reject) => {
    let text = '';
    const cleanup = () => {
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('error', onError);
      stream.pause();
    };
    const onData = (chunk) => {
      text += chunk;
      const newline = text.indexOf('\n');
      if (newline >= 0) {
        cleanup();
        resolve(text.slice(0, newline));
      }
    };
    const onEnd = () => {
      cleanup();
      resolve(text);
    };
    const onError = (error) => {
      cleanup();
      reject(new PayloadError(`reading the job payload from standard input failed: ${error.message}`));
    };
    stream.setEncoding('utf8');
    stream.on('data', onData);
    stream.once('end', onEnd);
    stream.once('error', onError);
    stream.resume();
  });
}

/**
 * One running attempt of an external job: its payload, its connection to the
 * server and the messages it sends.
 *
 * Every message method returns a promise that resolves to true when the line
 * was handed to the kernel, or false when it was dropped (the connection
 * could not be restored, or the job had already finished). The promise never
 * rejects, so callers need not await it. Invalid arguments throw at once.
 */
export class Job {
  #jobId;
  #name;
  #data;
  #socketPath;
  #reconnectTimeout;
  #socket = null;
  #queue = Promise.resolve(true);
  #outcome = null;
  #closed = false;
  #offline = false;
  #heartbeatTimer = null;
  #heartbeatPending = false;
  #controller = new AbortController();
  #cancelReason = null;

  /**
   * @param {object} fields
   * @param {string} fields.jobId
   * @param {string} [fields.name]
   * @param {*} [fields.data] the enqueued JSON value
   * @param {string} fields.socketPath Unix socket path or `tcp://HOST:PORT`
   * @param {number} [fields.reconnectTimeout] milliseconds, see the module documentation
   */
  constructor({ jobId, name = '', data = null, socketPath, reconnectTimeout = DEFAULT_RECONNECT_TIMEOUT }) {
    if (typeof jobId !== 'string' || jobId === '') {
      throw new TypeError('jobId must be a non-empty string');
    }
    if (!(Number.isFinite(reconnectTimeout) && reconnectTimeout >= 0)) {
      throw new RangeError(`reconnectTimeout must be a non-negative number of milliseconds, got ${reconnectTimeout}`);
    }
    this.#jobId = jobId;
    this.#name = String(name ?? '');
    this.#data = data;
    this.#socketPath = socketPath;
    this.#reconnectTimeout = reconnectTimeout;
  }

  /**
   * Builds a job from the decoded payload object. Missing fields fall back to
   * the DONKEYLABS_* environment variables.
   *
   * @throws {PayloadError} when the payload is not an object, or no job id or
   *   socket address can be found.
   */
  static fromPayload(payload, env = process.env, options = {}) {
    if (!isPlainObject(payload)) {
      const kind = Array.isArray(payload) ? 'array' : payload === null ? 'null' : typeof payload;
      throw new PayloadError(`the job payload must be a JSON object, got ${kind}`);
    }

    const jobId = payload.jobId || env.DONKEYLABS_JOB_ID;
    if (!jobId) {
      throw new PayloadError('the job payload has no jobId and DONKEYLABS_JOB_ID is not set');
    }
    const name = payload.name || env.DONKEYLABS_JOB_NAME || '';

    let socketPath = payload.socketPath || env.DONKEYLABS_SOCKET_PATH;
    if (!socketPath && env.DONKEYLABS_TCP_PORT) {
      socketPath = `tcp://127.0.0.1:${env.DONKEYLABS_TCP_PORT}`;
    }
    if (!socketPath) {
      throw new PayloadError(
        'the job payload has no socketPath and neither DONKEYLABS_SOCKET_PATH nor DONKEYLABS_TCP_PORT is set',
      );
    }
    return new Job({ ...options, jobId: String(jobId), name, data: payload.data ?? null, socketPath });
  }

  /**
   * Reads the payload line from `stream` (standard input by default) and
   * builds a job. Standard input is destroyed afterwards, so it does not
   * keep the process alive.
   *
   * @throws {PayloadError} when the input is empty or not a JSON object.
   */
  static async fromStdin(stream = process.stdin, options = {}) {
    let line;
    try {
      line = await readFirstLine(stream);
    } finally {
      if (stream === process.stdin) {
        stream.destroy();
      }
    }
    if (line.trim() === '') {
      throw new PayloadError('no job payload on standard input (expected one JSON line)');
    }
    let payload;
    try {
      payload = JSON.parse(line);
    } catch (error) {
      throw new PayloadError(`the job payload is not valid JSON: ${error.message}`);
    }
    return Job.fromPayload(payload, process.env, options);
  }

  /** The job's id. */
  get jobId() {
    return this.#jobId;
  }

  /** The job's registered name. */
  get name() {
    return this.#name;
  }

  /** The enqueued JSON value, or null when the payload had none. */
  get data() {
    return this.#data;
  }

  /** The server's address: a Unix socket path or `tcp://HOST:PORT`. */
  get socketPath() {
    return this.#socketPath;
  }

  /** An AbortSignal aborted when the server sends `cancel`. */
  get signal() {
    return this.#controller.signal;
  }

  /** The `reason` of the server's cancel message, or null. */
  get cancelReason() {
    return this.#cancelReason;
  }

  /** `'completed'`, `'failed'` or null while the job runs. */
  get outcome() {
    return this.#outcome;
  }

  /** True once `completed` or `failed` was sent. */
  get finished() {
    return this.#outcome !== null;
  }

  /**
   * Connects to the server, retrying for up to the reconnect timeout.
   *
   * @throws {Error} when no connection could be made in that time.
   * @throws {TypeError} when the address is malformed.
   */
  async connect() {
    parseAddress(this.#socketPath);
    const deadline = performance.now() + this.#reconnectTimeout;
    let backoff = FIRST_BACKOFF_MS;
    for (;;) {
      try {
        this.#attach(await openSocket(this.#socketPath));
        return;
      } catch (error) {
        const remaining = deadline - performance.now();
        if (remaining <= 0) {
          throw new Error(`connecting to ${this.#socketPath} failed: ${error.message}`);
        }
        await sleep(Math.min(backoff, remaining));
        backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
      }
    }
  }

  /** Sends `started`, announcing protocol 2. `runJob` calls this after `connect`. */
  sendStarted() {
    return this.#send('started', { protocol: PROTOCOL_VERSION });
  }

  /**
   * Sends `heartbeat` every `interval` milliseconds until the job finishes or
   * is closed. The timer is unref'd, so it never keeps the process alive.
   * A heartbeat is skipped while the previous one still waits in the queue.
   */
  startHeartbeat(interval) {
    if (!(Number.isFinite(interval) && interval > 0)) {
      throw new RangeError(`heartbeat interval must be a positive number of milliseconds, got ${interval}`);
    }
    if (this.#heartbeatTimer !== null || this.finished || this.#closed) {
      return;
    }
    this.#heartbeatTimer = setInterval(() => {
      if (this.#heartbeatPending) {
        return;
      }
      this.#heartbeatPending = true;
      this.heartbeat().finally(() => {
        this.#heartbeatPending = false;
      });
    }, interval);
    this.#heartbeatTimer.unref();
  }

  /**
   * Sends `progress`.
   *
   * @param {number} percent from 0 to 100; the server clamps other values
   * @param {string} [message]
   * @param {object} [data] a JSON object
   */
  progress(percent, message, data) {
    if (typeof percent !== 'number' || !Number.isFinite(percent)) {
      throw new TypeError(`percent must be a finite number, got ${String(percent)}`);
    }
    const fields = { percent };
    if (message !== undefined && message !== null) {
      fields.message = String(message);
    }
    addData(fields, data);
    return this.#send('progress', fields);
  }

  /**
   * Sends `log` with `level` debug, info, warn (or warning) or error.
   *
   * @param {string} level
   * @param {string} message
   * @param {object} [data] a JSON object
   */
  log(level, message, data) {
    const normalized = level === 'warning' ? 'warn' : level;
    if (!LOG_LEVELS.includes(normalized)) {
      throw new TypeError(`invalid log level ${JSON.stringify(level)}: expected one of ${LOG_LEVELS.join(', ')}`);
    }
    const fields = { level: normalized, message: String(message ?? '') };
    addData(fields, data);
    return this.#send('log', fields);
  }

  debug(message, data) {
    return this.log('debug', message, data);
  }

  info(message, data) {
    return this.log('info', message, data);
  }

  warn(message, data) {
    return this.log('warn', message, data);
  }

  error(message, data) {
    return this.log('error', message, data);
  }

  /** Sends `heartbeat`. The heartbeat timer calls this. */
  heartbeat() {
    return this.#send('heartbeat', {});
  }

  /**
   * Sends `completed` with `result` (undefined is sent as null). Later calls
   * of any message method are no-ops.
   *
   * @throws {TypeError} when `result` cannot be serialised as JSON. No
   *   message is sent then, so the job can still fail.
   */
  complete(result = null) {
    return this.#send('completed', { result }, true);
  }

  /**
   * Sends `failed` with the error text and an optional stack trace. An Error
   * object passed as `error` gives its message, and its stack when `stack`
   * is not given. Later calls of any message method are no-ops.
   */
  fail(error, stack) {
    const fields = { error: error instanceof Error ? describeError(error).message : String(error) };
    const trace = stack ?? (error instanceof Error ? error.stack : undefined);
    if (trace !== undefined && trace !== null) {
      fields.stack = String(trace);
    }
    return this.#send('failed', fields, true);
  }

  /**
   * Stops the heartbeat, waits until every queued line is written and closes
   * the connection. Later messages are dropped. Safe to call twice.
   */
  async close() {
    this.#closed = true;
    this.#stopHeartbeat();
    await this.#queue;
    const socket = this.#socket;
    this.#socket = null;
    if (socket !== null) {
      await endSocket(socket);
    }
  }

  #send(type, fields, terminal = false) {
    if (this.#outcome !== null || this.#closed) {
      return Promise.resolve(false);
    }
    // Serialise before marking the job finished, so an invalid result throws
    // in the caller and the job can still fail.
    const line = `${JSON.stringify({ type, jobId: this.#jobId, timestamp: Date.now(), ...fields })}\n`;
    if (terminal) {
      this.#outcome = type;
      this.#stopHeartbeat();
    }
    const written = this.#queue.then(() => this.#deliver(line, type, terminal));
    this.#queue = written;
    return written;
  }

  // Writes one line, reconnecting when the connection broke. Never rejects.
  async #deliver(line, kind, terminal) {
    let deadline = null;
    let backoff = FIRST_BACKOFF_MS;
    for (;;) {
      const socket = this.#socket;
      if (socket !== null) {
        try {
          await writeLine(socket, line);
          return true;
        } catch (error) {
          warn(`connection to ${this.#socketPath} lost while sending ${kind} (${error.message}), reconnecting`);
          this.#detach(socket);
        }
      }

      if (deadline === null) {
        const window = terminal || !this.#offline ? this.#reconnectTimeout : 0;
        deadline = performance.now() + window;
      } else {
        const remaining = deadline - performance.now();
        if (remaining <= 0) {
          return this.#giveUp(kind);
        }
        await sleep(Math.min(backoff, remaining));
        backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
      }

      try {
        const fresh = await openSocket(this.#socketPath);
        if (this.#offline) {
          warn(`reconnected to ${this.#socketPath}`);
        }
        this.#offline = false;
        this.#attach(fresh);
      } catch {
        if (performance.now() >= deadline) {
          return this.#giveUp(kind);
        }
      }
    }
  }

  #giveUp(kind) {
    const seconds = this.#reconnectTimeout / 1000;
    if (kind === 'completed' || kind === 'failed') {
      warn(`could not reconnect to ${this.#socketPath} within ${seconds} s, so ${kind} was not delivered`);
    } else if (!this.#offline) {
      warn(
        `could not reconnect to ${this.#socketPath} within ${seconds} s, so ${kind} was dropped. ` +
          'Each later message makes one connection attempt and is dropped if it fails',
      );
    }
    this.#offline = true;
    return false;
  }

  #attach(socket) {
    this.#socket = socket;
    let pending = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk) => {
      pending += chunk;
      let newline = pending.indexOf('\n');
      while (newline >= 0) {
        this.#handleServerLine(pending.slice(0, newline));
        pending = pending.slice(newline + 1);
        newline = pending.indexOf('\n');
      }
      if (pending.length > MAX_SERVER_LINE) {
        warn(`discarding a server line longer than ${MAX_SERVER_LINE} characters`);
        pending = '';
      }
    });
    // A failed write also reports its error to the write callback, which
    // triggers the reconnect. This listener only keeps the error from being
    // thrown as an uncaught exception.
    socket.on('error', () => {});
    socket.on('close', () => {
      if (this.#socket === socket) {
        this.#socket = null;
      }
    });
  }

  #detach(socket) {
    if (this.#socket === socket) {
      this.#socket = null;
    }
    socket.destroy();
  }

  #handleServerLine(line) {
    if (line.trim() === '') {
      return;
    }
    let message;
    try {
      message = JSON.parse(line);
    } catch {
      warn(`ignoring a server line that is not valid JSON: ${JSON.stringify(line.slice(0, 200))}`);
      return;
    }
    if (isPlainObject(message) && message.type === 'cancel') {
      this.#handleCancel(message.reason);
    }
    // Other types are reserved for later protocol versions and ignored.
  }

  #handleCancel(reason) {
    if (this.#controller.signal.aborted) {
      return;
    }
    this.#cancelReason = reason === undefined || reason === null ? null : String(reason);
    const text = this.#cancelReason === null ? 'the server cancelled the job' : `the server cancelled the job: ${this.#cancelReason}`;
    this.#controller.abort(new DOMException(text, 'AbortError'));
  }

  #stopHeartbeat() {
    if (this.#heartbeatTimer !== null) {
      clearInterval(this.#heartbeatTimer);
      this.#heartbeatTimer = null;
    }
  }
}

function addData(fields, data) {
  if (data === undefined || data === null) {
    return;
  }
  if (!isPlainObject(data)) {
    throw new TypeError(`data must be a plain object, got ${Array.isArray(data) ? 'array' : typeof data}`);
  }
  fields.data = data;
}

function describeError(error) {
  if (error instanceof Error) {
    return { message: error.message || error.name || 'Error', stack: error.stack };
  }
  return { message: String(error), stack: undefined };
}

/**
 * Runs `handler(job)` as a burro external job and exits the process.
 *
 * Reads the payload from standard input, connects, sends `started`, sends
 * `heartbeat` every `heartbeatInterval` milliseconds, and awaits the handler
 * (sync or async). Then it sends `completed` with the handler's return value,
 * unless the handler already called `job.complete` or `job.fail`, waits until
 * every line is written, closes the connection and exits.
 *
 * Exit status: 0 after `completed`. 1 when the handler threw or rejected
 * (then `failed` carries the error's message and stack) or called
 * `job.fail`. 2 when the payload or the connection failed at start, with a
 * message on standard error.
 *
 * The process exits even while timers, servers or child processes that the
 * handler left behind are still alive. With `exit: false`, `runJob` sets
 * `process.exitCode` and resolves to it instead.
 *
 * @param {(job: Job) => unknown} handler
 * @param {object} [options]
 * @param {number} [options.heartbeatInterval] milliseconds; 0 turns heartbeats off
 * @param {number} [options.reconnectTimeout] milliseconds
 * @param {boolean} [options.exit] whether to call `process.exit` at the end
 * @returns {Promise<number>} the exit status, when `exit` is false
 */
export async function runJob(handler, options = {}) {
  const {
    heartbeatInterval = DEFAULT_HEARTBEAT_INTERVAL,
    reconnectTimeout = DEFAULT_RECONNECT_TIMEOUT,
    exit = true,
  } = options;
  if (typeof handler !== 'function') {
    throw new TypeError('runJob needs a handler function');
  }
  if (!(Number.isFinite(heartbeatInterval) && heartbeatInterval >= 0)) {
    throw new RangeError(`heartbeatInterval must be a non-negative number of milliseconds, got ${heartbeatInterval}`);
  }

  const end = (code) => {
    process.exitCode = code;
    if (exit) {
      process.exit(code);
    }
    return code;
  };

  let job;
  try {
    job = await Job.fromStdin(process.stdin, { reconnectTimeout });
    await job.connect();
  } catch (error) {
    warn(`cannot start the job: ${error.message}`);
    return end(2);
  }

  job.sendStarted();
  if (heartbeatInterval > 0) {
    job.startHeartbeat(heartbeatInterval);
  }

  try {
    const result = await handler(job);
    job.complete(result);
  } catch (error) {
    const { message, stack } = describeError(error);
    job.fail(message, stack ?? null);
  }
  await job.close();

  return end(job.outcome === 'failed' ? 1 : 0);
}

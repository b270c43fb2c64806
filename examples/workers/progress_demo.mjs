#!/usr/bin/env node
// Example worker: counts through data.steps steps, reporting progress and a
// log line each.
//
// data.steps sets the number of steps (default 10) and data.delay the seconds
// each step takes (default 0.3). The result is an object with the step count,
// the elapsed seconds and the language. A cancel request from the server
// stops the count early and sends a warning log line, because the wait
// between steps ends when job.signal is aborted.
//
// Registered in a burro configuration file, with paths relative to that
// file's directory:
//
//     [external_jobs.progress-demo-node]
//     command = "node"
//     args = ["workers/progress_demo.mjs"]

import { runJob } from '../../clients/node/index.js';

// Resolves to true after `milliseconds`, or to false as soon as `signal` is
// aborted.
function waitUnlessAborted(milliseconds, signal) {
  return new Promise((resolve) => {
    if (signal.aborted) {
      resolve(false);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve(true);
    }, milliseconds);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

async function countSteps(job) {
  const data = job.data !== null && typeof job.data === 'object' && !Array.isArray(job.data) ? job.data : {};
  const steps = Math.trunc(Number(data.steps ?? 10));
  const delay = Number(data.delay ?? 0.3);
  if (!Number.isFinite(steps) || steps < 0) {
    throw new RangeError(`data.steps must be a non-negative number, got ${JSON.stringify(data.steps)}`);
  }
  if (!Number.isFinite(delay) || delay < 0) {
    throw new RangeError(`data.delay must be a non-negative number of seconds, got ${JSON.stringify(data.delay)}`);
  }
  const began = performance.now();

  job.info(`counting ${steps} steps of ${delay} s`, { steps, delay });
  for (let step = 1; step <= steps; step += 1) {
    if (!(await waitUnlessAborted(delay * 1000, job.signal))) {
      job.warn(`cancelled at step ${step} of ${steps}: ${job.cancelReason}`);
      return { steps: step - 1, cancelled: true, language: 'node' };
    }
    job.progress((step * 100) / steps, `step ${step} of ${steps}`, { step });
    job.info(`finished step ${step}`);
  }

  const seconds = Math.round((performance.now() - began) / 10) / 100;
  return { steps, seconds, language: 'node' };
}

await runJob(countSteps);

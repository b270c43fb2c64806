// Test worker: reports progress 1, waits until job.signal is aborted by the
// server's cancel message, then writes "cancel seen" to data.markerFile and
// returns. The server records the job as cancelled.

import { writeFileSync } from 'node:fs';

import { runJob } from '../../../../clients/node/index.js';

await runJob(
  async (job) => {
    job.progress(1, 'waiting for cancel');
    // The open connection keeps the process alive while it waits.
    await new Promise((resolve) => job.signal.addEventListener('abort', resolve, { once: true }));
    writeFileSync(job.data.markerFile, 'cancel seen');
    return { cancelled: true };
  },
  { heartbeatInterval: 500 },
);

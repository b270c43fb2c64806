// Test worker: reports progress 50 "half", then completes with {"echo": data}.

import { runJob } from '../../../../clients/node/index.js';

await runJob((job) => {
  job.progress(50, 'half');
  return { echo: job.data };
});

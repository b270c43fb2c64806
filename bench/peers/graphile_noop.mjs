// Runs N no-op jobs through graphile-worker on a PostgreSQL database and
// prints one JSON line: {"jobs", "seconds", "jobsPerSecond"}.
// Usage: node graphile_noop.mjs DATABASE_URL JOBS CONCURRENCY INFLIGHT
// The runner starts first; then INFLIGHT producers call addJob until JOBS are
// enqueued. The clock stops when the queue table holds no job, because
// graphile-worker deletes a job once it has completed.
import { Logger, makeWorkerUtils, run } from "graphile-worker";

// Per-job log lines would cost more than the no-op jobs themselves.
const logger = new Logger(() => () => {});

const connectionString = process.argv[2];
const [jobs, concurrency, inflight] = process.argv.slice(3).map(Number);

const utils = await makeWorkerUtils({ connectionString, logger });
await utils.migrate();
let ran = 0;
const runner = await run({
  connectionString,
  concurrency,
  maxPoolSize: concurrency + 2,
  noHandleSignals: true,
  pollInterval: 1000,
  logger,
  parsedCronItems: [],
  taskList: {
    noop: async () => {
      ran += 1;
    },
  },
});

const start = process.hrtime.bigint();
let enqueued = 0;
async function produce() {
  while (enqueued < jobs) {
    enqueued += 1;
    await utils.addJob("noop", {});
  }
}
await Promise.all(Array.from({ length: inflight }, produce));
for (;;) {
  const remaining = await utils.withPgClient(async (client) => {
    const result = await client.query("SELECT count(*)::int AS n FROM graphile_worker.jobs");
    return result.rows[0].n;
  });
  if (remaining === 0 && ran >= jobs) break;
  await new Promise((resolve) => setTimeout(resolve, 20));
}
const seconds = Number(process.hrtime.bigint() - start) / 1e9;

await runner.stop();
await utils.release();
console.log(JSON.stringify({ jobs, seconds, jobsPerSecond: jobs / seconds }));

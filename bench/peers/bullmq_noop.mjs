// Runs N no-op jobs through BullMQ on the Redis server at 127.0.0.1:6379 and
// prints one JSON line: {"jobs", "seconds", "jobsPerSecond"}.
// Usage: node bullmq_noop.mjs JOBS CONCURRENCY INFLIGHT
// The worker starts first; then INFLIGHT producers call queue.add until JOBS
// are enqueued. The clock stops at the worker's last `completed` event.
import { Queue, Worker } from "bullmq";

const [jobs, concurrency, inflight] = process.argv.slice(2).map(Number);
const connection = { host: "127.0.0.1", port: 6379 };
const name = `burro-bench-${process.pid}-${Date.now()}`;

const queue = new Queue(name, { connection });
let completed = 0;
let allDone;
const finished = new Promise((resolve) => (allDone = resolve));
const worker = new Worker(name, async () => null, { connection, concurrency });
worker.on("completed", () => {
  completed += 1;
  if (completed === jobs) allDone();
});
worker.on("failed", (job, err) => {
  console.error(`job ${job?.id} failed: ${err}`);
  process.exit(1);
});
await worker.waitUntilReady();

const start = process.hrtime.bigint();
let enqueued = 0;
async function produce() {
  while (enqueued < jobs) {
    enqueued += 1;
    await queue.add("noop", {});
  }
}
await Promise.all(Array.from({ length: inflight }, produce));
await finished;
const seconds = Number(process.hrtime.bigint() - start) / 1e9;

await worker.close();
await queue.obliterate({ force: true });
await queue.close();
console.log(JSON.stringify({ jobs, seconds, jobsPerSecond: jobs / seconds }));

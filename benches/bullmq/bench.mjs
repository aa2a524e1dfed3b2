// The task workload of benches/tasks.sh through BullMQ, on the same Redis:
//  - paced: 1000 jobs added at 200/s; latency from add to a worker holding the job;
//  - saturated: 10,000 no-op jobs through workers of total concurrency 1000
//    (10 workers x 100, in this one Node process); jobs per second from the
//    first add to the last completion.
// Usage: node bench.mjs PORT [paced|saturated]  -> prints one JSON line
// (both workloads by default; one of them alone for benches/cost.sh).
import { Queue, Worker } from "bullmq";
import { performance } from "node:perf_hooks";

const port = Number(process.argv[2] ?? 6379);
const connection = { host: "127.0.0.1", port };
const pct = (xs, q) => xs[Math.min(xs.length - 1, Math.floor(q * xs.length))];

async function paced() {
  const queue = new Queue("paced", { connection });
  const sent = new Map();
  const lat = [];
  let done;
  const finished = new Promise((r) => (done = r));
  const worker = new Worker(
    "paced",
    async (job) => {
      lat.push(performance.now() - sent.get(job.data.seq));
      if (lat.length === 1000) done();
    },
    { connection, concurrency: 100 },
  );
  await worker.waitUntilReady();
  for (let i = 0; i < 1000; i++) {
    const at = performance.now();
    sent.set(i, at);
    queue.add("t", { seq: i }, { removeOnComplete: true });
    const wait = at + 5 - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
  await finished;
  await worker.close();
  await queue.obliterate({ force: true });
  await queue.close();
  lat.sort((a, b) => a - b);
  return { p50_ms: pct(lat, 0.5), p99_ms: pct(lat, 0.99), max_ms: lat[lat.length - 1] };
}

async function saturated() {
  const n = 10000;
  const queue = new Queue("saturated", { connection });
  let completed = 0;
  let done;
  const finished = new Promise((r) => (done = r));
  const workers = [];
  for (let w = 0; w < 10; w++) {
    const worker = new Worker(
      "saturated",
      async () => {
        if (++completed === n) done();
      },
      { connection, concurrency: 100 },
    );
    await worker.waitUntilReady();
    workers.push(worker);
  }
  const start = performance.now();
  for (let i = 0; i < n; i += 64) {
    const batch = [];
    for (let j = i; j < Math.min(n, i + 64); j++) {
      batch.push(queue.add("t", { seq: j }, { removeOnComplete: true }));
    }
    await Promise.all(batch);
  }
  await finished;
  const elapsed = performance.now() - start;
  await Promise.all(workers.map((w) => w.close()));
  await queue.obliterate({ force: true });
  await queue.close();
  return { completed, elapsed_ms: elapsed, per_sec: (completed / elapsed) * 1000 };
}

const mode = process.argv[3] ?? "both";
const result = {};
if (mode !== "saturated") result.paced = await paced();
if (mode !== "paced") result.saturated = await saturated();
console.log(JSON.stringify(result));
process.exit(0);

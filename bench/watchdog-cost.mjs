// The GPU watchdog's cost (issue 13): CPU per check and memory, with 8 GPUs (the stand-in nvidia-smi's
// h100x8), against its peer in the same run: the shell loop one would write instead
// (`while sleep 30; do nvidia-smi --query-gpu=... --format=csv; done`). Run as its own process, so its
// RSS is the watchdog's and nothing else's; prints one JSON line. Run with --expose-gc (and the image's
// Node flags) for the memory figures after a full collection.
import { readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SMI = path.join(ROOT, 'test', 'fixtures', 'nvidia-smi');
const CHECKS = Number(process.env.WATCHDOG_BENCH_CHECKS ?? 60);
const TICK_MS = 1000 / 100; // USER_HZ on Linux

/** This process's own CPU and its waited-for children's, in ms (/proc/self/stat utime, stime, cutime, cstime). */
function cpu() {
  const fields = readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ');
  const [utime, stime, cutime, cstime] = [11, 12, 13, 14].map((i) => Number(fields[i]) * TICK_MS);
  return { self: utime + stime, children: cutime + cstime };
}

process.env.FAKE_NVIDIA_SMI_MODE = 'h100x8';
const { GpuWatchdog, WATCHDOG_QUERY_ARGS } = await import(path.join(ROOT, 'dist', 'gpus', 'watchdog.js'));
const gpus = readFileSync(path.join(ROOT, 'test', 'fixtures', 'gpus', 'h100x8.query.csv'), 'utf8').trim().split('\n').map((l) => {
  const [index, , , uuid] = l.split(', ');
  return { index: Number(index), uuid };
});
const rssStart = process.memoryUsage().rss;
const watchdog = new GpuWatchdog({ nvidiaSmiPath: SMI, timeoutMs: 10_000, intervalMs: 30_000, failuresToCordon: 3, gpus, onCordon: () => undefined });
await watchdog.checkOnce(); // warm-up: the first check loads execa (gpu-boot has loaded it for detection already)
globalThis.gc?.();
const rssBefore = process.memoryUsage().rss;
const heapBefore = process.memoryUsage().heapUsed;
const before = cpu();
const started = performance.now();
for (let i = 0; i < CHECKS; i++) await watchdog.checkOnce();
const wallMs = performance.now() - started;
const after = cpu();
const healthy = watchdog.snapshot().gpus.filter((g) => g.state === 'healthy').length;
await watchdog.stop();
// After a full collection: what the checks keep, not what the collector has not reclaimed yet.
globalThis.gc?.();
const rssAfter = process.memoryUsage().rss;
const heapAfter = process.memoryUsage().heapUsed;

// The peer: the same query from a shell loop, CPU of the shell and of nvidia-smi together.
const peerBefore = cpu();
const peerStarted = performance.now();
const args = WATCHDOG_QUERY_ARGS.map((a) => `'${a}'`).join(' ');
spawnSync('sh', ['-c', `i=0; while [ $i -lt ${CHECKS} ]; do '${SMI}' ${args} >/dev/null; i=$((i+1)); done`], { stdio: 'ignore', env: process.env });
const peerWallMs = performance.now() - peerStarted;
const peerAfter = cpu();

const perCheck = {
  selfMs: (after.self - before.self) / CHECKS,
  nvidiaSmiMs: (after.children - before.children) / CHECKS,
  wallMs: wallMs / CHECKS,
};
const peerPerCheckMs = (peerAfter.children - peerBefore.children) / CHECKS;
console.log(JSON.stringify({ checks: CHECKS, gpus: gpus.length, healthy, perCheck, peerPerCheckMs, peerWallPerCheckMs: peerWallMs / CHECKS, rssMb: rssAfter / 1024 / 1024, loadMb: (rssBefore - rssStart) / 1024 / 1024, rssGrowthMb: (rssAfter - rssBefore) / 1024 / 1024, heapGrowthMb: (heapAfter - heapBefore) / 1024 / 1024 }));

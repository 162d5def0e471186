#!/usr/bin/env node
// npm run bench: boot, shutdown, memory and scale of the real built entrypoint with real PM2,
// mock GPUs and a ComfyUI stand-in that answers at once, against the floor measured in the same run.
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync, copyFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const ENTRYPOINT = process.env.BENCH_ENTRYPOINT ?? path.join(ROOT, 'dist', 'entrypoint.js');
const STAND_IN = path.join(ROOT, 'bench', 'standin_main.py');
/** USER_HZ, what /proc/<pid>/stat counts CPU in. */
const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
const OUT = path.join(ROOT, 'bench', 'out');
// The peer's verdicts are medians of at least 5 rounds (issue 14).
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
// The file-only figures are cheap and the disk is noisy (bench/RESULTS.md): more rounds for a steadier median.
const FILE_ROUNDS = Math.max(ROUNDS, 9);
// The interpreter itself, not a version manager's shim on PATH (pyenv's is a bash script that runs
// pyenv before python: ~140 ms and its CPU on every instance's start, as no image has it).
const PYTHON = process.env.BENCH_PYTHON ?? execFileSync('python3', ['-c', 'import sys; print(sys.executable)']).toString().trim();

/** The Node flags the image gives gpu-boot (docker/Dockerfile's ENTRYPOINT), so the bench measures what runs. */
async function imageNodeFlags() {
  const { DockerfileParser } = await import('dockerfile-ast');
  const dockerfile = DockerfileParser.parse(readFileSync(path.join(ROOT, 'docker', 'Dockerfile'), 'utf8'));
  const entrypoint = dockerfile.getInstructions().filter((i) => i.getKeyword() === 'ENTRYPOINT').at(-1);
  const words = entrypoint.getJSONStrings().map((s) => s.getJSONValue());
  const node = words.indexOf('node');
  return words.slice(node + 1).filter((w, i, all) => w.startsWith('--') && all.slice(0, i).every((p) => p.startsWith('--')));
}
const NODE_FLAGS = await imageNodeFlags();

/**
 * Where every round's folders are made. On ext4 without a journal (this project's VM: no
 * /proc/fs/jbd2 entry for its disk) the kernel skips, for each new file or link, every inode freed in
 * the last 30-35 s near the parent folder (fs/ext4/ialloc.c: find_inode_bit -> recently_deleted, only
 * when there is no journal): right after the bench's own rounds deleted thousands of entries, 500 new
 * links took 130-257 ms where the same 500 took 8 ms 40 s later (bench/RESULTS.md). A boot follows
 * no such storm of deletions. The TOPDIR attribute (chattr +T) makes ext4 place each new subfolder
 * in a block group of its own choosing (its Orlov allocator), so each round's fresh folders sit
 * where no round just deleted. Where it cannot be set (another file system), the rounds share
 * os.tmpdir() and the output says so.
 */
const BENCH_BASE = mkdtempSync(path.join(os.tmpdir(), 'gpu-boot-bench-base-'));
let SPREAD = false;
try {
  execFileSync('chattr', ['+T', BENCH_BASE], { stdio: 'ignore' });
  SPREAD = execFileSync('lsattr', ['-d', BENCH_BASE]).toString().split(' ')[0].includes('T');
} catch {
  // not ext2/3/4, or no chattr: SPREAD stays false
}
process.on('exit', () => rmSync(BENCH_BASE, { recursive: true, force: true }));
const now = () => performance.now();
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const stats = (xs) => ({ median: median(xs), min: Math.min(...xs), max: Math.max(...xs) });
const round1 = (x) => Math.round(x * 10) / 10;

async function freePorts(count) {
  const free = (port) =>
    new Promise((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen({ port, host: '127.0.0.1', exclusive: true }, () => s.close(() => resolve(true)));
    });
  for (;;) {
    // Below Linux's ephemeral range (32768-60999): an outgoing connection cannot take the port between this check and the bind.
    const start = 20000 + Math.floor(Math.random() * (12000 - count));
    let ok = true;
    for (let i = 0; i < count && ok; i += 1) ok = await free(start + i);
    if (ok) return start;
  }
}

function answers(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1' }, () => {
      socket.end('GET / HTTP/1.0\r\n\r\n');
    });
    socket.once('data', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Until every port answers; `failed()` returning a message ends the wait with that error. */
async function waitAll(ports, failed = () => false) {
  await Promise.all(
    ports.map(async (port) => {
      while (!(await answers(port))) {
        const why = failed();
        if (why) throw new Error(why);
        await new Promise((r) => setTimeout(r, 5));
      }
    }),
  );
}

/** Floor 1: starting Node and exiting. */
function nodeFloor() {
  const started = now();
  execFileSync(process.execPath, ['-e', '0']);
  return now() - started;
}

/**
 * Floor 1b: what the required libraries alone cost in one process: Node, zod and pino, and PM2's
 * daemon code as gpu-boot loads it (dist/pm2-daemon.cjs, or node_modules without it), nothing run.
 * Time since the process started, and peak RSS.
 */
function librariesFloor() {
  const script = [
    "import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';",
    "await import('zod'); await import('pino');",
    // PM2's daemon code reads PM2_HOME's module configuration as it loads, as in a boot (Pm2Host.load makes it first).
    "mkdirSync(process.env.PM2_HOME, { recursive: true }); writeFileSync(process.env.PM2_HOME + '/module_conf.json', '{}');",
    `const { pm2DaemonCode, PM2_DAEMON_BUNDLE } = await import(${JSON.stringify(path.join(ROOT, 'dist', 'instances', 'pm2-host.js'))});`,
    // PM2 sends its messages to console: only the figures go to stdout.
    'console.log = console.error = console.info = console.warn = () => {};',
    'const code = pm2DaemonCode(PM2_DAEMON_BUNDLE); code.constants(); code.daemonCode();',
    "const hwm = Number(readFileSync('/proc/self/status', 'utf8').match(/VmHWM:\\s+(\\d+)/)[1]);",
    "process.stdout.write(JSON.stringify({ ms: performance.now(), mb: hwm / 1024 }));",
    'process.exit(0);',
  ].join('\n');
  // From a file, with the image's flags alone: `-e` would put itself in process.execArgv, and PM2's code cache is offered only for those flags.
  // In bench/out/ (ignored by git): zod and pino resolve from this project's node_modules.
  mkdirSync(OUT, { recursive: true });
  const file = path.join(OUT, 'libraries-floor.mjs');
  writeFileSync(file, script);
  const out = execFileSync(process.execPath, [...NODE_FLAGS, file], { cwd: ROOT, env: { ...process.env, PM2_HOME: path.join(os.tmpdir(), 'gpu-boot-bench-libs-pm2') } });
  return JSON.parse(out.toString());
}

/**
 * Floor 2: the stand-ins started bare until each answers: all at once, or each at `offsetsMs` after
 * the first (a boot's own schedule). With `nodes`, the same stand-in as in the boots, in a workspace of
 * that many nodes whose .env files are already written (the same files gpu-boot writes, as plain
 * files): each one reads them with python-dotenv before it serves, as under a launcher. That reading
 * is the instances' own work, the same under any launcher. The boot overhead is measured against the
 * faster of the two starts in each round (on 2 cores, 16 stand-ins that each read 500 files take
 * longer started all at once than one after another). Without `nodes`: the stand-in with no
 * custom_nodes folder (the floor up to 2026-12-03), printed for the record.
 */
async function standInFloor(count, nodes, offsetsMs) {
  let main = STAND_IN;
  let root;
  if (nodes !== undefined) {
    const { renderEnvFile } = await import(path.join(ROOT, 'dist', 'secrets', 'dotenv-format.js'));
    ({ root } = workspace(nodes));
    const comfy = path.join(root, 'workspace', 'ComfyUI');
    for (let n = 0; n < nodes; n += 1) {
      writeFileSync(path.join(comfy, 'custom_nodes', `node_${n}`, '.env'), renderEnvFile(nodeEntries(n)), { mode: 0o600 });
    }
    main = path.join(comfy, 'main.py');
  }
  const start = await freePorts(count);
  const ports = Array.from({ length: count }, (_, i) => start + i);
  const started = now();
  const launch = (port) => spawn(PYTHON, [main, '--listen', '127.0.0.1', '--port', String(port)], { stdio: 'ignore' });
  // All at once, or each at its offset from the first (the schedule a boot of the same round had).
  const children = offsetsMs ? [] : ports.map(launch);
  if (offsetsMs) {
    for (const [i, port] of ports.entries()) {
      const wait = started + (offsetsMs[i] ?? 0) - now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      children.push(launch(port));
    }
  }
  await waitAll(ports, () => {
    const failed = children.find((c) => c.exitCode !== null);
    return failed ? `a bare stand-in exited with ${failed.exitCode}` : false;
  });
  const ms = now() - started;
  for (const child of children) child.kill('SIGTERM');
  await Promise.all(children.map((c) => new Promise((r) => (c.exitCode !== null ? r() : c.once('exit', r)))));
  if (root) rmSync(root, { recursive: true, force: true });
  return ms;
}

/** Node `n`'s five secrets, KEY_0..KEY_4, as every scenario gives them (the manifest maps KEY_k to SECRET_n_k). */
const nodeEntries = (n) => Array.from({ length: 5 }, (_, k) => ({ key: `KEY_${k}`, value: `bench-secret-${n}-${k}-${'x'.repeat(24)}` }));

function workspace(nodes) {
  const root = mkdtempSync(path.join(BENCH_BASE, 'gpu-boot-bench-'));
  const comfy = path.join(root, 'workspace', 'ComfyUI');
  mkdirSync(path.join(comfy, 'custom_nodes'), { recursive: true });
  mkdirSync(path.join(root, 'workspace', 'times'));
  copyFileSync(STAND_IN, path.join(comfy, 'main.py'));
  const manifest = { custom_nodes: [] };
  const env = {};
  for (let n = 0; n < nodes; n += 1) {
    const name = `node_${n}`;
    mkdirSync(path.join(comfy, 'custom_nodes', name));
    const keys = {};
    for (const [k, { key, value }] of nodeEntries(n).entries()) {
      keys[key] = `\${SECRET_${n}_${k}}`;
      env[`SECRET_${n}_${k}`] = value;
    }
    manifest.custom_nodes.push({ name, env: keys });
  }
  writeFileSync(path.join(root, 'workspace', 'config_nodes.json'), JSON.stringify(manifest));
  return { root, env };
}

/**
 * When the stand-ins started and served (they write it): how long the launcher took to start the
 * last one (from its own spawn), and how long the instances took from their start to serving.
 */
function instanceTimes(root, spawnedAt, ports) {
  const times = ports.map((port) => JSON.parse(readFileSync(path.join(root, 'workspace', 'times', `${port}.json`), 'utf8')));
  return {
    // Each instance's start after the first one's, in order: the bare floor can start the stand-ins on the same schedule.
    startOffsetsMs: times.map((t) => t.started * 1000).sort((a, b) => a - b).map((t, _i, all) => t - all[0]),
    firstStartMs: Math.min(...times.map((t) => t.started * 1000 - spawnedAt)),
    lastStartMs: Math.max(...times.map((t) => t.started * 1000 - spawnedAt)),
    instanceMs: median(times.map((t) => (t.serving - t.started) * 1000)),
    // CPU the instance itself used until it served (its interpreter's start excluded).
    instanceCpuMs: median(times.map((t) => t.cpu * 1000)),
  };
}

/** A process's own CPU so far (user + system, ms), from /proc/<pid>/stat; its children not counted. */
function cpuMsOf(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
  } catch {
    return NaN;
  }
}

function readHwmKb(pid) {
  try {
    const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('VmHWM:'));
    return Number(line?.split(/\s+/)[1] ?? 0);
  } catch {
    return 0;
  }
}

/** One boot: spawn to the last instance answering, then SIGTERM to exit. */
async function boot(gpus, nodes) {
  const { root, env: secrets } = workspace(nodes);
  const portStart = await freePorts(gpus + 1);
  const env = {
    PATH: process.env.PATH,
    HOME: root,
    GPU_MODE: 'mock',
    NUM_GPUS: String(gpus),
    WORKSPACE_PATH: path.join(root, 'workspace'),
    PM2_HOME: path.join(root, 'pm2'),
    // No SECRETS_TMPFS: the image's default (a fresh folder in /dev/shm), so each link's target has the image's length.
    COMFYUI_PYTHON: PYTHON,
    COMFYUI_LISTEN: '127.0.0.1',
    COMFYUI_PORT_START: String(portStart),
    HEALTH_PORT: String(portStart + gpus),
    HEALTH_BIND: '127.0.0.1',
    LOG_LEVEL: 'info',
    ...secrets,
  };
  const ports = Array.from({ length: gpus }, (_, i) => portStart + i);
  const shmBefore = new Set(readdirSync('/dev/shm'));
  const started = now();
  const spawnedAt = Date.now();
  // BENCH_CPU_PROF=<folder>: a CPU profile of every boot (open in Chrome DevTools), to see where the time goes.
  const profile = process.env.BENCH_CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${path.resolve(process.env.BENCH_CPU_PROF)}`] : [];
  // Its output goes to a file, as a container runtime's log driver takes it, and the peer's too: the
  // bench reads it only after every instance answers, so reading it takes no CPU from the boot.
  const logFile = path.join(root, 'gpu-boot.log');
  const out = openSync(logFile, 'w');
  const child = spawn(process.execPath, [...NODE_FLAGS, ...profile, ENTRYPOINT, 'start'], { env, stdio: ['ignore', out, 'inherit'] });
  closeSync(out);
  // BENCH_CPU_TRACE=1: gpu-boot's own CPU sampled every 5 ms, printed at each of its log lines until ready.
  const trace = [];
  const tracer = process.env.BENCH_CPU_TRACE ? setInterval(() => trace.push([Date.now(), cpuMsOf(child.pid)]), 5) : undefined;
  let exitedEarly = false;
  child.once('exit', () => {
    exitedEarly = true;
  });
  const readLogs = () =>
    readFileSync(logFile, 'utf8')
      .split('\n')
      .flatMap((line) => {
        try {
          return [JSON.parse(line)];
        } catch {
          return []; // not a log line (or the last, half written)
        }
      });
  const waitLog = async (match) => {
    for (;;) {
      const found = readLogs().find(match);
      if (found) return found;
      if (exitedEarly) throw new Error('the boot exited before it was ready');
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  await waitAll(ports, () => exitedEarly && 'gpu-boot exited before every instance answered');
  const readyMs = now() - started;
  // What the launcher's own thread took from the cores the instances start on, until all answer.
  const cpuMs = cpuMsOf(child.pid);
  const times = instanceTimes(root, spawnedAt, ports);
  // An outlier is reported with what gpu-boot said about it, not just averaged away.
  if (readyMs > 5000) {
    for (const l of readLogs().filter((e) => e.level >= 40)) process.stderr.write(`slow boot (${Math.round(readyMs)} ms): ${JSON.stringify(l)}\n`);
  }
  await waitLog((l) => l.phase === 'ready');
  const logs = readLogs();
  if (tracer) {
    clearInterval(tracer);
    const cpuAt = (t) => trace.filter(([at]) => at <= t).at(-1)?.[1] ?? 0;
    for (const l of logs.slice(0, logs.findIndex((e) => e.phase === 'ready') + 1)) {
      if (l.stream) continue;
      process.stderr.write(`  +${String(l.time - spawnedAt).padStart(5)} ms  cpu ${String(cpuAt(l.time)).padStart(4)}  ${String(l.msg).slice(0, 90)}\n`);
    }
    process.stderr.write(`  first instance started +${Math.round(times.firstStartMs)} ms, last +${Math.round(times.lastStartMs)} ms\n`);
  }
  const phases = Object.fromEntries(logs.filter((l) => typeof l.phase === 'string' && typeof l.ms === 'number').map((l) => [l.phase, l.ms]));
  // PM2 loads beside detect, secrets and write (one thread): its own figure, overlapping theirs.
  phases['pm2-load'] = logs.find((l) => l.phase === 'pm2-start')?.pm2LoadMs ?? NaN;
  const pm2Pid = Number(readFileSync(path.join(env.PM2_HOME, 'pm2.pid'), 'utf8'));
  // PM2 runs inside gpu-boot unless a daemon was already running: then its RSS counts on its own.
  const samePid = pm2Pid === child.pid;
  const rss = { bootstrapMb: readHwmKb(child.pid) / 1024, pm2Mb: samePid ? 0 : readHwmKb(pm2Pid) / 1024, pm2InProcess: samePid };
  const stopAt = now();
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await exited;
  const shutdownMs = now() - stopAt;
  await assertStopped(ports, 'gpu-boot');
  const wipe = readLogs().find((l) => l.phase === 'wipe');
  rmSync(root, { recursive: true, force: true });
  // The wipe removes the run's folder in /dev/shm; one left behind is reported, then removed.
  const madeByThisBoot = (name) => {
    try {
      return JSON.parse(readFileSync(path.join('/dev/shm', name, '.gpu-boot-run'), 'utf8')).pid === child.pid;
    } catch {
      return false;
    }
  };
  for (const name of readdirSync('/dev/shm').filter((n) => n.startsWith('gpu-boot-') && !shmBefore.has(n) && madeByThisBoot(n))) {
    process.stderr.write(`gpu-boot left /dev/shm/${name} behind\n`);
    rmSync(path.join('/dev/shm', name), { recursive: true, force: true });
  }
  return { readyMs, cpuMs, ...times, phases, rss, shutdownMs, wipeAfterInstancesMs: wipe?.ms ?? NaN };
}


/**
 * The peer (issue 14): the entrypoint a user writes by hand instead of gpu-boot. One `printf` per
 * node into its `.env` (mode 0600 through umask), then `exec pm2-runtime` (this project's own PM2),
 * with the secrets left out of its environment, on an ecosystem file of the same apps gpu-boot
 * starts: the same stand-in, arguments and ports.
 */
function writePeer(root, gpus, nodes, portStart) {
  const comfy = path.join(root, 'workspace', 'ComfyUI');
  const lines = ['#!/bin/sh', 'set -eu', 'umask 077', 'cd "$COMFYUI_PATH/custom_nodes"'];
  for (let n = 0; n < nodes; n += 1) {
    const format = Array.from({ length: 5 }, (_, k) => `KEY_${k}=%s\\n`).join('');
    const values = Array.from({ length: 5 }, (_, k) => `"$SECRET_${n}_${k}"`).join(' ');
    lines.push(`printf '${format}' ${values} > node_${n}/.env`);
  }
  // The secrets stay out of PM2 and the instances' environment, as a careful author makes sure (and
  // PM2 with 2,500 variables in its environment takes a minute to start 16 apps: bench/RESULTS.md).
  lines.push('exec env -i PATH="$PATH" HOME="$HOME" PM2_HOME="$PM2_HOME" "$PM2_RUNTIME" start "$ECOSYSTEM"');
  writeFileSync(path.join(root, 'peer.sh'), `${lines.join('\n')}\n`);
  const apps = Array.from({ length: gpus }, (_, g) => ({
    name: `comfyui-gpu${g}`,
    script: 'main.py',
    cwd: comfy,
    interpreter: PYTHON,
    args: ['--listen', '127.0.0.1', '--port', String(portStart + g), '--cpu'],
    env: { CUDA_VISIBLE_DEVICES: '' },
  }));
  writeFileSync(path.join(root, 'ecosystem.json'), JSON.stringify({ apps }));
}

async function peerBoot(gpus, nodes) {
  const { root, env: secrets } = workspace(nodes);
  const portStart = await freePorts(gpus);
  writePeer(root, gpus, nodes, portStart);
  const env = {
    PATH: process.env.PATH,
    HOME: root,
    PM2_HOME: path.join(root, 'pm2'),
    COMFYUI_PATH: path.join(root, 'workspace', 'ComfyUI'),
    PM2_RUNTIME: path.join(ROOT, 'node_modules', '.bin', 'pm2-runtime'),
    ECOSYSTEM: path.join(root, 'ecosystem.json'),
    ...secrets,
  };
  const ports = Array.from({ length: gpus }, (_, i) => portStart + i);
  const started = now();
  const spawnedAt = Date.now();
  // sh execs pm2-runtime: one pid throughout, Node's after the exec.
  const logFile = path.join(root, 'peer.log');
  const out = openSync(logFile, 'w');
  const child = spawn('/bin/sh', [path.join(root, 'peer.sh')], { env, stdio: ['ignore', out, out] });
  closeSync(out);
  let exited = false;
  child.once('exit', () => (exited = true));
  await waitAll(ports, () => exited && `the peer exited before it was ready: ${readFileSync(logFile, 'utf8').slice(-4000)}`);
  const readyMs = now() - started;
  const cpuMs = cpuMsOf(child.pid);
  const times = instanceTimes(root, spawnedAt, ports);
  const rssMb = readHwmKb(child.pid) / 1024;
  const stopAt = now();
  const done = new Promise((r) => (exited ? r() : child.once('exit', r)));
  child.kill('SIGTERM');
  await done;
  const shutdownMs = now() - stopAt;
  await assertStopped(ports, 'the peer');
  rmSync(root, { recursive: true, force: true });
  return { readyMs, cpuMs, ...times, shutdownMs, rssMb };
}

/** After an exit, no instance may still answer: a stop that leaves them running is no stop. */
async function assertStopped(ports, who) {
  for (const port of ports) if (await answers(port)) throw new Error(`${who} exited with an instance still answering on ${port}`);
}

/** The cost of writing and wiping N nodes' files alone (no boot around it), on tmpfs and in place. */
async function fileCost(nodes, storageKind) {
  const { FileSession, StateDir } = await import(path.join(ROOT, 'dist', 'files', 'env-files.js'));
  const { wipeRecord } = await import(path.join(ROOT, 'dist', 'files', 'wipe.js'));
  const { renderEnvFile } = await import(path.join(ROOT, 'dist', 'secrets', 'dotenv-format.js'));
  // The production base: the run's folder is made fresh in /dev/shm itself (the link targets' length is then the image's).
  const storage = storageKind === 'tmpfs' ? { kind: 'tmpfs', base: '/dev/shm' } : { kind: 'in-place' };
  const write = [];
  const wipe = [];
  for (let r = 0; r < FILE_ROUNDS + 1; r += 1) {
    // Fresh node folders each round, as each boot has: not beside the files the last round's wipe removed (see BENCH_BASE).
    const root = mkdtempSync(path.join(BENCH_BASE, 'gpu-boot-bench-files-'));
    mkdirSync(path.join(root, 'custom_nodes'));
    const files = [];
    for (let n = 0; n < nodes; n += 1) {
      mkdirSync(path.join(root, 'custom_nodes', `node_${n}`));
      files.push({ node: `node_${n}`, path: path.join(root, 'custom_nodes', `node_${n}`, '.env'), text: renderEnvFile(nodeEntries(n)) });
    }
    let started = now();
    const session = new FileSession(StateDir.create(path.join(root, 'state')), storage, undefined);
    await session.write(files);
    write.push(now() - started);
    started = now();
    wipeRecord(session.state, session.record, session.secrets ? { secrets: session.secrets.dir } : {});
    wipe.push(now() - started);
    session.close();
    rmSync(root, { recursive: true, force: true });
  }
  return { nodes, storage: storageKind, writeMs: stats(write.slice(1)), wipeMs: stats(wipe.slice(1)) };
}

const ALL_SCENARIOS = [
  { gpus: 1, nodes: 10 },
  { gpus: 8, nodes: 100 },
  { gpus: 16, nodes: 500 },
];
// BENCH_SCENARIOS=8x100,1x10 runs only those (the verdicts then need every scenario: it exits 2).
const only = process.env.BENCH_SCENARIOS?.split(',').map((s) => s.trim());
const scenarios = only ? ALL_SCENARIOS.filter((s) => only.includes(`${s.gpus}x${s.nodes}`)) : ALL_SCENARIOS;

const fmt = (st) => `${round1(st.median)} (${round1(st.min)}–${round1(st.max)})`;
function printScenarios() {
  console.log(`\ngpu-boot bench: ${ROUNDS} rounds after a warm-up; ms as median (min–max); ${results.machine.cpus} CPUs, Node ${results.machine.node}`);
  console.log(`node flags (from docker/Dockerfile): ${NODE_FLAGS.join(' ') || 'none'}`);
  console.log(`floor: node -e 0 = ${fmt(results.floor.nodeMs)} ms${results.floor.links500Ms ? `; links in fresh folders on the workspace disk: 100 = ${fmt(results.floor.links100Ms)} ms, 500 = ${fmt(results.floor.links500Ms)} ms` : ''}`);
  if (results.floor.links500BesideDeletionsMs) console.log(`floor: the same 500 links in ${os.tmpdir()}, beside the inodes the rounds just freed: ${fmt(results.floor.links500BesideDeletionsMs)} ms`);
  console.log(SPREAD ? `rounds' folders: in ${BENCH_BASE}, TOPDIR set (each round's folders in a block group of their own)` : `rounds' folders: in ${BENCH_BASE}; TOPDIR could not be set here, so on ext4 without a journal a round pays for the inodes the previous rounds freed`);
  console.log(`floor: Node + zod + pino + PM2's daemon code (as gpu-boot loads it) loaded in one process = ${fmt(results.floor.librariesMs)} ms after its start, ${fmt(results.floor.librariesMb)} MB peak RSS`);
  console.log('\nagainst the peer (a shell entrypoint: printf each .env, exec pm2-runtime), same round, same stand-in:');
  console.log('| GPUs | nodes | stand-ins bare, reading their nodes: the faster of at once, on the boot\'s schedule (no nodes) | gpu-boot ready | peer ready | ratio | first / last instance started: gpu-boot / peer | instance start to serving (its own CPU): gpu-boot / peer | launcher CPU until ready: gpu-boot / peer | gpu-boot stop | peer stop | gpu-boot MB | peer MB |');
  console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const s of results.scenarios) {
    console.log(`| ${s.gpus} | ${s.nodes} | ${fmt(s.standInFloorMs)}: ${round1(s.standInAtOnceMs.median)}, ${round1(s.standInStaggeredMs.median)} (${round1(s.standInNoNodesFloorMs.median)}) | ${fmt(s.readyMs)} | ${fmt(s.peer.readyMs)} | ${s.readyRatio.median.toFixed(2)} (${s.readyRatio.min.toFixed(2)}–${s.readyRatio.max.toFixed(2)}) | ${round1(s.firstStartMs.median)}, ${round1(s.lastStartMs.median)} / ${round1(s.peer.firstStartMs.median)}, ${round1(s.peer.lastStartMs.median)} | ${round1(s.instanceMs.median)} (${round1(s.instanceCpuMs.median)}) / ${round1(s.peer.instanceMs.median)} (${round1(s.peer.instanceCpuMs.median)}) | ${round1(s.cpuMs.median)} / ${round1(s.peer.cpuMs.median)} | ${fmt(s.shutdownMs)} | ${fmt(s.peer.shutdownMs)} | ${fmt(s.totalRssMb)} | ${fmt(s.peer.rssMb)} |`);
  }
  console.log('\ngpu-boot\'s phases:');
  console.log('| GPUs | nodes | overhead (against the stand-ins bare without nodes) | config | detect | secrets | write | (pm2-load) | pm2-start | wipe | bootstrap MB | PM2 MB |');
  console.log('|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const s of results.scenarios) {
    const pm2 = s.pm2InProcess ? 'in process' : fmt(s.pm2RssMb);
    console.log(`| ${s.gpus} | ${s.nodes} | ${fmt(s.bootOverheadMs)} (${round1(s.bootOverheadNoNodesMs.median)}) | ${fmt(s.phasesMs.config)} | ${fmt(s.phasesMs.detect)} | ${fmt(s.phasesMs.secrets)} | ${fmt(s.phasesMs.write)} | ${fmt(s.phasesMs['pm2-load'])} | ${fmt(s.phasesMs['pm2-start'])} | ${fmt(s.wipeAfterInstancesMs)} | ${fmt(s.bootstrapRssMb)} | ${pm2} |`);
  }
}

const results = { machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, node: process.version }, rounds: ROUNDS, floor: {}, scenarios: [] };
const nodeRuns = [];
for (let i = 0; i < ROUNDS + 1; i += 1) nodeRuns.push(nodeFloor());
results.floor.nodeMs = stats(nodeRuns.slice(1));
const libraryRuns = [];
for (let i = 0; i < ROUNDS + 1; i += 1) libraryRuns.push(librariesFloor());
rmSync(path.join(os.tmpdir(), 'gpu-boot-bench-libs-pm2'), { recursive: true, force: true });
results.floor.librariesMs = stats(libraryRuns.slice(1).map((r) => r.ms));
results.floor.librariesMb = stats(libraryRuns.slice(1).map((r) => r.mb));
results.nodeFlags = NODE_FLAGS;

for (const s of scenarios) {
  const standIn = [];
  const standInStaggered = [];
  const standInNoNodes = [];
  const runs = [];
  const peers = [];
  await standInFloor(s.gpus, s.nodes); // warm-up
  await boot(s.gpus, s.nodes); // warm-up
  await peerBoot(s.gpus, s.nodes); // warm-up
  for (let i = 0; i < ROUNDS; i += 1) {
    standIn.push(await standInFloor(s.gpus, s.nodes));
    standInNoNodes.push(await standInFloor(s.gpus));
    // Who goes first alternates: neither always gets the warmer page cache.
    if (i % 2 === 0) {
      runs.push(await boot(s.gpus, s.nodes));
      peers.push(await peerBoot(s.gpus, s.nodes));
    } else {
      peers.push(await peerBoot(s.gpus, s.nodes));
      runs.push(await boot(s.gpus, s.nodes));
    }
    standInStaggered.push(await standInFloor(s.gpus, s.nodes, runs.at(-1).startOffsetsMs));
  }
  // Against the faster of the two bare starts of the round: a launcher with no cost of its own could start them either way.
  const floors = standIn.map((ms, i) => Math.min(ms, standInStaggered[i]));
  const overhead = runs.map((r, i) => r.readyMs - floors[i]);
  const phaseNames = ['config', 'recover', 'detect', 'secrets', 'write', 'pm2-load', 'pm2-start', 'ready'];
  results.scenarios.push({
    ...s,
    standInFloorMs: stats(floors),
    standInAtOnceMs: stats(standIn),
    standInStaggeredMs: stats(standInStaggered),
    standInNoNodesFloorMs: stats(standInNoNodes),
    readyMs: stats(runs.map((r) => r.readyMs)),
    bootOverheadMs: stats(overhead),
    bootOverheadNoNodesMs: stats(runs.map((r, i) => r.readyMs - standInNoNodes[i])),
    phasesMs: Object.fromEntries(phaseNames.map((p) => [p, stats(runs.map((r) => r.phases[p] ?? NaN))])),
    shutdownMs: stats(runs.map((r) => r.shutdownMs)),
    wipeAfterInstancesMs: stats(runs.map((r) => r.wipeAfterInstancesMs)),
    bootstrapRssMb: stats(runs.map((r) => r.rss.bootstrapMb)),
    pm2RssMb: stats(runs.map((r) => r.rss.pm2Mb)),
    pm2InProcess: runs.every((r) => r.rss.pm2InProcess),
    totalRssMb: stats(runs.map((r) => r.rss.bootstrapMb + r.rss.pm2Mb)),
    firstStartMs: stats(runs.map((r) => r.firstStartMs)),
    lastStartMs: stats(runs.map((r) => r.lastStartMs)),
    instanceMs: stats(runs.map((r) => r.instanceMs)),
    instanceCpuMs: stats(runs.map((r) => r.instanceCpuMs)),
    cpuMs: stats(runs.map((r) => r.cpuMs)),
    peer: { readyMs: stats(peers.map((p) => p.readyMs)), firstStartMs: stats(peers.map((p) => p.firstStartMs)), lastStartMs: stats(peers.map((p) => p.lastStartMs)), instanceMs: stats(peers.map((p) => p.instanceMs)), instanceCpuMs: stats(peers.map((p) => p.instanceCpuMs)), cpuMs: stats(peers.map((p) => p.cpuMs)), shutdownMs: stats(peers.map((p) => p.shutdownMs)), rssMb: stats(peers.map((p) => p.rssMb)) },
    // Per round: both booted in the same round, one right after the other.
    readyRatio: stats(runs.map((r, i) => r.readyMs / peers[i].readyMs)),
  });
}

if (only) {
  printScenarios();
  console.log('\nBENCH_SCENARIOS ran a subset: no verdicts.');
  process.exit(2);
}

/** Floor 3: the disk itself. N new directory entries (symlinks) in N fresh folders on the workspace's file system. */
async function linkFloor(nodes, base = BENCH_BASE) {
  const { symlink } = await import('node:fs/promises');
  const runs = [];
  for (let r = 0; r < FILE_ROUNDS + 1; r += 1) {
    const root = mkdtempSync(path.join(base, 'gpu-boot-bench-links-'));
    for (let n = 0; n < nodes; n += 1) mkdirSync(path.join(root, `n${n}`));
    const started = now();
    await Promise.all(Array.from({ length: nodes }, (_, n) => symlink('/dev/shm/x', path.join(root, `n${n}`, '.env'))));
    runs.push(now() - started);
    rmSync(root, { recursive: true, force: true });
  }
  return stats(runs.slice(1));
}
results.floor.links100Ms = await linkFloor(100);
results.floor.links500Ms = await linkFloor(500);
// For the record, not a verdict: the same 500 links where the rounds above just deleted theirs.
results.floor.links500BesideDeletionsMs = await linkFloor(500, os.tmpdir());
results.floor.spread = SPREAD;

// The GPU watchdog (issue 13), in its own process: CPU per check against the shell loop's, and memory.
const watchdogRuns = [];
for (let r = 0; r < ROUNDS; r++) watchdogRuns.push(JSON.parse(execFileSync(process.execPath, [...NODE_FLAGS, '--expose-gc', path.join(ROOT, 'bench', 'watchdog-cost.mjs')], { encoding: 'utf8' })));
const WATCHDOG_DEFAULT_INTERVAL_MS = 30_000;
const checksPerHour = 3_600_000 / WATCHDOG_DEFAULT_INTERVAL_MS;
results.watchdog = {
  gpus: watchdogRuns[0].gpus,
  selfMsPerCheck: stats(watchdogRuns.map((w) => w.perCheck.selfMs)),
  nvidiaSmiMsPerCheck: stats(watchdogRuns.map((w) => w.perCheck.nvidiaSmiMs)),
  peerMsPerCheck: stats(watchdogRuns.map((w) => w.peerPerCheckMs)),
  selfCpuSecondsPerHour: stats(watchdogRuns.map((w) => (w.perCheck.selfMs * checksPerHour) / 1000)),
  rssGrowthMb: stats(watchdogRuns.map((w) => w.rssGrowthMb)),
  heapGrowthMb: stats(watchdogRuns.map((w) => w.heapGrowthMb)),
};

results.files = [];
for (const storage of ['tmpfs', 'in-place']) for (const nodes of [10, 100, 500]) results.files.push(await fileCost(nodes, storage));

// Verdicts against the targets (issue 6), each measured against the floor of this run.
const at = (gpus, nodes) => results.scenarios.find((s) => s.gpus === gpus && s.nodes === nodes);
const s8 = at(8, 100);
const fileAt = (nodes, storage) => results.files.find((f) => f.nodes === nodes && f.storage === storage);
// Per-node cost at 500 over per-node cost at 100, worst of the two storages.
const floorRatio = results.floor.links500Ms.median / 500 / (results.floor.links100Ms.median / 100);
const linear = (key) => Math.max(...['tmpfs', 'in-place'].map((st) => fileAt(500, st)[key].median / 500 / (fileAt(100, st)[key].median / 100)));
const verdicts = [
  // Issue 14: never slower than the hand-written entrypoint, at every size.
  ...results.scenarios.map((sc) => [`ready no later than the peer, ${sc.gpus} GPUs x ${sc.nodes} nodes: gpu-boot / peer <= 1.00 (median of ${ROUNDS} rounds)`, sc.readyRatio.median, sc.readyRatio.median <= 1]),
  ['boot overhead, 8 GPUs x 100 nodes <= 500 ms', s8.bootOverheadMs.median, s8.bootOverheadMs.median <= 500],
  [`boot overhead <= 4 x node -e 0 (${round1(4 * results.floor.nodeMs.median)} ms)`, s8.bootOverheadMs.median, s8.bootOverheadMs.median <= 4 * results.floor.nodeMs.median],
  ['shutdown (SIGTERM to exit) < 1000 ms', Math.max(...results.scenarios.map((s) => s.shutdownMs.median)), results.scenarios.every((s) => s.shutdownMs.median < 1000)],
  ['every file wiped within 100 ms of the instances stopping', Math.max(...results.scenarios.map((s) => s.wipeAfterInstancesMs.median)), results.scenarios.every((s) => s.wipeAfterInstancesMs.median <= 100)],
  [`bootstrap + PM2 peak RSS <= 90 MB (${results.scenarios.every((s) => s.pm2InProcess) ? 'one process' : 'two processes'})`, Math.max(...results.scenarios.map((s) => s.totalRssMb.median)), results.scenarios.every((s) => s.totalRssMb.median <= 90)],
  ['500 nodes written (files alone, tmpfs) < 100 ms', fileAt(500, 'tmpfs').writeMs.median, fileAt(500, 'tmpfs').writeMs.median < 100],
  ['500 nodes written (files alone, in place) < 100 ms', fileAt(500, 'in-place').writeMs.median, fileAt(500, 'in-place').writeMs.median < 100],
  // The same, against the floor of this run: the disk's own cost of 500 new entries (links).
  ['500 nodes written (tmpfs) above the disk floor of this run < 100 ms', fileAt(500, 'tmpfs').writeMs.median - results.floor.links500Ms.median, fileAt(500, 'tmpfs').writeMs.median - results.floor.links500Ms.median < 100],
  // The disk's own growth from 100 to 500 new entries, measured in this run, bounds what the writes can do.
  [`write and wipe grow linearly: per node at 500 <= 2 x per node at 100, or 2 x the disk floor's own ratio (${floorRatio.toFixed(2)} this run)`, round1(Math.max(linear('writeMs'), linear('wipeMs')) * 100) / 100, Math.max(linear('writeMs'), linear('wipeMs')) <= 2 * Math.max(1, floorRatio)],
];
const wd = results.watchdog;
verdicts.push(
  [`GPU watchdog, ${wd.gpus} GPUs, every ${WATCHDOG_DEFAULT_INTERVAL_MS / 1000} s: gpu-boot's own CPU <= 2 s per hour`, wd.selfCpuSecondsPerHour.median, wd.selfCpuSecondsPerHour.median <= 2],
  [`GPU watchdog: gpu-boot's own CPU per check <= 5 x the shell loop's whole check (${round1(wd.peerMsPerCheck.median)} ms, nvidia-smi included)`, wd.selfMsPerCheck.median, wd.selfMsPerCheck.median <= 5 * Math.max(1, wd.peerMsPerCheck.median)],
  ['GPU watchdog: heap kept after the checks (a full collection) <= 2 MB', wd.heapGrowthMb.median, wd.heapGrowthMb.median <= 2],
);
results.verdicts = verdicts.map(([target, value, pass]) => ({ target, value: Math.round(value * 100) / 100, pass }));

printScenarios();
console.log('\nfiles alone (writeNodeFiles, then wipeRecordedFiles):');
console.log('| nodes | storage | write | wipe |');
console.log('|---|---|---|---|');
for (const f of results.files) console.log(`| ${f.nodes} | ${f.storage} | ${fmt(f.writeMs)} | ${fmt(f.wipeMs)} |`);
console.log(`\nGPU watchdog, ${wd.gpus} GPUs (stand-in nvidia-smi), per check: gpu-boot ${fmt(wd.selfMsPerCheck)} ms CPU, nvidia-smi ${fmt(wd.nvidiaSmiMsPerCheck)} ms; the shell loop ${fmt(wd.peerMsPerCheck)} ms in all; gpu-boot's own ${fmt(wd.selfCpuSecondsPerHour)} CPU s per hour at ${WATCHDOG_DEFAULT_INTERVAL_MS / 1000} s; RSS growth ${fmt(wd.rssGrowthMb)} MB, heap kept ${fmt(wd.heapGrowthMb)} MB`);
console.log('');
for (const v of results.verdicts) console.log(`${v.pass ? 'PASS' : 'MISS'}  ${v.target}: ${v.value}`);
mkdirSync(OUT, { recursive: true });
writeFileSync(path.join(OUT, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
console.log(`\nwrote ${path.relative(process.cwd(), path.join(OUT, 'results.json'))}`);
process.exitCode = results.verdicts.every((v) => v.pass) ? 0 : 1;

#!/usr/bin/env node
// Run the image's runtime the way Docker runs it, without a Docker engine (issue 15).
//
//   node scripts/image-run.mjs run  [--name N] [--profile local|prod-test] [-e K=V]... [--env-file F]
//                                   [-v SRC:DST[:ro]]... [--tmpfs DST]... [--user U] [--gpus all]
//                                   [--workspace DIR] [--network host] [--dockerfile F] [-- CMD...]
//   node scripts/image-run.mjs exec N [--user U] -- CMD...     like `docker exec`
//   node scripts/image-run.mjs health N [--interval S]         the image's (or the profile's) healthcheck, as Docker runs it
//   node scripts/image-run.mjs stop N [-t SECONDS]             STOPSIGNAL to PID 1, SIGKILL after the grace period
//   node scripts/image-run.mjs kill N                          SIGKILL to PID 1: the whole PID namespace dies
//
// What it reads: docker/Dockerfile's runtime stage (ENV, USER, WORKDIR, ENTRYPOINT, CMD, STOPSIGNAL,
// HEALTHCHECK, the COPY of gpu-boot's files), with the parser the tests use (dockerfile-ast); with
// --profile, the compose service of that profile as `docker-compose config` resolves it (its
// environment and env file, user, volumes, secrets, tmpfs, stop_grace_period, healthcheck, GPUs).
//
// What it builds (as root: namespaces and mounts need it): a new PID, mount and network namespace
// (the network one unless --network host); a root filesystem that is this machine's own, seen
// through an overlay whose writes go to memory, as the image's base; on it what the Dockerfile's
// steps leave: the user of USER, /opt/gpu-boot (this checkout's dist/, node_modules/, package.json,
// ecosystem.config.cjs and launcher/, read-only), /opt/venv/bin/python3, the `gpu-boot` and `pm2`
// commands, and /workspace with the ComfyUI stand-in and the nodes of the image's manifest; a
// fresh /proc, a 64 MB /dev/shm, the volumes, tmpfs mounts and /run/secrets/<name> files. Then
// ENTRYPOINT + CMD is exec'd as PID 1, as the image's user, in WORKDIR, with the image's
// environment: tini, as the Dockerfile says. What it cannot be: the base image itself (CUDA,
// Ubuntu's packages): python3 with python-dotenv and node come from this machine, and the GPU is
// test/fixtures/nvidia-smi (--gpus all, or a profile that reserves GPUs).
//
// The container's state (the host pid of its PID 1, its healthcheck, its user, its grace period;
// never its environment) is kept in $GPU_BOOT_IMAGE_STATE/<name> (default: the temp folder's
// gpu-boot-image/), named volumes in its volumes/ folder.
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, cpSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { constants as osConstants } from 'node:os';
import { DockerfileParser } from 'dockerfile-ast';
import { quote } from 'shell-quote';
import YAML from 'yaml';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const NODE_FLAGS = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')).gpuBoot.nodeFlags;
// Root's alone (checked in stateRoot): whoever could write it could make this harness, as root, run their setup or signal any pid.
const STATE_ROOT = process.env.GPU_BOOT_IMAGE_STATE || '/run/gpu-boot-image';
/** What the host's own tools (unshare, mount, chroot) run with: never the container's PATH or LD_LIBRARY_PATH. */
const HOST_ENV = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' };
/**
 * PID 1's last step inside the chroot: the container's environment, argv and workdir arrive on fd 3
 * (a pipe: never a file or an argv), then it becomes the ENTRYPOINT, found on the container's PATH.
 */
const EXEC_SHIM = 'import json, os\nwith os.fdopen(3) as f:\n    spec = json.load(f)\nos.chdir(spec["workdir"])\nos.execvpe(spec["argv"][0], spec["argv"], spec["env"])\n';
const DEFAULT_DOCKERFILE = path.join(ROOT, 'docker', 'Dockerfile');
const DEFAULT_COMPOSE = path.join(ROOT, 'docker', 'docker-compose.yml');
const STAND_IN_COMFYUI = path.join(ROOT, 'demo', 'workspace', 'ComfyUI');
const STAND_IN_FIXTURES = path.join(ROOT, 'test', 'fixtures');
/** Where the toolkit puts nvidia-smi in a container started with GPUs. */
const NVIDIA_SMI_IN_CONTAINER = '/usr/bin/nvidia-smi';
/** The interpreter the image's /opt/venv/bin/python3 stands for: the system one (the image user cannot reach one under /root). */
const SYSTEM_PYTHON = '/usr/bin/python3';

/**
 * The environment of the runtime stage's base image, nvidia/cuda:12.4.1-runtime-ubuntu22.04, as its
 * Dockerfiles set it: there is no image here to read it from. Docker adds HOSTNAME and HOME.
 */
const BASE_IMAGE_ENV = {
  PATH: '/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  NVIDIA_REQUIRE_CUDA: 'cuda>=12.4',
  NV_CUDA_CUDART_VERSION: '12.4.127-1',
  CUDA_VERSION: '12.4.1',
  LD_LIBRARY_PATH: '/usr/local/nvidia/lib:/usr/local/nvidia/lib64',
  NVIDIA_VISIBLE_DEVICES: 'all',
  NVIDIA_DRIVER_CAPABILITIES: 'compute,utility',
};

class UsageError extends Error {}

function fail(message, code = 125) {
  process.stderr.write(`image-run: ${message}\n`);
  process.exit(code);
}

// ---- The image, from the Dockerfile -------------------------------------------------------------

/** Docker's `$VAR` and `${VAR}` in ENV values (the forms the Dockerfile uses), from the environment so far. */
function expand(value, env) {
  return value.replace(/\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))/g, (_, braced, bare) => env[braced ?? bare] ?? '');
}

/** Go-style durations as Docker writes them (15s, 1m30s, 300ms) in ms. */
export function durationMs(text, fallbackMs) {
  if (text === undefined || text === null || text === '') return fallbackMs;
  if (typeof text === 'number') return text * 1000;
  let ms = 0;
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/g;
  let match;
  let consumed = 0;
  while ((match = re.exec(text))) {
    ms += Number(match[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[match[2]];
    consumed += match[0].length;
  }
  if (consumed !== text.length) throw new UsageError(`not a duration: ${text}`);
  return ms;
}

/** What the runtime stage (after the last FROM) says, in the order Docker applies it. */
export function readImage(dockerfilePath) {
  const text = readFileSync(dockerfilePath, 'utf8');
  const dockerfile = DockerfileParser.parse(text);
  const fromLine = dockerfile.getFROMs().at(-1)?.getRange().start.line ?? 0;
  const env = { ...BASE_IMAGE_ENV };
  const args = {};
  const image = { env, user: 'root', workdir: '/', entrypoint: [], cmd: [], stopSignal: 'SIGTERM', healthcheck: undefined, copies: [], runs: [] };
  let workdir = '/';
  for (const instruction of dockerfile.getInstructions()) {
    if (instruction.getRange().start.line < fromLine) continue;
    const keyword = instruction.getKeyword();
    const words = instruction.getArguments().map((a) => a.getValue());
    if (keyword === 'ARG') {
      const property = instruction.getProperty();
      if (property) args[property.getName()] = property.getValue() ?? '';
    } else if (keyword === 'ENV') {
      for (const property of instruction.getProperties()) env[property.getName()] = expand(property.getValue() ?? '', env);
    } else if (keyword === 'USER') {
      image.user = words[0];
    } else if (keyword === 'WORKDIR') {
      workdir = path.posix.resolve(workdir, words[0]);
      image.workdir = workdir;
    } else if (keyword === 'ENTRYPOINT' || keyword === 'CMD') {
      const json = instruction.getJSONStrings().map((w) => w.getJSONValue());
      // The shell form runs under /bin/sh -c, as Docker does.
      const argv = json.length ? json : ['/bin/sh', '-c', instruction.getRawArgumentsContent() ?? ''];
      if (keyword === 'ENTRYPOINT') {
        image.entrypoint = argv;
        image.cmd = []; // an ENTRYPOINT resets a CMD set before it
      } else image.cmd = argv;
    } else if (keyword === 'STOPSIGNAL') {
      image.stopSignal = words[0];
    } else if (keyword === 'HEALTHCHECK') {
      image.healthcheck = dockerfileHealthcheck(instruction);
    } else if (keyword === 'COPY') {
      const from = instruction.getFlags().find((f) => f.getName() === 'from')?.getValue();
      const [source, target] = words.map((w) => expand(w, args));
      image.copies.push({ from, source, target: path.posix.resolve(workdir, target) });
    } else if (keyword === 'RUN') {
      image.runs.push(instruction.getRawArgumentsContent() ?? '');
    }
  }
  image.user = expand(image.user, env);
  return image;
}

function dockerfileHealthcheck(instruction) {
  const flags = Object.fromEntries(instruction.getFlags().map((f) => [f.getName(), f.getValue()]));
  const raw = instruction.getRawArgumentsContent() ?? '';
  const at = raw.search(/\bCMD\b/i);
  if (instruction.getSubcommand()?.getValue().toUpperCase() === 'NONE' || at < 0) return undefined;
  const command = raw.slice(at + 3).trim();
  const test = command.startsWith('[') ? ['CMD', ...JSON.parse(command)] : ['CMD-SHELL', command];
  return {
    test,
    intervalMs: durationMs(flags.interval, 30_000),
    timeoutMs: durationMs(flags.timeout, 30_000),
    startPeriodMs: durationMs(flags['start-period'], 0),
    retries: Number(flags.retries ?? 3),
  };
}

/** The user the Dockerfile's RUN creates (groupadd --gid G NAME, useradd --uid U ... NAME): it is in the base image's passwd here. */
function imageUserAccount(image) {
  for (const run of image.runs) {
    const user = /useradd\b[^&|;]*?--uid\s+(\d+)[^&|;]*?--gid\s+(\d+)[^&|;]*?\s([a-z_][a-z0-9_-]*)\s*(?:&&|\\|$)/m.exec(run);
    if (user) return { name: user[3], uid: Number(user[1]), gid: Number(user[2]), home: `/home/${user[3]}` };
  }
  return undefined;
}

// ---- The compose service of a profile ----------------------------------------------------------

/** `docker-compose config` of a profile: compose itself resolves variables, env files and paths. */
export function composeService(composeFile, profile) {
  const env = { ...process.env };
  // docker-compose 1.x reads the env_file of every service, active or not: as npm run check:compose does.
  if (!env.PROD_TEST_ENV_FILE && !existsSync(path.join(path.dirname(composeFile), '..', '.env.local.prod-test'))) {
    env.PROD_TEST_ENV_FILE = '../.env.local.prod-test.example';
  }
  const result = spawnSync('docker-compose', ['-f', composeFile, '--profile', profile, 'config'], { env, encoding: 'utf8' });
  if (result.error) throw new UsageError(`docker-compose: ${result.error.message} (Debian: apt-get install docker-compose)`);
  if (result.status !== 0) throw new UsageError(`docker-compose config failed: ${result.stderr.trim()}`);
  // `config` prints a compose file again, its $ still escaped as $$: what the container gets has $.
  const unescape = (value) =>
    typeof value === 'string' ? value.replaceAll('$$', '$') : Array.isArray(value) ? value.map(unescape) : value && typeof value === 'object' ? Object.fromEntries(Object.entries(value).map(([k, v]) => [k, unescape(v)])) : value;
  const config = unescape(YAML.parse(result.stdout));
  const entries = Object.entries(config.services ?? {}).filter(([, s]) => (s.profiles ?? []).includes(profile));
  if (entries.length !== 1) throw new UsageError(`profile ${profile}: ${entries.length} services in ${composeFile}, expected 1`);
  const [name, service] = entries[0];
  const secrets = (service.secrets ?? []).map((s) => {
    const source = typeof s === 'string' ? s : s.source;
    const target = typeof s === 'string' ? s : s.target ?? source;
    const file = config.secrets?.[source]?.file;
    if (!file) throw new UsageError(`profile ${profile}: secret ${source} has no file`);
    return { source: file, target: target.startsWith('/') ? target : `/run/secrets/${target}` };
  });
  const gpus = (service.deploy?.resources?.reservations?.devices ?? []).some((d) => d.driver === 'nvidia' || (d.capabilities ?? []).includes('gpu'));
  return {
    name,
    // `- NAME` with NAME unset here is printed as null: compose leaves it unset in the container.
    environment: Object.fromEntries(Object.entries(service.environment ?? {}).filter(([, v]) => v !== null).map(([k, v]) => [k, String(v)])),
    user: service.user,
    volumes: (service.volumes ?? []).map(parseVolume),
    tmpfs: [service.tmpfs ?? []].flat(),
    secrets,
    stopGraceMs: durationMs(service.stop_grace_period, 10_000),
    healthcheck: service.healthcheck && !service.healthcheck.disable
      ? {
          test: [service.healthcheck.test].flat(),
          intervalMs: durationMs(service.healthcheck.interval, 30_000),
          timeoutMs: durationMs(service.healthcheck.timeout, 30_000),
          startPeriodMs: durationMs(service.healthcheck.start_period, 0),
          retries: Number(service.healthcheck.retries ?? 3),
        }
      : undefined,
    gpus,
  };
}

/**
 * A mount target as Docker resolves it, inside the container's root: absolute, no `..`, and no
 * component that is a link in the base (this machine's /), which would lead the mount outside.
 */
function containerPath(target) {
  if (!target.startsWith('/') || target.split('/').includes('..')) throw new UsageError(`mount target ${target}: an absolute path without ..`);
  const clean = path.posix.normalize(target);
  let at = '';
  for (const part of clean.split('/').filter(Boolean)) {
    at += `/${part}`;
    const stat = lstatSync(at, { throwIfNoEntry: false });
    if (!stat) break;
    if (stat.isSymbolicLink()) throw new UsageError(`mount target ${target}: ${at} is a link in the base; give the path it leads to`);
  }
  return clean;
}

/** SRC:DST[:ro|rw]; SRC a path (a bind mount) or a name (a named volume). */
function parseVolume(spec) {
  const parts = typeof spec === 'string' ? spec.split(':') : [spec.source, spec.target, spec.read_only ? 'ro' : 'rw'];
  if (parts.length < 2 || !parts[1]?.startsWith('/')) throw new UsageError(`volume ${JSON.stringify(spec)}: expected SRC:DST[:ro]`);
  const [source, target, mode] = parts;
  const named = !source.includes('/') && !source.startsWith('.');
  return { source: named ? source : path.resolve(source), target: containerPath(target), readOnly: mode === 'ro', named };
}

// ---- The container ------------------------------------------------------------------------------

/** The state folder, made root's alone (0700), or refused when it is someone else's, a link, or open to others. */
function stateRoot() {
  mkdirSync(STATE_ROOT, { recursive: true, mode: 0o700 });
  const stat = lstatSync(STATE_ROOT);
  if (!stat.isDirectory() || stat.uid !== 0 || (stat.mode & 0o077) !== 0) {
    throw new UsageError(`${STATE_ROOT} must be a folder of root's alone (mode 0700): refused`);
  }
  return STATE_ROOT;
}

function stateDir(name) {
  return path.join(stateRoot(), name);
}

/** A process's start time (clock ticks since boot, /proc/<pid>/stat field 22): with the pid, its identity. */
function startTime(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** The running container's spec; refused when its PID 1 is gone or the pid is now another process's. */
function readSpec(name) {
  let spec;
  try {
    spec = JSON.parse(readFileSync(path.join(stateDir(name), 'spec.json'), 'utf8'));
  } catch {
    throw new UsageError(`no container named ${name} is running (${stateDir(name)})`);
  }
  if (startTime(spec.pid) !== spec.startTime) throw new UsageError(`container ${name} is not running (its PID 1, ${spec.pid}, is gone)`);
  return spec;
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return error.code === 'EPERM';
  }
}

/** uid:gid of a USER value: a name of the container's passwd (the image's user, or this machine's), or numbers. */
function resolveUser(user, account, root = '/') {
  const [who, group] = String(user ?? 'root').split(':');
  const lookup = (field, file, value) => {
    if (/^\d+$/.test(value)) return Number(value);
    if (account && value === account.name) return field === 'uid' ? account.uid : account.gid;
    const line = readFileSync(path.join(root, file), 'utf8').split('\n').find((l) => l.split(':')[0] === value);
    if (!line) throw new UsageError(`USER ${user}: no ${field === 'uid' ? 'user' : 'group'} ${value} in the container`);
    return Number(line.split(':')[2]);
  };
  const uid = lookup('uid', '/etc/passwd', who);
  let gid;
  if (group !== undefined) gid = lookup('gid', '/etc/group', group);
  else if (account && (who === account.name || uid === account.uid)) gid = account.gid;
  else if (/^\d+$/.test(who)) gid = uid === 0 ? 0 : uid;
  else gid = Number(readFileSync(path.join(root, '/etc/passwd'), 'utf8').split('\n').find((l) => l.split(':')[0] === who).split(':')[3]);
  const home = account && uid === account.uid ? account.home : uid === 0 ? '/root' : '/';
  return { uid, gid, home };
}

/** The image's /workspace as its build leaves it: the ComfyUI stand-in, and the nodes its manifest installs. */
function layOutWorkspace(dir, image, account) {
  mkdirSync(dir, { recursive: true });
  const comfy = path.join(dir, 'ComfyUI');
  mkdirSync(path.join(comfy, 'custom_nodes'), { recursive: true });
  cpSync(path.join(STAND_IN_COMFYUI, 'main.py'), path.join(comfy, 'main.py'));
  cpSync(path.join(STAND_IN_COMFYUI, 'comfy'), path.join(comfy, 'comfy'), { recursive: true });
  const manifestCopy = image.copies.find((c) => c.target === '/workspace/config_nodes.json');
  if (manifestCopy) {
    const manifestFile = path.join(ROOT, manifestCopy.source);
    cpSync(manifestFile, path.join(dir, 'config_nodes.json'));
    // `gpu-boot install` clones each entry with a url: here, the demo's stand-in of that node, or one that loads its .env.
    for (const node of JSON.parse(readFileSync(manifestFile, 'utf8')).custom_nodes ?? []) {
      if (!node.url) continue;
      const target = path.join(comfy, 'custom_nodes', node.name);
      const demo = path.join(STAND_IN_COMFYUI, 'custom_nodes', node.name);
      if (existsSync(demo)) cpSync(demo, target, { recursive: true, filter: (src) => path.basename(src) !== '.env' });
      else {
        mkdirSync(target, { recursive: true });
        writeFileSync(path.join(target, '__init__.py'), 'import os\nfrom dotenv import load_dotenv\nload_dotenv(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".env"))\nNODE_CLASS_MAPPINGS = {}\n');
      }
    }
  }
  if (account) {
    const own = (p) => {
      chownSync(p, account.uid, account.gid);
      if (statSync(p).isDirectory()) for (const entry of readdirSync(p)) own(path.join(p, entry));
    };
    own(comfy);
    chownSync(dir, account.uid, account.gid);
    chmodSync(dir, 0o755);
  }
}

/** The shell script that PID 1 runs before it becomes the ENTRYPOINT: every mount of the container. */
function setupScript(spec, image, account, mounts) {
  const q = (...words) => quote(words);
  const R = path.join(spec.dir, 'root');
  const lines = ['set -eu'];
  lines.push(q('mount', '-t', 'tmpfs', '-o', 'mode=0755', 'gpu-boot-layer', path.join(spec.dir, 'layer')));
  lines.push(q('mkdir', path.join(spec.dir, 'layer', 'upper'), path.join(spec.dir, 'layer', 'work')));
  lines.push(q('mount', '-t', 'overlay', 'overlay', '-o', `lowerdir=/,upperdir=${spec.dir}/layer/upper,workdir=${spec.dir}/layer/work`, R));
  lines.push(q('mount', '-t', 'proc', 'proc', `${R}/proc`));
  lines.push(q('mount', '--rbind', '/dev', `${R}/dev`));
  lines.push(q('mount', '-t', 'tmpfs', '-o', 'mode=1777,size=64m,nosuid,nodev', 'shm', `${R}/dev/shm`));
  lines.push(q('mount', '--rbind', '/sys', `${R}/sys`));
  // What the RUN steps leave (they cannot run here: apt-get, pip, git): the user, the venv's python, the commands.
  if (account) {
    // The base image has no user of that name or id (useradd --uid would fail there): this machine's are left out.
    lines.push(q('sed', '-i', `/^${account.name}:/d;/^[^:]*:[^:]*:${account.uid}:/d`, `${R}/etc/passwd`));
    lines.push(q('sed', '-i', `/^${account.name}:/d;/^[^:]*:[^:]*:${account.gid}:/d`, `${R}/etc/group`));
    lines.push(`printf '%s\\n' ${q(`${account.name}:x:${account.uid}:${account.gid}::${account.home}:/bin/bash`)} >> ${q(`${R}/etc/passwd`)}`);
    lines.push(`printf '%s\\n' ${q(`${account.name}:x:${account.gid}:`)} >> ${q(`${R}/etc/group`)}`);
    lines.push(q('mkdir', '-p', `${R}${account.home}`, `${R}/workspace`));
    lines.push(q('chown', `${account.uid}:${account.gid}`, `${R}${account.home}`, `${R}/workspace`));
  }
  lines.push(q('mkdir', '-p', `${R}/opt/venv/bin`, `${R}/usr/local/bin`));
  lines.push(q('ln', '-sfn', SYSTEM_PYTHON, `${R}/opt/venv/bin/python3`));
  lines.push(q('ln', '-sfn', 'python3', `${R}/opt/venv/bin/python`));
  for (const copy of image.copies) {
    if (copy.target === '/workspace/config_nodes.json') continue; // part of the /workspace layout
    const source = copy.source === '/usr/local/bin/node' ? process.execPath : path.join(ROOT, copy.from ? path.relative('/src', copy.source) : copy.source);
    if (!existsSync(source)) throw new UsageError(`COPY ${copy.source}: ${source} is missing (run npm run build first)`);
    const target = `${R}${copy.target}`;
    if (statSync(source).isDirectory()) lines.push(q('mkdir', '-p', target));
    else lines.push(`${q('mkdir', '-p', path.dirname(target))} && ${q('touch', target)}`);
    lines.push(q('mount', '--bind', '-o', 'ro', source, target));
  }
  // As the Dockerfile writes it: the Node flags gpu-boot's code cache was made for (package.json's gpuBoot.nodeFlags).
  lines.push(`printf '#!/bin/sh\\nexec node ${NODE_FLAGS.join(' ')} /opt/gpu-boot/dist/entrypoint.js "$@"\\n' > ${q(`${R}/usr/local/bin/gpu-boot`)}`);
  lines.push(q('chmod', '0755', `${R}/usr/local/bin/gpu-boot`));
  lines.push(q('ln', '-sfn', '/opt/gpu-boot/node_modules/pm2/bin/pm2', `${R}/usr/local/bin/pm2`));
  // The toolkit's nvidia-smi: the stand-in, copied in with the answers it reads beside itself (gpus/).
  if (spec.gpus) {
    lines.push(q('mkdir', '-p', `${R}/opt/nvidia-standin`));
    lines.push(q('cp', '-r', path.join(STAND_IN_FIXTURES, 'nvidia-smi'), path.join(STAND_IN_FIXTURES, 'gpus'), `${R}/opt/nvidia-standin/`));
    // A script, not a link: the stand-in finds its answers from its own path ($0).
    lines.push(`printf '#!/bin/sh\\nexec /opt/nvidia-standin/nvidia-smi "$@"\\n' > ${q(`${R}${NVIDIA_SMI_IN_CONTAINER}`)}`);
    lines.push(q('chmod', '0755', `${R}${NVIDIA_SMI_IN_CONTAINER}`));
  }
  for (const mount of mounts) {
    const target = `${R}${mount.target}`;
    // Docker's defaults for --tmpfs and compose's tmpfs: anyone may write (1777), nothing runs from it.
    if (mount.kind === 'tmpfs') lines.push(`${q('mkdir', '-p', target)} && ${q('mount', '-t', 'tmpfs', '-o', 'mode=1777,nosuid,nodev,noexec', 'tmpfs', target)}`);
    else if (mount.kind === 'file') lines.push(`${q('mkdir', '-p', path.dirname(target))} && ${q('touch', target)} && ${q('mount', '--bind', '-o', 'ro', mount.source, target)}`);
    else lines.push(`${q('mkdir', '-p', target)} && ${q('mount', '--bind', ...(mount.readOnly ? ['-o', 'ro'] : []), mount.source, target)}`);
  }
  if (!spec.hostNetwork) lines.push('ip link set lo up');
  lines.push(q('hostname', spec.name.slice(0, 63)));
  lines.push(`exec ${q('chroot', `--userspec=${spec.uid}:${spec.gid}`, `--groups=${spec.gid}`, R, SYSTEM_PYTHON, '-c', EXEC_SHIM)}`);
  return `${lines.join('\n')}\n`;
}

function hostPidOfChild(pid) {
  try {
    return Number(readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/)[0]) || undefined;
  } catch {
    return undefined;
  }
}

/** `--env-file`: KEY=value lines, as Docker reads them (no quotes removed, # comments, KEY alone takes this environment's). */
function readEnvFile(file) {
  const env = {};
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const trimmed = line.trim();
    if (!trimmed || trimmed.startsWith('#')) continue;
    const at = line.indexOf('=');
    if (at < 0) {
      if (process.env[trimmed] !== undefined) env[trimmed] = process.env[trimmed];
    } else env[line.slice(0, at).trim()] = line.slice(at + 1);
  }
  return env;
}

async function run(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      name: { type: 'string' },
      profile: { type: 'string' },
      compose: { type: 'string' },
      dockerfile: { type: 'string' },
      env: { type: 'string', short: 'e', multiple: true },
      'env-file': { type: 'string', multiple: true },
      volume: { type: 'string', short: 'v', multiple: true },
      tmpfs: { type: 'string', multiple: true },
      user: { type: 'string', short: 'u' },
      gpus: { type: 'string' },
      workspace: { type: 'string' },
      network: { type: 'string' },
    },
  });
  if (process.geteuid?.() !== 0) throw new UsageError('run needs root (namespaces and mounts); try sudo');
  if (!existsSync(path.join(ROOT, 'dist', 'entrypoint.js'))) throw new UsageError('dist/ is missing: run npm run build first');
  const probe = spawnSync(SYSTEM_PYTHON, ['-c', 'import dotenv'], { encoding: 'utf8' });
  if (probe.status !== 0) throw new UsageError(`${SYSTEM_PYTHON} without python-dotenv stands for the image's venv (Debian: apt-get install python3-dotenv)`);
  const image = readImage(values.dockerfile ? path.resolve(values.dockerfile) : DEFAULT_DOCKERFILE);
  const account = imageUserAccount(image);
  const service = values.profile ? composeService(values.compose ? path.resolve(values.compose) : DEFAULT_COMPOSE, values.profile) : undefined;
  const name = values.name ?? `gpu-boot-${process.pid}`;
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(name)) throw new UsageError(`--name ${name}: letters, digits, _ . - only`);
  const dir = stateDir(name);
  if (existsSync(path.join(dir, 'spec.json'))) {
    const old = JSON.parse(readFileSync(path.join(dir, 'spec.json'), 'utf8'));
    if (startTime(old.pid) === old.startTime) throw new UsageError(`a container named ${name} is running (pid ${old.pid})`);
  }
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(path.join(dir, 'layer'), { recursive: true });
  mkdirSync(path.join(dir, 'root'), { recursive: true });

  // The environment, in Docker's order: the image's, HOSTNAME and HOME, then the service's and -e.
  const user = resolveUser(values.user ?? service?.user ?? image.user, account);
  const env = { ...image.env, HOSTNAME: name.slice(0, 63) };
  if (env.HOME === undefined) env.HOME = user.home;
  Object.assign(env, service?.environment ?? {});
  for (const file of values['env-file'] ?? []) Object.assign(env, readEnvFile(file));
  for (const pair of values.env ?? []) {
    const at = pair.indexOf('=');
    if (at < 0) {
      if (process.env[pair] !== undefined) env[pair] = process.env[pair];
    } else env[pair.slice(0, at)] = pair.slice(at + 1);
  }

  // Mounts: the service's volumes and -v (a --workspace replaces whatever is mounted at /workspace), tmpfs, secrets.
  const volumes = [...(service?.volumes ?? []), ...(values.volume ?? []).map(parseVolume)];
  const mounts = [];
  let workspaceMounted = false;
  for (const volume of volumes) {
    let source = volume.source;
    if (volume.target === '/workspace' && values.workspace) source = path.resolve(values.workspace);
    else if (volume.named) {
      // A named volume starts as a copy of what the image has there (Docker copies it on first use).
      source = path.join(stateRoot(), 'volumes', volume.source);
      if (!existsSync(source)) {
        if (volume.target === '/workspace') layOutWorkspace(source, image, account);
        else mkdirSync(source, { recursive: true });
      }
    }
    if (volume.target === '/workspace') workspaceMounted = true;
    mounts.push({ kind: existsSync(source) && statSync(source).isFile() ? 'file' : 'dir', source, target: volume.target, readOnly: volume.readOnly });
  }
  if (!workspaceMounted) {
    if (values.workspace) mounts.push({ kind: 'dir', source: path.resolve(values.workspace), target: '/workspace' });
    else {
      // No volume: the image's own /workspace, in this container's layer (gone with it).
      const layer = path.join(dir, 'workspace');
      layOutWorkspace(layer, image, account);
      mounts.unshift({ kind: 'dir', source: layer, target: '/workspace' });
    }
  }
  for (const target of [...(service?.tmpfs ?? []), ...(values.tmpfs ?? [])]) mounts.push({ kind: 'tmpfs', target: containerPath(target) });
  for (const secret of service?.secrets ?? []) mounts.push({ kind: 'file', source: secret.source, target: containerPath(secret.target) });
  const gpus = values.gpus !== undefined ? values.gpus === 'all' : Boolean(service?.gpus);
  const hostNetwork = values.network === 'host';
  const healthcheck = service?.healthcheck ?? image.healthcheck;
  const spec = {
    name,
    dir,
    uid: user.uid,
    gid: user.gid,
    workdir: image.workdir,
    gpus,
    hostNetwork,
    command: positionals,
    stopSignal: image.stopSignal,
    stopGraceMs: service?.stopGraceMs ?? 10_000,
    healthcheck,
  };
  // Docker mounts parents before children: a tmpfs at /workspace/scratch lies on the /workspace volume, not under it.
  mounts.sort((a, b) => a.target.split('/').length - b.target.split('/').length);
  const script = setupScript(spec, image, account, mounts);
  writeFileSync(path.join(dir, 'setup.sh'), script, { mode: 0o600 });

  const namespaces = ['--mount', '--propagation', 'private', '--pid', '--fork', '--uts', ...(hostNetwork ? [] : ['--net'])];
  // The host's tools run with the host's PATH; the container's environment reaches PID 1 on fd 3 only.
  // As with Docker, the container does not die with its client: a harness killed with SIGKILL leaves
  // it running, and `stop NAME` or `kill NAME` still reach it (spec.json stays). A harness told to
  // stop (SIGINT, SIGTERM, SIGHUP, its output closed) stops it first.
  const child = spawn('/usr/bin/unshare', [...namespaces, '--', '/bin/sh', path.join(dir, 'setup.sh')], {
    env: HOST_ENV,
    stdio: ['inherit', 'inherit', 'inherit', 'pipe'],
  });
  child.stdio[3].on('error', () => undefined);
  child.stdio[3].end(JSON.stringify({ env, argv: [...image.entrypoint, ...(positionals.length ? positionals : image.cmd)], workdir: image.workdir }));
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(signal ? 128 + osConstants.signals[signal] : code ?? 0)));
  // spec.json (what exec, health, stop and kill act on) exists only once PID 1 is in its own root:
  // before that, an exec would enter the host's.
  const rootDir = path.join(dir, 'root');
  let pid1;
  for (let i = 0; i < 1000 && !pid1; i += 1) {
    const candidate = hostPidOfChild(child.pid);
    let root = '';
    try {
      root = candidate ? readlinkSync(`/proc/${candidate}/root`) : '';
    } catch {
      // not yet
    }
    if (root === rootDir) pid1 = candidate;
    else if (child.exitCode !== null) break;
    else await new Promise((r) => setTimeout(r, 10));
  }
  if (!pid1) {
    const code = await Promise.race([exited, new Promise((r) => setTimeout(() => r(undefined), 100))]);
    if (code !== undefined) {
      rmSync(dir, { recursive: true, force: true });
      return code;
    }
    child.kill('SIGKILL');
    throw new UsageError('the container did not start (its PID 1 never entered its root)');
  }
  writeFileSync(path.join(dir, 'spec.json'), JSON.stringify({ ...spec, pid: pid1, startTime: startTime(pid1), startedAt: Date.now() }, null, 2));
  // The harness is the `docker run` in front: a signal to it, or its terminal gone, stops the container, as Ctrl-C does.
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(signal, () => void stopContainer(name, spec.stopGraceMs).catch(() => undefined));
  process.stdout.on('error', () => void stopContainer(name, spec.stopGraceMs).catch(() => undefined));
  let code = await exited;
  // unshare reports a PID 1 killed by SIGKILL as its own failure (1): Docker says 137.
  if (code !== 0 && existsSync(path.join(dir, 'killed'))) code = 128 + osConstants.signals.SIGKILL;
  rmSync(dir, { recursive: true, force: true });
  return code;
}

/** Signal PID 1 with STOPSIGNAL, and SIGKILL it (the whole namespace) if it lives past the grace period. */
async function stopContainer(name, graceMs) {
  const spec = readSpec(name);
  const grace = graceMs ?? spec.stopGraceMs;
  if (!alive(spec.pid)) return false;
  process.kill(spec.pid, spec.stopSignal);
  const deadline = Date.now() + grace;
  while (alive(spec.pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  if (!alive(spec.pid)) return false;
  writeFileSync(path.join(stateDir(name), 'killed'), 'SIGKILL');
  process.kill(spec.pid, 'SIGKILL');
  return true;
}

/** The container's environment, as PID 1 got it: what `docker exec` gives a command too. */
function containerEnv(pid) {
  const env = {};
  for (const entry of readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0')) {
    const at = entry.indexOf('=');
    if (at > 0) env[entry.slice(0, at)] = entry.slice(at + 1);
  }
  return env;
}

function execArgs(spec, user, command) {
  const who = user ? resolveUser(user, undefined, `/proc/${spec.pid}/root`) : { uid: spec.uid, gid: spec.gid };
  return ['--target', String(spec.pid), '--mount', '--pid', ...(spec.hostNetwork ? [] : ['--net']), '--root', '--wd', `--setuid=${who.uid}`, `--setgid=${who.gid}`, '--', ...command];
}

/** One run of the healthcheck's test, as Docker runs it: in the container, as its user, within the timeout. */
function runHealthTest(spec, timeoutMs) {
  const test = spec.healthcheck.test;
  const command = test[0] === 'CMD-SHELL' ? ['/bin/sh', '-c', test[1]] : test[0] === 'CMD' ? test.slice(1) : test;
  return new Promise((resolve) => {
    const child = spawn('/usr/bin/nsenter', execArgs(spec, undefined, command), { env: containerEnv(spec.pid), stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (c) => (output += c));
    child.stderr.on('data', (c) => (output += c));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? 1, output: output.trim() });
    });
  });
}

/** Docker's health states: starting until the first pass (healthy); `retries` failures in a row after the start period: unhealthy. */
async function health(name, intervalMs) {
  const spec = readSpec(name);
  if (!spec.healthcheck) throw new UsageError(`${name} has no healthcheck`);
  // The start period counts from the container's start, as Docker counts it.
  const started = spec.startedAt;
  const interval = intervalMs ?? spec.healthcheck.intervalMs;
  let failures = 0;
  for (;;) {
    await new Promise((r) => setTimeout(r, interval));
    if (!alive(spec.pid)) throw new UsageError(`${name} exited`);
    const result = await runHealthTest(spec, spec.healthcheck.timeoutMs);
    process.stdout.write(`${JSON.stringify({ exitCode: result.code, output: result.output.slice(0, 400) })}\n`);
    if (result.code === 0) return 'healthy';
    if (Date.now() - started >= spec.healthcheck.startPeriodMs) failures += 1;
    if (failures >= spec.healthcheck.retries) return 'unhealthy';
  }
}

async function main(argv) {
  const [command, ...rest] = argv;
  if (command === 'run') return run(rest);
  if (command === 'exec') {
    const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { user: { type: 'string', short: 'u' } } });
    const [name, ...cmd] = positionals;
    if (!name || !cmd.length) throw new UsageError('exec NAME [--user U] -- CMD...');
    const spec = readSpec(name);
    const result = spawnSync('/usr/bin/nsenter', execArgs(spec, values.user, cmd), { env: containerEnv(spec.pid), stdio: 'inherit' });
    return result.status ?? 128 + (osConstants.signals[result.signal] ?? 0);
  }
  if (command === 'health') {
    const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { interval: { type: 'string' } } });
    const state = await health(positionals[0], values.interval ? durationMs(values.interval) : undefined);
    process.stdout.write(`${state}\n`);
    return state === 'healthy' ? 0 : 1;
  }
  if (command === 'stop') {
    const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { time: { type: 'string', short: 't' } } });
    const killed = await stopContainer(positionals[0], values.time ? Number(values.time) * 1000 : undefined);
    process.stdout.write(killed ? 'killed after the grace period\n' : 'stopped\n');
    return 0;
  }
  if (command === 'kill') {
    const spec = readSpec(rest[0]);
    // readSpec has checked the pid is still this container's PID 1 (its start time).
    writeFileSync(path.join(stateDir(rest[0]), 'killed'), 'SIGKILL');
    process.kill(spec.pid, 'SIGKILL');
    return 0;
  }
  if (command === 'pid') {
    process.stdout.write(`${readSpec(rest[0]).pid}\n`);
    return 0;
  }
  process.stdout.write(readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1, 10).map((l) => l.replace(/^\/\/ ?/, '')).join('\n') + '\n');
  return command === undefined || command === '--help' || command === 'help' ? 0 : 125;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => fail(error instanceof UsageError ? error.message : (error?.stack ?? String(error))),
);

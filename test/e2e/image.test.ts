import { spawn, spawnSync } from 'node:child_process';
import { chownSync, cpSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { ROOT } from '../helpers/boot.js';

/**
 * The shipped runtime run the way Docker runs it (issue 15), through scripts/image-run.mjs: tini
 * as PID 1 of a new PID namespace, the image's user, environment and workdir from docker/Dockerfile,
 * /workspace as the image lays it out, the compose profiles as `docker-compose config` resolves
 * them. Namespaces need root: without them these tests are skipped, with the reason printed.
 */

const HARNESS = path.join(ROOT, 'scripts', 'image-run.mjs');
const IMAGE_UID = 1000;

function preflight(): string | undefined {
  if (process.geteuid?.() !== 0) return 'not root: namespaces and mounts need it';
  for (const tool of ['unshare', 'nsenter', 'tini', 'ip', 'curl', 'chroot', 'docker-compose']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) return `${tool} is not installed`;
  }
  if (spawnSync('/usr/bin/python3', ['-c', 'import dotenv']).status !== 0) return '/usr/bin/python3 has no python-dotenv';
  const probe = spawnSync('unshare', ['--mount', '--pid', '--fork', '--net', '--uts', 'true'], { encoding: 'utf8' });
  if (probe.status !== 0) return `cannot create namespaces here: ${probe.stderr.trim()}`;
  return undefined;
}
const skipReason = preflight();
if (skipReason) console.warn(`test/e2e/image.test.ts skipped: ${skipReason}`);
// Made only where the tests run: a file whose tests are all skipped runs no afterAll to remove it.
const STATE = skipReason ? path.join(os.tmpdir(), 'gpu-boot-image-test-unused') : mkdtempSync(path.join(os.tmpdir(), 'gpu-boot-image-test-'));

/** Every container a test started: one a failed test leaves running is killed before the next (and its namespace with it). */
const started: Container[] = [];
afterEach(async () => {
  for (const container of started.splice(0)) {
    harness('kill', container.name);
    await container.exited;
  }
});
afterAll(() => {
  if (!skipReason) rmSync(STATE, { recursive: true, force: true });
});

interface Container {
  name: string;
  /** stdout and stderr together, for messages. */
  output: () => string;
  /** stdout alone: gpu-boot's JSON log lines, whole (stderr's chunks would cut into them). */
  stdout: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; atMs: number }>;
}

const harnessEnv = { ...process.env, GPU_BOOT_IMAGE_STATE: STATE, PROD_TEST_ENV_FILE: '../.env.local.prod-test.example' };

function run(name: string, args: string[]): Container {
  const child = spawn(process.execPath, [HARNESS, 'run', '--name', name, ...args], { env: harnessEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  let stdout = '';
  // Decoded as streams: a character split between two chunks stays whole.
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (c: string) => {
    output += c;
    stdout += c;
  });
  child.stderr.on('data', (c: string) => (output += c));
  // 'close', not 'exit': by then its output has been read to the end.
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; atMs: number }>((resolve) =>
    child.once('close', (code, signal) => resolve({ code, signal, atMs: Date.now() })),
  );
  const container = { name, output: () => output, stdout: () => stdout, exited };
  started.push(container);
  return container;
}

function harness(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [HARNESS, ...args], { env: harnessEnv, encoding: 'utf8', timeout: 60_000 });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** `docker exec NAME sh -c SCRIPT`, its stdout. */
function exec(name: string, script: string): string {
  const result = harness('exec', name, '--', '/bin/sh', '-c', script);
  if (result.status !== 0) throw new Error(`exec ${script}: ${result.status} ${result.stderr}`);
  return result.stdout;
}

/** Until gpu-boot in the container says every instance answers (`gpu-boot status --json` inside), or the container exits. */
async function waitReady(container: Container, timeoutMs = 45_000): Promise<{ ready: boolean; status: { instances: Array<{ name: string }>; gpus?: { gpus: Array<{ name: string }> } } }> {
  const deadline = Date.now() + timeoutMs;
  let exited = false;
  void container.exited.then(() => (exited = true));
  while (Date.now() < deadline && !exited) {
    const result = harness('exec', container.name, '--', 'gpu-boot', 'status', '--json');
    // gpu-boot status --json: {"url", "ready": /ready's body, "status": /status's body}; 0 once ready.
    if (result.status === 0) {
      const body = JSON.parse(result.stdout) as { ready: { ready: boolean }; status: { instances: Array<{ name: string }>; gpus?: { gpus: Array<{ name: string }> } } };
      return { ready: body.ready.ready, status: body.status };
    }
    await new Promise((r) => setTimeout(r, 300));
  }
  throw new Error(`${container.name} never ready (exited: ${exited}):\n${container.output().slice(-3000)}`);
}

/** The orphans the orphan_maker node left (one per instance): their pid and who adopted them, once both have written it. */
async function orphans(name: string, count: number): Promise<Array<{ pid: number; ppid: number }>> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    // One file each, one line: "<pid> <ppid>".
    const found = exec(name, 'for f in /workspace/ComfyUI/custom_nodes/orphan_maker/orphan-*; do [ -f "$f" ] && cat "$f" && echo; done; true')
      .split('\n')
      .filter((line) => /^\d+ \d+$/.test(line))
      .map((line) => ({ pid: Number(line.split(' ')[0]), ppid: Number(line.split(' ')[1]) }));
    if (found.length >= count || Date.now() > deadline) return found;
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Wait until every one of `pids` (the container's own pids) is in `state`: 'gone' (reaped) or 'Z' (a zombie); true if so. */
async function settle(name: string, pids: number[], state: 'gone' | 'Z'): Promise<boolean> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const states = pids.map((pid) => exec(name, `cat /proc/${pid}/stat 2>/dev/null | cut -d' ' -f3; true`).trim() || 'gone');
    if (states.every((s) => s === state)) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The host's pids in the container's PID namespace (its inode, read from PID 1 before it exits). */
function pidsInNamespace(nsLink: string): number[] {
  return readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        return readlinkSync(`/proc/${p}/ns/pid`) === nsLink;
      } catch {
        return false;
      }
    })
    .map(Number);
}

/** The first of gpu-boot's log lines that `match` takes, once it has been read (the harness calls block this loop: wait on timers). */
async function waitLog(container: Container, match: (line: Record<string, unknown>) => boolean, timeoutMs = 10_000): Promise<Record<string, unknown> | undefined> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = logLines(container).find(match);
    if (found || Date.now() > deadline) return found;
    await new Promise((r) => setTimeout(r, 50));
  }
}

function logLines(container: Container): Array<Record<string, unknown>> {
  return container
    .stdout()
    .split('\n')
    .flatMap((line) => {
      try {
        return [JSON.parse(line) as Record<string, unknown>];
      } catch {
        return [];
      }
    });
}

/** The demo workspace as compose's local profile mounts it (a copy, owned as `user: 1000:1000` needs), with a node that leaves an orphan. */
function localWorkspace(): string {
  const dir = mkdtempSync(path.join(STATE, 'ws-'));
  cpSync(path.join(ROOT, 'demo', 'workspace'), dir, { recursive: true, filter: (src) => !src.includes(`${path.sep}.gpu-boot`) && path.basename(src) !== '.env' });
  // A custom node whose helper process leaves a grandchild: it is reparented to PID 1 and exits a
  // second later. Only a PID 1 that reaps (tini) keeps it from staying a zombie.
  const node = path.join(dir, 'ComfyUI', 'custom_nodes', 'orphan_maker');
  mkdirSync(node);
  writeFileSync(
    path.join(node, '__init__.py'),
    [
      'import os, subprocess, sys',
      // A helper process of its own (single-threaded, unlike ComfyUI): it double-forks, so its grandchild
      // is adopted by PID 1; the grandchild says who adopted it, then exits (a zombie until that one reaps it).
      'HELPER = """',
      'import os, time',
      'if os.fork() == 0:',
      '    if os.fork() == 0:',
      '        time.sleep(0.5)',
      '        with open(os.path.join(%r, "orphan-%%d" %% os.getpid()), "w") as f:',
      '            f.write("%%d %%d" %% (os.getpid(), os.getppid()))',
      '        os._exit(0)',
      '    os._exit(0)',
      'os.wait()',
      '""" % os.path.dirname(os.path.abspath(__file__))',
      'subprocess.run([sys.executable, "-c", HELPER], check=True)',
      'NODE_CLASS_MAPPINGS = {}',
      '',
    ].join('\n'),
  );
  const own = (p: string) => {
    chownSync(p, IMAGE_UID, IMAGE_UID);
    if (statSync(p).isDirectory()) for (const entry of readdirSync(p)) own(path.join(p, entry));
  };
  own(dir);
  return dir;
}

function composeService(profile: string): Record<string, unknown> {
  const compose = YAML.parse(readFileSync(path.join(ROOT, 'docker', 'docker-compose.yml'), 'utf8')) as { services: Record<string, { profiles?: string[] } & Record<string, unknown>> };
  return Object.values(compose.services).find((s) => s.profiles?.includes(profile))!;
}

async function stopAndCheck(container: Container, nsLink: string, budgetMs: number): Promise<number> {
  const asked = Date.now();
  expect(harness('stop', container.name).stdout.trim()).toBe('stopped');
  const { code, atMs } = await container.exited;
  expect(code).toBe(0);
  expect(atMs - asked).toBeLessThan(budgetMs);
  expect(pidsInNamespace(nsLink)).toEqual([]);
  return atMs - asked;
}

describe.skipIf(skipReason !== undefined)('the image, run as Docker runs it', () => {
  it('docker run -e with plain, _ENCODED and _FILE secrets and -e HEALTH_PORT=9191: tini is PID 1, gpu-boot runs as the image user, the HEALTHCHECK turns healthy, docker exec works, docker stop exits 0', async () => {
    const secretFile = path.join(STATE, 'aws_secret');
    writeFileSync(secretFile, 'canaryFILE-aws-secret\n', { mode: 0o644 });
    const container = run('plain', [
      '-e', 'GPU_MODE=mock', '-e', 'NUM_GPUS=2', '-e', 'HEALTH_PORT=9191',
      '-e', 'HF_TOKEN=hf_canaryPLAIN123', '-e', 'AWS_ACCESS_KEY_ID=AKIACANARYPLAIN', '-e', 'AZURE_STORAGE_ACCOUNT=canaryaccount',
      '-e', `AZURE_STORAGE_KEY_ENCODED=${Buffer.from('canaryENC-azure').toString('base64')}`,
      '-e', 'AWS_SECRET_ACCESS_KEY_FILE=/run/secrets/aws_secret', '-v', `${secretFile}:/run/secrets/aws_secret:ro`,
    ]);
    const { ready, status } = await waitReady(container);
    expect(ready).toBe(true);
    expect(status.instances.map((i) => i.name)).toEqual(['comfyui-gpu0', 'comfyui-gpu1']);
    // PID 1 is tini, exactly as the ENTRYPOINT says; gpu-boot is its child, as the image's user, in WORKDIR.
    expect(exec('plain', 'cat /proc/1/comm').trim()).toBe('tini');
    expect(exec('plain', 'tr "\\0" " " < /proc/1/cmdline').trim()).toBe('/usr/bin/tini -- node --max-semi-space-size=4 /opt/gpu-boot/dist/entrypoint.js start');
    const gpuBoot = exec('plain', 'for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = node ] && grep -q "^PPid:\\s1$" $p/status && echo ${p#/proc/}; done; true').trim();
    expect(exec('plain', `grep -E "^(Uid|Gid):" /proc/${gpuBoot}/status | awk '{print $2}'`).trim().split('\n')).toEqual([String(IMAGE_UID), String(IMAGE_UID)]);
    expect(exec('plain', `readlink /proc/${gpuBoot}/cwd`).trim()).toBe('/workspace');
    expect(exec('plain', 'id -un; echo "$HOME $PM2_HOME $WORKSPACE_PATH $COMFYUI_PYTHON"').trim().split('\n')).toEqual(['comfy', '/home/comfy /home/comfy/.pm2 /workspace /opt/venv/bin/python3']);
    // The three forms, decoded, in the node's .env (the only place a value is written).
    const env = exec('plain', 'cat /workspace/ComfyUI/custom_nodes/emprops_custom_nodes/.env');
    expect(env).toContain("HF_TOKEN='hf_canaryPLAIN123'");
    expect(env).toContain("AZURE_STORAGE_KEY='canaryENC-azure'");
    expect(env).toContain("AWS_SECRET_ACCESS_KEY='canaryFILE-aws-secret'");
    expect(exec('plain', 'stat -c "%a %U" "$(readlink -f /workspace/ComfyUI/custom_nodes/emprops_custom_nodes/.env)"').trim()).toBe('600 comfy');
    // docker exec: pm2 ls with the image's PM2_HOME lists the instances, no banner first.
    const pm2 = harness('exec', 'plain', '--', 'pm2', 'ls');
    expect(pm2.status).toBe(0);
    expect(pm2.stdout.split('\n')[0]).toMatch(/^┌/);
    expect(pm2.stdout).toMatch(/comfyui-gpu0.*online/);
    expect(pm2.stdout).toMatch(/comfyui-gpu1.*online/);
    // The Dockerfile's own HEALTHCHECK command, as Docker runs it, on the changed port.
    const health = harness('health', 'plain', '--interval', '500ms');
    expect(health.stdout.trim().split('\n').at(-1)).toBe('healthy');
    expect(health.status).toBe(0);
    const nsLink = readlinkSync(`/proc/${harness('pid', 'plain').stdout.trim()}/ns/pid`);
    await stopAndCheck(container, nsLink, 8000);
    const wipe = logLines(container).find((l) => l.phase === 'wipe');
    // The image's manifest (docker/config_nodes.json) has one node that declares env: one file to wipe.
    expect(wipe?.removed).toBe(1);
    expect(container.output()).not.toMatch(/canaryPLAIN|canaryENC|canaryFILE/);
    expect(container.output()).not.toContain(Buffer.from('canaryENC-azure').toString('base64'));
  }, 90_000);

  it('the compose local profile: its environment, /run/secrets files on a /run tmpfs, its healthcheck on the default port, orphans reaped, docker stop within stop_grace_period wipes everything', async () => {
    const workspace = localWorkspace();
    const container = run('local', ['--profile', 'local', '--workspace', workspace]);
    const { ready } = await waitReady(container);
    expect(ready).toBe(true);
    const service = composeService('local') as { environment: Record<string, string>; secrets: string[] };
    // Each compose secret is a file under /run/secrets, on the tmpfs the profile mounts at /run.
    expect(exec('local', 'stat -f -c %T /run').trim()).toBe('tmpfs');
    expect(exec('local', 'ls /run/secrets').trim().split('\n').sort()).toEqual([...service.secrets].sort());
    const hf = readFileSync(path.join(ROOT, 'docker', 'secrets', 'hf_token'), 'utf8').trim();
    expect(exec('local', 'cat /workspace/ComfyUI/custom_nodes/ComfyUI-Manager/.env')).toContain(`HF_TOKEN='${hf}'`);
    // The profile's environment, as compose gives it (user 1000:1000, its PM2_HOME, its mock GPUs).
    expect(exec('local', 'id -u; id -g; echo $PM2_HOME $GPU_MODE $NUM_GPUS').trim().split('\n')).toEqual(['1000', '1000', `${service.environment.PM2_HOME} ${service.environment.GPU_MODE} ${service.environment.NUM_GPUS}`]);
    const health = harness('health', 'local', '--interval', '500ms');
    expect(health.stdout.trim().split('\n').at(-1)).toBe('healthy');
    // Each instance's orphan_maker left a grandchild: adopted by PID 1 (tini), exited, and reaped: no zombie.
    const left = await orphans('local', 2);
    expect(left).toHaveLength(2);
    expect(left.map((o) => o.ppid)).toEqual([1, 1]);
    expect(await settle('local', left.map((o) => o.pid), 'gone')).toBe(true);
    const nsLink = readlinkSync(`/proc/${harness('pid', 'local').stdout.trim()}/ns/pid`);
    await stopAndCheck(container, nsLink, 15_000);
    // Nothing of the run is left in the volume: no .env, no state folder.
    const leftover = spawnSync('find', [workspace, '-name', '.env', '-o', '-name', '.gpu-boot', '-o', '-name', '*.gpu-boot-*'], { encoding: 'utf8' }).stdout.trim();
    expect(leftover).toBe('');
  }, 90_000);

  it('the prod-test profile: its env file (the tracked example), GPUs through nvidia-smi, healthy, stopped', async () => {
    const container = run('prodtest', ['--profile', 'prod-test']);
    const { ready, status } = await waitReady(container);
    expect(ready).toBe(true);
    expect(status.gpus?.gpus.map((g) => g.name)).toEqual(['NVIDIA H100 80GB HBM3']);
    const example = readFileSync(path.join(ROOT, '.env.local.prod-test.example'), 'utf8');
    const hf = /^HF_TOKEN=(.*)$/m.exec(example)?.[1];
    expect(hf).toBeTruthy();
    expect(exec('prodtest', 'cat /workspace/ComfyUI/custom_nodes/emprops_custom_nodes/.env')).toContain(`HF_TOKEN='${hf}'`);
    expect(harness('health', 'prodtest', '--interval', '500ms').stdout.trim().split('\n').at(-1)).toBe('healthy');
    const nsLink = readlinkSync(`/proc/${harness('pid', 'prodtest').stdout.trim()}/ns/pid`);
    await stopAndCheck(container, nsLink, 15_000);
  }, 90_000);

  it('docker kill (SIGKILL of the whole namespace), then a second run on the same named volume recovers, with the default HEALTH_PORT', async () => {
    const secrets = ['-e', 'GPU_MODE=mock', '-e', 'NUM_GPUS=1', '-e', 'HF_TOKEN=hf_canaryKILL1', '-e', 'AWS_ACCESS_KEY_ID=AKIAKILL', '-e', 'AWS_SECRET_ACCESS_KEY=canarySECRET', '-e', 'AZURE_STORAGE_ACCOUNT=acct', '-e', 'AZURE_STORAGE_KEY=canaryKEY', '-v', 'killvol:/workspace'];
    const first = run('kill1', secrets);
    expect((await waitReady(first)).ready).toBe(true);
    expect(harness('health', 'kill1', '--interval', '500ms').stdout.trim().split('\n').at(-1)).toBe('healthy');
    const nsLink = readlinkSync(`/proc/${harness('pid', 'kill1').stdout.trim()}/ns/pid`);
    expect(harness('kill', 'kill1').status).toBe(0);
    expect((await first.exited).code).toBe(137);
    expect(pidsInNamespace(nsLink)).toEqual([]);
    // The volume keeps what the killed run left: the .env link, dangling (the container's /dev/shm died with it).
    const volume = path.join(STATE, 'volumes', 'killvol');
    const link = path.join(volume, 'ComfyUI', 'custom_nodes', 'emprops_custom_nodes', '.env');
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(existsSync(link)).toBe(false);
    const second = run('kill2', secrets);
    expect((await waitReady(second)).ready).toBe(true);
    // Its recover phase wipes what the killed run left (in a new PID namespace the earlier gpu-boot
    // often had this one's own pid: the record's start time tells them apart).
    const recovered = await waitLog(second, (l) => typeof l.previousPid === 'number');
    expect(recovered?.msg).toMatch(/^an earlier run \(pid \d+\) did not clean up; wiped 1 file\(s\), restored 0$/);
    expect(recovered?.removed).toBe(1);
    const nsLink2 = readlinkSync(`/proc/${harness('pid', 'kill2').stdout.trim()}/ns/pid`);
    await stopAndCheck(second, nsLink2, 8000);
    expect(lstatSync(link, { throwIfNoEntry: false })).toBeUndefined();
  }, 120_000);

  it('docker stop past its grace period (-t 0): SIGKILL right after SIGTERM, exit 137, nothing left in the namespace', async () => {
    const container = run('grace', ['-e', 'GPU_MODE=mock', '-e', 'NUM_GPUS=1', '-e', 'HF_TOKEN=hf_canaryGRACE', '-e', 'AWS_ACCESS_KEY_ID=AKIAGRACE', '-e', 'AWS_SECRET_ACCESS_KEY=B123', '-e', 'AZURE_STORAGE_ACCOUNT=acct', '-e', 'AZURE_STORAGE_KEY=C123']);
    expect((await waitReady(container)).ready).toBe(true);
    const nsLink = readlinkSync(`/proc/${harness('pid', 'grace').stdout.trim()}/ns/pid`);
    expect(harness('stop', 'grace', '-t', '0').stdout.trim()).toBe('killed after the grace period');
    expect((await container.exited).code).toBe(137);
    expect(pidsInNamespace(nsLink)).toEqual([]);
  }, 60_000);

  describe('a Dockerfile whose runtime is broken fails here', () => {
    const mutated = (from: string, to: string): string => {
      const text = readFileSync(path.join(ROOT, 'docker', 'Dockerfile'), 'utf8');
      expect(text).toContain(from);
      const file = path.join(STATE, `Dockerfile.${Math.random().toString(36).slice(2)}`);
      writeFileSync(file, text.replace(from, to));
      return file;
    };

    it('ENTRYPOINT without tini: node is PID 1 and the orphan stays a zombie', async () => {
      const dockerfile = mutated('ENTRYPOINT ["/usr/bin/tini", "--", "node"', 'ENTRYPOINT ["node"');
      const container = run('notini', ['--profile', 'local', '--workspace', localWorkspace(), '--dockerfile', dockerfile]);
      expect((await waitReady(container)).ready).toBe(true);
      expect(exec('notini', 'cat /proc/1/comm').trim()).toBe('node');
      const left = await orphans('notini', 2);
      expect(left.map((o) => o.ppid)).toEqual([1, 1]);
      // Node reaps only the children it started: the adopted ones stay zombies.
      expect(await settle('notini', left.map((o) => o.pid), 'Z')).toBe(true);
    }, 90_000);

    it('USER nobody: gpu-boot cannot use the image\'s PM2_HOME (/home/comfy/.pm2) and exits 73', async () => {
      const dockerfile = mutated('USER comfy', 'USER nobody');
      const container = run('nobody', ['--dockerfile', dockerfile, '-e', 'GPU_MODE=mock', '-e', 'NUM_GPUS=1', '-e', 'HF_TOKEN=x1234', '-e', 'AWS_ACCESS_KEY_ID=AKIAMUT', '-e', 'AWS_SECRET_ACCESS_KEY=B123', '-e', 'AZURE_STORAGE_ACCOUNT=acct', '-e', 'AZURE_STORAGE_KEY=C123']);
      const { code } = await container.exited;
      expect(code).toBe(73);
      expect(container.output()).toContain('PM2_HOME /home/comfy/.pm2 cannot be used by this user (uid 65534): EACCES');
    }, 60_000);

    it('ENV PM2_HOME under /root: the image user cannot create it, and gpu-boot exits 73', async () => {
      const dockerfile = mutated('PM2_HOME=/home/comfy/.pm2', 'PM2_HOME=/root/.pm2');
      const container = run('pm2home', ['--dockerfile', dockerfile, '-e', 'GPU_MODE=mock', '-e', 'NUM_GPUS=1', '-e', 'HF_TOKEN=x1234', '-e', 'AWS_ACCESS_KEY_ID=AKIAMUT', '-e', 'AWS_SECRET_ACCESS_KEY=B123', '-e', 'AZURE_STORAGE_ACCOUNT=acct', '-e', 'AZURE_STORAGE_KEY=C123']);
      const { code } = await container.exited;
      expect(code).not.toBe(0);
      expect(code).toBe(73);
      expect(container.output()).toContain('PM2_HOME /root/.pm2 cannot be used by this user (uid 1000)');
    }, 60_000);
  });
});

import { existsSync } from 'node:fs';
import { chmod, readFile, readlink, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { alive, makeWorkspace, PM2_BIN, processGone, runBoot, startBoot, tinyServerMain, waitFor, type Workspace } from '../helpers/boot.js';

const HF_TOKEN = 'hf_canaryLifecycle42';
const MANIFEST = { custom_nodes: [{ name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}' } }] };

let ws: Workspace | undefined;
afterEach(async () => {
  await ws?.cleanup();
  ws = undefined;
});

/**
 * Start `script` (a shell script's text) in the boot's PM2 as someone in the container would
 * (`pm2 start <file> --name <name> ...pm2Args`), and wait until PM2 lists it running: its pid, and
 * the names PM2 lists then.
 */
async function startByHand(w: Workspace, name: string, script: string, pm2Args: string[] = []): Promise<{ pid: number; names: string[] }> {
  const file = path.join(w.root, `${name}.sh`);
  await writeFile(file, script, { mode: 0o755 });
  const shell = { env: { PATH: w.env.PATH!, HOME: w.root, PM2_HOME: w.pm2Home }, extendEnv: false, reject: false, timeout: 10_000 };
  const started = await execa('node', [PM2_BIN, 'start', file, '--name', name, ...pm2Args], shell);
  expect(started.exitCode, started.stderr).toBe(0);
  return waitFor(`${name} running`, async () => {
    const apps = JSON.parse((await execa('node', [PM2_BIN, 'jlist'], shell)).stdout) as Array<{ name: string; pid: number }>;
    const app = apps.find((a) => a.name === name);
    return app && app.pid > 0 && alive(app.pid) ? { pid: app.pid, names: apps.map((a) => a.name).sort() } : undefined;
  });
}

async function pm2Pid(w: Workspace): Promise<number> {
  return Number.parseInt(await readFile(path.join(w.pm2Home, 'pm2.pid'), 'utf8'), 10);
}

describe('lifecycle', () => {
  it('after a SIGKILL, `wipe` removes what the dead run wrote and the next start recovers before anything else', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 1 });
    const env = { ...ws.env, HF_TOKEN };
    const first = startBoot(['start'], env);
    await first.waitForLog((l) => l.phase === 'ready', 'ready');
    const firstPid = first.child.pid!;
    first.child.kill('SIGKILL');
    await first.child;
    expect(existsSync(ws.envFile('hf_node'))).toBe(true);
    const record = JSON.parse(await readFile(path.join(ws.stateDir, 'written-files.json'), 'utf8')) as { pid: number; files: Array<{ path: string }> };
    expect(record.pid).toBe(firstPid);
    expect(record.files.map((f) => f.path)).toEqual([ws.envFile('hf_node')]);
    expect(JSON.stringify(record)).not.toContain(HF_TOKEN);

    // PM2 died with the boot; its instance did not (outside a container nothing else ends it).
    expect(await pm2Pid(ws)).toBe(firstPid);
    const orphan = (first.logs().find((l) => l.phase === 'pm2-start')!.instances as Array<{ pid: number }>)[0]!.pid;
    expect(alive(orphan)).toBe(true);
    // A second start stops it and wipes first, then boots again.
    const second = startBoot(['start'], env);
    await second.waitForLog((l) => l.phase === 'ready', 'second ready');
    const logs = second.logs();
    const recovered = logs.find((l) => typeof l.msg === 'string' && l.msg.startsWith(`an earlier run (pid ${firstPid}) did not clean up`));
    expect(recovered?.removed).toBe(1);
    expect(logs.findIndex((l) => l === recovered)).toBeLessThan(logs.findIndex((l) => l.phase === 'detect'));
    const stopped = logs.find((l) => l.msg === `stopped 1 instance(s) that an earlier run (pid ${firstPid}) left running`);
    expect(stopped?.pids).toEqual([orphan]);
    expect(logs.findIndex((l) => l === stopped)).toBeLessThan(logs.findIndex((l) => l === recovered));
    expect(alive(orphan)).toBe(false);
    second.child.kill('SIGTERM');
    expect((await second.child).exitCode).toBe(0);
    expect(existsSync(ws.envFile('hf_node'))).toBe(false);
  });

  it('`wipe` cleans up after a crash without starting anything', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 1 });
    const env = { ...ws.env, HF_TOKEN };
    const boot = startBoot(['start'], env);
    await boot.waitForLog((l) => l.phase === 'ready', 'ready');
    const orphan = (boot.logs().find((l) => l.phase === 'pm2-start')!.instances as Array<{ pid: number }>)[0]!.pid;
    const folder = path.dirname(await readlink(ws.envFile('hf_node')));
    boot.child.kill('SIGKILL');
    await boot.child;
    // What a killed run leaves: its plan, PM2's sockets and pid file, its secrets folder.
    for (const left of [path.join(ws.stateDir, 'plan.json'), path.join(ws.pm2Home, 'rpc.sock'), path.join(ws.pm2Home, 'pub.sock'), path.join(ws.pm2Home, 'pm2.pid'), folder]) {
      expect(existsSync(left)).toBe(true);
    }
    const wipe = await runBoot(['wipe'], env);
    expect(wipe.exitCode).toBe(0);
    for (const left of [path.join(ws.stateDir, 'plan.json'), path.join(ws.pm2Home, 'rpc.sock'), path.join(ws.pm2Home, 'pub.sock'), path.join(ws.pm2Home, 'pm2.pid'), folder, ws.stateDir]) {
      expect(existsSync(left)).toBe(false);
    }
    expect(wipe.stdout).toContain(`removed PM2's stale rpc.sock, pub.sock, pm2.pid`);
    expect(wipe.stdout).toContain(`stopped 1 instance(s) that an earlier run (pid ${boot.child.pid}) left running`);
    expect(wipe.stdout).toContain('wiped 1 file(s), restored 0');
    expect(alive(orphan)).toBe(false);
    expect(existsSync(ws.envFile('hf_node'))).toBe(false);
    expect(existsSync(path.join(ws.stateDir, 'written-files.json'))).toBe(false);
    const again = await runBoot(['wipe'], env);
    expect(again.exitCode).toBe(0);
    expect(again.stdout).toContain('nothing to wipe');
  });

  it('keeps a .env it did not write aside and restores it byte for byte, with its mode', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 1 });
    const original = '# the user\'s own file\nUSER_SETTING="kept"\n';
    await writeFile(ws.envFile('hf_node'), original);
    await chmod(ws.envFile('hf_node'), 0o640);
    const boot = startBoot(['start'], { ...ws.env, HF_TOKEN });
    await boot.waitForLog((l) => l.phase === 'ready', 'ready');
    expect(await readFile(ws.envFile('hf_node'), 'utf8')).toContain(HF_TOKEN);
    expect(await readFile(`${ws.envFile('hf_node')}.gpu-boot-orig`, 'utf8')).toBe(original);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
    expect(await readFile(ws.envFile('hf_node'), 'utf8')).toBe(original);
    expect((await stat(ws.envFile('hf_node'))).mode & 0o777).toBe(0o640);
    expect(existsSync(`${ws.envFile('hf_node')}.gpu-boot-orig`)).toBe(false);
  });

  it('replaces a planted .env link instead of writing through it, and puts the link back at the end', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 1 });
    const victim = path.join(ws.root, 'victim');
    await writeFile(victim, 'root:x:0:0\n');
    await symlink(victim, ws.envFile('hf_node'));
    const boot = startBoot(['start'], { ...ws.env, HF_TOKEN });
    await boot.waitForLog((l) => l.phase === 'ready', 'ready');
    // Replaced by gpu-boot's own link into its tmpfs folder; the victim is untouched.
    const link = await readlink(ws.envFile('hf_node'));
    expect(link).toMatch(new RegExp(`^${ws.tmpfs}/gpu-boot-[A-Za-z0-9_-]{12}/\\d+\\.env$`));
    expect(await readFile(ws.envFile('hf_node'), 'utf8')).toContain(HF_TOKEN);
    expect(await readFile(victim, 'utf8')).toBe('root:x:0:0\n');
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
    // What was there comes back as it was: the link itself, still never followed.
    expect(await readlink(ws.envFile('hf_node'))).toBe(victim);
    expect(existsSync(`${ws.envFile('hf_node')}.gpu-boot-orig`)).toBe(false);
    expect(await readFile(victim, 'utf8')).toBe('root:x:0:0\n');
  });

  it('a second signal during shutdown does not skip the wipe', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 2 });
    const boot = startBoot(['start'], { ...ws.env, HF_TOKEN });
    await boot.waitForLog((l) => l.phase === 'ready', 'ready');
    boot.child.kill('SIGTERM');
    await boot.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('SIGTERM received: stopping'), 'shutdown started');
    boot.child.kill('SIGINT');
    boot.child.kill('SIGTERM');
    const result = await boot.child;
    expect(result.exitCode).toBe(0);
    expect(boot.logs().filter((l) => typeof l.msg === 'string' && l.msg.includes('received during shutdown')).length).toBeGreaterThanOrEqual(1);
    expect(boot.logs().some((l) => l.phase === 'wipe' && l.removed === 1)).toBe(true);
    expect(existsSync(ws.envFile('hf_node'))).toBe(false);
  });

  it('a SIGTERM during the boot stops it and wipes what was written', async () => {
    // An instance that takes long to answer: the signal arrives before it is ready.
    const slowMain = 'import time, signal, sys\nsignal.signal(signal.SIGINT, lambda *a: sys.exit(0))\ntime.sleep(60)\n';
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 1, mainPy: slowMain });
    const boot = startBoot(['start'], { ...ws.env, HF_TOKEN });
    await boot.waitForLog((l) => l.phase === 'pm2-start', 'pm2 started');
    const instancePid = (boot.logs().find((l) => l.phase === 'pm2-start')!.instances as Array<{ pid: number }>)[0]!.pid;
    boot.child.kill('SIGTERM');
    const result = await boot.child;
    expect(result.exitCode).toBe(0);
    expect(boot.logs().some((l) => l.phase === 'ready')).toBe(false);
    expect(existsSync(ws.envFile('hf_node'))).toBe(false);
    expect(alive(instancePid)).toBe(false);
  });

  it('stays up while an instance crash-loops, and says so', async () => {
    const crashingMain = 'import sys\nprint("stand-in: failing on purpose", flush=True)\nsys.exit(3)\n';
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 1, mainPy: crashingMain });
    const boot = startBoot(['start'], { ...ws.env, HF_TOKEN, COMFYUI_RESTART_DELAY_MS: '800', READY_TIMEOUT_MS: '1500', CRASH_LOOP_LIMIT: '0' });
    const exits = () => boot.logs().filter((l) => l.msg === 'instance comfyui-gpu0 exited; PM2 restarts it with backoff');
    await waitFor('four crashes', () => exits().length >= 4);
    expect(exits()[0]!.exitCode).toBe(3);
    // Backoff, not a tight loop: 800 ms, then x1.5 each time, so the gaps between crashes grow: the
    // third gap is ~1000 ms longer than the first; a busy machine's start-time noise (a few hundred
    // ms each way, seen in CI) stays well under the 500 ms asked.
    const times = exits().map((l) => l.time as number);
    const gaps = times.slice(1).map((t, i) => t - times[i]!);
    expect(gaps[2]!).toBeGreaterThan(gaps[0]! + 500);
    await boot.waitForLog((l) => l.phase === 'ready' && l.level === 40, 'ready warning');
    expect(boot.logs().some((l) => l.instance === 'comfyui-gpu0' && l.msg === 'stand-in: failing on purpose')).toBe(true);
    expect(alive(boot.child.pid!)).toBe(true);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
    expect(existsSync(ws.envFile('hf_node'))).toBe(false);
  });
});

describe('shutdown budget', () => {
  it('an instance that ignores SIGINT is killed after kill_timeout, and the boot still exits 0 within SHUTDOWN_TIMEOUT_MS with the files wiped', async () => {
    const stubborn = tinyServerMain(['signal.signal(signal.SIGINT, signal.SIG_IGN)']);
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 1, mainPy: stubborn });
    const boot = startBoot(['start'], { ...ws.env, HF_TOKEN, COMFYUI_KILL_TIMEOUT_MS: '1000', SHUTDOWN_TIMEOUT_MS: '5000' });
    await boot.waitForLog((l) => l.phase === 'ready', 'ready');
    const instancePid = (boot.logs().find((l) => l.phase === 'pm2-start')!.instances as Array<{ pid: number }>)[0]!.pid;
    const stopAsked = Date.now();
    boot.child.kill('SIGTERM');
    const result = await boot.child;
    const took = Date.now() - stopAsked;
    expect(result.exitCode).toBe(0);
    expect(took).toBeGreaterThanOrEqual(1000);
    expect(took).toBeLessThan(5000);
    expect(alive(instancePid)).toBe(false);
    expect(existsSync(ws.envFile('hf_node'))).toBe(false);
    // Its own instance, slow to stop, is not mistaken for an app started by hand.
    expect(boot.logs().filter((l) => String(l.msg).includes('by hand'))).toEqual([]);
  });

  it('an app started by hand that ignores SIGINT, with a kill_timeout past the budget, is killed with the leftovers when the budget runs out', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 1 });
    const boot = startBoot(['start'], { ...ws.env, HF_TOKEN, SHUTDOWN_TIMEOUT_MS: '4000' });
    await boot.waitForLog((l) => l.phase === 'ready', 'ready');
    const app = await startByHand(ws, 'stubborn', "#!/bin/sh\ntrap '' INT\nexec sleep 300\n", ['--kill-timeout', '20000']);
    const stopAsked = Date.now();
    boot.child.kill('SIGTERM');
    const result = await boot.child;
    expect(Date.now() - stopAsked).toBeLessThan(10_000);
    // Killed as a leftover: the boot says so and exits 74.
    expect(result.exitCode).toBe(74);
    expect(processGone(app.pid) || !alive(app.pid)).toBe(true);
    expect(boot.logs().find((l) => l.msg === 'instances did not stop within the shutdown budget; killing them')).toMatchObject({ pids: [app.pid] });
    expect(existsSync(ws.envFile('hf_node'))).toBe(false);
    for (const name of ['pm2.pid', 'rpc.sock', 'pub.sock']) expect(existsSync(path.join(ws.pm2Home, name))).toBe(false);
  });
});

describe('one boot per workspace, and a boot that notices its PM2 dying', () => {
  it('a second start (or wipe) on a live workspace is refused with exit 75 and the first run keeps going', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 1 });
    const first = startBoot(['start'], { ...ws.env, HF_TOKEN });
    await first.waitForLog((l) => l.phase === 'ready', 'ready');
    for (const command of ['start', 'wipe']) {
      const second = await runBoot([command], { ...ws.env, HF_TOKEN });
      expect(second.exitCode).toBe(75);
      expect(second.stderr).toContain(`gpu-boot (pid ${first.child.pid}) is running on this workspace`);
    }
    expect(existsSync(ws.envFile('hf_node'))).toBe(true);
    expect((await fetch(`http://127.0.0.1:${ws.portStart}/`)).status).toBe(200);
    first.child.kill('SIGTERM');
    expect((await first.child).exitCode).toBe(0);
  });

  it('an app started by hand in its PM2 (`pm2 start`) is stopped with the boot, as `pm2 kill` would stop it, and named', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 1 });
    const boot = startBoot(['start'], { ...ws.env, HF_TOKEN });
    await boot.waitForLog((l) => l.phase === 'ready', 'ready');
    const byHand = await startByHand(ws, 'by-hand', '#!/bin/sh\nexec sleep 300\n');
    expect(byHand.names).toEqual(['by-hand', 'comfyui-gpu0']);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
    expect(processGone(byHand.pid) || !alive(byHand.pid)).toBe(true);
    expect(boot.logs().find((l) => String(l.msg).startsWith('stopping 1 app(s)'))).toMatchObject({ level: 40, apps: ['by-hand'], msg: "stopping 1 app(s) started by hand in gpu-boot's PM2: by-hand" });
    expect(existsSync(ws.envFile('hf_node'))).toBe(false);
  });

  it('`pm2 kill` in the container stops the instances; the boot says so, wipes and exits 74', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 1 });
    const boot = startBoot(['start'], { ...ws.env, HF_TOKEN });
    await boot.waitForLog((l) => l.phase === 'ready', 'ready');
    const instancePid = (boot.logs().find((l) => l.phase === 'pm2-start')!.instances as Array<{ pid: number }>)[0]!.pid;
    const kill = await execa('node', [PM2_BIN, 'kill'], { env: { PATH: ws.env.PATH!, HOME: ws.root, PM2_HOME: ws.pm2Home }, extendEnv: false, reject: false, timeout: 10_000 });
    expect(kill.exitCode).toBe(0);
    expect(kill.stdout).toContain('[v] PM2 Daemon Stopped');
    const result = await boot.child;
    expect(result.exitCode).toBe(74);
    expect(alive(instancePid)).toBe(false);
    expect(boot.logs().some((l) => l.msg === 'PM2 is gone (pm2 kill); no instance will be restarted: shutting down')).toBe(true);
    expect(existsSync(ws.envFile('hf_node'))).toBe(false);
    for (const name of ['pm2.pid', 'rpc.sock', 'pub.sock']) expect(existsSync(path.join(ws.pm2Home, name))).toBe(false);
  });
});

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { stopOrphanedInstances } from '../src/instances/orphans.js';
import { isAlive } from '../src/instances/processes.js';
import { alive, waitFor } from './helpers/boot.js';

let home: string;
const started: ChildProcess[] = [];

beforeEach(async () => {
  home = await mkdtemp(path.join(os.tmpdir(), 'gpu-boot-orphans-'));
  await mkdir(path.join(home, 'pids'));
});
afterEach(async () => {
  for (const child of started.splice(0)) {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      // gone
    }
  }
  await rm(home, { recursive: true, force: true });
});

/** A stand-in instance: a shell leading its own process group (as PM2 starts apps) with a child of its own. */
function instance(env: Record<string, string>): { leader: number; child: () => Promise<number> } {
  const child = spawn('sh', ['-c', 'sleep 60 & echo $!; wait'], { detached: true, env: { PATH: process.env.PATH!, ...env }, stdio: ['ignore', 'pipe', 'ignore'] });
  started.push(child);
  const grandchild = new Promise<number>((resolve) => child.stdout!.once('data', (d: Buffer) => resolve(Number.parseInt(d.toString(), 10))));
  return { leader: child.pid!, child: () => grandchild };
}

describe('stopOrphanedInstances', () => {
  it('stops an instance a dead run left, with what it started, and removes its pid file', async () => {
    const orphan = instance({ name: 'comfyui-gpu0', PM2_HOME: home });
    const grandchild = await orphan.child();
    await writeFile(path.join(home, 'pids', 'comfyui-gpu0-0.pid'), String(orphan.leader));
    const sweep = await stopOrphanedInstances(home, 2000);
    expect(sweep).toEqual({ stopped: [orphan.leader], unverified: [] });
    await waitFor('group gone', () => !alive(orphan.leader) && !alive(grandchild));
    expect(existsSync(path.join(home, 'pids', 'comfyui-gpu0-0.pid'))).toBe(false);
  });

  it('leaves alone a process that reuses a recorded pid, or belongs to another PM2_HOME, and forgets the stale pid file', async () => {
    const stranger = instance({ name: 'something-else', PM2_HOME: home });
    const otherHome = instance({ name: 'comfyui-gpu1', PM2_HOME: path.join(home, 'elsewhere') });
    await writeFile(path.join(home, 'pids', 'comfyui-gpu0-0.pid'), String(stranger.leader));
    await writeFile(path.join(home, 'pids', 'comfyui-gpu1-1.pid'), String(otherHome.leader));
    const sweep = await stopOrphanedInstances(home, 2000);
    expect(sweep).toEqual({ stopped: [], unverified: [] });
    expect(isAlive(stranger.leader)).toBe(true);
    expect(isAlive(otherHome.leader)).toBe(true);
    expect(existsSync(path.join(home, 'pids', 'comfyui-gpu0-0.pid'))).toBe(false);
  });

  it('leaves alone an instance whose parent is the live PM2 daemon of this PM2_HOME: it is supervised, not orphaned', async () => {
    // This test process plays the daemon: it is the instance's parent and pm2.pid names it.
    const supervised = instance({ name: 'comfyui-gpu0', PM2_HOME: home });
    await writeFile(path.join(home, 'pm2.pid'), String(process.pid));
    await writeFile(path.join(home, 'pids', 'comfyui-gpu0-0.pid'), String(supervised.leader));
    expect(await stopOrphanedInstances(home, 2000)).toEqual({ stopped: [], unverified: [] });
    expect(isAlive(supervised.leader)).toBe(true);
    expect(existsSync(path.join(home, 'pids', 'comfyui-gpu0-0.pid'))).toBe(true);
  });

  it('does nothing without pid files', async () => {
    expect(await stopOrphanedInstances(path.join(home, 'missing'), 100)).toEqual({ stopped: [], unverified: [] });
  });
});

import { readFile, unlink } from 'node:fs/promises';
import path from 'node:path';
import { appPidFiles, isAlive, procStat, readPidFile } from './processes.js';

/**
 * Instances that a gpu-boot killed with SIGKILL left running: PM2 ran inside it, so nothing
 * supervises them any more (in a container the runtime ends them with tini; outside one, they go
 * on). `start` and `wipe` stop them before anything else, from PM2's pid files.
 *
 * A pid file may be old and its pid reused, so a process is stopped only when its environment
 * names this PM2_HOME and the app (PM2 puts both there), and never when its parent is a live PM2
 * daemon, which supervises it. PM2 starts each app as the leader of its own process group: the
 * group gets SIGINT (as PM2 would send), then SIGKILL after the grace period, so whatever the
 * instance started goes too.
 */

export interface OrphanSweep {
  /** Instances stopped. */
  stopped: number[];
  /** Live pids named by a pid file whose environment could not be read: not provably ours, left running. */
  unverified: number[];
}

/** Whether `pid` is PM2's instance `app` of this PM2_HOME; undefined when its environment cannot be read. */
async function isInstance(pid: number, app: string, pm2Home: string): Promise<boolean | undefined> {
  let environ: string[];
  try {
    environ = (await readFile(`/proc/${pid}/environ`, 'utf8')).split('\0');
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ENOENT' ? false : undefined;
  }
  return environ.includes(`name=${app}`) && environ.includes(`PM2_HOME=${pm2Home}`);
}

/** False when the group is gone (or not ours to signal). */
function signalGroup(pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(-pid, signal);
    return true;
  } catch {
    return false;
  }
}

async function exited(pid: number, deadline: number): Promise<boolean> {
  while (isAlive(pid)) {
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return true;
}

export async function stopOrphanedInstances(pm2Home: string, graceMs: number): Promise<OrphanSweep> {
  const sweep: OrphanSweep = { stopped: [], unverified: [] };
  const files = await appPidFiles(pm2Home);
  if (!files.length) return sweep;
  const daemon = await readPidFile(path.join(pm2Home, 'pm2.pid'));
  const liveDaemon = daemon !== undefined && isAlive(daemon) ? daemon : undefined;
  await Promise.all(
    files.map(async ({ app, file }) => {
      const pid = await readPidFile(file);
      if (pid !== undefined && isAlive(pid)) {
        if (liveDaemon !== undefined && procStat(pid)?.ppid === liveDaemon) return;
        const ours = await isInstance(pid, app, pm2Home);
        if (ours === undefined) {
          sweep.unverified.push(pid);
          return;
        }
        if (ours && signalGroup(pid, 'SIGINT')) {
          if (!(await exited(pid, Date.now() + graceMs)) && (await isInstance(pid, app, pm2Home))) signalGroup(pid, 'SIGKILL');
          // The leader is gone (or killed): what it started, still in its group, goes too.
          await exited(pid, Date.now() + 1000);
          signalGroup(pid, 'SIGKILL');
          sweep.stopped.push(pid);
        }
      }
      await unlink(file).catch(() => undefined);
    }),
  );
  return sweep;
}

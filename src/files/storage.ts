import { randomBytes } from 'node:crypto';
import { constants, mkdirSync, readFileSync, readlinkSync } from 'node:fs';
import { access, lstat, mkdir, statfs } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import * as z from 'zod';
import type { Config } from '../config.js';
import { ConfigError } from '../errors.js';
import { DirHandle, euid, fileId, setDirAccess, type Owner } from './owned.js';
import { procStat } from '../instances/processes.js';

/** Where the secrets' contents live, and whom they belong to. */

/**
 * Where the contents go. `tmpfs`: a fresh folder on a memory file system under `base`, with
 * custom_nodes/<name>/.env a link to its file there, so no secret touches the image's or the
 * volume's disk. `in-place`: the .env itself is the file.
 */
export type Storage = { kind: 'tmpfs'; base: string } | { kind: 'in-place' };

const MEMORY_FILE_SYSTEMS = new Set([0x01021994 /* tmpfs */, 0x858458f6 /* ramfs */]);
export const TMPFS_CANDIDATES = ['/dev/shm', '/run'];
/** A run's secrets folder: a name no one can guess before it exists (72 random bits). */
export const SECRETS_FOLDER = /^gpu-boot-[A-Za-z0-9_-]{12}$/;
/** Inside each secrets folder: which run made it (pid, its start time, the boot and pid namespace). */
export const RUN_MARKER = '.gpu-boot-run';

async function isWritableMemoryFs(dir: string): Promise<boolean> {
  try {
    const [fsInfo] = await Promise.all([statfs(dir), access(dir, constants.W_OK)]);
    return MEMORY_FILE_SYSTEMS.has(fsInfo.type);
  } catch {
    return false;
  }
}

export async function chooseStorage(config: Config, logger: Logger, candidates = TMPFS_CANDIDATES): Promise<Storage> {
  if (config.secretsTmpfs === 'off') return { kind: 'in-place' };
  if (config.secretsTmpfs === 'auto') {
    for (const base of candidates) {
      if (await isWritableMemoryFs(base)) return { kind: 'tmpfs', base };
    }
    logger.warn(
      { tried: candidates },
      `no writable tmpfs (${candidates.join(', ')}): the .env files are written in place, on disk; mount one (docker run --tmpfs /run) or set SECRETS_TMPFS`,
    );
    return { kind: 'in-place' };
  }
  const base = config.secretsTmpfs;
  try {
    // Traversable, not listable: the instances' user must reach its own folder inside.
    await mkdir(base, { recursive: true, mode: 0o711 });
  } catch (error) {
    throw new ConfigError('invalid configuration', [`SECRETS_TMPFS: ${base} cannot be created (${(error as NodeJS.ErrnoException).code})`]);
  }
  if (!(await isWritableMemoryFs(base))) logger.warn({ dir: base }, `SECRETS_TMPFS=${base} is not a memory file system: secrets will be on disk there`);
  return { kind: 'tmpfs', base };
}

/** The folders a run's secrets folder may be in: where `start` and `wipe` look for dead runs' folders. */
export function storageBases(config: Config): string[] {
  const bases = [...TMPFS_CANDIDATES];
  if (config.secretsTmpfs !== 'auto' && config.secretsTmpfs !== 'off') bases.push(config.secretsTmpfs);
  return [...new Set(bases)];
}

const RunIdSchema = z.object({ pid: z.number().int().positive(), start: z.string(), boot: z.string(), pidNs: z.string() });
/** A process, told apart from a later one with the same pid: start time (clock ticks since boot), boot id, pid namespace. */
export type RunId = z.infer<typeof RunIdSchema>;
export { RunIdSchema };

function readOr(read: () => string): string {
  try {
    return read().trim();
  } catch {
    return '';
  }
}

/** Field 22 of /proc/<pid>/stat: when the process started, in clock ticks after boot. */
export function procStartTime(pid: number): string | undefined {
  const text = readOr(() => readFileSync(`/proc/${pid}/stat`, 'utf8'));
  if (!text) return undefined;
  return text.slice(text.lastIndexOf(')') + 2).split(' ')[19];
}

let self: RunId | undefined;
export function thisRun(): RunId {
  self ??= {
    pid: process.pid,
    start: procStartTime(process.pid) ?? '',
    boot: readOr(() => readFileSync('/proc/sys/kernel/random/boot_id', 'utf8')),
    pidNs: readOr(() => readlinkSync('/proc/self/ns/pid')),
  };
  return self;
}

/**
 * Is that run still running? `unknown` when it cannot be told from here: another pid namespace
 * (a shared /dev/shm between containers) on the same boot.
 */
export function runStatus(run: RunId): 'alive' | 'dead' | 'unknown' {
  const me = thisRun();
  if (run.boot && me.boot && run.boot !== me.boot) return 'dead';
  if (run.pidNs !== me.pidNs) return 'unknown';
  if (run.pid === me.pid && run.start === me.start) return 'alive';
  const start = procStartTime(run.pid);
  if (start === undefined || procStat(run.pid)?.state === 'Z') return 'dead';
  return start === run.start ? 'alive' : 'dead';
}

export interface SecretsFolder {
  dir: DirHandle;
  path: string;
}

/**
 * A fresh folder for this run's secrets under `base`: mkdir fails if the name exists, and the
 * folder is used only through a handle opened without following a link and proven to be the one
 * just made (this uid's, empty). As root with instances as another user it stays root's, mode
 * 0710 with their group: they reach their files (0600, theirs) but cannot rename, replace or add
 * entries. It is marked with this run's identity, so a later run can tell it is dead.
 */
export function createSecretsFolder(base: string, owner?: Owner): SecretsFolder {
  // base64url: 12 characters keep the link target short enough for ext4's inline (fast) symlinks.
  const name = `gpu-boot-${randomBytes(9).toString('base64url')}`;
  const full = path.join(base, name);
  mkdirSync(full, { mode: 0o700 });
  const dir = DirHandle.openNoFollow(full);
  if (!dir.stat.isDirectory() || Number(dir.stat.uid) !== euid() || dir.names().length !== 0) {
    dir.close();
    throw Object.assign(new Error(`${full} was replaced as it was made`), { code: 'EEXIST' });
  }
  try {
    setDirAccess(dir, owner ? 0o710 : 0o700, owner ? { uid: euid(), gid: owner.gid } : undefined);
    dir.createFile(RUN_MARKER, Buffer.from(`${JSON.stringify(thisRun())}\n`), 0o600);
  } catch (error) {
    dir.close();
    throw error;
  }
  return { dir, path: full };
}

/** Shred and remove every entry of a secrets folder proven to be ours (everything in it is). */
export function emptySecretsFolder(dir: DirHandle, problems: string[]): number {
  let removed = 0;
  let names: string[] = [];
  try {
    names = dir.names();
  } catch (error) {
    problems.push(`${dir.path}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`);
  }
  // The marker last: a wipe cut short still leaves the folder recognisable.
  names.sort((a, b) => Number(a === RUN_MARKER) - Number(b === RUN_MARKER));
  for (const name of names) {
    try {
      const st = dir.lstat(name);
      if (!st) continue;
      if (st.isFile()) {
        // A file with a second name is not one gpu-boot made here (its owner may have linked one of
        // theirs in, or kept a copy): unlinked, never zeroed.
        if (st.nlink !== 1n) dir.unlinkIf(name, fileId(st));
        else if (dir.shred(name, (s) => s.nlink === 1n, false) === 'shredded' && name !== RUN_MARKER) removed += 1;
      } else if (st.isSymbolicLink()) {
        dir.unlinkIf(name, fileId(st));
      } else {
        problems.push(`${path.join(dir.path, name)}: not a file; left alone`);
      }
    } catch (error) {
      problems.push(`${path.join(dir.path, name)}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`);
    }
  }
  return removed;
}

/**
 * Open a secrets folder named in a record or found in a base, and prove it is ours: not a link,
 * a folder of this uid, the recorded identity when one is given.
 */
export function openOwnSecretsFolder(full: string, id?: string): DirHandle | undefined {
  let dir: DirHandle;
  try {
    dir = DirHandle.openNoFollow(full);
  } catch {
    return undefined;
  }
  if (!dir.stat.isDirectory() || Number(dir.stat.uid) !== euid() || (id !== undefined && dir.id !== id)) {
    dir.close();
    return undefined;
  }
  return dir;
}

export interface DeadRunSweep {
  removed: string[];
  problems: string[];
}

/**
 * Remove the secrets folders of runs that are dead, found in `bases` whatever became of their
 * workspace: only folders this uid made (name, owner, not a link) whose marker, also this uid's,
 * names a run that is provably dead. A live run's folder, or one whose run cannot be told, stays.
 */
export function sweepDeadRuns(bases: string[]): DeadRunSweep {
  const sweep: DeadRunSweep = { removed: [], problems: [] };
  for (const base of bases) {
    let parent: DirHandle;
    try {
      parent = DirHandle.open(base);
    } catch {
      continue;
    }
    try {
      for (const name of parent.names().filter((n) => SECRETS_FOLDER.test(n))) {
        const st = parent.lstat(name);
        if (!st?.isDirectory() || Number(st.uid) !== euid()) continue;
        const dir = openOwnSecretsFolder(parent.at(name), fileId(st));
        if (!dir) continue;
        try {
          let run: RunId;
          try {
            const marker = dir.readFile(RUN_MARKER);
            if (Number(marker.stat.uid) !== euid() || marker.stat.nlink !== 1n) continue;
            run = RunIdSchema.parse(JSON.parse(marker.text));
          } catch {
            continue;
          }
          if (runStatus(run) !== 'dead') continue;
          emptySecretsFolder(dir, sweep.problems);
          if (parent.rmdirIf(name, dir.id)) sweep.removed.push(path.join(base, name));
        } finally {
          dir.close();
        }
      }
    } catch (error) {
      sweep.problems.push(`${base}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`);
    } finally {
      parent.close();
    }
  }
  return sweep;
}

async function idOf(user: string, flag: '-u' | '-g'): Promise<number> {
  const result = await (await import('execa')).execa('id', [flag, user], { reject: false, stdin: 'ignore' });
  const value = Number.parseInt(result.stdout, 10);
  if (result.exitCode !== 0 || !Number.isInteger(value)) {
    throw new ConfigError('invalid configuration', [`COMFYUI_USER: no such user "${user}"`]);
  }
  return value;
}

/**
 * The user the instances run as, when gpu-boot is root: COMFYUI_USER, else the
 * owner of COMFYUI_PATH if that is not root. Not root: the instances run as we do.
 */
export async function chooseOwner(config: Config): Promise<Owner | undefined> {
  if (process.getuid?.() !== 0) {
    if (config.comfyuiUser !== undefined) {
      const uid = await idOf(config.comfyuiUser, '-u');
      if (uid !== process.getuid?.()) {
        throw new ConfigError('invalid configuration', [`COMFYUI_USER: running instances as another user needs gpu-boot to run as root`]);
      }
    }
    return undefined;
  }
  if (config.comfyuiUser !== undefined) {
    const [uid, gid] = await Promise.all([idOf(config.comfyuiUser, '-u'), idOf(config.comfyuiUser, '-g')]);
    return uid === 0 ? undefined : { uid, gid };
  }
  // The owner of COMFYUI_PATH, never through a link: a link planted in the workspace would choose
  // the user (root, for a link to /var/tmp) and the main.py that runs as them.
  let owner;
  try {
    owner = await lstat(config.comfyuiPath);
  } catch {
    return undefined;
  }
  const setUser = 'set COMFYUI_USER to the user the instances run as';
  if (owner.isSymbolicLink()) {
    throw new ConfigError('invalid configuration', [`COMFYUI_PATH: ${config.comfyuiPath} is a link; as root, gpu-boot takes the instances' user from its owner and would follow whatever the link leads to: ${setUser}`]);
  }
  if (owner.uid !== 0) return { uid: owner.uid, gid: owner.gid };
  // Instances as root: only from a folder no one else can change or replace.
  const parent = await lstat(path.dirname(config.comfyuiPath)).catch(() => undefined);
  const open = (s: { uid: number; mode: number } | undefined) => !s || s.uid !== 0 || (s.mode & 0o022) !== 0;
  if ((owner.mode & 0o022) !== 0 || open(parent)) {
    throw new ConfigError('invalid configuration', [
      `COMFYUI_PATH: ${config.comfyuiPath} is root's, so the instances would run as root, but it or ${path.dirname(config.comfyuiPath)} can be changed by another user: ${setUser}`,
    ]);
  }
  return undefined;
}

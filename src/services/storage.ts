import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { access, mkdir, stat, statfs } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { ConfigError } from '../errors.js';
import type { Owner, Storage } from './env-files.js';

/** Where the secrets' contents live, and whom they belong to. */

const MEMORY_FILE_SYSTEMS = new Set([0x01021994 /* tmpfs */, 0x858458f6 /* ramfs */]);
export const TMPFS_CANDIDATES = ['/dev/shm', '/run'];

async function isWritableMemoryFs(dir: string): Promise<boolean> {
  try {
    const [fsInfo] = await Promise.all([statfs(dir), access(dir, constants.W_OK)]);
    return MEMORY_FILE_SYSTEMS.has(fsInfo.type);
  } catch {
    return false;
  }
}

/** One folder per workspace (stable across restarts, so a crashed run's files are found). */
function folderName(config: Config): string {
  return `gpu-boot-${createHash('sha256').update(config.stateDir).digest('hex').slice(0, 12)}`;
}

export async function chooseStorage(config: Config, logger: Logger, candidates = TMPFS_CANDIDATES): Promise<Storage> {
  if (config.secretsTmpfs === 'off') return { kind: 'in-place' };
  if (config.secretsTmpfs === 'auto') {
    for (const base of candidates) {
      if (await isWritableMemoryFs(base)) return { kind: 'tmpfs', dir: path.join(base, folderName(config)) };
    }
    logger.warn(
      { tried: candidates },
      `no writable tmpfs (${candidates.join(', ')}): the .env files are written in place, on disk; mount one (docker run --tmpfs /run) or set SECRETS_TMPFS`,
    );
    return { kind: 'in-place' };
  }
  const base = config.secretsTmpfs;
  try {
    // Traversable, not listable: the instances' user must reach its own 0700 folder inside.
    await mkdir(base, { recursive: true, mode: 0o711 });
  } catch (error) {
    throw new ConfigError('invalid configuration', [`SECRETS_TMPFS: ${base} cannot be created (${(error as NodeJS.ErrnoException).code})`]);
  }
  if (!(await isWritableMemoryFs(base))) logger.warn({ dir: base }, `SECRETS_TMPFS=${base} is not a memory file system: secrets will be on disk there`);
  return { kind: 'tmpfs', dir: path.join(base, folderName(config)) };
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
  try {
    const owner = await stat(config.comfyuiPath);
    return owner.uid === 0 ? undefined : { uid: owner.uid, gid: owner.gid };
  } catch {
    return undefined;
  }
}

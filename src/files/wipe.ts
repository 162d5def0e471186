import { readlinkSync } from 'node:fs';
import path from 'node:path';
import { hasGpuBootHeader } from '../secrets/dotenv-format.js';
import { ENV_FILE_NAME, errnoText, PLAN_FILE_NAME, RECORD_FILE_NAME, type RecordEntry, type StateDir, type WriteRecord } from './env-files.js';
import { DirHandle, euid, fileId, SHRED_LIMIT } from './owned.js';
import { emptySecretsFolder, openOwnSecretsFolder } from './storage.js';

/**
 * The finish stage's file work: remove what the record says gpu-boot put in place, proven by
 * identity (the node folder's and each object's device and inode), put back what each replaced,
 * shred the run's secrets folder, then delete the record. An object that is not the one recorded
 * (replaced since, or named by a forged record) is left alone and reported.
 */

export interface WipeResult {
  removed: number;
  restored: number;
  problems: string[];
  /** Recorded paths whose object is not gpu-boot's (replaced since, or a file the user put back). */
  skipped: string[];
}

function wipeEntry(entry: RecordEntry, record: WriteRecord, result: WipeResult, folders?: ReadonlyMap<string, DirHandle>): void {
  const durable = record.storage === undefined;
  const uids = [euid(), ...(record.owner ? [record.owner.uid] : [])];
  const linkTarget = record.storage && entry.target ? path.join(record.storage.path, entry.target) : undefined;
  const folder = path.dirname(entry.path);
  let dir: DirHandle;
  const held = folders?.get(entry.path);
  try {
    dir = held ?? DirHandle.open(folder);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    // Renamed, removed or replaced by a file or a looping link: nothing of ours can be reached there.
    if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'ELOOP') result.skipped.push(`${entry.path}: ${folder} is gone or no longer a folder (moved during the run?); nothing removed there`);
    else result.problems.push(`${folder}: ${errnoText(error)}`);
    return;
  }
  try {
    if (dir.id !== entry.dir) {
      result.skipped.push(`${entry.path}: ${folder} is not the folder gpu-boot wrote to (replaced since); left alone`);
      return;
    }
    const ours = new Set(entry.ids);
    let removed = false;
    for (const name of [ENV_FILE_NAME, ...entry.temps]) {
      const stat = dir.lstat(name);
      if (!stat) continue;
      if (ours.has(fileId(stat))) {
        if (stat.isSymbolicLink()) removed = dir.unlinkIf(name, fileId(stat)) || removed;
        else removed = dir.shred(name, (s) => ours.has(fileId(s)), durable) === 'shredded' || removed;
      } else if (name === ENV_FILE_NAME) {
        // The user's own .env, never replaced (the run failed first), is no news.
        if (entry.backup && fileId(stat) === entry.backup.id) continue;
        result.skipped.push(`${entry.path}: not the file gpu-boot put there (replaced since); left alone`);
      } else {
        // A temp whose identity a run that died had not recorded yet: only under its unguessable
        // recorded name, and only a link into its secrets folder or a file of its users with its header.
        if (stat.isSymbolicLink()) {
          if (linkTarget !== undefined && readlinkSync(dir.at(name)) === linkTarget) removed = dir.unlinkIf(name, fileId(stat)) || removed;
        } else if (stat.isFile() && stat.nlink === 1n && stat.size <= BigInt(SHRED_LIMIT) && uids.includes(Number(stat.uid)) && hasGpuBootHeader(dir.readFile(name).text)) {
          removed = dir.shred(name, (s) => fileId(s) === fileId(stat), durable) === 'shredded' || removed;
        }
      }
    }
    if (removed) result.removed += 1;
    if (entry.backup) {
      const kept = dir.lstat(entry.backup.name);
      const current = dir.lstat(ENV_FILE_NAME);
      if (kept && fileId(kept) === entry.backup.id) {
        if (current && fileId(current) === entry.backup.id) {
          // The user's .env never left (the run failed before putting its own in place): the kept-aside name is a second one for it.
          dir.unlinkIf(entry.backup.name, entry.backup.id);
        } else if (current) {
          result.skipped.push(`${path.join(folder, entry.backup.name)}: kept, since ${entry.path} is not gpu-boot's file now (edited during the run?); compare them and keep the one you need`);
        } else {
          dir.rename(entry.backup.name, ENV_FILE_NAME);
          result.restored += 1;
        }
      }
    }
    if (durable && removed) dir.fsync();
  } catch (error) {
    result.problems.push(`${entry.path}: ${errnoText(error)}`);
  } finally {
    if (!held) dir.close();
  }
}

export interface WipeOptions {
  /** This run's own secrets folder, held open since it was made; a dead run's is opened and proven. */
  secrets?: DirHandle;
  /** This run's node folders, held open since the write (files in place): a folder renamed during the run is still wiped. */
  folders?: ReadonlyMap<string, DirHandle>;
}

/**
 * Remove everything `record` lists, then the record and the plan in `state`. Safe to run twice.
 * The record must come from StateDir.readRecord (proven this uid's) or from this run's memory.
 */
export function wipeRecord(state: StateDir, record: WriteRecord, options: WipeOptions = {}): WipeResult {
  const result: WipeResult = { removed: 0, restored: 0, problems: [], skipped: [] };
  for (const entry of record.files) wipeEntry(entry, record, result, options.folders);
  if (record.storage) {
    const own = options.secrets;
    const dir = own ?? openOwnSecretsFolder(record.storage.path, record.storage.id);
    if (dir && dir.id === record.storage.id) {
      emptySecretsFolder(dir, result.problems);
      try {
        const parent = DirHandle.open(path.dirname(record.storage.path));
        try {
          parent.rmdirIf(path.basename(record.storage.path), record.storage.id);
        } finally {
          parent.close();
        }
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') result.problems.push(`${record.storage.path}: ${errnoText(error)}`);
      }
    }
    // Otherwise gone (a container restart empties its tmpfs), or not ours: nothing to do there.
    if (!own) dir?.close();
  }
  if (result.problems.length === 0) {
    state.removeOwnFile(RECORD_FILE_NAME);
    state.removeOwnFile(PLAN_FILE_NAME);
  }
  return result;
}

import { randomBytes } from 'node:crypto';
import { closeSync, constants, fchownSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { chmod, chown, link, lstat, mkdir, open, readFile, realpath, rename, symlink, unlink } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { BootError, ExitCode } from '../errors.js';

/**
 * The one place this program writes files (wipe.ts is the one place it removes them). Every .env it writes is recorded in
 * the state folder *before* it is written, so that `wipe` or the next `start`
 * can remove it after a crash. A .env that was already there (shipped in the
 * image, or the user's) is kept aside as `.env.gpu-boot-orig` and put back on wipe.
 */

export const ENV_FILE_NAME = '.env';
export const BACKUP_SUFFIX = '.gpu-boot-orig';
export const TEMP_PREFIX = '.env.gpu-boot-tmp-';
export const RECORD_FILE_NAME = 'written-files.json';
export const FILE_MODE = 0o600;

/** Temp names: unique per process (O_EXCL guards the rest); a counter, not randomBytes per file. */
const TEMP_RUN = `${process.pid}-${randomBytes(4).toString('hex')}`;
let tempCounter = 0;
function tempName(): string {
  tempCounter += 1;
  return `${TEMP_PREFIX}${TEMP_RUN}-${tempCounter}`;
}

const RecordSchema = z.object({
  version: z.literal(1),
  pid: z.number().int(),
  startedAt: z.string(),
  /** The tmpfs folder holding the contents, when the .env files are links into it. */
  storageDir: z.string().optional(),
  files: z.array(z.object({ path: z.string(), target: z.string().optional(), backup: z.string().optional() })),
});
export type WriteRecord = z.infer<typeof RecordSchema>;

/** A file could not be written: exit 73, the path and the reason named (a read-only or full disk, say). */
export class FileWriteError extends BootError {
  constructor(message: string) {
    super(ExitCode.cantCreate, message);
    this.name = 'FileWriteError';
  }
}

export function errnoText(error: unknown): string {
  const e = error as NodeJS.ErrnoException;
  if (e.code === 'ENOSPC') return 'no space left on the device';
  if (e.code === 'EROFS') return 'the file system is read-only';
  if (e.code === 'EACCES' || e.code === 'EPERM') return 'permission denied';
  return e.code ?? e.message;
}

export async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, constants.O_RDONLY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export interface Owner {
  uid: number;
  gid: number;
}

/**
 * Write `text` to `target` atomically: a temp file created 0600 in the same folder,
 * written, chmodded, renamed over the target (rename replaces a planted link instead of
 * writing through it); a reader sees the old file or the new one, never half of one.
 * `durable` (the default) also fsyncs the file before the rename and the folder after, so
 * that a power cut leaves the old or the new content; the node .env files skip it (see
 * writeNodeFiles).
 */
export async function writeFileAtomic(target: string, text: string, mode = FILE_MODE, owner?: Owner, durable = true): Promise<void> {
  const dir = path.dirname(target);
  const temp = path.join(dir, `${tempName()}`);
  let handle;
  try {
    handle = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode);
  } catch (error) {
    throw new FileWriteError(`cannot create a file in ${dir}: ${errnoText(error)}`);
  }
  try {
    await handle.writeFile(text, 'utf8');
    await handle.chmod(mode);
    if (owner) await handle.chown(owner.uid, owner.gid);
    if (durable) await handle.sync();
    await handle.close();
    handle = undefined;
    await rename(temp, target);
    if (durable) await fsyncDir(dir);
  } catch (error) {
    await handle?.close().catch(() => undefined);
    await unlink(temp).catch(() => undefined);
    throw new FileWriteError(`cannot write ${target}: ${errnoText(error)}`);
  }
}

export function recordPath(stateDir: string): string {
  return path.join(stateDir, RECORD_FILE_NAME);
}

export async function readRecord(stateDir: string): Promise<WriteRecord | undefined> {
  let text: string;
  try {
    text = await readFile(recordPath(stateDir), 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new FileWriteError(`cannot read ${recordPath(stateDir)}: ${errnoText(error)}`);
  }
  try {
    return RecordSchema.parse(JSON.parse(text));
  } catch {
    throw new FileWriteError(`${recordPath(stateDir)} is damaged; remove the .env files it listed by hand, then delete it`);
  }
}

export async function writeRecord(stateDir: string, record: WriteRecord): Promise<void> {
  try {
    await mkdir(stateDir, { recursive: true, mode: 0o700 });
  } catch (error) {
    throw new FileWriteError(`cannot create the state folder ${stateDir}: ${errnoText(error)}`);
  }
  await writeFileAtomic(recordPath(stateDir), `${JSON.stringify(record, null, 2)}\n`, 0o600);
}

export interface NodeFile {
  node: string;
  /** custom_nodes/<node>/.env */
  path: string;
  text: string;
}

/**
 * Refuse a node folder that is missing, not a folder, or a link leading outside
 * custom_nodes; returns the .env path inside it.
 */
export async function nodeEnvPath(customNodesPath: string, node: string): Promise<{ path?: string; skip?: string; error?: string }> {
  const dir = path.join(customNodesPath, node);
  let stat;
  try {
    stat = await lstat(dir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { skip: `${dir} is not installed` };
    return { error: `node "${node}": cannot inspect ${dir}: ${errnoText(error)}` };
  }
  if (stat.isSymbolicLink()) {
    const [real, root] = await Promise.all([realpath(dir).catch(() => ''), realpath(customNodesPath)]);
    if (!real || !real.startsWith(`${root}${path.sep}`)) {
      return { error: `node "${node}": ${dir} is a link that leads outside ${customNodesPath}; refusing to write through it` };
    }
  } else if (!stat.isDirectory()) {
    return { error: `node "${node}": ${dir} is not a folder` };
  }
  return { path: path.join(dir, ENV_FILE_NAME) };
}

/** What is at `target` now: nothing, a file or a link that is not ours (kept aside, never followed), or something else. */
export async function existing(target: string): Promise<'none' | 'file' | 'link' | 'other'> {
  try {
    const stat = await lstat(target);
    return stat.isFile() ? 'file' : stat.isSymbolicLink() ? 'link' : 'other';
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 'none';
    throw error;
  }
}

/**
 * Where the contents go. `tmpfs`: in a 0700 folder on a memory file system, with
 * custom_nodes/<name>/.env a link to its file there, so no secret touches the
 * image's or the volume's disk. `in-place`: the .env itself is the file.
 */
export type Storage = { kind: 'tmpfs'; dir: string } | { kind: 'in-place' };

export interface WriteOptions {
  storage: Storage;
  /** The user the instances run as: files (and the tmpfs folder) belong to them. */
  owner?: Owner;
}

/**
 * On tmpfs: the same temp-then-rename write, synchronously and without fsync (memory has
 * nothing to flush). Hundreds of tiny files are written far faster than through the thread pool.
 */
function writeMemoryFileSync(target: string, text: string, owner: Owner | undefined): void {
  const temp = path.join(path.dirname(target), `${tempName()}`);
  let fd: number | undefined;
  try {
    fd = openSync(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, FILE_MODE);
    writeSync(fd, text);
    if (owner) fchownSync(fd, owner.uid, owner.gid);
    closeSync(fd);
    fd = undefined;
    renameSync(temp, target);
  } catch (error) {
    if (fd !== undefined) closeSync(fd);
    try {
      unlinkSync(temp);
    } catch {
      // never created
    }
    throw new FileWriteError(`cannot write ${target}: ${errnoText(error)}`);
  }
}

/** Replace `linkPath` with a link to `target`, atomically: a planted file or link is replaced, never followed. */
async function replaceWithLink(target: string, linkPath: string): Promise<void> {
  const temp = path.join(path.dirname(linkPath), `${tempName()}`);
  try {
    await symlink(target, temp);
    await rename(temp, linkPath);
  } catch (error) {
    await unlink(temp).catch(() => undefined);
    throw new FileWriteError(`cannot link ${linkPath}: ${errnoText(error)}`);
  }
}

export async function prepareStorageDir(dir: string, owner?: Owner): Promise<void> {
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await chmod(dir, 0o700);
    if (owner) await chown(dir, owner.uid, owner.gid);
  } catch (error) {
    throw new FileWriteError(`cannot create the secrets folder ${dir}: ${errnoText(error)}`);
  }
}

export function storageTarget(storage: Storage, file: NodeFile): string | undefined {
  return storage.kind === 'tmpfs' ? path.join(storage.dir, `${file.node}.env`) : undefined;
}

/**
 * Write every node's file. The record listing all of them (and the backups) is
 * written first. Files are written in parallel; any failure is reported with its path.
 */
export async function writeNodeFiles(stateDir: string, files: NodeFile[], record: WriteRecord, options: WriteOptions): Promise<void> {
  const { storage, owner } = options;
  const plans = await Promise.all(files.map(async (file) => ({ file, before: await existing(file.path) })));
  const known = new Set(record.files.map((f) => f.path));
  if (storage.kind === 'tmpfs') record.storageDir = storage.dir;
  for (const { file, before } of plans) {
    if (known.has(file.path)) continue;
    const target = storageTarget(storage, file);
    record.files.push({
      path: file.path,
      ...(target ? { target } : {}),
      ...(before === 'file' || before === 'link' ? { backup: file.path + BACKUP_SUFFIX } : {}),
    });
  }
  await writeRecord(stateDir, record);
  if (storage.kind === 'tmpfs') await prepareStorageDir(storage.dir, owner);
  // allSettled: on a failure, every other write has finished before the error goes up, so the
  // wipe that follows cannot race a write still in flight.
  const results = await Promise.allSettled(
    plans.map(async ({ file, before }) => {
      // A file already in the record is ours (a rewrite after rotation): nothing to keep aside.
      if ((before === 'file' || before === 'link') && !known.has(file.path)) {
        const backup = file.path + BACKUP_SUFFIX;
        // A hard link keeps the original inode: bytes, mode and owner come back unchanged. For a
        // symbolic link, link(2) links the link itself: it is kept as it was, never followed.
        try {
          await link(file.path, backup);
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== 'EEXIST') {
            throw new FileWriteError(`cannot keep aside ${file.path}: ${errnoText(error)}`);
          }
        }
      }
      const target = storageTarget(storage, file);
      if (target) {
        writeMemoryFileSync(target, file.text, owner);
        // The link lives on the workspace's disk: created through the thread pool, in parallel,
        // which measured 40x faster than one after another on ext4 (bench/RESULTS.md).
        await replaceWithLink(target, file.path);
      } else {
        // No fsync: after a power cut the next start wipes every file the (durable) record lists and
        // writes them again, so their own durability buys nothing. 500 fsyncs cost ~100 ms here.
        await writeFileAtomic(file.path, file.text, FILE_MODE, owner, false);
      }
    }),
  );
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

import type { Stats } from 'node:fs';
import { open as openAsync, rename as renameAsyncFs, symlink as symlinkAsync } from 'node:fs/promises';
import { closeSync, constants, fchmodSync, fchownSync, fstatSync, fsyncSync, ftruncateSync, linkSync, lstatSync, openSync, readdirSync, readFileSync, readlinkSync, renameSync, rmdirSync, symlinkSync, unlinkSync, writeSync, type BigIntStats } from 'node:fs';

/**
 * Identity, not paths. Everything gpu-boot does with privilege or destruction (write, chmod,
 * chown, rename, unlink, shred) goes through a handle on a folder it opened without following
 * a link (`/proc/self/fd/N/name`, Linux's openat), and acts on an object only when its device
 * and inode are those gpu-boot recorded when it created it. A path swapped after the handle
 * was opened changes nothing; a record that names something else is not acted on.
 */

const { O_RDONLY, O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW, O_DIRECTORY, O_NONBLOCK } = constants;

/** `dev:ino` of a file system object: what "the same object" means here. */
export type FileId = string;

export function fileId(stat: BigIntStats): FileId {
  return `${stat.dev}:${stat.ino}`;
}

export function euid(): number {
  return process.geteuid?.() ?? -1;
}

export interface Owner {
  uid: number;
  gid: number;
}

/** A name inside one folder: one path component, never `.` or `..`. */
export function isPlainName(name: string): boolean {
  return name.length > 0 && !name.includes('/') && name !== '.' && name !== '..' && !name.includes('\0');
}

/** A folder held open: every operation inside it goes through the handle, not the path. */
export class DirHandle {
  private constructor(
    readonly fd: number,
    /** The path it was opened by (for messages only: it may lead elsewhere by now). */
    readonly path: string,
    readonly stat: BigIntStats,
  ) {}

  /** Open a folder whose last component must not be a link (ELOOP, ENOTDIR otherwise). */
  static openNoFollow(dirPath: string): DirHandle {
    return DirHandle.openWith(dirPath, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
  }

  /** Open a folder, following links (a node folder may be a link inside custom_nodes). */
  static open(dirPath: string): DirHandle {
    return DirHandle.openWith(dirPath, O_RDONLY | O_DIRECTORY);
  }

  private static openWith(dirPath: string, flags: number): DirHandle {
    const fd = openSync(dirPath, flags);
    try {
      return new DirHandle(fd, dirPath, fstatSync(fd, { bigint: true }));
    } catch (error) {
      closeSync(fd);
      throw error;
    }
  }

  get id(): FileId {
    return fileId(this.stat);
  }

  /** The path of `name` inside this very folder, wherever it has been moved since. */
  at(name: string): string {
    if (!isPlainName(name)) throw new Error(`not a plain file name: ${JSON.stringify(name)}`);
    return `/proc/self/fd/${this.fd}/${name}`;
  }

  /** Where the folder is now (the kernel's view of the handle). */
  realPath(): string {
    return readlinkSync(`/proc/self/fd/${this.fd}`);
  }

  lstat(name: string): BigIntStats | undefined {
    // No entry is an answer, not an error: no exception (and its stack) is made for it. Most of the
    // lookups of a boot are of names not there yet (each node's .env), ~4x the cost when thrown.
    return lstatSync(this.at(name), { bigint: true, throwIfNoEntry: false });
  }

  names(): string[] {
    return readdirSync(`/proc/self/fd/${this.fd}`);
  }

  /** Create `name` exclusively (never through a link), write all of `data`, chmod and chown it; returns its id. */
  createFile(name: string, data: Buffer, mode: number, owner?: Owner, durable = false): FileId {
    let fd: number | undefined = openSync(this.at(name), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode);
    try {
      writeAll(fd, data);
      // Checked before the file is handed to its owner, who could change it from then on.
      const stat = fstatSync(fd, { bigint: true });
      // Every byte written is counted in the size; a smaller file is a write that did not land.
      if (stat.size !== BigInt(data.length)) throw Object.assign(new Error('short write'), { code: 'ENOSPC' });
      fchmodSync(fd, mode);
      if (owner) fchownSync(fd, owner.uid, owner.gid);
      if (durable) fsyncSync(fd);
      closeSync(fd);
      fd = undefined;
      return fileId(stat);
    } catch (error) {
      if (fd !== undefined) closeSync(fd);
      this.unlinkQuietly(name);
      throw error;
    }
  }

  /**
   * createFile through the thread pool: hundreds of files on a journaling disk are created far
   * faster in parallel than one after another (the same checks: every byte, size before chown).
   */
  async createFileAsync(name: string, data: Buffer, mode: number, owner?: Owner): Promise<FileId> {
    const handle = await openAsync(this.at(name), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode);
    try {
      for (let offset = 0; offset < data.length; ) {
        const { bytesWritten } = await handle.write(data, offset, data.length - offset, offset);
        if (bytesWritten <= 0) throw Object.assign(new Error('short write'), { code: 'ENOSPC' });
        offset += bytesWritten;
      }
      const stat = await handle.stat({ bigint: true });
      if (stat.size !== BigInt(data.length)) throw Object.assign(new Error('short write'), { code: 'ENOSPC' });
      await handle.chmod(mode);
      if (owner) await handle.chown(owner.uid, owner.gid);
      await handle.close();
      return fileId(stat);
    } catch (error) {
      await handle.close().catch(() => undefined);
      this.unlinkQuietly(name);
      throw error;
    }
  }

  /** createLink through the thread pool (see createFileAsync). */
  async createLinkAsync(target: string, name: string): Promise<FileId> {
    await symlinkAsync(target, this.at(name));
    // The link's own identity at once, synchronously: a cached lookup (~3 us), where one more trip
    // through the thread pool cost the boot's one thread more than that for each of 500 links.
    const stat = this.lstat(name);
    if (!stat?.isSymbolicLink()) throw Object.assign(new Error(`${name} changed while being created`), { code: 'EEXIST' });
    return fileId(stat);
  }

  async renameAsync(from: string, to: string): Promise<void> {
    await renameAsyncFs(this.at(from), this.at(to));
  }

  /** A new link `name` -> `target` (exclusive); returns the link's id. */
  createLink(target: string, name: string): FileId {
    symlinkSync(target, this.at(name));
    const stat = this.lstat(name);
    if (!stat?.isSymbolicLink()) throw Object.assign(new Error(`${name} changed while being created`), { code: 'EEXIST' });
    return fileId(stat);
  }

  rename(from: string, to: string): void {
    renameSync(this.at(from), this.at(to));
  }

  /** A hard link (never following a link: linkat without AT_SYMLINK_FOLLOW). */
  hardLink(from: string, to: string): void {
    linkSync(this.at(from), this.at(to));
  }

  unlinkQuietly(name: string): void {
    try {
      unlinkSync(this.at(name));
    } catch {
      // gone already
    }
  }

  /** Unlink `name` only if it is still the object `id`. */
  unlinkIf(name: string, id: FileId): boolean {
    const stat = this.lstat(name);
    if (!stat || fileId(stat) !== id) return false;
    unlinkSync(this.at(name));
    return true;
  }

  /**
   * Overwrite a regular file with zeros (fsync when `durable`), empty it and unlink it, only when
   * `accept` says the opened object is ours. A link is never written through; a FIFO is never opened.
   * At most `limit` bytes are overwritten, in chunks: a file its owner grew (`truncate -s 5G`) can
   * neither exhaust memory nor fail the wipe. An overwrite that fails still ends in the unlink.
   */
  shred(name: string, accept: (stat: BigIntStats) => boolean, durable: boolean, limit = SHRED_LIMIT): 'gone' | 'shredded' | 'refused' {
    const before = this.lstat(name);
    if (!before) return 'gone';
    if (!before.isFile() || !accept(before)) return 'refused';
    const fd = openSync(this.at(name), O_WRONLY | O_NOFOLLOW | O_NONBLOCK);
    let id: FileId;
    try {
      const stat = fstatSync(fd, { bigint: true });
      id = fileId(stat);
      if (id !== fileId(before) || !stat.isFile()) return 'refused';
      const size = Math.min(Number(stat.size), limit);
      try {
        for (let offset = 0; offset < size; offset += ZEROS.length) writeAll(fd, ZEROS.subarray(0, Math.min(ZEROS.length, size - offset)), offset);
        if (durable) fsyncSync(fd);
      } catch {
        // A full disk cannot refuse zeros over written bytes, only over holes: the unlink still frees it.
      }
      ftruncateSync(fd, 0);
    } finally {
      closeSync(fd);
    }
    return this.unlinkIf(name, id) ? 'shredded' : 'refused';
  }

  /** Read a small regular file that is not a link. */
  readFile(name: string): { text: string; stat: BigIntStats } {
    const fd = openSync(this.at(name), O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
    try {
      const stat = fstatSync(fd, { bigint: true });
      if (!stat.isFile()) throw Object.assign(new Error(`${name} is not a regular file`), { code: 'EFTYPE' });
      return { text: readFileSync(fd, 'utf8'), stat };
    } finally {
      closeSync(fd);
    }
  }

  fsync(): void {
    fsyncSync(this.fd);
  }

  /** Remove the empty folder `name` inside this one, if it is still `id`. */
  rmdirIf(name: string, id: FileId): boolean {
    const stat = this.lstat(name);
    if (!stat || !stat.isDirectory() || fileId(stat) !== id) return false;
    rmdirSync(this.at(name));
    return true;
  }

  close(): void {
    try {
      closeSync(this.fd);
    } catch {
      // closed already
    }
  }
}

/** The most a shred overwrites: far above any .env (a secret file is at most 1 MiB). */
export const SHRED_LIMIT = 16 * 1024 * 1024;
const ZEROS = Buffer.alloc(64 * 1024);

/**
 * Read a small regular file by path (links followed) without ever blocking on a FIFO or a device
 * and without reading more than `limit` bytes: what the instances' user can put at a path gpu-boot reads.
 */
export function readRegularFile(file: string, limit: number, trust?: (stat: Stats) => string | undefined): Buffer {
  const fd = openSync(file, O_RDONLY | O_NONBLOCK);
  try {
    const stat = fstatSync(fd);
    if (stat.isDirectory()) throw Object.assign(new Error(`${file} is a folder`), { code: 'EISDIR' });
    if (!stat.isFile()) throw Object.assign(new Error(`${file} is not a regular file`), { code: 'EFTYPE' });
    if (stat.size > limit) throw Object.assign(new Error(`${file} is larger than ${limit} bytes`), { code: 'EFBIG' });
    const distrust = trust?.(stat);
    if (distrust) throw Object.assign(new Error(distrust), { code: 'ENOTOURS' });
    return readFileSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** write(2) until every byte is down: a short write is retried, and one that writes nothing is a full disk. */
export function writeAll(fd: number, data: Buffer, position?: number): void {
  let offset = 0;
  while (offset < data.length) {
    const written = writeSync(fd, data, offset, data.length - offset, position === undefined ? null : position + offset);
    if (written <= 0) throw Object.assign(new Error('short write'), { code: 'ENOSPC' });
    offset += written;
  }
}

/** May `owner` create, rename and remove entries in a folder with this stat? (What gpu-boot as root does there must be what they could do.) */
export function ownerMayWrite(stat: BigIntStats, owner: Owner): boolean {
  const mode = Number(stat.mode);
  if (Number(stat.uid) === owner.uid) return (mode & 0o300) === 0o300;
  // Sticky: they could not rename over or remove an entry that is not theirs; gpu-boot would.
  if (mode & 0o1000) return false;
  if (Number(stat.gid) === owner.gid) return (mode & 0o030) === 0o030;
  return (mode & 0o003) === 0o003;
}

/** Group- or other-writable: someone else can change what is in it. */
export function writableByOthers(stat: BigIntStats): boolean {
  return (Number(stat.mode) & 0o022) !== 0;
}

/** As root: a file only root can write (what decides what root does must not be another user's). */
export function rootAlone(stat: { uid: number; mode: number }): string | undefined {
  if (stat.uid !== 0) return `it belongs to uid ${stat.uid}`;
  if ((stat.mode & 0o022) !== 0) return 'others can write it';
  return undefined;
}

/** Fchmod and fchown a folder through its handle. */
export function setDirAccess(dir: DirHandle, mode: number, owner?: { uid: number; gid: number }): void {
  if (owner) fchownSync(dir.fd, owner.uid, owner.gid);
  fchmodSync(dir.fd, mode);
}

import { randomBytes } from 'node:crypto';
import { lstatSync, mkdirSync, realpathSync } from 'node:fs';
import path from 'node:path';
import * as z from 'zod';
import { BootError, ConfigError, ExitCode } from '../errors.js';
import { DirHandle, euid, fileId, isPlainName, ownerMayWrite, writableByOthers, type FileId, type Owner } from './owned.js';
import { createSecretsFolder, RunIdSchema, thisRun, type SecretsFolder, type Storage } from './storage.js';
import { withHeader } from '../secrets/dotenv-format.js';

export type { Owner } from './owned.js';
export type { Storage } from './storage.js';

/**
 * The one place this program writes files (wipe.ts is the one place it removes them). Each
 * write goes through a handle on the folder it lands in, never through a path that could have
 * been swapped, and every object gpu-boot puts in place is recorded by identity (device and
 * inode) in the state folder *before* it becomes visible, so that `wipe` or the next `start`
 * can remove exactly it after a crash, and nothing else. A .env that was already there (shipped
 * in the image, or the user's) is kept aside as `.env.gpu-boot-orig` and put back on wipe.
 */

export const ENV_FILE_NAME = '.env';
export const BACKUP_SUFFIX = '.gpu-boot-orig';
export const TEMP_PREFIX = '.env.gpu-boot-tmp-';
export const RECORD_FILE_NAME = 'written-files.json';
export const PLAN_FILE_NAME = 'plan.json';
export const FILE_MODE = 0o600;

/** Temp names: each one unguessable, even from another one seen in a node folder (O_EXCL guards the rest). */
function tempName(): string {
  return `${TEMP_PREFIX}${randomBytes(9).toString('hex')}`;
}

const Id = z.string().regex(/^\d+:\d+$/);
const PlainName = z.string().refine(isPlainName, { error: 'must be a plain file name' });
const EntrySchema = z.object({
  node: PlainName,
  /** custom_nodes/<node>/.env, as the manifest names it. */
  path: z.string().refine((p) => path.isAbsolute(p) && path.basename(p) === ENV_FILE_NAME, { error: 'must be an absolute path to a .env' }),
  /** The node folder the entries below are in. */
  dir: Id,
  /** What gpu-boot put (or is about to put) at `path`: a link into the secrets folder, or the file itself. */
  ids: z.array(Id),
  /** Temp names in the node folder that a crash may leave (each one of `ids` once it exists). */
  temps: z.array(PlainName.refine((n) => n.startsWith(TEMP_PREFIX), { error: `must start with ${TEMP_PREFIX}` })),
  /** The content's name in the secrets folder (tmpfs). */
  target: PlainName.optional(),
  /** The user's own .env, kept aside (a hard link of it) in the node folder, and its identity. */
  backup: z.object({ name: PlainName.refine((n) => n.startsWith(ENV_FILE_NAME + BACKUP_SUFFIX), { error: 'is not a kept-aside name' }), id: Id }).optional(),
});
const RecordSchema = z.object({
  version: z.literal(2),
  pid: z.number().int(),
  run: RunIdSchema,
  startedAt: z.string(),
  /** The instances' user, when gpu-boot ran as root: files of theirs are the ones it made. */
  owner: z.object({ uid: z.number().int(), gid: z.number().int() }).optional(),
  /** The run's secrets folder (tmpfs) and its identity. */
  storage: z.object({ path: z.string().refine((p) => path.isAbsolute(p), { error: 'must be absolute' }), id: Id }).optional(),
  files: z.array(EntrySchema),
});
export type WriteRecord = z.infer<typeof RecordSchema>;
export type RecordEntry = z.infer<typeof EntrySchema>;

/** A file could not be written: exit 73, the path and the reason named (a read-only or full disk, say). */
export class FileWriteError extends BootError {
  constructor(message: string) {
    super(ExitCode.cantCreate, message);
    this.name = 'FileWriteError';
  }
}

/** Some new files are in place and some are not: `done` names those that are. */
export class PartialWriteError extends FileWriteError {
  constructor(
    message: string,
    readonly done: string[],
  ) {
    super(message);
    this.name = 'PartialWriteError';
  }
}

/** The state folder or its record is not gpu-boot's (planted, replaced, forged): exit 65, nothing touched. */
export class NotOursError extends BootError {
  constructor(message: string, problems: string[] = []) {
    super(ExitCode.dataError, `${message}; nothing was touched`, problems);
    this.name = 'NotOursError';
  }
}

export function errnoText(error: unknown): string {
  const e = error as NodeJS.ErrnoException;
  if (e.code === 'ENOSPC') return 'no space left on the device';
  if (e.code === 'EROFS') return 'the file system is read-only';
  if (e.code === 'EACCES' || e.code === 'EPERM') return 'permission denied';
  if (e.code === 'EDQUOT') return 'disk quota exceeded';
  return e.code ?? e.message;
}

/**
 * The state folder, held open. Made by gpu-boot (mode 0700) or, when it exists, proven to be
 * its own: a folder (not a link) of this uid that no one else can write. As root the instances'
 * user can then neither read nor change what is in it; whatever they can rename into its place
 * is refused.
 */
export class StateDir {
  private constructor(readonly dir: DirHandle) {}

  get path(): string {
    return this.dir.path;
  }

  /** Open the existing folder (undefined if there is none), refusing one that is not ours. */
  static open(stateDir: string): StateDir | undefined {
    let dir: DirHandle;
    try {
      dir = DirHandle.openNoFollow(stateDir);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      // O_NOFOLLOW with O_DIRECTORY answers ENOTDIR for a link, and for a path through a file: lstat tells which.
      let what: 'none' | 'link' | 'other';
      try {
        const found = lstatSync(stateDir);
        what = found.isSymbolicLink() ? 'link' : 'other';
      } catch {
        what = 'none';
      }
      if (what === 'none' && (code === 'ENOENT' || code === 'ENOTDIR')) return undefined;
      if (what === 'link') throw new NotOursError(`the state folder ${stateDir} is a link, not gpu-boot's folder`, [`remove the link ${stateDir}, or set GPU_BOOT_STATE_DIR`]);
      if (code === 'ENOTDIR' || code === 'ELOOP') throw new NotOursError(`the state folder ${stateDir} is not a folder`, [`remove ${stateDir}, or set GPU_BOOT_STATE_DIR`]);
      throw new FileWriteError(`cannot open the state folder ${stateDir}: ${errnoText(error)}`);
    }
    const why = Number(dir.stat.uid) !== euid() ? `it belongs to uid ${dir.stat.uid}, not to gpu-boot's uid ${euid()}` : writableByOthers(dir.stat) ? 'others can write it (group or world write bit)' : undefined;
    if (why) {
      dir.close();
      throw new NotOursError(`the state folder ${stateDir} is not gpu-boot's: ${why}`, [`inspect and remove ${stateDir}, or set GPU_BOOT_STATE_DIR`]);
    }
    return new StateDir(dir);
  }

  static create(stateDir: string): StateDir {
    try {
      mkdirSync(path.dirname(stateDir), { recursive: true, mode: 0o755 });
      mkdirSync(stateDir, { mode: 0o700 });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw new FileWriteError(`cannot create the state folder ${stateDir}: ${errnoText(error)}`);
    }
    const opened = StateDir.open(stateDir);
    if (!opened) throw new FileWriteError(`cannot create the state folder ${stateDir}: it vanished as it was made`);
    return opened;
  }

  /** Where `name` is, through the handle (what PM2 reads the plan by). */
  at(name: string): string {
    return this.dir.at(name);
  }

  /** Temp file, fsync, rename over `name`, fsync the folder: the old content or the new, never half. */
  writeFileAtomic(name: string, text: string, mode: number): void {
    const temp = tempName();
    try {
      this.dir.createFile(temp, Buffer.from(text, 'utf8'), mode, undefined, true);
      this.dir.rename(temp, name);
      this.dir.fsync();
    } catch (error) {
      this.dir.unlinkQuietly(temp);
      throw new FileWriteError(`cannot write ${path.join(this.path, name)}: ${errnoText(error)}`);
    }
  }

  /** The record of written files, proven to be one this uid wrote; undefined when there is none. */
  readRecord(): WriteRecord | undefined {
    const where = path.join(this.path, RECORD_FILE_NAME);
    let read;
    try {
      read = this.dir.readFile(RECORD_FILE_NAME);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return undefined;
      if (code === 'ELOOP' || code === 'EFTYPE' || code === 'ENXIO') throw new NotOursError(`the record ${where} is not a regular file`, [`inspect and remove ${where}`]);
      throw new FileWriteError(`cannot read ${where}: ${errnoText(error)}`);
    }
    const { stat } = read;
    if (Number(stat.uid) !== euid() || stat.nlink !== 1n || writableByOthers(stat)) {
      throw new NotOursError(`the record ${where} is not one gpu-boot wrote (owner uid ${stat.uid}, ${stat.nlink} link(s), mode ${(Number(stat.mode) & 0o777).toString(8)})`, [`inspect and remove ${where}`]);
    }
    let json: unknown;
    try {
      json = JSON.parse(read.text);
    } catch {
      throw new NotOursError(`the record ${where} is damaged (not JSON)`, [`remove the .env files it lists by hand if they are gpu-boot's, then delete ${where}`]);
    }
    if ((json as { version?: unknown } | null)?.version === 1) {
      throw new NotOursError(`the record ${where} was written by an older gpu-boot, whose files cannot be proven by identity`, [`remove the .env links it lists by hand, then delete ${where}`]);
    }
    const parsed = RecordSchema.safeParse(json);
    if (!parsed.success) {
      throw new NotOursError(
        `the record ${where} is not one gpu-boot wrote`,
        parsed.error.issues.map((i) => `${where}: ${i.path.map(String).join('.') || '(top level)'}: ${i.message}`),
      );
    }
    return parsed.data;
  }

  writeRecord(record: WriteRecord): void {
    this.writeFileAtomic(RECORD_FILE_NAME, `${JSON.stringify(record)}\n`, 0o600);
  }

  /** Remove `name` if it is a regular file of this uid. */
  removeOwnFile(name: string): boolean {
    const stat = this.dir.lstat(name);
    if (!stat?.isFile() || Number(stat.uid) !== euid()) return false;
    return this.dir.unlinkIf(name, fileId(stat));
  }

  /** Remove the folder itself when it is empty and still the one opened. */
  removeIfEmpty(): void {
    try {
      if (this.dir.names().length) return;
      const parent = DirHandle.open(path.dirname(this.path));
      try {
        parent.rmdirIf(path.basename(this.path), this.dir.id);
      } finally {
        parent.close();
      }
    } catch {
      // not empty, or gone
    }
  }

  close(): void {
    this.dir.close();
  }
}

export interface NodeFile {
  node: string;
  /** custom_nodes/<node>/.env */
  path: string;
  text: string;
}

/**
 * Refuse a node folder that is missing, not a folder, or a link leading outside
 * custom_nodes; returns the .env path inside it. Synchronous: the node folders are looked at one
 * after the other before anything else runs, and 500 lstat(2) through the thread pool (each missing
 * one an Error object) cost ~70 ms of CPU where these cost a few (bench/RESULTS.md).
 */
export function nodeEnvPath(customNodesPath: string, node: string): { path?: string; skip?: string; error?: string } {
  const dir = path.join(customNodesPath, node);
  let stat;
  try {
    stat = lstatSync(dir, { throwIfNoEntry: false });
  } catch (error) {
    return { error: `node "${node}": cannot inspect ${dir}: ${errnoText(error)}` };
  }
  if (!stat) return { skip: `${dir} is not installed` };
  if (stat.isSymbolicLink()) {
    let real = '';
    try {
      real = realpathSync(dir);
    } catch {
      // a dangling link: refused below
    }
    if (!real || !real.startsWith(`${realpathSync(customNodesPath)}${path.sep}`)) {
      return { error: `node "${node}": ${dir} is a link that leads outside ${customNodesPath}; refusing to write through it` };
    }
  } else if (!stat.isDirectory()) {
    return { error: `node "${node}": ${dir} is not a folder` };
  }
  return { path: path.join(dir, ENV_FILE_NAME) };
}

function kindOf(stat: { isFIFO(): boolean; isSocket(): boolean; isDirectory(): boolean }): string {
  return stat.isFIFO() ? 'a FIFO' : stat.isSocket() ? 'a socket' : stat.isDirectory() ? 'a folder' : 'not a regular file';
}

/** Up to this many kept-aside names per node (`.env.gpu-boot-orig`, `-2`, ...) before gpu-boot refuses. */
const MAX_BACKUPS = 20;

/**
 * Every node's .env, written through handles, recorded by identity. Owns the run's secrets
 * folder and the state folder; `wipe()` (wipe.ts) removes exactly what it put in place.
 */
/** A node's content file on tmpfs could not be written: its path, and whose it is (the name is a number). */
function contentWriteError(secrets: SecretsFolder, target: string, file: NodeFile, error: unknown): FileWriteError {
  return new FileWriteError(`cannot write ${path.join(secrets.path, target)} (node "${file.node}"'s .env): ${errnoText(error)}`);
}

export class FileSession {
  readonly record: WriteRecord;
  secrets: SecretsFolder | undefined;
  private readonly entries = new Map<string, RecordEntry>();
  /** Files in place: each node folder stays open for the run, so a folder renamed meanwhile is still rewritten and wiped. */
  readonly held = new Map<string, DirHandle>();
  /**
   * On tmpfs each node's content file is named by a number of this session, never reused: the
   * link's target (`<base>/gpu-boot-<12>/<n>.env`, 36-38 bytes on /dev/shm up to 999 nodes) then
   * stays under the 60 bytes ext4 keeps in the inode, whatever the node's name. A longer target
   * takes a block of its own: twice the time to create and, on a disk mounted with `discard`, eight
   * times the time to remove (bench/RESULTS.md).
   */
  private contents = 0;

  constructor(
    readonly state: StateDir,
    readonly storage: Storage,
    readonly owner?: Owner,
  ) {
    this.record = { version: 2, pid: process.pid, run: thisRun(), startedAt: new Date().toISOString(), ...(owner ? { owner } : {}), files: [] };
  }

  /** What a node's file holds: on tmpfs the rendered text; in place, the header first (see HEADER). */
  private bytesOf(file: NodeFile): Buffer {
    return Buffer.from(this.storage.kind === 'tmpfs' ? file.text : withHeader(file.text), 'utf8');
  }

  writePlan(text: string): void {
    this.state.writeFileAtomic(PLAN_FILE_NAME, text, 0o644);
  }

  /** The plan through the state folder's handle: PM2 (in this process) reads it there, whatever became of the path. */
  get planFile(): string {
    return this.state.at(PLAN_FILE_NAME);
  }

  /** Entry for a .env this session wrote. */
  entry(file: string): RecordEntry | undefined {
    return this.entries.get(file);
  }

  /**
   * Write `files`: the first time for a node, keep its own .env aside and put the generated one
   * (or a link to it) in place; for a node already written (rotation), replace the content.
   * Two phases: everything is written and checked first, invisibly (temp names); only then is
   * it renamed into place. A failure in the first phase leaves every current file as it was.
   */
  async write(files: NodeFile[]): Promise<void> {
    const fresh = files.filter((f) => !this.entries.has(f.path));
    const known = files.filter((f) => this.entries.has(f.path));
    const opened = new Map<string, DirHandle>();
    const undo: Array<() => void> = [];
    const commits: Array<{ path: string; run: () => void | Promise<void> }> = [];
    const added: RecordEntry[] = [];
    try {
      this.checkFolders(fresh, opened);
      if (this.storage.kind === 'tmpfs' && !this.secrets && fresh.length) {
        try {
          this.secrets = createSecretsFolder(this.storage.base, this.owner);
        } catch (error) {
          throw new FileWriteError(`cannot create a secrets folder in ${this.storage.base}: ${errnoText(error)}`);
        }
        this.record.storage = { path: this.secrets.path, id: this.secrets.dir.id };
      }
      const secrets = this.storage.kind === 'tmpfs' ? this.secrets : undefined;

      // Phase 1: keep each fresh node's own .env aside (a hard link: same inode, mode, owner), and
      // name every temp in the record before any of them exists.
      for (const file of fresh) {
        const dir = opened.get(file.path)!;
        const entry: RecordEntry = { node: file.node, path: file.path, dir: dir.id, ids: [], temps: [tempName()], ...(secrets ? { target: `${(this.contents += 1)}.env` } : {}) };
        const current = dir.lstat(ENV_FILE_NAME);
        if (current) {
          entry.backup = this.keepAside(dir, file, fileId(current));
          const kept = entry.backup;
          undo.push(() => dir.unlinkIf(kept.name, kept.id));
        }
        added.push(entry);
        this.record.files.push(entry);
        this.entries.set(entry.path, entry);
      }
      const inPlaceKnown = new Map<string, string>();
      for (const file of known) {
        const entry = this.entries.get(file.path)!;
        if (secrets && entry.target) continue;
        // The new file's temp, and the name the old one is kept under until it is shredded.
        const temp = tempName();
        const old = tempName();
        entry.temps.push(temp, old);
        inPlaceKnown.set(file.path, temp);
        undo.push(() => {
          entry.temps = entry.temps.filter((t) => t !== temp && t !== old);
        });
      }
      if (added.length || inPlaceKnown.size) this.state.writeRecord(this.record);

      // Phase 2: every byte, under temp names; each temp's identity is recorded before it can become visible.
      // In parallel through the thread pool: links and files on the workspace's disk are journal
      // operations, several times faster side by side (bench/RESULTS.md).
      const created = await Promise.allSettled(
        fresh.map(async (file) => {
          const dir = opened.get(file.path)!;
          const entry = this.entries.get(file.path)!;
          const temp = entry.temps[0]!;
          const bytes = this.bytesOf(file);
          if (secrets) {
            const target = entry.target!;
            try {
              // tmpfs: memory, nothing to wait for; synchronous is fastest.
              secrets.dir.createFile(target, bytes, FILE_MODE, this.owner);
            } catch (error) {
              throw contentWriteError(secrets, target, file, error);
            }
            undo.push(() => secrets.dir.shred(target, () => true, false));
          }
          let id: FileId;
          try {
            // In place, no fsync: after a power cut the next start wipes every file the (durable)
            // record lists and writes them again, so their own durability buys nothing.
            id = secrets ? await dir.createLinkAsync(path.join(secrets.path, entry.target!), temp) : await dir.createFileAsync(temp, bytes, FILE_MODE, this.owner);
          } catch (error) {
            throw new FileWriteError(`cannot ${secrets ? 'link' : 'write'} ${file.path}: ${errnoText(error)}`);
          }
          entry.ids.push(id);
          undo.push(() => (secrets ? dir.unlinkIf(temp, id) : dir.shred(temp, (st) => fileId(st) === id, false)));
          commits.push({
            path: file.path,
            run: async () => {
              await dir.renameAsync(temp, ENV_FILE_NAME);
              entry.temps = [];
            },
          });
        }),
      );
      const failed = created.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) throw failed.reason;
      for (const file of known) {
        const entry = this.entries.get(file.path)!;
        const bytes = this.bytesOf(file);
        const temp = inPlaceKnown.get(file.path);
        if (temp === undefined) {
          // On tmpfs the link stays; its content is replaced in the folder only gpu-boot can write,
          // and the old content is zeroed once the new one is in place (a rename alone frees it unread).
          const contentTemp = tempName();
          const oldContent = tempName();
          try {
            secrets!.dir.createFile(contentTemp, bytes, FILE_MODE, this.owner);
          } catch (error) {
            throw contentWriteError(secrets!, entry.target!, file, error);
          }
          undo.push(() => secrets!.dir.shred(contentTemp, () => true, false));
          commits.push({
            path: file.path,
            run: () => {
              const before = secrets!.dir.lstat(entry.target!);
              if (before) secrets!.dir.hardLink(entry.target!, oldContent);
              secrets!.dir.rename(contentTemp, entry.target!);
              if (before) secrets!.dir.shred(oldContent, (st) => fileId(st) === fileId(before), false);
            },
          });
          continue;
        }
        const old = entry.temps.at(-1)!;
        const dir = this.held.get(file.path) ?? this.reopen(entry);
        if (!this.held.has(file.path)) opened.set(file.path, dir);
        let newId: FileId;
        try {
          newId = dir.createFile(temp, bytes, FILE_MODE, this.owner);
        } catch (error) {
          throw new FileWriteError(`cannot write ${file.path}: ${errnoText(error)}`);
        }
        entry.ids.push(newId);
        undo.push(() => {
          dir.shred(temp, (st) => fileId(st) === newId, false);
          entry.ids = entry.ids.filter((i) => i !== newId);
        });
        commits.push({
          path: file.path,
          run: () => {
            // The old file (ours: its identity is recorded) keeps a second name until it is zeroed.
            const before = dir.lstat(ENV_FILE_NAME);
            const oldId = before && entry.ids.includes(fileId(before)) ? fileId(before) : undefined;
            if (oldId) dir.hardLink(ENV_FILE_NAME, old);
            dir.rename(temp, ENV_FILE_NAME);
            if (oldId) dir.shred(old, (st) => fileId(st) === oldId, true);
            entry.ids = [newId];
            entry.temps = entry.temps.filter((t) => t !== temp && t !== old);
          },
        });
      }
      if (added.length || inPlaceKnown.size) this.state.writeRecord(this.record);
    } catch (error) {
      // Nothing of this write becomes visible: its temps, contents and kept-aside links go, and so do
      // the entries of nodes written for the first time (a later write starts them afresh).
      for (const step of undo.reverse()) {
        try {
          step();
        } catch {
          // best effort: what remains is recorded and wiped at the end
        }
      }
      if (added.length) {
        this.record.files = this.record.files.filter((e) => !added.includes(e));
        for (const entry of added) this.entries.delete(entry.path);
        try {
          this.state.writeRecord(this.record);
        } catch {
          // the record on disk still lists them: the wipe finds them gone
        }
      }
      for (const dir of opened.values()) dir.close();
      throw error instanceof BootError ? error : new FileWriteError(`cannot write the custom nodes' .env files: ${errnoText(error)}`);
    }
    // Phase 3: into place.
    const done: string[] = [];
    try {
      const renamed = await Promise.allSettled(
        commits.map(async (commit) => {
          await commit.run();
          done.push(commit.path);
        }),
      );
      const failed = renamed.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) throw failed.reason;
    } catch (error) {
      throw new PartialWriteError(`cannot put the new .env files in place (${done.length} of ${commits.length} done): ${errnoText(error)}`, done);
    } finally {
      for (const [file, dir] of opened) {
        // In place, a fresh node's folder stays held for the rewrites and the wipe.
        if (this.storage.kind === 'in-place' && added.some((e) => e.path === file) && !this.held.has(file)) this.held.set(file, dir);
        else if (!this.held.has(file) || this.held.get(file) !== dir) dir.close();
      }
    }
  }

  /** Phase 0, for nodes written the first time: open each folder and check it before anything is written. */
  private checkFolders(fresh: NodeFile[], opened: Map<string, DirHandle>): void {
    const problems: string[] = [];
    const roots = new Map<string, string>();
    const seen = new Map<FileId, string>();
    for (const file of fresh) {
      const folder = path.dirname(file.path);
      try {
        const dir = DirHandle.open(folder);
        opened.set(file.path, dir);
        const customNodes = path.dirname(folder);
        let root = roots.get(customNodes);
        if (root === undefined) {
          root = realpathSync(customNodes);
          roots.set(customNodes, root);
        }
        const real = dir.realPath();
        if (!real.startsWith(`${root}${path.sep}`)) problems.push(`node "${file.node}": ${folder} now leads to ${real}, outside ${customNodes}; refusing to write there`);
        if (seen.has(dir.id)) problems.push(`node "${file.node}": ${folder} is the same folder as node "${seen.get(dir.id)}"'s; two nodes cannot share one .env`);
        seen.set(dir.id, file.node);
        if (this.owner && !ownerMayWrite(dir.stat, this.owner)) {
          problems.push(`node "${file.node}": ${folder} is not writable by the instances' user (uid ${this.owner.uid}); as root, gpu-boot writes only where that user could: chown it to them`);
        }
        const current = dir.lstat(ENV_FILE_NAME);
        if (current && !current.isFile() && !current.isSymbolicLink()) {
          problems.push(`node "${file.node}": ${file.path} is ${kindOf(current)}; refusing to replace it (move it away)`);
        }
      } catch (error) {
        throw new FileWriteError(`cannot open ${folder}: ${errnoText(error)}`);
      }
    }
    if (problems.length) throw new ConfigError(`cannot write the custom nodes' .env files (${problems.length} problem${problems.length === 1 ? '' : 's'})`, problems.sort());
  }

  /** Reopen a node folder this session wrote into, proven by its identity. */
  private reopen(entry: RecordEntry): DirHandle {
    const folder = path.dirname(entry.path);
    let dir: DirHandle;
    try {
      dir = DirHandle.open(folder);
    } catch (error) {
      throw new FileWriteError(`cannot open ${folder}: ${errnoText(error)}`);
    }
    if (dir.id !== entry.dir) {
      dir.close();
      throw new FileWriteError(`${folder} is not the folder gpu-boot wrote to at start (it was replaced); not writing there`);
    }
    return dir;
  }

  /**
   * Keep the current .env aside as a hard link under the first free kept-aside name: an earlier
   * kept-aside file (left when someone edited .env during a run) is never overwritten.
   */
  private keepAside(dir: DirHandle, file: NodeFile, id: FileId): { name: string; id: FileId } {
    for (let n = 1; n <= MAX_BACKUPS; n += 1) {
      const name = `${ENV_FILE_NAME}${BACKUP_SUFFIX}${n === 1 ? '' : `-${n}`}`;
      try {
        dir.hardLink(ENV_FILE_NAME, name);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'EEXIST') continue;
        throw new FileWriteError(`cannot keep aside ${file.path}: ${errnoText(error)}`);
      }
      const kept = dir.lstat(name);
      if (!kept || fileId(kept) !== id) {
        dir.unlinkQuietly(name);
        throw new FileWriteError(`${file.path} changed while being kept aside; not writing over it`);
      }
      return { name, id };
    }
    throw new ConfigError(`cannot keep aside ${file.path}`, [
      `${path.dirname(file.path)} already holds ${MAX_BACKUPS} kept-aside copies (${ENV_FILE_NAME}${BACKUP_SUFFIX}*): keep the one you need as .env and remove the others`,
    ]);
  }

  close(): void {
    for (const dir of this.held.values()) dir.close();
    this.held.clear();
    this.secrets?.dir.close();
    this.state.close();
  }
}

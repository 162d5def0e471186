import { lstatSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { ConfigError } from '../errors.js';
import { FileWriteError } from './env-files.js';
import { DirHandle, fileId, setDirAccess, type Owner } from './owned.js';
import { INSTANCE_FOLDERS, type InstancePlan, type Plan } from '../instances/plan.js';

/**
 * The instances' own folders under $WORKSPACE_PATH/instances/<instance>/: created (and handed to
 * the instances' user) before they start, their temp emptied when they stop. The workspace may be
 * writable by the instances' user, who could plant a link where a folder is expected: below
 * WORKSPACE_PATH every folder is opened without following a link (a link is refused, never
 * followed) and chowned through its handle, never by path.
 */

const FOLDER_MODE = 0o755;
/** Deeper than anything ComfyUI writes in temp: past it, the rest is left with a problem. */
const MAX_DEPTH = 64;

type Instances = Pick<Plan, 'instances'>;

function code(error: unknown): string {
  return (error as NodeJS.ErrnoException)?.code ?? 'error';
}

/** What is at `full` (not following a link there), for messages. */
function kindAt(full: string): 'link' | 'other' | 'missing' | 'folder' {
  try {
    const stat = lstatSync(full);
    if (stat.isSymbolicLink()) return 'link';
    return stat.isDirectory() ? 'folder' : 'other';
  } catch {
    return 'missing';
  }
}

/** Open the folder `name` in `parent`, never through a link; refused (78) if a link or not a folder. */
function openChild(parent: DirHandle, name: string, full: string): DirHandle {
  try {
    return DirHandle.openNoFollow(parent.at(name));
  } catch (error) {
    const kind = kindAt(full);
    if (kind === 'link') throw new ConfigError(`instance folder ${full} is a link: gpu-boot never follows one there; remove it`, [`${full}: a link where an instance folder belongs; remove it`]);
    if (kind === 'other') throw new ConfigError(`instance folder ${full} is not a folder; remove it`, [`${full}: not a folder; remove it`]);
    throw new FileWriteError(`cannot open the instance folder ${full}: ${code(error)}`);
  }
}

/** mkdir (never through a link), open without following one, and chown to `owner` through the handle. */
function ensureChild(parent: DirHandle, name: string, full: string, owner: Owner | undefined): DirHandle {
  try {
    mkdirSync(parent.at(name), { mode: FOLDER_MODE });
  } catch (error) {
    if (code(error) !== 'EEXIST') throw new FileWriteError(`cannot create the instance folder ${full}: ${code(error)}`);
  }
  const dir = openChild(parent, name, full);
  try {
    if (owner && (Number(dir.stat.uid) !== owner.uid || Number(dir.stat.gid) !== owner.gid)) setDirAccess(dir, Number(dir.stat.mode) & 0o7777, owner);
  } catch (error) {
    dir.close();
    throw new FileWriteError(`cannot hand the instance folder ${full} to uid ${owner?.uid}: ${code(error)}`);
  }
  return dir;
}

/** WORKSPACE_PATH, $WORKSPACE_PATH/instances and the instance's name, from its root folder. */
function rootParts(instance: InstancePlan): { workspace: string; instances: string; name: string } {
  const instances = path.dirname(instance.folders.root);
  return { workspace: path.dirname(instances), instances: path.basename(instances), name: path.basename(instance.folders.root) };
}

/**
 * Create each instance's folders: `$WORKSPACE_PATH/instances/<instance>/` (what --temp-directory
 * names), its `temp/`, and its own output/input/user folders (those COMFYUI_SHARED_FOLDERS leaves
 * out; ComfyUI refuses a --user-directory that does not exist). Like `mkdir -p`, but below
 * WORKSPACE_PATH never through a link: a link (or a file) where a folder belongs is refused with a
 * ConfigError (78) naming it. With `owner` (gpu-boot as root), each of these folders is chowned to
 * it. A folder that cannot be created: FileWriteError (73). Shared folders are left to ComfyUI.
 */
export function prepareInstanceFolders(plan: Instances, owner?: Owner): void {
  for (const instance of plan.instances) {
    const { workspace, instances, name } = rootParts(instance);
    let top: DirHandle;
    try {
      top = DirHandle.open(workspace);
    } catch (error) {
      throw new FileWriteError(`cannot open WORKSPACE_PATH ${workspace} for the instance folders: ${code(error)}`);
    }
    const held: DirHandle[] = [top];
    try {
      const all = ensureChild(top, instances, path.join(workspace, instances), owner);
      held.push(all);
      const root = ensureChild(all, name, instance.folders.root, owner);
      held.push(root);
      const own = [instance.folders.temp, ...INSTANCE_FOLDERS.map((which) => instance.folders[which])].filter((f) => !f.shared);
      for (const folder of own) {
        if (path.dirname(folder.path) !== instance.folders.root) throw new ConfigError(`instance folder ${folder.path} is not inside ${instance.folders.root}`);
        held.push(ensureChild(root, path.basename(folder.path), folder.path, owner));
      }
    } finally {
      for (const dir of held) dir.close();
    }
  }
}

export interface TempRemoval {
  /** Files, links and folders removed, temp folders included. */
  removed: number;
  /** What was left, and why: a link where a folder was, a folder that changed while being emptied. */
  problems: string[];
}

/** Remove everything inside `dir` without following a link (a link is unlinked, not its target). */
function emptyFolder(dir: DirHandle, shown: string, depth: number, result: TempRemoval): void {
  for (const name of dir.names()) {
    const full = path.join(shown, name);
    try {
      const stat = dir.lstat(name);
      if (!stat) continue;
      if (!stat.isDirectory()) {
        if (dir.unlinkIf(name, fileId(stat))) result.removed += 1;
        continue;
      }
      if (depth >= MAX_DEPTH) {
        result.problems.push(`${full}: deeper than ${MAX_DEPTH} folders; left in place`);
        continue;
      }
      const sub = DirHandle.openNoFollow(dir.at(name));
      try {
        if (sub.id !== fileId(stat)) {
          result.problems.push(`${full}: changed while being removed; left in place`);
          continue;
        }
        emptyFolder(sub, full, depth + 1, result);
      } finally {
        sub.close();
      }
      if (dir.rmdirIf(name, fileId(stat))) result.removed += 1;
    } catch (error) {
      result.problems.push(`${full}: not removed (${code(error)})`);
    }
  }
}

/**
 * Empty and remove each instance's own `temp/` ($WORKSPACE_PATH/instances/<instance>/temp), for
 * the instances named in `names` (all when absent): what ComfyUI leaves there when it dies before
 * its own cleanup. Only that folder: nothing else in the instance folder is touched. No link is
 * followed, on the way there or inside (a link where one of those folders is: refused, left, and
 * named in `problems`; a link inside temp is unlinked itself). Never throws for the file system:
 * every failure is a line in `problems`.
 */
export function removeInstanceTemp(plan: Instances, names?: readonly string[]): TempRemoval {
  const result: TempRemoval = { removed: 0, problems: [] };
  for (const instance of plan.instances) {
    if (names && !names.includes(instance.name)) continue;
    const { workspace, instances, name } = rootParts(instance);
    const temp = instance.folders.temp.path;
    if (path.dirname(temp) !== instance.folders.root) {
      result.problems.push(`${temp}: not inside ${instance.folders.root}; left in place`);
      continue;
    }
    const held: DirHandle[] = [];
    try {
      held.push(DirHandle.open(workspace));
      const steps: Array<[string, string]> = [
        [instances, path.join(workspace, instances)],
        [name, instance.folders.root],
        [path.basename(temp), temp],
      ];
      let reached = true;
      for (const [step, full] of steps) {
        const parent = held[held.length - 1]!;
        const stat = parent.lstat(step);
        if (!stat) {
          reached = false;
          break;
        }
        if (stat.isSymbolicLink() || !stat.isDirectory()) {
          result.problems.push(`${full}: ${stat.isSymbolicLink() ? 'a link' : 'not a folder'}, never followed; left in place`);
          reached = false;
          break;
        }
        const next = DirHandle.openNoFollow(parent.at(step));
        held.push(next);
        if (next.id !== fileId(stat)) {
          result.problems.push(`${full}: changed while being opened; left in place`);
          reached = false;
          break;
        }
      }
      if (!reached) continue;
      const tempDir = held[held.length - 1]!;
      emptyFolder(tempDir, temp, 0, result);
      try {
        if (held[held.length - 2]!.rmdirIf(path.basename(temp), tempDir.id)) result.removed += 1;
      } catch (error) {
        result.problems.push(`${temp}: not removed (${code(error)})`);
      }
    } catch (error) {
      if (code(error) !== 'ENOENT') result.problems.push(`${temp}: not removed (${code(error)})`);
    } finally {
      for (const handle of held) handle.close();
    }
  }
  return result;
}

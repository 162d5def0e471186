import { existsSync, lstatSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { detection } from './helpers/gpus.js';
import { prepareInstanceFolders, removeInstanceTemp } from '../src/files/instance-folders.js';
import { buildPlan, type Plan } from '../src/instances/plan.js';


describe('buildPlan: folders per instance', () => {
  it('shared output, input and user (the default): only --temp-directory, the instance folder', () => {
    const plan = buildPlan(loadConfig({ WORKSPACE_PATH: '/w' }), detection(2), []);
    expect(plan.instances[1]!.args).toEqual(['--listen', '0.0.0.0', '--port', '8189', '--cuda-device', '1', '--temp-directory', '/w/instances/comfyui-gpu1']);
    expect(plan.instances[1]!.folders).toEqual({
      root: '/w/instances/comfyui-gpu1',
      temp: { path: '/w/instances/comfyui-gpu1/temp', shared: false },
      output: { path: '/w/ComfyUI/output', shared: true },
      input: { path: '/w/ComfyUI/input', shared: true },
      user: { path: '/w/ComfyUI/user', shared: true },
    });
  });

  it('COMFYUI_SHARED_FOLDERS=none: every folder its own, each passed with its flag', () => {
    const plan = buildPlan(loadConfig({ WORKSPACE_PATH: '/w', GPU_MODE: 'mock', NUM_GPUS: '2', COMFYUI_SHARED_FOLDERS: 'none', COMFY_ARGS: '--lowvram' }), detection(2), []);
    const own = '/w/instances/comfyui-gpu0';
    expect(plan.instances[0]!.args).toEqual([
      '--listen', '0.0.0.0', '--port', '8188', '--cpu',
      '--temp-directory', own, '--output-directory', `${own}/output`, '--input-directory', `${own}/input`, '--user-directory', `${own}/user`,
      '--lowvram',
    ]);
    expect(Object.values(plan.instances[0]!.folders).filter((f) => typeof f === 'object' && f.shared)).toEqual([]);
    expect(plan.instances[1]!.folders.user.path).toBe('/w/instances/comfyui-gpu1/user');
  });

  it('some shared: only the others get a flag', () => {
    const plan = buildPlan(loadConfig({ WORKSPACE_PATH: '/w', COMFYUI_PATH: '/opt/ComfyUI', COMFYUI_SHARED_FOLDERS: 'input,user' }), detection(1), []);
    expect(plan.instances[0]!.args.slice(6)).toEqual(['--temp-directory', '/w/instances/comfyui-gpu0', '--output-directory', '/w/instances/comfyui-gpu0/output']);
    expect(plan.instances[0]!.folders.input).toEqual({ path: '/opt/ComfyUI/input', shared: true });
  });

  it('refuses flags gpu-boot sets in COMFY_ARGS, with the port range problem, all at once (78)', () => {
    const config = loadConfig({ COMFYUI_PORT_START: '65535', COMFY_ARGS: '--port 1 --listen=:: --temp-directory /t --output-directory /o --base-directory /b' });
    const error = (() => {
      try {
        buildPlan(config, detection(2), []);
      } catch (e) {
        return e as { exitCode: number; problems: string[] };
      }
      return undefined;
    })();
    expect(error?.exitCode).toBe(78);
    expect(error?.problems.map((p) => p.split(' ').slice(0, 2).join(' '))).toEqual([
      'COMFY_ARGS: --port',
      'COMFY_ARGS: --listen',
      'COMFY_ARGS: --temp-directory',
      'COMFY_ARGS: --output-directory',
      'COMFY_ARGS: --base-directory',
      'COMFYUI_PORT_START: 2',
    ]);
  });
});

let root: string | undefined;
afterEach(async () => {
  if (root) await rm(root, { recursive: true, force: true });
  root = undefined;
});

async function workspacePlan(env: Record<string, string> = {}, gpus = 2): Promise<{ workspace: string; plan: Plan }> {
  root = await mkdtemp(path.join(os.tmpdir(), 'gpu-boot-folders-'));
  const workspace = path.join(root, 'workspace');
  await mkdir(workspace);
  return { workspace, plan: buildPlan(loadConfig({ WORKSPACE_PATH: workspace, GPU_MODE: 'mock', NUM_GPUS: String(gpus), ...env }), detection(gpus), []) };
}

const isRoot = process.geteuid?.() === 0;

describe('prepareInstanceFolders', () => {
  it('creates each instance folder, its temp and its own folders (like mkdir -p, again and again)', async () => {
    const { workspace, plan } = await workspacePlan({ COMFYUI_SHARED_FOLDERS: 'input' });
    prepareInstanceFolders(plan);
    prepareInstanceFolders(plan);
    for (const name of ['comfyui-gpu0', 'comfyui-gpu1']) {
      expect((await readdir(path.join(workspace, 'instances', name))).sort()).toEqual(['output', 'temp', 'user']);
    }
    // Shared folders are ComfyUI's, in COMFYUI_PATH: not created here.
    expect(existsSync(path.join(workspace, 'ComfyUI'))).toBe(false);
  });

  it.skipIf(!isRoot)('as root, hands every folder it makes to the instances\' user', async () => {
    const { workspace, plan } = await workspacePlan({ COMFYUI_SHARED_FOLDERS: 'none' }, 1);
    // An existing folder is handed over too.
    await mkdir(path.join(workspace, 'instances', 'comfyui-gpu0', 'user'), { recursive: true });
    prepareInstanceFolders(plan, { uid: 65534, gid: 65533 });
    for (const dir of ['instances', 'instances/comfyui-gpu0', 'instances/comfyui-gpu0/temp', 'instances/comfyui-gpu0/output', 'instances/comfyui-gpu0/input', 'instances/comfyui-gpu0/user']) {
      const s = await stat(path.join(workspace, dir));
      expect([s.uid, s.gid], dir).toEqual([65534, 65533]);
    }
    expect((await stat(workspace)).uid).toBe(0);
  });

  it('refuses a link (or a file) where a folder belongs, naming it, and never writes through it', async () => {
    const { workspace, plan } = await workspacePlan({ COMFYUI_SHARED_FOLDERS: 'none' }, 1);
    const elsewhere = path.join(root!, 'elsewhere');
    await mkdir(elsewhere);
    await mkdir(path.join(workspace, 'instances'));
    await symlink(elsewhere, path.join(workspace, 'instances', 'comfyui-gpu0'));
    expect(() => prepareInstanceFolders(plan, isRoot ? { uid: 65534, gid: 65534 } : undefined)).toThrow(
      expect.objectContaining({ exitCode: 78, message: `instance folder ${path.join(workspace, 'instances', 'comfyui-gpu0')} is a link: gpu-boot never follows one there; remove it` }),
    );
    expect(await readdir(elsewhere)).toEqual([]);
    expect((await stat(elsewhere)).uid).toBe(process.geteuid?.());

    await rm(path.join(workspace, 'instances', 'comfyui-gpu0'));
    await mkdir(path.join(workspace, 'instances', 'comfyui-gpu0'));
    await symlink(elsewhere, path.join(workspace, 'instances', 'comfyui-gpu0', 'user'));
    expect(() => prepareInstanceFolders(plan)).toThrow(expect.objectContaining({ exitCode: 78, message: expect.stringContaining('comfyui-gpu0/user is a link') }));
    expect(await readdir(elsewhere)).toEqual([]);

    await rm(path.join(workspace, 'instances', 'comfyui-gpu0', 'user'));
    await writeFile(path.join(workspace, 'instances', 'comfyui-gpu0', 'user'), '');
    expect(() => prepareInstanceFolders(plan)).toThrow(expect.objectContaining({ exitCode: 78, message: expect.stringContaining('comfyui-gpu0/user is not a folder') }));
  });

  it('a workspace that cannot be written: exit 73 naming the folder', async () => {
    const { workspace, plan } = await workspacePlan({}, 1);
    await rm(workspace, { recursive: true });
    expect(() => prepareInstanceFolders(plan)).toThrow(expect.objectContaining({ exitCode: 73, message: expect.stringContaining(workspace) }));
  });
});

describe('removeInstanceTemp', () => {
  it('empties and removes each instance\'s temp, and nothing else', async () => {
    const { workspace, plan } = await workspacePlan({ COMFYUI_SHARED_FOLDERS: 'output,input' });
    prepareInstanceFolders(plan);
    const own = path.join(workspace, 'instances', 'comfyui-gpu0');
    await mkdir(path.join(own, 'temp', 'sub', 'deeper'), { recursive: true });
    await writeFile(path.join(own, 'temp', 'ComfyUI_temp_00001_.png'), 'x');
    await writeFile(path.join(own, 'temp', 'sub', 'deeper', 'f'), 'x');
    await writeFile(path.join(own, 'user', 'settings.json'), '{}');
    await writeFile(path.join(own, 'keep'), 'x');
    const result = removeInstanceTemp(plan);
    expect(result).toEqual({ removed: 6, problems: [] });
    expect((await readdir(own)).sort()).toEqual(['keep', 'user']);
    expect(await readdir(path.join(own, 'user'))).toEqual(['settings.json']);
    expect(existsSync(path.join(workspace, 'instances', 'comfyui-gpu1', 'temp'))).toBe(false);
    // Nothing left to remove, or never prepared: nothing to say.
    expect(removeInstanceTemp(plan)).toEqual({ removed: 0, problems: [] });
  });

  it('only the instances named', async () => {
    const { workspace, plan } = await workspacePlan();
    prepareInstanceFolders(plan);
    expect(removeInstanceTemp(plan, ['comfyui-gpu1'])).toEqual({ removed: 1, problems: [] });
    expect(existsSync(path.join(workspace, 'instances', 'comfyui-gpu0', 'temp'))).toBe(true);
    expect(existsSync(path.join(workspace, 'instances', 'comfyui-gpu1', 'temp'))).toBe(false);
  });

  it('never follows a link: temp as a link is refused and left; links inside temp are unlinked, not their targets', async () => {
    const { workspace, plan } = await workspacePlan({}, 1);
    prepareInstanceFolders(plan);
    const elsewhere = path.join(root!, 'elsewhere');
    await mkdir(elsewhere);
    await writeFile(path.join(elsewhere, 'precious'), 'x');
    const temp = path.join(workspace, 'instances', 'comfyui-gpu0', 'temp');
    await symlink(elsewhere, path.join(temp, 'to-folder'));
    await symlink(path.join(elsewhere, 'precious'), path.join(temp, 'to-file'));
    expect(removeInstanceTemp(plan)).toEqual({ removed: 3, problems: [] });
    expect(await readdir(elsewhere)).toEqual(['precious']);

    await symlink(elsewhere, temp);
    expect(removeInstanceTemp(plan)).toEqual({ removed: 0, problems: [`${temp}: a link, never followed; left in place`] });
    expect(lstatSync(temp).isSymbolicLink()).toBe(true);
    expect(await readdir(elsewhere)).toEqual(['precious']);

    // A link higher up is not followed either.
    await rm(path.join(workspace, 'instances'), { recursive: true });
    await mkdir(path.join(elsewhere, 'comfyui-gpu0', 'temp'), { recursive: true });
    await symlink(elsewhere, path.join(workspace, 'instances'));
    expect(removeInstanceTemp(plan).problems).toEqual([`${path.join(workspace, 'instances')}: a link, never followed; left in place`]);
    expect(existsSync(path.join(elsewhere, 'comfyui-gpu0', 'temp'))).toBe(true);
  });
});

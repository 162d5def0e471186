import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { runBoot } from './helpers/boot.js';
import { PYTHON } from './helpers/python.js';

let root: string;
let repo: string;
let nodes: string;
const git = (cwd: string, ...args: string[]) =>
  execFileSync('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', '-c', 'init.defaultBranch=main', ...args], { cwd }).toString().trim();

beforeEach(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'gpu-boot-install-'));
  repo = path.join(root, 'node-repo');
  nodes = path.join(root, 'workspace', 'ComfyUI', 'custom_nodes');
  await mkdir(repo);
  await mkdir(nodes, { recursive: true });
  git(repo, 'init', '--quiet');
  await writeFile(path.join(repo, 'requirements.txt'), '# nothing to install offline\n');
  await writeFile(path.join(repo, 'install.sh'), 'echo ran >> installed.marker\n');
  await writeFile(path.join(repo, 'version.txt'), 'v1\n');
  git(repo, 'add', '.');
  git(repo, 'commit', '--quiet', '-m', 'v1');
  await writeFile(path.join(repo, 'version.txt'), 'v2\n');
  git(repo, 'commit', '--quiet', '-am', 'v2');
  git(repo, 'checkout', '--quiet', '-b', 'dev');
  await writeFile(path.join(repo, 'version.txt'), 'dev\n');
  git(repo, 'commit', '--quiet', '-am', 'dev');
  git(repo, 'checkout', '--quiet', 'main');
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

async function manifest(entries: unknown[]): Promise<void> {
  await writeFile(path.join(root, 'workspace', 'config_nodes.json'), JSON.stringify({ custom_nodes: entries }));
}
const env = (extra: Record<string, string> = {}) => ({ PATH: process.env.PATH!, HOME: root, WORKSPACE_PATH: path.join(root, 'workspace'), COMFYUI_PYTHON: PYTHON, LOG_LEVEL: 'info', ...extra });
const commitOf = (ref: string) => git(repo, 'rev-parse', ref);

describe('install', () => {
  it('clones at a branch or a pinned commit, installs requirements, runs custom_script, and a second run changes nothing', async () => {
    const v1 = commitOf('main~1');
    await manifest([
      { name: 'dev_node', url: repo, branch: 'dev', requirements: true, custom_script: 'install.sh', env: { HF_TOKEN: '${HF_TOKEN}' } },
      { name: 'pinned_node', url: repo, commit: v1.slice(0, 10) },
      { name: 'local_only', env: { A: 'x' } },
    ]);
    const first = await runBoot(['install'], env());
    expect(first.exitCode).toBe(0);
    expect(git(path.join(nodes, 'dev_node'), 'rev-parse', 'HEAD')).toBe(commitOf('dev'));
    expect(await readFile(path.join(nodes, 'dev_node', 'version.txt'), 'utf8')).toBe('dev\n');
    expect(git(path.join(nodes, 'pinned_node'), 'rev-parse', 'HEAD')).toBe(v1);
    expect(await readFile(path.join(nodes, 'dev_node', 'installed.marker'), 'utf8')).toBe('ran\n');
    expect(existsSync(path.join(nodes, 'pinned_node', 'installed.marker'))).toBe(false);
    expect(first.stdout).toContain('[1/3] dev_node: installing requirements.txt');
    expect(first.stdout).toContain('install: 2 cloned, 0 updated, 0 unchanged, 1 without url');

    const second = await runBoot(['install'], env());
    expect(second.exitCode).toBe(0);
    expect(second.stdout).toContain('install: 0 cloned, 0 updated, 2 unchanged, 1 without url');
    // Left alone: the script did not run again.
    expect(await readFile(path.join(nodes, 'dev_node', 'installed.marker'), 'utf8')).toBe('ran\n');

    // The branch moves on: the next install updates that node only.
    git(repo, 'checkout', '--quiet', 'dev');
    await writeFile(path.join(repo, 'version.txt'), 'dev2\n');
    git(repo, 'commit', '--quiet', '-am', 'dev2');
    git(repo, 'checkout', '--quiet', 'main');
    const third = await runBoot(['install'], env());
    expect(third.stdout).toContain('install: 0 cloned, 1 updated, 1 unchanged, 1 without url');
    expect(await readFile(path.join(nodes, 'dev_node', 'version.txt'), 'utf8')).toBe('dev2\n');
  });

  it('refuses to run while a variable the manifest references is set (exit 78), naming it and not its value', async () => {
    await manifest([{ name: 'n', url: repo, env: { HF_TOKEN: '${HF_TOKEN}', K: '${AWS_KEY:-x}' } }]);
    const result = await runBoot(['install'], env({ HF_TOKEN: 'hf_canaryBUILD-9', AWS_KEY_FILE: '/run/secrets/aws' }));
    expect(result.exitCode).toBe(78);
    expect(result.stderr).toContain('install runs at build time and must not see secrets');
    expect(result.stderr).toContain('  - AWS_KEY_FILE is set');
    expect(result.stderr).toContain('  - HF_TOKEN is set');
    expect(result.stdout + result.stderr).not.toContain('hf_canaryBUILD-9');
    expect(existsSync(path.join(nodes, 'n'))).toBe(false);
  });

  it('fails clearly, naming the node, when its requirements cannot be installed', async () => {
    await writeFile(path.join(repo, 'requirements.txt'), './no-such-local-package\n');
    git(repo, 'commit', '--quiet', '-am', 'broken requirements');
    await manifest([{ name: 'broken_node', url: repo, requirements: true }]);
    const result = await runBoot(['install'], env());
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toMatch(/install failed at node "broken_node": .* -m pip install -r requirements.txt failed \(exit \d+\)/);
  });

  it('refuses to overwrite a folder that is not its checkout', async () => {
    await mkdir(path.join(nodes, 'mine'));
    await writeFile(path.join(nodes, 'mine', 'keep.py'), 'x = 1\n');
    await manifest([{ name: 'mine', url: repo }]);
    const result = await runBoot(['install'], env());
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toContain(`install failed at node "mine": ${path.join(nodes, 'mine')} exists and is not a git checkout`);
    expect(await readFile(path.join(nodes, 'mine', 'keep.py'), 'utf8')).toBe('x = 1\n');
  });

  it('reports install fields of the wrong type', async () => {
    await manifest([{ name: 'n', url: repo, commit: 'main', requirements: 'yes' }]);
    const result = await runBoot(['install'], env());
    expect(result.exitCode).toBe(78);
    expect(result.stderr).toContain('custom_nodes.0.commit: must be a commit hash (7 to 40 hex digits)');
    expect(result.stderr).toContain('custom_nodes.0.requirements: must be true or false');
  });
});

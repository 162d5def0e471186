import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, lstatSync, readdirSync } from 'node:fs';
import { rename, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { runBoot, type Workspace } from '../helpers/boot.js';
import { expectNothingWritten, useTwoNodeWorkspace } from '../helpers/two-nodes.js';

const CANARY = 'canary-Secret-Value-5150';
const workspace = useTwoNodeWorkspace(1);

describe('start refuses bad input with exit 78, naming the variable, printing no value, writing nothing', () => {
  const cases: Array<{ name: string; env: (w: Workspace) => Promise<Record<string, string>>; message: RegExp }> = [
    {
      name: 'a required variable with no value',
      env: async () => ({ AZURE_STORAGE_KEY: CANARY }),
      message: /node "hf_node" key HF_TOKEN: required variable HF_TOKEN is not set \(looked for HF_TOKEN, HF_TOKEN_FILE, HF_TOKEN_ENCODED\)/,
    },
    {
      name: 'invalid base64',
      env: async () => ({ AZURE_STORAGE_KEY_ENCODED: `${CANARY}!!`, HF_TOKEN: CANARY }),
      message: /AZURE_STORAGE_KEY_ENCODED is not valid base64 or base64url/,
    },
    {
      name: 'base64 that decodes to invalid UTF-8',
      env: async () => ({ AZURE_STORAGE_KEY_ENCODED: Buffer.from([0xff, 0xfe, 0x41]).toString('base64'), HF_TOKEN: CANARY }),
      message: /AZURE_STORAGE_KEY_ENCODED \(decoded\) is not valid UTF-8/,
    },
    {
      name: 'VAR and VAR_FILE both set',
      env: async (w) => {
        await writeFile(path.join(w.secrets, 'hf'), CANARY);
        return { AZURE_STORAGE_KEY: CANARY, HF_TOKEN: CANARY, HF_TOKEN_FILE: path.join(w.secrets, 'hf') };
      },
      message: /HF_TOKEN is set by more than one source: HF_TOKEN_FILE, HF_TOKEN; keep exactly one/,
    },
    {
      name: 'a _FILE that does not exist',
      env: async (w) => ({ AZURE_STORAGE_KEY: CANARY, HF_TOKEN_FILE: path.join(w.secrets, 'nope') }),
      message: /HF_TOKEN_FILE: .*nope does not exist/,
    },
    {
      name: 'a _FILE that is a folder',
      env: async (w) => ({ AZURE_STORAGE_KEY: CANARY, HF_TOKEN_FILE: w.secrets }),
      message: /HF_TOKEN_FILE: .* is a folder, not a file/,
    },
    {
      name: 'a value no dotenv quoting can carry',
      env: async () => ({ AZURE_STORAGE_KEY: `${CANARY}\${HOME}`, HF_TOKEN: CANARY }),
      message: /node "emprops_custom_nodes" key AZURE_STORAGE_KEY: the value contains \$\{\.\.\.\}, which python-dotenv would expand/,
    },
  ];

  for (const c of cases) {
    it(c.name, async () => {
      const w = await workspace();
      const result = await runBoot(['start'], { ...w.env, ...(await c.env(w)) });
      expect(result.exitCode).toBe(78);
      expect(result.stderr).toMatch(c.message);
      expect(`${result.stdout}\n${result.stderr}`).not.toContain(CANARY);
      expectNothingWritten(w);
    });
  }

  it('lists every problem at once', async () => {
    const w = await workspace();
    const result = await runBoot(['start'], { ...w.env, AZURE_STORAGE_KEY_ENCODED: '%%%', HF_TOKEN_FILE: path.join(w.secrets, 'missing') });
    expect(result.exitCode).toBe(78);
    expect(result.stderr).toContain('cannot prepare the custom nodes\' .env files (2 problems)');
    expect(result.stderr).toMatch(/- AZURE_STORAGE_KEY_ENCODED is not valid base64/);
    expect(result.stderr).toMatch(/- HF_TOKEN_FILE: .*missing does not exist/);
    expectNothingWritten(w);
  });

  it('reports a manifest that is not JSON with its path', async () => {
    const w = await workspace();
    await writeFile(path.join(w.workspace, 'config_nodes.json'), '{"custom_nodes": [');
    const result = await runBoot(['start'], { ...w.env, HF_TOKEN: CANARY });
    expect(result.exitCode).toBe(78);
    expect(result.stderr).toContain(`manifest ${path.join(w.workspace, 'config_nodes.json')} is not valid JSON`);
    expectNothingWritten(w);
  });

  it('reports a manifest of the wrong shape, naming the entry', async () => {
    const w = await workspace();
    await writeFile(path.join(w.workspace, 'config_nodes.json'), JSON.stringify({ custom_nodes: [{ name: '../etc', env: { 'BAD-KEY': 'x' } }] }));
    const result = await runBoot(['start'], { ...w.env });
    expect(result.exitCode).toBe(78);
    expect(result.stderr).toMatch(/custom_nodes\.0\.name: must be a folder name, without \/ or \\/);
    expect(result.stderr).toMatch(/custom_nodes\.0\.env\.BAD-KEY: .*is not a valid variable name/);
    expectNothingWritten(w);
  });

  it('reports an explicit CUSTOM_NODES_CONFIG that does not exist', async () => {
    const w = await workspace();
    const result = await runBoot(['start'], { ...w.env, CUSTOM_NODES_CONFIG: path.join(w.root, 'nope.json') });
    expect(result.exitCode).toBe(78);
    expect(result.stderr).toContain(`CUSTOM_NODES_CONFIG: ${path.join(w.root, 'nope.json')} does not exist`);
    expectNothingWritten(w);
  });

  it('reports every bad setting at once', async () => {
    const w = await workspace();
    // The secrets are there: only the settings are wrong.
    const result = await runBoot(['start'], { ...w.env, GPU_MODE: 'gpu', COMFYUI_PORT_START: 'abc', NUM_GPUS: '0', HF_TOKEN: CANARY, AZURE_STORAGE_KEY: CANARY });
    expect(result.exitCode).toBe(78);
    expect(result.stderr).toContain('gpu-boot: error: invalid configuration (3 problems)\n');
    expect(result.stderr).not.toContain(CANARY);
    expect(result.stderr).toContain('- GPU_MODE: must be "actual" or "mock"');
    expect(result.stderr).toContain('- COMFYUI_PORT_START: expected a whole number');
    expect(result.stderr).toContain('- NUM_GPUS: must be at least 1');
    expectNothingWritten(w);
  });
});

describe('no GPU', () => {
  it('exits 69 in actual mode, says what it tried and suggests GPU_MODE=mock', async () => {
    const w = await workspace();
    const result = await runBoot(['start'], { ...w.env, GPU_MODE: 'actual', NVIDIA_SMI_PATH: path.join(w.root, 'no-nvidia-smi'), HF_TOKEN: CANARY, AZURE_STORAGE_KEY: CANARY });
    expect(result.exitCode).toBe(69);
    expect(result.stderr).toContain('no GPU found (GPU_MODE=actual). Set GPU_MODE=mock to run without a GPU');
    expect(result.stderr).toContain(`- ${path.join(w.root, 'no-nvidia-smi')} was not found on PATH`);
    expect(result.stderr).toMatch(/- (lspci is not installed|systeminformation \(lspci\) listed no NVIDIA controller)/);
    expectNothingWritten(w);
  });
});

describe('node folders that are links', () => {
  it('refuses a node folder that links outside custom_nodes (exit 78, nothing written) and accepts one that stays inside', async () => {
    const { rename, symlink, mkdir } = await import('node:fs/promises');
    const w = await workspace();
    const outside = path.join(w.root, 'elsewhere');
    await mkdir(outside);
    await rename(path.dirname(w.envFile('hf_node')), path.join(w.nodes, 'hf_node_real'));
    await symlink(outside, path.dirname(w.envFile('hf_node')));
    const refused = await runBoot(['start'], { ...w.env, HF_TOKEN: CANARY, AZURE_STORAGE_KEY: CANARY });
    expect(refused.exitCode).toBe(78);
    expect(refused.stderr).toContain(`node "hf_node": ${path.join(w.nodes, 'hf_node')} is a link that leads outside ${w.nodes}; refusing to write through it`);
    expect(existsSync(path.join(outside, '.env'))).toBe(false);
    expectNothingWritten(w);

    const { unlink } = await import('node:fs/promises');
    await unlink(path.join(w.nodes, 'hf_node'));
    await symlink(path.join(w.nodes, 'hf_node_real'), path.join(w.nodes, 'hf_node'));
    const checked = await runBoot(['check'], { ...w.env, HF_TOKEN: CANARY, AZURE_STORAGE_KEY: CANARY });
    expect(checked.exitCode).toBe(0);
  });
});

describe('a state folder that cannot be created', () => {
  it('exits 73 naming the path', async () => {
    const w = await workspace();
    const blocker = path.join(w.root, 'a-file');
    await writeFile(blocker, 'not a folder');
    const result = await runBoot(['start'], { ...w.env, HF_TOKEN: CANARY, AZURE_STORAGE_KEY: CANARY, GPU_BOOT_STATE_DIR: path.join(blocker, 'state') });
    expect(result.exitCode).toBe(73);
    expect(result.stderr).toContain(path.join(blocker, 'state'));
    expect(existsSync(w.envFile('hf_node'))).toBe(false);
  });
});

describe('an unreadable secret file', () => {
  // Root reads any file, so the check runs as nobody (runuser), as a non-root container would.
  // ...and only where nobody can reach the built entrypoint (a checkout under a 0700 folder is out of reach).
  const canRunAsNobody =
    process.getuid?.() === 0 &&
    existsSync('/usr/sbin/runuser') &&
    spawnSync('/usr/sbin/runuser', ['-u', 'nobody', '--', 'test', '-r', path.resolve('dist/entrypoint.js')]).status === 0;
  if (!canRunAsNobody) console.warn('test/e2e/failures.test.ts: the unreadable _FILE case is skipped: it needs root, runuser, and dist/ readable by nobody (a checkout under a 0700 folder is not)');
  it.skipIf(!canRunAsNobody)('is refused with exit 78, naming the variable and the path', async () => {
    const { chmod } = await import('node:fs/promises');
    const { execa } = await import('execa');
    const w = await workspace();
    await chmod(w.root, 0o755);
    await chmod(w.secrets, 0o755);
    const token = path.join(w.secrets, 'hf_token');
    await writeFile(token, CANARY);
    await chmod(token, 0o000);
    const result = await execa('/usr/sbin/runuser', ['-u', 'nobody', '--', process.execPath, path.resolve('dist/entrypoint.js'), 'check'], {
      env: { ...w.env, HOME: '/tmp', HF_TOKEN_FILE: token, AZURE_STORAGE_KEY: CANARY, GPU_BOOT_STATE_DIR: path.join(w.root, 'state') },
      extendEnv: false,
      reject: false,
    });
    expect(result.exitCode).toBe(78);
    expect(result.stdout).toContain(`  - HF_TOKEN_FILE: ${token} is not readable (permission denied)`);
    expect(result.stdout + result.stderr).not.toContain(CANARY);
  });
});

/** Nothing written: no .env, no file in the state folder (if there is one at all), no PM2. */
function expectNoFiles(w: Workspace): void {
  expectNothingWritten(w);
  expect(existsSync(w.stateDir) ? readdirSync(w.stateDir) : []).toEqual([]);
  expect(existsSync(w.tmpfs) ? readdirSync(w.tmpfs) : []).toEqual([]);
}

/** The two-node manifest with two "env" keys in the first entry (JSON.parse would keep the second). */
const DUPLICATE_ENV =
  '{"custom_nodes": [\n' +
  '  {"name": "emprops_custom_nodes", "env": {"AZURE_STORAGE_KEY": "${AZURE_STORAGE_KEY}"},\n' +
  '   "env": {"CLOUD_PROVIDER": "azure"}},\n' +
  '  {"name": "hf_node", "env": {"HF_TOKEN": "${HF_TOKEN}"}}\n' +
  ']}\n';

describe('manifest and node-folder defects: start and check refuse them with exit 78, writing nothing', () => {
  const manifestFile = (w: Workspace) => path.join(w.workspace, 'config_nodes.json');
  const cases: Array<{ name: string; arrange: (w: Workspace) => Promise<void>; problem: (w: Workspace) => string }> = [
    {
      name: 'two "env" keys in one entry',
      arrange: (w) => writeFile(manifestFile(w), DUPLICATE_ENV),
      problem: (w) => `${manifestFile(w)}: custom_nodes.0: duplicate key "env" at line 3, column 4 (first at line 2, column 36); JSON.parse would keep only the last one, silently`,
    },
    {
      name: 'a __proto__ key',
      arrange: (w) => writeFile(manifestFile(w), '{"custom_nodes": [{"name": "hf_node", "env": {"HF_TOKEN": "${HF_TOKEN}", "__proto__": "x"}}]}'),
      problem: (w) => `${manifestFile(w)}: custom_nodes.0.env: key "__proto__" at line 1, column 74 is not allowed (__proto__, constructor and prototype are reserved names in JavaScript)`,
    },
    {
      name: 'invalid UTF-8 in the manifest',
      arrange: (w) =>
        writeFile(manifestFile(w), Buffer.concat([Buffer.from('{"custom_nodes": [\n{"name": "hf_node", "env": {"HF_TOKEN": "caf'), Buffer.from([0xe9]), Buffer.from('"}}]}')])),
      problem: (w) => `${manifestFile(w)}: not valid UTF-8 at byte offset 63 (line 2)`,
    },
    {
      // No such folder can exist (mkdir says ENAMETOOLONG): the manifest is refused for the name itself.
      name: 'a node name of 256 bytes',
      arrange: (w) => writeFile(manifestFile(w), JSON.stringify({ custom_nodes: [{ name: 'n'.repeat(256), env: { HF_TOKEN: '${HF_TOKEN}' } }] })),
      problem: (w) => `${manifestFile(w)}: custom_nodes.0.name: is longer than 255 bytes of UTF-8 (a folder name has at most 255 bytes)`,
    },
    {
      name: 'a node folder that is a link to another entry\'s',
      arrange: async (w) => {
        await rename(path.join(w.nodes, 'hf_node'), path.join(w.root, 'hf_node_moved'));
        await symlink('emprops_custom_nodes', path.join(w.nodes, 'hf_node'));
      },
      problem: (w) =>
        `node "hf_node": ${path.join(w.nodes, 'hf_node')} is the same folder as node "emprops_custom_nodes"'s (${path.join(w.nodes, 'emprops_custom_nodes')}), through a symbolic link; both would write the same .env`,
    },
    {
      name: 'a .env that is a FIFO',
      arrange: async (w) => {
        execFileSync('mkfifo', [w.envFile('hf_node')]);
      },
      problem: (w) => `node "hf_node": ${w.envFile('hf_node')} is a FIFO (named pipe), not a file or a link; move it away (gpu-boot would replace it)`,
    },
  ];

  for (const c of cases) {
    it(c.name, async () => {
      const w = await workspace();
      await c.arrange(w);
      const fifo = c.name.includes('FIFO');
      // The FIFO case: `existsSync(.env)` is true for it, so only the other files are checked, and the FIFO is still one.
      const expectUntouched = () => {
        if (fifo) {
          expect(lstatSync(w.envFile('hf_node')).isFIFO()).toBe(true);
          expect(existsSync(w.envFile('emprops_custom_nodes'))).toBe(false);
          expect(existsSync(w.stateDir) ? readdirSync(w.stateDir) : []).toEqual([]);
          expect(existsSync(w.tmpfs) ? readdirSync(w.tmpfs) : []).toEqual([]);
          expect(existsSync(path.join(w.pm2Home, 'pm2.pid'))).toBe(false);
        } else {
          expectNoFiles(w);
        }
      };
      const env = { ...w.env, HF_TOKEN: CANARY, AZURE_STORAGE_KEY: CANARY };
      const checked = await runBoot(['check'], env);
      expect(checked.exitCode).toBe(78);
      expect(checked.stdout.split('\n')).toContain(`  - ${c.problem(w)}`);
      expect(checked.stdout + checked.stderr).not.toContain(CANARY);
      expectUntouched();
      const started = await runBoot(['start'], env);
      expect(started.exitCode).toBe(78);
      expect(started.stderr.split('\n')).toContain(`  - ${c.problem(w)}`);
      expect(started.stdout + started.stderr).not.toContain(CANARY);
      expectUntouched();
    });
  }

  it('accepts a manifest that starts with a UTF-8 byte order mark', async () => {
    const w = await workspace();
    await writeFile(manifestFile(w), `\ufeff${JSON.stringify({ custom_nodes: [{ name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}' } }] })}`);
    const checked = await runBoot(['check'], { ...w.env, HF_TOKEN: CANARY });
    expect(checked.exitCode).toBe(0);
    expect(checked.stdout).toContain(`  hf_node -> ${w.envFile('hf_node')}`);
  });
});

describe('every problem in one report', () => {
  it('an invalid setting, a duplicate key in one entry and a missing secret in another: all three, exit 78, nothing written', async () => {
    const w = await workspace();
    await writeFile(path.join(w.workspace, 'config_nodes.json'), DUPLICATE_ENV);
    const expected = [
      'gpu-boot: error: invalid configuration (1 problem), and 2 problems in the manifest and secrets (checked with the default of each invalid setting)',
      '  - COMFYUI_PORT_START: expected a whole number',
      `  - ${path.join(w.workspace, 'config_nodes.json')}: custom_nodes.0: duplicate key "env" at line 3, column 4 (first at line 2, column 36); JSON.parse would keep only the last one, silently`,
      '  - node "hf_node" key HF_TOKEN: required variable HF_TOKEN is not set (looked for HF_TOKEN, HF_TOKEN_FILE, HF_TOKEN_ENCODED)',
    ].join('\n');
    for (const command of ['check', 'start']) {
      const result = await runBoot([command], { ...w.env, COMFYUI_PORT_START: 'abc', AZURE_STORAGE_KEY: CANARY });
      expect({ command, exitCode: result.exitCode }).toEqual({ command, exitCode: 78 });
      // The whole report: these four lines and nothing after them (execa drops the last newline).
      expect(result.stderr.endsWith(expected)).toBe(true);
      expect(result.stderr).toContain(expected);
      expect(result.stdout + result.stderr).not.toContain(CANARY);
      expectNoFiles(w);
    }
  });

  it('with valid settings, a bad entry does not hide the secret problems of the other entries', async () => {
    const w = await workspace();
    await writeFile(path.join(w.workspace, 'config_nodes.json'), DUPLICATE_ENV);
    const result = await runBoot(['start'], { ...w.env, AZURE_STORAGE_KEY: CANARY });
    expect(result.exitCode).toBe(78);
    expect(result.stderr.split('\n')).toContain("gpu-boot: error: cannot prepare the custom nodes' .env files (2 problems)");
    expect(result.stderr).toContain('  - node "hf_node" key HF_TOKEN: required variable HF_TOKEN is not set');
    expectNoFiles(w);
  });
});

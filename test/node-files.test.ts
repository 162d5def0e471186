import { execFileSync } from 'node:child_process';
import { lstatSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { ConfigError } from '../src/errors.js';
import { SecretMasker } from '../src/log.js';
import { parseManifest } from '../src/secrets/manifest.js';
import { prepareNodeFiles, withheldVariableNames } from '../src/secrets/node-files.js';
import { captureLogger } from './helpers/logger.js';

let dir: string;
let nodes: string;
beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'gpu-boot-node-files-'));
  nodes = path.join(dir, 'ComfyUI', 'custom_nodes');
  mkdirSync(nodes, { recursive: true });
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function setUp(manifest: unknown, folders: string[]): ReturnType<typeof loadConfig> {
  for (const folder of folders) mkdirSync(path.join(nodes, folder));
  writeFileSync(path.join(dir, 'config_nodes.json'), JSON.stringify(manifest));
  return loadConfig({ WORKSPACE_PATH: dir });
}

/** The ConfigError prepareNodeFiles throws; fails the test when it throws none. */
async function problemsOf(config: ReturnType<typeof loadConfig>, env: NodeJS.ProcessEnv): Promise<ConfigError> {
  try {
    await prepareNodeFiles(config, env, new SecretMasker(), captureLogger().logger);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error('expected a ConfigError, none was thrown');
}

const TWO = { custom_nodes: [{ name: 'a', env: { K: '${TOKEN_A}' } }, { name: 'b', env: { L: '${TOKEN_B}' } }] };
const ENV = { TOKEN_A: 'token-a-value', TOKEN_B: 'token-b-value' };

describe('node folders that are one folder', () => {
  it('refuses an entry whose folder is a link to another entry\'s folder, naming both', async () => {
    const config = setUp(TWO, ['a']);
    symlinkSync(path.join(nodes, 'a'), path.join(nodes, 'b'));
    const error = await problemsOf(config, ENV);
    expect(error.problems).toEqual([
      `node "b": ${path.join(nodes, 'b')} is the same folder as node "a"'s (${path.join(nodes, 'a')}), through a symbolic link; both would write the same .env`,
    ]);
  });

  it('refuses two entries whose folders both link to a third folder', async () => {
    const config = setUp(TWO, ['real']);
    symlinkSync('real', path.join(nodes, 'a'));
    symlinkSync(path.join(nodes, 'real'), path.join(nodes, 'b'));
    const error = await problemsOf(config, ENV);
    expect(error.problems).toEqual([
      `node "b": ${path.join(nodes, 'b')} is the same folder as node "a"'s (${path.join(nodes, 'a')}), through a symbolic link; both would write the same .env`,
    ]);
  });

  it('accepts two links to two different folders', async () => {
    const config = setUp(TWO, ['real_a', 'real_b']);
    symlinkSync('real_a', path.join(nodes, 'a'));
    symlinkSync('real_b', path.join(nodes, 'b'));
    const prepared = await prepareNodeFiles(config, ENV, new SecretMasker(), captureLogger().logger);
    expect(prepared.files.map((f) => f.path)).toEqual([path.join(nodes, 'a', '.env'), path.join(nodes, 'b', '.env')]);
  });
});

describe('a .env that is neither a file nor a link', () => {
  const manifest = { custom_nodes: [{ name: 'a', env: { K: '${TOKEN_A}' } }] };

  it('refuses a FIFO without opening it (opening would block), and leaves it as it was', { timeout: 10_000 }, async () => {
    const config = setUp(manifest, ['a']);
    const fifo = path.join(nodes, 'a', '.env');
    execFileSync('mkfifo', [fifo]);
    const error = await problemsOf(config, ENV);
    expect(error.message).toBe('cannot prepare the custom nodes\' .env files (1 problem)');
    expect(error.problems).toEqual([`node "a": ${fifo} is a FIFO (named pipe), not a file or a link; move it away (gpu-boot would replace it)`]);
    expect(lstatSync(fifo).isFIFO()).toBe(true);
  });

  it('refuses a folder', async () => {
    const config = setUp(manifest, ['a']);
    mkdirSync(path.join(nodes, 'a', '.env'));
    const error = await problemsOf(config, ENV);
    expect(error.problems).toEqual([`node "a": ${path.join(nodes, 'a', '.env')} is a folder, not a file or a link; move it away (gpu-boot would replace it)`]);
  });

  it('refuses a Unix socket', async () => {
    const config = setUp(manifest, ['a']);
    const socket = path.join(nodes, 'a', '.env');
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(socket, resolve));
    try {
      const error = await problemsOf(config, ENV);
      expect(error.problems).toEqual([`node "a": ${socket} is a socket, not a file or a link; move it away (gpu-boot would replace it)`]);
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it('accepts a file, a link and a dangling link (kept aside when written)', async () => {
    const config = setUp({ custom_nodes: [{ name: 'a', env: { K: '${TOKEN_A}' } }, { name: 'b', env: { K: '${TOKEN_A}' } }, { name: 'c', env: { K: '${TOKEN_A}' } }] }, ['a', 'b', 'c']);
    writeFileSync(path.join(nodes, 'a', '.env'), 'MINE=1\n');
    symlinkSync(path.join(nodes, 'a', '.env'), path.join(nodes, 'b', '.env'));
    symlinkSync(path.join(dir, 'nowhere'), path.join(nodes, 'c', '.env'));
    const prepared = await prepareNodeFiles(config, ENV, new SecretMasker(), captureLogger().logger);
    expect(prepared.files.map((f) => f.node)).toEqual(['a', 'b', 'c']);
  });
});

describe('what is a secret', () => {
  it('never withholds gpu-boot\'s settings, the basic process variables or not_secret names; always SECRETS_ENV_FILE and each secret\'s sources', () => {
    const manifest = parseManifest(
      JSON.stringify({
        not_secret: ['STAGE'],
        custom_nodes: [
          {
            name: 'n',
            env: {
              DATA: '${WORKSPACE_PATH}/data',
              WHERE: '${HOME}:${PATH}:${LC_ALL}:${TZ}',
              BUCKET: 'models-${STAGE}',
              TOKEN: '${HF_TOKEN}',
              // Keys named like a variable that is not a secret are not withheld either.
              HOME: '${HOME}',
              STAGE: '${STAGE}',
            },
          },
        ],
      }),
      '/m.json',
    );
    expect(withheldVariableNames(manifest, ['AGENT_KEY', 'LANG'])).toEqual([
      'AGENT_KEY',
      'BUCKET',
      'DATA',
      'HF_TOKEN',
      'HF_TOKEN_ENCODED',
      'HF_TOKEN_FILE',
      'HOME_ENCODED',
      'HOME_FILE',
      'LC_ALL_ENCODED',
      'LC_ALL_FILE',
      'PATH_ENCODED',
      'PATH_FILE',
      'SECRETS_ENV_FILE',
      'STAGE_ENCODED',
      'STAGE_FILE',
      'TOKEN',
      'TZ_ENCODED',
      'TZ_FILE',
      'WHERE',
      'WORKSPACE_PATH_ENCODED',
      'WORKSPACE_PATH_FILE',
    ]);
  });

  it('masks secrets only: HOME, WORKSPACE_PATH and not_secret values stay readable, and short ones are not refused', async () => {
    const config = setUp(
      {
        not_secret: ['STAGE'],
        custom_nodes: [{ name: 'n', env: { DATA: '${WORKSPACE_PATH}/data', WHERE: '${HOME}', TZ: '${TZ}', BUCKET: 'models-${STAGE}', TOKEN: 'Bearer ${HF_TOKEN}' } }],
      },
      ['n'],
    );
    const { logger, lines, masker } = captureLogger();
    const env = { WORKSPACE_PATH: dir, HOME: '/r', TZ: 'UTC', STAGE: 'dev', HF_TOKEN: 'hf-secret-token-1' };
    const prepared = await prepareNodeFiles(config, env, masker, logger);
    expect(prepared.files).toHaveLength(1);
    logger.info({ workspace: dir, home: '/r', stage: 'dev', bucket: 'models-dev', data: `${dir}/data`, token: 'hf-secret-token-1', header: 'Bearer hf-secret-token-1' }, 'values');
    const line = JSON.parse(lines.at(-1)!) as Record<string, string>;
    expect(line).toMatchObject({ workspace: dir, home: '/r', stage: 'dev', bucket: 'models-dev', data: `${dir}/data`, token: '[masked:HF_TOKEN]', header: '[masked:n.TOKEN]' });
  });

  it('still refuses a short secret', async () => {
    const config = setUp({ custom_nodes: [{ name: 'n', env: { TOKEN: '${HF_TOKEN}', WHERE: '${HOME}' } }] }, ['n']);
    const error = await problemsOf(config, { HF_TOKEN: 'x7z', HOME: '/r' });
    expect(error.problems).toEqual([
      'HF_TOKEN (from HF_TOKEN): the value is shorter than 4 characters, too short to mask in logs; use a longer secret or list HF_TOKEN in ALLOW_SHORT_SECRETS',
    ]);
  });
});

describe('every problem at once', () => {
  it('a bad manifest entry does not hide the secret problems of the others', async () => {
    const config = setUp({ custom_nodes: [{ name: 'a', env: { K: 5 } }, { name: 'b', env: { L: '${TOKEN_B}' } }] }, ['a', 'b']);
    const error = await problemsOf(config, {});
    const manifest = path.join(dir, 'config_nodes.json');
    expect(error.message).toBe('cannot prepare the custom nodes\' .env files (2 problems)');
    expect(error.problems).toEqual([
      `${manifest}: custom_nodes.0.env.K: must be a string`,
      'node "b" key L: required variable TOKEN_B is not set (looked for TOKEN_B, TOKEN_B_FILE, TOKEN_B_ENCODED)',
    ]);
  });

  it('a manifest with problems only keeps its own message', async () => {
    const config = setUp({ custom_nodes: [{ name: 'a', env: { K: 5 } }] }, ['a']);
    const error = await problemsOf(config, {});
    expect(error.message).toBe(`manifest ${path.join(dir, 'config_nodes.json')} has the wrong shape`);
  });
});

import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseManifest } from '../src/secrets/manifest.js';
import {
  decodeBase64Strict,
  loadEnvFile,
  MAX_SECRET_FILE_BYTES,
  readSecretFile,
  resolveSecrets,
  resolveVariable,
} from '../src/secrets/secrets.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'gpu-boot-secrets-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** The error a function throws (sync or async); fails the test when it does not throw. */
async function errorOf(fn: () => unknown): Promise<Error> {
  try {
    await fn();
  } catch (error) {
    expect(error).toBeInstanceOf(Error);
    return error as Error;
  }
  throw new Error('expected an error, none was thrown');
}

const b64 = (text: string | Buffer): string => Buffer.from(text).toString('base64');

describe('decodeBase64Strict', () => {
  it('decodes standard padded base64', () => {
    expect(decodeBase64Strict('aGVsbG8=', 'TOKEN_ENCODED')).toBe('hello');
    expect(decodeBase64Strict('aGk=', 'TOKEN_ENCODED')).toBe('hi');
    expect(decodeBase64Strict('aGV5', 'TOKEN_ENCODED')).toBe('hey');
    // + and / in the alphabet
    expect(decodeBase64Strict('Pz4/', 'TOKEN_ENCODED')).toBe('?>?');
    expect(decodeBase64Strict('Pz8+', 'TOKEN_ENCODED')).toBe('??>');
  });

  it('decodes base64url, unpadded and padded', () => {
    expect(decodeBase64Strict('aGVsbG8', 'TOKEN_ENCODED')).toBe('hello');
    expect(decodeBase64Strict('aGk', 'TOKEN_ENCODED')).toBe('hi');
    expect(decodeBase64Strict('Pz4_', 'TOKEN_ENCODED')).toBe('?>?');
    expect(decodeBase64Strict('Pz8-', 'TOKEN_ENCODED')).toBe('??>');
    expect(decodeBase64Strict('Pz8-aGk', 'TOKEN_ENCODED')).toBe('??>hi');
    expect(decodeBase64Strict('Pz8-aGk=', 'TOKEN_ENCODED')).toBe('??>hi');
    expect(decodeBase64Strict('Pz8-aA==', 'TOKEN_ENCODED')).toBe('??>h');
  });

  it('round-trips multi-line UTF-8 text', () => {
    const pem = '-----BEGIN KEY-----\nabc+/=\n日本 🚀\n-----END KEY-----\n';
    expect(decodeBase64Strict(b64(pem), 'K_ENCODED')).toBe(pem);
    expect(decodeBase64Strict(Buffer.from(pem).toString('base64url'), 'K_ENCODED')).toBe(pem);
  });

  it('trims surrounding whitespace (as `base64` and `echo` leave it)', () => {
    expect(decodeBase64Strict('  aGVsbG8=\n', 'TOKEN_ENCODED')).toBe('hello');
    expect(decodeBase64Strict('\taGVsbG8\r\n', 'TOKEN_ENCODED')).toBe('hello');
  });

  it('decodes the empty string to the empty string', () => {
    expect(decodeBase64Strict('', 'TOKEN_ENCODED')).toBe('');
  });

  const invalid = 'MY_TOKEN_ENCODED is not valid base64 or base64url (encode it with `base64 -w0`)';
  it.each([
    ['an invalid character', 'Y2FuYXJ5*c2VjcmV0', invalid],
    ['an internal space', 'Y2FuYXJ5 c2VjcmV0', invalid],
    ['an internal newline (wrapped output)', 'Y2FuYXJ5\nc2VjcmV0', invalid],
    ['mixed alphabets', 'Y2F+YXJ_', invalid],
    ['a lone character in the last group', 'Y2FuYXJ5Y', invalid],
    ['padding too short', 'YQ=', invalid],
    ['padding after a full group', 'Y2Fu=', invalid],
    ['padding too long', 'YWI==', invalid],
    ['three padding characters', 'YQ===', invalid],
    ['padding in the middle', 'YQ==YQ==', invalid],
    ['only padding', '====', invalid],
    ['non-canonical padding bits', 'YR==', 'MY_TOKEN_ENCODED is not canonical base64 (stray bits in the padding)'],
    ['non-canonical padding bits, one =', 'YWJ=', 'MY_TOKEN_ENCODED is not canonical base64 (stray bits in the padding)'],
    ['non-canonical base64url bits', 'YR', 'MY_TOKEN_ENCODED is not canonical base64url'],
    ['bytes that are not UTF-8', b64(Buffer.from([0xff, 0xfe])), 'MY_TOKEN_ENCODED (decoded) is not valid UTF-8'],
    ['a NUL', b64('canary\u0000secret'), 'MY_TOKEN_ENCODED (decoded) contains a NUL character'],
  ])('refuses %s', async (_name, input, message) => {
    const error = await errorOf(() => decodeBase64Strict(input, 'MY_TOKEN_ENCODED'));
    expect(error.message).toBe(message);
    expect(error.message).not.toContain(input.trim());
    expect(error.message).not.toContain('canary');
  });

  it('never puts the decoded value in the message', async () => {
    const encoded = b64(Buffer.concat([Buffer.from('canary-4821-'), Buffer.from([0xc3])]));
    const error = await errorOf(() => decodeBase64Strict(encoded, 'X_ENCODED'));
    expect(error.message).toBe('X_ENCODED (decoded) is not valid UTF-8');
  });
});

describe('readSecretFile', () => {
  const write = (name: string, content: string | Buffer): string => {
    const file = path.join(dir, name);
    writeFileSync(file, content);
    return file;
  };

  it.each([
    ['one trailing newline', 'canary-abc\n', 'canary-abc'],
    ['only one of two trailing newlines', 'canary-abc\n\n', 'canary-abc\n'],
    ['a trailing CRLF', 'canary-abc\r\n', 'canary-abc'],
    ['only one of two trailing CRLFs', 'canary-abc\r\n\r\n', 'canary-abc\r\n'],
    ['nothing when there is no newline', 'canary-abc', 'canary-abc'],
    ['not a lone trailing CR', 'canary-abc\r', 'canary-abc\r'],
    ['nothing but the newline, spaces kept', '  canary-abc \n', '  canary-abc '],
    ['inner newlines', 'line1\nline2\n', 'line1\nline2'],
    ['non-ASCII', 'café 日本 🚀\n', 'café 日本 🚀'],
    ['an empty file', '', ''],
    ['a lone newline', '\n', ''],
  ])('drops %s', async (_name, content, value) => {
    await expect(readSecretFile(write('secret', content), 'TOKEN_FILE')).resolves.toBe(value);
  });

  it('reads a file of exactly the limit', async () => {
    const file = write('big', Buffer.alloc(MAX_SECRET_FILE_BYTES, 'a'));
    const value = await readSecretFile(file, 'TOKEN_FILE');
    expect(value.length).toBe(MAX_SECRET_FILE_BYTES);
    expect(MAX_SECRET_FILE_BYTES).toBe(1024 * 1024);
  });

  it('refuses a file over 1 MiB', async () => {
    const file = write('big', Buffer.alloc(MAX_SECRET_FILE_BYTES + 1, 'a'));
    const error = await errorOf(() => readSecretFile(file, 'TOKEN_FILE'));
    expect(error.message).toBe(`TOKEN_FILE: ${file} is larger than 1048576 bytes`);
  });

  it('refuses a missing file, naming the variable', async () => {
    const file = path.join(dir, 'nope');
    const error = await errorOf(() => readSecretFile(file, 'TOKEN_FILE'));
    expect(error.message).toBe(`TOKEN_FILE: ${file} does not exist`);
  });

  it('refuses a folder', async () => {
    const folder = path.join(dir, 'folder');
    mkdirSync(folder);
    const error = await errorOf(() => readSecretFile(folder, 'TOKEN_FILE'));
    expect(error.message).toBe(`TOKEN_FILE: ${folder} is a folder, not a file`);
  });

  it('refuses a FIFO without hanging', { timeout: 10_000 }, async () => {
    const fifo = path.join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const error = await errorOf(() => readSecretFile(fifo, 'TOKEN_FILE'));
    expect(error.message).toBe(`TOKEN_FILE: ${fifo} is not a regular file`);
  });

  it('refuses /dev/null as not a regular file', async () => {
    const error = await errorOf(() => readSecretFile('/dev/null', 'TOKEN_FILE'));
    expect(error.message).toBe('TOKEN_FILE: /dev/null is not a regular file');
  });

  it('refuses an unreadable file', async () => {
    const file = write('locked', 'canary-locked\n');
    chmodSync(file, 0o000);
    // Root reads a mode 0000 file all the same: as root, the read is made as nobody (the effective uid, for the whole process, until it is put back).
    const asRoot = process.geteuid?.() === 0;
    if (asRoot) process.seteuid!(65534);
    try {
      const error = await errorOf(() => readSecretFile(file, 'TOKEN_FILE'));
      expect(error.message).toBe(`TOKEN_FILE: ${file} is not readable (permission denied)`);
    } finally {
      if (asRoot) process.seteuid!(0);
    }
    expect(process.geteuid?.()).toBe(asRoot ? 0 : process.getuid?.());
  });

  it('refuses invalid UTF-8 without showing the content', async () => {
    const file = write('latin1', Buffer.concat([Buffer.from('canary-4821-caf'), Buffer.from([0xe9, 0x0a])]));
    const error = await errorOf(() => readSecretFile(file, 'TOKEN_FILE'));
    expect(error.message).toBe(`TOKEN_FILE: ${file} is not valid UTF-8`);
    expect(error.message).not.toContain('canary');
  });

  it('refuses a NUL character without showing the content', async () => {
    const file = write('nul', 'canary-4821\u0000rest');
    const error = await errorOf(() => readSecretFile(file, 'TOKEN_FILE'));
    expect(error.message).toBe(`TOKEN_FILE: ${file} contains a NUL character`);
  });

  it('follows symlinks, as Kubernetes mounts secrets', async () => {
    // <mount>/token -> ..data/token, ..data -> ..2024_01_01_00_00_00.123, where the real file lives
    const mount = path.join(dir, 'mount');
    const stamped = path.join(mount, '..2024_01_01_00_00_00.123');
    mkdirSync(stamped, { recursive: true });
    writeFileSync(path.join(stamped, 'token'), 'canary-k8s-token\n');
    symlinkSync('..2024_01_01_00_00_00.123', path.join(mount, '..data'));
    symlinkSync('..data/token', path.join(mount, 'token'));
    await expect(readSecretFile(path.join(mount, 'token'), 'TOKEN_FILE')).resolves.toBe('canary-k8s-token');
  });

  it('refuses a dangling symlink as missing', async () => {
    const link = path.join(dir, 'dangling');
    symlinkSync(path.join(dir, 'gone'), link);
    const error = await errorOf(() => readSecretFile(link, 'TOKEN_FILE'));
    expect(error.message).toBe(`TOKEN_FILE: ${link} does not exist`);
  });
});

describe('loadEnvFile', () => {
  it('parses an agent-rendered dotenv file', async () => {
    const file = path.join(dir, 'agent.env');
    writeFileSync(file, '# rendered by vault agent\nTOKEN=canary-a\nexport OTHER="two words"\nQUOTED=\'x y\'\n');
    await expect(loadEnvFile(file)).resolves.toEqual({ TOKEN: 'canary-a', OTHER: 'two words', QUOTED: 'x y' });
  });

  it('names SECRETS_ENV_FILE when it is missing', async () => {
    const file = path.join(dir, 'missing.env');
    const error = await errorOf(() => loadEnvFile(file));
    expect(error.message).toBe(`SECRETS_ENV_FILE: ${file} does not exist`);
  });
});

describe('resolveVariable', () => {
  it('reads VAR_FILE', async () => {
    const file = path.join(dir, 'token');
    writeFileSync(file, 'canary-from-file\n');
    await expect(resolveVariable('TOKEN', { TOKEN_FILE: file }, undefined, undefined)).resolves.toEqual({
      variable: 'TOKEN',
      value: 'canary-from-file',
      source: 'TOKEN_FILE',
      kind: 'file',
      path: file,
    });
  });

  it('decodes VAR_ENCODED', async () => {
    await expect(resolveVariable('TOKEN', { TOKEN_ENCODED: b64('canary-encoded') }, undefined, undefined)).resolves.toEqual({
      variable: 'TOKEN',
      value: 'canary-encoded',
      source: 'TOKEN_ENCODED',
      kind: 'encoded',
    });
  });

  it('takes plain VAR', async () => {
    await expect(resolveVariable('TOKEN', { TOKEN: 'canary-plain' }, undefined, undefined)).resolves.toEqual({
      variable: 'TOKEN',
      value: 'canary-plain',
      source: 'TOKEN',
      kind: 'env',
    });
  });

  it('falls back to the SECRETS_ENV_FILE values', async () => {
    await expect(resolveVariable('TOKEN', {}, { TOKEN: 'canary-agent' }, '/run/secrets/agent.env')).resolves.toEqual({
      variable: 'TOKEN',
      value: 'canary-agent',
      source: 'SECRETS_ENV_FILE',
      kind: 'env-file',
    });
  });

  it('returns undefined when nothing is set', async () => {
    await expect(resolveVariable('TOKEN', { OTHER: 'x' }, { OTHER: 'y' }, '/a.env')).resolves.toBeUndefined();
  });

  it('treats empty values as unset', async () => {
    await expect(
      resolveVariable('TOKEN', { TOKEN_FILE: '', TOKEN_ENCODED: '', TOKEN: '' }, { TOKEN: '' }, '/a.env'),
    ).resolves.toBeUndefined();
    await expect(resolveVariable('TOKEN', { TOKEN_FILE: '', TOKEN: 'canary-plain' }, undefined, undefined)).resolves.toMatchObject({
      value: 'canary-plain',
      kind: 'env',
    });
    await expect(resolveVariable('TOKEN', { TOKEN: '' }, { TOKEN: 'canary-agent' }, '/a.env')).resolves.toMatchObject({
      value: 'canary-agent',
      kind: 'env-file',
    });
  });

  it.each([
    [{ TOKEN_FILE: '/x', TOKEN: 'canary-1' }, undefined, 'TOKEN_FILE, TOKEN'],
    [{ TOKEN_FILE: '/x', TOKEN_ENCODED: 'Y2FuYXJ5' }, undefined, 'TOKEN_FILE, TOKEN_ENCODED'],
    [{ TOKEN_ENCODED: 'Y2FuYXJ5', TOKEN: 'canary-1' }, undefined, 'TOKEN_ENCODED, TOKEN'],
    [{ TOKEN: 'canary-1' }, { TOKEN: 'canary-2' }, 'TOKEN, SECRETS_ENV_FILE (/run/agent.env)'],
    [{ TOKEN_FILE: '/x', TOKEN_ENCODED: 'Y2FuYXJ5', TOKEN: 'canary-1' }, { TOKEN: 'canary-2' }, 'TOKEN_FILE, TOKEN_ENCODED, TOKEN, SECRETS_ENV_FILE (/run/agent.env)'],
  ])('refuses two sources at once: %j', async (env, envFile, named) => {
    const error = await errorOf(() => resolveVariable('TOKEN', env, envFile, '/run/agent.env'));
    expect(error.message).toBe(`TOKEN is set by more than one source: ${named}; keep exactly one`);
    expect(error.message).not.toContain('canary');
    expect(error.message).not.toContain('Y2FuYXJ5');
  });

  it('passes on a file error with the _FILE variable named', async () => {
    const file = path.join(dir, 'absent');
    const error = await errorOf(() => resolveVariable('TOKEN', { TOKEN_FILE: file }, undefined, undefined));
    expect(error.message).toBe(`TOKEN_FILE: ${file} does not exist`);
  });

  it('passes on a decoding error with the _ENCODED variable named', async () => {
    const error = await errorOf(() => resolveVariable('TOKEN', { TOKEN_ENCODED: 'canary!!' }, undefined, undefined));
    expect(error.message).toBe('TOKEN_ENCODED is not valid base64 or base64url (encode it with `base64 -w0`)');
  });
});

describe('resolveSecrets', () => {
  const manifestOf = (nodes: unknown): ReturnType<typeof parseManifest> =>
    parseManifest(JSON.stringify({ custom_nodes: nodes }), '/app/config_nodes.json');

  const CANARIES = ['canary-file-7731', 'canary-enc-7731', 'canary-plain-7731', 'canary-agent-7731', 'canary-dup-7731'];

  it('resolves every source and renders composed values in manifest order', async () => {
    const tokenFile = path.join(dir, 'token');
    writeFileSync(tokenFile, 'canary-file-7731\n');
    const agentFile = path.join(dir, 'agent.env');
    writeFileSync(agentFile, 'AGENT_KEY=canary-agent-7731\nUNRELATED_AGENT=zzz\n');
    const manifest = manifestOf([
      {
        name: 'alpha',
        url: 'https://github.com/x/alpha',
        env: {
          TOKEN: '${TOKEN}',
          BUCKET: 'models-${STAGE}',
          URL: 'https://${HOST}/v1?key=${API_KEY}',
          OPTIONAL: '${MISSING_OPT:-fallback}',
          EMPTY_DEFAULT: '${ALSO_MISSING:-}',
          SET_WITH_DEFAULT: '${STAGE:-dev}',
          LITERAL: 'no refs $HOME',
        },
      },
      { name: 'beta', env: { AGENT: '${AGENT_KEY}', STAGE_AGAIN: '${STAGE}' } },
      { name: 'gamma' },
    ]);
    const env = {
      TOKEN_FILE: tokenFile,
      API_KEY_ENCODED: b64('canary-enc-7731'),
      STAGE: 'prod',
      HOST: 'api.example.com',
    };
    const result = await resolveSecrets(manifest, env, agentFile);
    expect(result.problems).toEqual([]);
    expect(result.nodes).toEqual([
      {
        name: 'alpha',
        values: [
          { key: 'TOKEN', value: 'canary-file-7731', variables: ['TOKEN'] },
          { key: 'BUCKET', value: 'models-prod', variables: ['STAGE'] },
          { key: 'URL', value: 'https://api.example.com/v1?key=canary-enc-7731', variables: ['HOST', 'API_KEY'] },
          { key: 'OPTIONAL', value: 'fallback', variables: [] },
          { key: 'EMPTY_DEFAULT', value: '', variables: [] },
          { key: 'SET_WITH_DEFAULT', value: 'prod', variables: ['STAGE'] },
          { key: 'LITERAL', value: 'no refs $HOME', variables: [] },
        ],
      },
      {
        name: 'beta',
        values: [
          { key: 'AGENT', value: 'canary-agent-7731', variables: ['AGENT_KEY'] },
          { key: 'STAGE_AGAIN', value: 'prod', variables: ['STAGE'] },
        ],
      },
      { name: 'gamma', values: [] },
    ]);
    expect([...result.variables.keys()].sort()).toEqual(['AGENT_KEY', 'API_KEY', 'HOST', 'STAGE', 'TOKEN']);
    expect(result.variables.get('TOKEN')).toEqual({
      variable: 'TOKEN',
      value: 'canary-file-7731',
      source: 'TOKEN_FILE',
      kind: 'file',
      path: tokenFile,
    });
    expect(result.variables.get('API_KEY')).toMatchObject({ kind: 'encoded', source: 'API_KEY_ENCODED' });
    expect(result.variables.get('STAGE')).toMatchObject({ kind: 'env', source: 'STAGE' });
    expect(result.variables.get('AGENT_KEY')).toMatchObject({ kind: 'env-file', source: 'SECRETS_ENV_FILE' });
    const referenced = ['AGENT_KEY', 'ALSO_MISSING', 'API_KEY', 'HOST', 'MISSING_OPT', 'STAGE', 'TOKEN'];
    expect(result.sourceVariableNames).toEqual(
      [...referenced.flatMap((v) => [v, `${v}_FILE`, `${v}_ENCODED`]), 'UNRELATED_AGENT'].sort(),
    );
  });

  it('uses the ${VAR:-default} default only when every source is unset or empty', async () => {
    const manifest = manifestOf([{ name: 'n', env: { A: '${OPT:-dflt}' } }]);
    expect((await resolveSecrets(manifest, {}, undefined)).nodes[0]?.values).toEqual([{ key: 'A', value: 'dflt', variables: [] }]);
    expect((await resolveSecrets(manifest, { OPT: '' }, undefined)).nodes[0]?.values).toEqual([
      { key: 'A', value: 'dflt', variables: [] },
    ]);
    expect((await resolveSecrets(manifest, { OPT: 'given' }, undefined)).nodes[0]?.values).toEqual([
      { key: 'A', value: 'given', variables: ['OPT'] },
    ]);
  });

  it('reports a missing required variable by node, key and variable', async () => {
    const manifest = manifestOf([{ name: 'alpha', env: { OK: 'fixed', NEED: 'x-${REQUIRED_ONE}' } }]);
    const result = await resolveSecrets(manifest, {}, undefined);
    expect(result.problems).toEqual([
      'node "alpha" key NEED: required variable REQUIRED_ONE is not set (looked for REQUIRED_ONE, REQUIRED_ONE_FILE, REQUIRED_ONE_ENCODED)',
    ]);
    // the key is left out; the rest of the node is kept
    expect(result.nodes).toEqual([{ name: 'alpha', values: [{ key: 'OK', value: 'fixed', variables: [] }] }]);
  });

  it('mentions SECRETS_ENV_FILE in the hint when one is in use', async () => {
    const agentFile = path.join(dir, 'agent.env');
    writeFileSync(agentFile, 'SOMETHING=else\n');
    const manifest = manifestOf([{ name: 'alpha', env: { NEED: '${REQUIRED_ONE}' } }]);
    const result = await resolveSecrets(manifest, {}, agentFile);
    expect(result.problems).toEqual([
      'node "alpha" key NEED: required variable REQUIRED_ONE is not set (looked for REQUIRED_ONE, REQUIRED_ONE_FILE, REQUIRED_ONE_ENCODED and SECRETS_ENV_FILE)',
    ]);
  });

  it('reports a missing SECRETS_ENV_FILE and carries on with the other sources', async () => {
    const agentFile = path.join(dir, 'absent.env');
    const manifest = manifestOf([{ name: 'alpha', env: { A: '${PLAIN}' } }]);
    const result = await resolveSecrets(manifest, { PLAIN: 'canary-plain-7731' }, agentFile);
    expect(result.problems).toEqual([`SECRETS_ENV_FILE: ${agentFile} does not exist`]);
    expect(result.nodes).toEqual([{ name: 'alpha', values: [{ key: 'A', value: 'canary-plain-7731', variables: ['PLAIN'] }] }]);
  });

  it('collects every problem at once and never shows a value', async () => {
    const agentFile = path.join(dir, 'agent.env');
    writeFileSync(agentFile, 'DUP_AGENT=canary-agent-7731\n');
    const missingFile = path.join(dir, 'no-such-secret');
    const folder = path.join(dir, 'a-folder');
    mkdirSync(folder);
    const badUtf8 = path.join(dir, 'bad-utf8');
    writeFileSync(badUtf8, Buffer.concat([Buffer.from('canary-file-7731'), Buffer.from([0xff])]));
    const manifest = manifestOf([
      {
        name: 'alpha',
        env: {
          A: '${FROM_MISSING_FILE}',
          B: '${BAD_BASE64}',
          C: '${TWO_SOURCES}',
          D: '${NOT_SET}',
          E: 'ok-${FINE}',
        },
      },
      {
        name: 'beta',
        env: {
          F: '${FROM_FOLDER}',
          G: '${DUP_AGENT}',
          H: '${NOT_SET}',
          I: '${BAD_UTF8}',
          J: '${BAD_BASE64:-default-is-used}',
        },
      },
    ]);
    const env = {
      FROM_MISSING_FILE_FILE: missingFile,
      BAD_BASE64_ENCODED: 'canary-enc-7731 !',
      TWO_SOURCES: 'canary-plain-7731',
      TWO_SOURCES_ENCODED: b64('canary-dup-7731'),
      FINE: 'fine',
      FROM_FOLDER_FILE: folder,
      DUP_AGENT: 'canary-dup-7731',
      BAD_UTF8_FILE: badUtf8,
    };
    const result = await resolveSecrets(manifest, env, agentFile);
    expect(result.problems).toEqual(
      [
        `FROM_MISSING_FILE_FILE: ${missingFile} does not exist`,
        'BAD_BASE64_ENCODED is not valid base64 or base64url (encode it with `base64 -w0`)',
        'TWO_SOURCES is set by more than one source: TWO_SOURCES_ENCODED, TWO_SOURCES; keep exactly one',
        `node "alpha" key D: required variable NOT_SET is not set (looked for NOT_SET, NOT_SET_FILE, NOT_SET_ENCODED and SECRETS_ENV_FILE)`,
        `FROM_FOLDER_FILE: ${folder} is a folder, not a file`,
        `DUP_AGENT is set by more than one source: DUP_AGENT, SECRETS_ENV_FILE (${agentFile}); keep exactly one`,
        `node "beta" key H: required variable NOT_SET is not set (looked for NOT_SET, NOT_SET_FILE, NOT_SET_ENCODED and SECRETS_ENV_FILE)`,
        `BAD_UTF8_FILE: ${badUtf8} is not valid UTF-8`,
      ].sort(),
    );
    for (const problem of result.problems) {
      for (const canary of CANARIES) expect(problem).not.toContain(canary);
      expect(problem).not.toContain(b64('canary-dup-7731'));
    }
    // a variable whose source is broken is reported once, not again as "not set" for each key using it
    expect(result.nodes).toEqual([
      { name: 'alpha', values: [{ key: 'E', value: 'ok-fine', variables: ['FINE'] }] },
      { name: 'beta', values: [{ key: 'J', value: 'default-is-used', variables: [] }] },
    ]);
  });

  it('lists VAR, VAR_FILE and VAR_ENCODED for every referenced variable, set or not', async () => {
    const manifest = manifestOf([
      { name: 'a', env: { X: '${ZETA}-${ALPHA}', Y: '${ALPHA:-d}' } },
      { name: 'b', env: { Z: '${MID}' } },
    ]);
    const result = await resolveSecrets(manifest, { ALPHA: 'canary-plain-7731' }, undefined);
    expect(result.sourceVariableNames).toEqual([
      'ALPHA',
      'ALPHA_ENCODED',
      'ALPHA_FILE',
      'MID',
      'MID_ENCODED',
      'MID_FILE',
      'ZETA',
      'ZETA_ENCODED',
      'ZETA_FILE',
    ]);
    expect(result.problems).toHaveLength(2);
  });
});

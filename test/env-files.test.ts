import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import dotenv from 'dotenv';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { HEADER } from '../src/services/dotenv-format.js';
import { readRecord, TEMP_PREFIX, writeRecord, writeNodeFiles, type NodeFile, type WriteRecord } from '../src/services/env-files.js';
import { wipeRecordedFiles } from '../src/services/wipe.js';
import { chooseStorage } from '../src/services/storage.js';
import { captureLogger } from './helpers/logger.js';

let root: string;
let stateDir: string;
let shm: string;
beforeEach(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'gpu-boot-files-'));
  stateDir = path.join(root, 'state');
  shm = await mkdtemp('/dev/shm/gpu-boot-test-');
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
  await rm(shm, { recursive: true, force: true });
});

const record = (): WriteRecord => ({ version: 1, pid: process.pid, startedAt: new Date().toISOString(), files: [] });

/** A node's file as gpu-boot renders it: the generated header, then the given lines. */
async function nodeFile(node: string, body: string): Promise<NodeFile> {
  await mkdir(path.join(root, node), { recursive: true });
  return { node, path: path.join(root, node, '.env'), text: `${HEADER}\n${body}` };
}

describe('writeNodeFiles and wipeRecordedFiles', () => {
  it('in place: 0600 files, recorded first, wiped with their temp leftovers, and the record removed', async () => {
    const files = [await nodeFile('a', 'A="1"\n'), await nodeFile('b', 'B="2"\n')];
    await writeNodeFiles(stateDir, files, record(), { storage: { kind: 'in-place' } });
    for (const f of files) {
      expect((await stat(f.path)).mode & 0o777).toBe(0o600);
      expect(await readFile(f.path, 'utf8')).toBe(f.text);
      expect(dotenv.parse(f.text)).toEqual(f.node === 'a' ? { A: '1' } : { B: '2' });
    }
    expect((await readRecord(stateDir))!.files.map((f) => f.path)).toEqual(files.map((f) => f.path));
    // A crash mid-write leaves a temp file beside the target: wipe removes it too.
    await writeFile(path.join(root, 'a', `${TEMP_PREFIX}999-abc`), 'A="half');
    const result = await wipeRecordedFiles(stateDir);
    expect(result).toEqual({ removed: 3, restored: 0, problems: [], skipped: [] });
    expect(await readdir(path.join(root, 'a'))).toEqual([]);
    expect(await readdir(path.join(root, 'b'))).toEqual([]);
    expect(await readRecord(stateDir)).toBeUndefined();
    expect(await wipeRecordedFiles(stateDir)).toEqual({ removed: 0, restored: 0, problems: [], skipped: [] });
  });

  it('on tmpfs: each .env is a link to a 0600 file in a 0700 folder, and both readers read through it', async () => {
    const dir = path.join(shm, 'store');
    const files = [await nodeFile('a', 'A=\'x #y\'\n')];
    await writeNodeFiles(stateDir, files, record(), { storage: { kind: 'tmpfs', dir } });
    expect(await readlink(files[0]!.path)).toBe(path.join(dir, 'a.env'));
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    expect((await stat(path.join(dir, 'a.env'))).mode & 0o777).toBe(0o600);
    expect(dotenv.parse(await readFile(files[0]!.path))).toEqual({ A: 'x #y' });
    expect((await readRecord(stateDir))!.storageDir).toBe(dir);
    expect(await wipeRecordedFiles(stateDir)).toEqual({ removed: 1, restored: 0, problems: [], skipped: [] });
    expect(existsSync(dir)).toBe(false);
    expect(existsSync(files[0]!.path)).toBe(false);
  });

  it('keeps a foreign .env aside and restores it exactly', async () => {
    const f = await nodeFile('a', 'A="ours"\n');
    await writeFile(f.path, 'MINE=1\n', { mode: 0o644 });
    await writeNodeFiles(stateDir, [f], record(), { storage: { kind: 'tmpfs', dir: path.join(shm, 's') } });
    expect(await readFile(f.path, 'utf8')).toBe(f.text);
    expect(await wipeRecordedFiles(stateDir)).toEqual({ removed: 1, restored: 1, problems: [], skipped: [] });
    expect(await readFile(f.path, 'utf8')).toBe('MINE=1\n');
    expect((await stat(f.path)).mode & 0o777).toBe(0o644);
  });

  it('records a file before writing it, so a failed write is still wiped', async () => {
    const good = await nodeFile('a', 'A="1"\n');
    const bad: NodeFile = { node: 'gone', path: path.join(root, 'gone', '.env'), text: 'B="2"\n' };
    await expect(writeNodeFiles(stateDir, [good, bad], record(), { storage: { kind: 'in-place' } })).rejects.toThrow(
      `cannot create a file in ${path.join(root, 'gone')}: ENOENT`,
    );
    expect((await readRecord(stateDir))!.files.map((f) => f.path)).toEqual([good.path, bad.path]);
    await wipeRecordedFiles(stateDir);
    expect(existsSync(good.path)).toBe(false);
  });
});

describe('chooseStorage', () => {
  const config = (SECRETS_TMPFS?: string) => loadConfig({ WORKSPACE_PATH: root, ...(SECRETS_TMPFS ? { SECRETS_TMPFS } : {}) });

  it('auto: the first writable tmpfs, one folder per workspace', async () => {
    const { logger, lines } = captureLogger();
    const storage = await chooseStorage(config(), logger, [root, '/dev/shm']);
    expect(storage).toEqual({ kind: 'tmpfs', dir: expect.stringMatching(/^\/dev\/shm\/gpu-boot-[0-9a-f]{12}$/) });
    expect(lines).toEqual([]);
  });

  it('auto with no tmpfs: in place, with one warning', async () => {
    const { logger, lines } = captureLogger();
    expect(await chooseStorage(config(), logger, [root])).toEqual({ kind: 'in-place' });
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]!).msg).toContain('no writable tmpfs');
  });

  it('off: in place, silently; a folder that is not tmpfs: used, with a warning', async () => {
    const { logger, lines } = captureLogger();
    expect(await chooseStorage(config('off'), logger)).toEqual({ kind: 'in-place' });
    const chosen = await chooseStorage(config(path.join(root, 'mine')), logger);
    expect(chosen).toEqual({ kind: 'tmpfs', dir: expect.stringContaining(path.join(root, 'mine', 'gpu-boot-')) });
    expect(lines.map((l) => JSON.parse(l).msg)).toEqual([`SECRETS_TMPFS=${path.join(root, 'mine')} is not a memory file system: secrets will be on disk there`]);
  });
});

describe('wipe trusts nothing but its own files', () => {
  it('leaves alone recorded paths that gpu-boot did not write', async () => {
    const userFile = path.join(root, 'user', '.env');
    await mkdir(path.dirname(userFile), { recursive: true });
    await writeFile(userFile, 'MINE=1\n');
    const victim = path.join(root, 'passwd');
    await writeFile(victim, 'root:x:0:0\n');
    const foreignLink = path.join(root, 'linked', '.env');
    await mkdir(path.dirname(foreignLink), { recursive: true });
    const { symlink } = await import('node:fs/promises');
    await symlink(victim, foreignLink);
    await writeRecord(stateDir, {
      ...record(),
      storageDir: path.join(shm, 's'),
      files: [{ path: userFile }, { path: victim }, { path: foreignLink, target: path.join(shm, 's', 'linked.env') }, { path: path.join(root, 'x', '.env'), target: victim }],
    });
    const result = await wipeRecordedFiles(stateDir);
    expect([...result.skipped].sort()).toEqual([
      `${userFile}: not generated by gpu-boot; left alone`,
      `${victim}: not a .env; left alone`,
      `${foreignLink}: a link gpu-boot did not make; left alone`,
      `${path.join(root, 'x', '.env')}: its content is not in the recorded secrets folder; left alone`,
    ].sort());
    expect(await readFile(userFile, 'utf8')).toBe('MINE=1\n');
    expect(await readFile(victim, 'utf8')).toBe('root:x:0:0\n');
    expect(await readlink(foreignLink)).toBe(victim);
  });
});

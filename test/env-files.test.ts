import { existsSync, type BigIntStats } from 'node:fs';
import { chmod, link, lstat, mkdir, mkdtemp, readdir, readFile, readlink, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import dotenv from 'dotenv';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { HEADER } from '../src/secrets/dotenv-format.js';
import { FileSession, NotOursError, StateDir, type NodeFile } from '../src/files/env-files.js';
import { wipeRecord } from '../src/files/wipe.js';
import { ownerMayWrite } from '../src/files/owned.js';
import { chooseStorage, createSecretsFolder, emptySecretsFolder, RUN_MARKER, sweepDeadRuns, type Storage } from '../src/files/storage.js';
import { captureLogger } from './helpers/logger.js';

let root: string;
let nodes: string;
let stateDir: string;
let shm: string;
beforeEach(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'gpu-boot-files-'));
  nodes = path.join(root, 'custom_nodes');
  stateDir = path.join(root, 'state');
  shm = await mkdtemp('/dev/shm/gpu-boot-test-');
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
  await rm(shm, { recursive: true, force: true });
});

/** A node's file as gpu-boot renders it (in place it is written after the header, on tmpfs as it is). */
async function nodeFile(node: string, body: string): Promise<NodeFile> {
  await mkdir(path.join(nodes, node), { recursive: true });
  return { node, path: path.join(nodes, node, '.env'), text: body };
}

function session(storage: Storage = { kind: 'in-place' }): FileSession {
  return new FileSession(StateDir.create(stateDir), storage, undefined);
}

/** Wipe as a later run would: the record read back from disk and proven. */
function wipeFromDisk() {
  const state = StateDir.open(stateDir)!;
  try {
    const record = state.readRecord();
    return record ? wipeRecord(state, record) : undefined;
  } finally {
    state.close();
  }
}

describe('FileSession and wipeRecord', () => {
  it('in place: 0600 files recorded by identity before they appear, wiped with the record and the plan', async () => {
    const files = [await nodeFile('a', 'A="1"\n'), await nodeFile('b', 'B="2"\n')];
    const s = session();
    s.writePlan('{}\n');
    await s.write(files);
    for (const f of files) {
      const info = await lstat(f.path, { bigint: true });
      expect(Number(info.mode & 0o777n)).toBe(0o600);
      // In place, the header marks the file gpu-boot's (a crashed run's temp is shredded only with it).
      expect(await readFile(f.path, 'utf8')).toBe(`${HEADER}\n${f.text}`);
      expect(dotenv.parse(await readFile(f.path, 'utf8'))).toEqual(f.node === 'a' ? { A: '1' } : { B: '2' });
      const entry = StateDir.open(stateDir)!.readRecord()!.files.find((e) => e.path === f.path)!;
      expect(entry.ids).toEqual([`${info.dev}:${info.ino}`]);
    }
    expect((await stat(stateDir)).mode & 0o777).toBe(0o700);
    expect((await stat(path.join(stateDir, 'written-files.json'))).mode & 0o777).toBe(0o600);
    expect(wipeFromDisk()).toEqual({ removed: 2, restored: 0, problems: [], skipped: [] });
    expect(await readdir(path.join(nodes, 'a'))).toEqual([]);
    expect(await readdir(stateDir)).toEqual([]);
    expect(wipeFromDisk()).toBeUndefined();
    s.close();
  });

  it('on tmpfs: a fresh, unguessable, marked 0700 folder; each .env a link to its 0600 file there', async () => {
    const files = [await nodeFile('a', 'A=\'x #y\'\n'), await nodeFile('b', 'B=2\n')];
    const s = session({ kind: 'tmpfs', base: shm });
    await s.write(files);
    const dir = s.secrets!.path;
    expect(path.basename(dir)).toMatch(/^gpu-boot-[A-Za-z0-9_-]{12}$/);
    // Named by number, in the order written; the record says whose.
    expect(await readlink(files[0]!.path)).toBe(path.join(dir, '1.env'));
    expect(await readlink(files[1]!.path)).toBe(path.join(dir, '2.env'));
    expect(s.record.files.map((e) => [e.node, e.target])).toEqual([['a', '1.env'], ['b', '2.env']]);
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    expect((await stat(path.join(dir, '1.env'))).mode & 0o777).toBe(0o600);
    expect(JSON.parse(await readFile(path.join(dir, RUN_MARKER), 'utf8'))).toMatchObject({ pid: process.pid });
    // On tmpfs, no header: the content is exactly what was rendered (each comment line costs every load_dotenv).
    expect(await readFile(files[0]!.path, 'utf8')).toBe("A='x #y'\n");
    expect(dotenv.parse(await readFile(files[0]!.path))).toEqual({ A: 'x #y' });
    expect(wipeRecord(s.state, s.record, { secrets: s.secrets!.dir })).toEqual({ removed: 2, restored: 0, problems: [], skipped: [] });
    expect(existsSync(dir)).toBe(false);
    expect(existsSync(files[0]!.path)).toBe(false);
    expect(existsSync(files[1]!.path)).toBe(false);
    s.close();
  });

  it('on /dev/shm each link fits in its inode whatever the node is called: a target under 60 bytes, no block', async () => {
    const long = `ComfyUI-${'Very-Long-Node-Name-'.repeat(10)}`;
    const files = [await nodeFile(long, 'A=1\n')];
    // The image's base itself: the run's folder is made fresh in /dev/shm and removed by the wipe.
    const s = session({ kind: 'tmpfs', base: '/dev/shm' });
    await s.write(files);
    try {
      const target = await readlink(files[0]!.path);
      expect(target).toBe(path.join(s.secrets!.path, '1.env'));
      // ext4 keeps a link of up to 59 bytes in its inode; a longer one takes a block of its own.
      expect(Buffer.byteLength(target)).toBe(36);
      expect((await lstat(files[0]!.path)).blocks).toBe(0);
      expect(await readFile(files[0]!.path, 'utf8')).toBe('A=1\n');
    } finally {
      expect(wipeRecord(s.state, s.record, { secrets: s.secrets!.dir }).problems).toEqual([]);
      s.close();
    }
  });

  it('keeps a foreign .env aside and restores it exactly', async () => {
    const f = await nodeFile('a', 'A="ours"\n');
    await writeFile(f.path, 'MINE=1\n', { mode: 0o644 });
    const s = session({ kind: 'tmpfs', base: shm });
    await s.write([f]);
    expect(await readFile(f.path, 'utf8')).toBe(f.text);
    expect(wipeFromDisk()).toEqual({ removed: 1, restored: 1, problems: [], skipped: [] });
    expect(await readFile(f.path, 'utf8')).toBe('MINE=1\n');
    expect((await stat(f.path)).mode & 0o777).toBe(0o644);
    s.close();
  });

  it('never overwrites an earlier kept-aside file: both the user\'s current .env and the old copy survive', async () => {
    const f = await nodeFile('a', 'A="ours"\n');
    const older = path.join(nodes, 'a', '.env.gpu-boot-orig');
    await writeFile(older, 'OLD=1\n');
    await writeFile(f.path, 'EDITED=2\n');
    const s = session();
    await s.write([f]);
    expect(await readFile(path.join(nodes, 'a', '.env.gpu-boot-orig-2'), 'utf8')).toBe('EDITED=2\n');
    expect(await readFile(older, 'utf8')).toBe('OLD=1\n');
    expect(wipeFromDisk()).toEqual({ removed: 1, restored: 1, problems: [], skipped: [] });
    expect(await readFile(f.path, 'utf8')).toBe('EDITED=2\n');
    expect(await readFile(older, 'utf8')).toBe('OLD=1\n');
    s.close();
  });

  it('a .env edited during the run is left alone at the wipe, and so is the kept-aside original', async () => {
    const f = await nodeFile('a', 'A="ours"\n');
    await writeFile(f.path, 'ORIGINAL=1\n');
    const s = session();
    await s.write([f]);
    // An editor writes a new file and renames it over .env.
    await writeFile(path.join(nodes, 'a', 'edit'), 'EDITED=1\n');
    await rename(path.join(nodes, 'a', 'edit'), f.path);
    const result = wipeRecord(s.state, s.record);
    expect(result.removed).toBe(0);
    expect(result.skipped).toEqual([
      `${f.path}: not the file gpu-boot put there (replaced since); left alone`,
      `${path.join(nodes, 'a', '.env.gpu-boot-orig')}: kept, since ${f.path} is not gpu-boot's file now (edited during the run?); compare them and keep the one you need`,
    ]);
    expect(await readFile(f.path, 'utf8')).toBe('EDITED=1\n');
    expect(await readFile(path.join(nodes, 'a', '.env.gpu-boot-orig'), 'utf8')).toBe('ORIGINAL=1\n');
    s.close();
  });

  it('refuses a .env that is a FIFO or a folder (78) before writing anything', async () => {
    const f = await nodeFile('a', 'A="1"\n');
    await mkdir(f.path);
    const s = session({ kind: 'tmpfs', base: shm });
    await expect(s.write([f])).rejects.toThrow(expect.objectContaining({ exitCode: 78, problems: [`node "a": ${f.path} is a folder; refusing to replace it (move it away)`] }));
    expect(s.secrets).toBeUndefined();
    expect(existsSync(path.join(stateDir, 'written-files.json'))).toBe(false);
    s.close();
  });

  it('refuses two nodes whose folders are one folder (78)', async () => {
    const a = await nodeFile('a', 'A="1"\n');
    await symlink(path.join(nodes, 'a'), path.join(nodes, 'b'));
    const b: NodeFile = { node: 'b', path: path.join(nodes, 'b', '.env'), text: 'B="2"\n' };
    const s = session();
    await expect(s.write([a, b])).rejects.toThrow(expect.objectContaining({ exitCode: 78, problems: [`node "b": ${path.join(nodes, 'b')} is the same folder as node "a"'s; two nodes cannot share one .env`] }));
    expect(await readdir(path.join(nodes, 'a'))).toEqual([]);
    s.close();
  });

  it('a rotation that cannot write leaves every current file as it was', async () => {
    const a = await nodeFile('a', 'A="1"\n');
    const b = await nodeFile('b', 'B="1"\n');
    const s = session();
    await s.write([a, b]);
    // b's folder is removed: its rewrite cannot land, so a's new file must not land either.
    await rm(path.join(nodes, 'b'), { recursive: true });
    await expect(s.write([{ ...a, text: 'A="2"\n' }, { ...b, text: 'B="2"\n' }])).rejects.toThrow(`cannot write ${b.path}: ENOENT`);
    expect(await readFile(a.path, 'utf8')).toBe(`${HEADER}\n${a.text}`);
    expect((await readdir(path.join(nodes, 'a'))).sort()).toEqual(['.env']);
    expect(s.entry(a.path)!.temps).toEqual([]);
    s.close();
  });

  it('works through its handles: a secrets folder moved away and replaced during the run is wiped where it went, the decoy untouched', async () => {
    const f = await nodeFile('a', 'A="1"\n');
    const s = session({ kind: 'tmpfs', base: shm });
    await s.write([f]);
    const real = s.secrets!.path;
    const moved = path.join(shm, 'moved');
    await rename(real, moved);
    await mkdir(real);
    await writeFile(path.join(real, '1.env'), 'DECOY=1\n');
    // A rotation writes into the folder it made, not the decoy.
    await s.write([{ ...f, text: 'A="2"\n' }]);
    expect(await readFile(path.join(moved, '1.env'), 'utf8')).toBe('A="2"\n');
    expect(await readFile(path.join(real, '1.env'), 'utf8')).toBe('DECOY=1\n');
    const result = wipeRecord(s.state, s.record, { secrets: s.secrets!.dir });
    expect(result.problems).toEqual([]);
    expect(await readdir(moved)).toEqual([]);
    expect(await readFile(path.join(real, '1.env'), 'utf8')).toBe('DECOY=1\n');
    s.close();
  });

  it('in place, a rotation goes to the folder it wrote to (held open), never to one put in its place; the old file is zeroed', async () => {
    const f = await nodeFile('a', 'A="1"\n');
    const s = session();
    await s.write([f]);
    await link(f.path, path.join(root, 'second-name'));
    await rename(path.join(nodes, 'a'), path.join(root, 'a-away'));
    await mkdir(path.join(nodes, 'a'));
    await s.write([{ ...f, text: 'A="2"\n' }]);
    expect(await readdir(path.join(nodes, 'a'))).toEqual([]);
    expect(await readFile(path.join(root, 'a-away', '.env'), 'utf8')).toBe(`${HEADER}\nA="2"\n`);
    expect(await readdir(path.join(root, 'a-away'))).toEqual(['.env']);
    expect(await readFile(path.join(root, 'second-name'), 'utf8')).toBe('');
    expect(wipeRecord(s.state, s.record, { folders: s.held }).removed).toBe(1);
    expect(await readdir(path.join(root, 'a-away'))).toEqual([]);
    s.close();
  });

  it('a write that fails leaves no trace of the nodes it wrote for the first time: the next write starts them afresh', async () => {
    const a = await nodeFile('a', 'A="1"\n');
    const s = session();
    await s.write([a]);
    const c = await nodeFile('c', 'C="1"\n');
    await writeFile(c.path, 'MINE=1\n');
    // a's folder is removed: its rewrite fails after c was prepared.
    await rm(path.join(nodes, 'a'), { recursive: true });
    await expect(s.write([{ ...a, text: 'A="2"\n' }, c])).rejects.toThrow(`cannot write ${a.path}: ENOENT`);
    expect((await readdir(path.join(nodes, 'c'))).sort()).toEqual(['.env']);
    expect(await readFile(c.path, 'utf8')).toBe('MINE=1\n');
    expect(s.record.files.map((e) => e.node)).toEqual(['a']);
    expect(StateDir.open(stateDir)!.readRecord()!.files.map((e) => e.node)).toEqual(['a']);
    await s.write([c]);
    expect(await readFile(c.path, 'utf8')).toBe(`${HEADER}\n${c.text}`);
    expect(wipeRecord(s.state, s.record).restored).toBe(1);
    expect(await readFile(c.path, 'utf8')).toBe('MINE=1\n');
    s.close();
  });

  it('a node folder replaced during the run is not wiped into', async () => {
    const f = await nodeFile('a', 'A="1"\n');
    const s = session();
    await s.write([f]);
    await rename(path.join(nodes, 'a'), path.join(root, 'a-away'));
    await mkdir(path.join(nodes, 'a'));
    await writeFile(f.path, `${HEADER}\nVICTIM=1\n`);
    const result = wipeRecord(s.state, s.record);
    expect(result.skipped).toEqual([`${f.path}: ${path.join(nodes, 'a')} is not the folder gpu-boot wrote to (replaced since); left alone`]);
    expect(await readFile(f.path, 'utf8')).toBe(`${HEADER}\nVICTIM=1\n`);
    s.close();
  });
});

describe('the record cannot redirect anything', () => {
  it('refuses a state folder that is a link, and a record that is a link or has other links (65), touching nothing', async () => {
    const elsewhere = path.join(root, 'elsewhere');
    await mkdir(elsewhere, { mode: 0o700 });
    await symlink(elsewhere, stateDir);
    expect(() => StateDir.open(stateDir)).toThrow(NotOursError);
    expect(() => StateDir.create(stateDir)).toThrow(expect.objectContaining({ exitCode: 65, message: `the state folder ${stateDir} is a link, not gpu-boot's folder; nothing was touched` }));
    await rm(stateDir);
    const s = session();
    await s.write([await nodeFile('a', 'A="1"\n')]);
    await link(path.join(stateDir, 'written-files.json'), path.join(root, 'second-name'));
    expect(() => StateDir.open(stateDir)!.readRecord()).toThrow(/is not one gpu-boot wrote \(owner uid \d+, 2 link\(s\), mode 600\); nothing was touched/);
    s.close();
  });

  it('refuses a record that is not valid (65) and an older record (65), naming what to do', async () => {
    const s = session();
    await s.write([await nodeFile('a', 'A="1"\n')]);
    const file = path.join(stateDir, 'written-files.json');
    const record = JSON.parse(await readFile(file, 'utf8'));
    await writeFile(file, JSON.stringify({ ...record, files: [{ ...record.files[0], path: '/etc/passwd' }] }), { mode: 0o600 });
    expect(() => StateDir.open(stateDir)!.readRecord()).toThrow(expect.objectContaining({ exitCode: 65, problems: [`${file}: files.0.path: must be an absolute path to a .env`] }));
    await writeFile(file, JSON.stringify({ version: 1, pid: 1, startedAt: '', files: [] }), { mode: 0o600 });
    expect(() => StateDir.open(stateDir)!.readRecord()).toThrow(/written by an older gpu-boot/);
    await chmod(file, 0o666);
    expect(() => StateDir.open(stateDir)!.readRecord()).toThrow(/mode 666/);
    s.close();
  });
});

describe('dead runs leave nothing', () => {
  it('sweeps a dead run\'s marked folder, never a live run\'s, an unmarked one or a link', async () => {
    const live = createSecretsFolder(shm);
    const dead = createSecretsFolder(shm);
    await writeFile(path.join(dead.path, 'a.env'), 'SECRET=1\n');
    // A run that is gone: a pid that cannot exist.
    await writeFile(path.join(dead.path, RUN_MARKER), JSON.stringify({ ...JSON.parse(await readFile(path.join(live.path, RUN_MARKER), 'utf8')), pid: 4194304 + 7 }));
    const unmarked = path.join(shm, 'gpu-boot-0123456789ab');
    await mkdir(unmarked);
    await writeFile(path.join(unmarked, 'keep'), 'x');
    const victim = path.join(root, 'victim');
    await mkdir(victim);
    await writeFile(path.join(victim, RUN_MARKER), JSON.stringify({ pid: 4194311, start: '1', boot: 'x', pidNs: 'y' }));
    await symlink(victim, path.join(shm, 'gpu-boot-aaaaaaaaaaaa'));
    const sweep = sweepDeadRuns([shm]);
    expect(sweep).toEqual({ removed: [dead.path], problems: [] });
    expect(existsSync(dead.path)).toBe(false);
    expect(existsSync(path.join(live.path, RUN_MARKER))).toBe(true);
    expect(await readFile(path.join(unmarked, 'keep'), 'utf8')).toBe('x');
    expect(existsSync(path.join(victim, RUN_MARKER))).toBe(true);
    live.dir.close();
    dead.dir.close();
  });
});

describe('emptying a secrets folder', () => {
  it('zeroes only files with one name: a file of the same user linked into the folder is unlinked there, its content untouched', async () => {
    const folder = createSecretsFolder(shm);
    await writeFile(path.join(folder.path, 'a.env'), 'SECRET=1\n');
    const theirs = path.join(shm, 'theirs');
    await writeFile(theirs, 'PRECIOUS=1\n');
    await link(theirs, path.join(folder.path, 'b.env'));
    const problems: string[] = [];
    expect(emptySecretsFolder(folder.dir, problems)).toBe(1);
    expect(problems).toEqual([]);
    expect(await readdir(folder.path)).toEqual([]);
    expect(await readFile(theirs, 'utf8')).toBe('PRECIOUS=1\n');
    folder.dir.close();
  });
});

describe('chooseStorage', () => {
  const config = (SECRETS_TMPFS?: string) => loadConfig({ WORKSPACE_PATH: root, ...(SECRETS_TMPFS ? { SECRETS_TMPFS } : {}) });

  it('auto: the first writable tmpfs', async () => {
    const { logger, lines } = captureLogger();
    expect(await chooseStorage(config(), logger, [root, '/dev/shm'])).toEqual({ kind: 'tmpfs', base: '/dev/shm' });
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
    expect(await chooseStorage(config(path.join(root, 'mine')), logger)).toEqual({ kind: 'tmpfs', base: path.join(root, 'mine') });
    expect(lines.map((l) => JSON.parse(l).msg)).toEqual([`SECRETS_TMPFS=${path.join(root, 'mine')} is not a memory file system: secrets will be on disk there`]);
  });
});

describe("ownerMayWrite: what the instances' user could do there", () => {
  const st = (mode: number, uid: number, gid: number) => ({ mode: BigInt(mode), uid: BigInt(uid), gid: BigInt(gid) }) as unknown as BigIntStats;
  const owner = { uid: 1000, gid: 1000 };
  it.each([
    ['their own 0755 folder', st(0o40755, 1000, 1000), true],
    ['their own 0555 folder', st(0o40555, 1000, 1000), false],
    ['root\'s 0775 folder of their group', st(0o40775, 0, 1000), true],
    ['root\'s sticky 1775 folder of their group', st(0o41775, 0, 1000), false],
    ['root\'s 0755 folder', st(0o40755, 0, 0), false],
    ['root\'s 0777 folder', st(0o40777, 0, 0), true],
    ['root\'s sticky 1777 folder', st(0o41777, 0, 0), false],
  ])('%s: %s', (_name, stat, expected) => {
    expect(ownerMayWrite(stat, owner)).toBe(expected);
  });
});

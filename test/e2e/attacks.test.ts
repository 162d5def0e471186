import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, lstat, mkdir, readdir, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { pythonForAnyUser } from '../helpers/python.js';
import { getJson, makeWorkspace, mountTmpfs, runBoot, startBoot, waitFor, type Workspace } from '../helpers/boot.js';

/**
 * The adversary is the instances' own user: any custom node's code. Each attack is performed as
 * an unprivileged user this file creates (useradd; CI runs as root), against gpu-boot running as
 * root with COMFYUI_USER set to that user, at the moment the issue describes. Each asserts that a
 * root-owned victim folder is unchanged (names, bytes, modes, owners, inodes), that no secret lands
 * outside gpu-boot's own tmpfs folder, and the exit code.
 */

const USER = 'gpuboot-attacker';
const SECRET = 'canarySECRET-attack-5e1f';
const isRoot = process.getuid?.() === 0;

function ensureUser(): { uid: number; gid: number } | string {
  if (!isRoot) return 'not root: cannot create a user or act as one';
  const { python, reason } = pythonForAnyUser();
  if (!python) return reason!;
  anyUserPython = python;
  if (spawnSync('id', ['-u', USER]).status !== 0) {
    const made = spawnSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', USER], { encoding: 'utf8' });
    if (made.status !== 0) return `useradd failed: ${made.stderr.trim()}`;
  }
  return { uid: Number(execFileSync('id', ['-u', USER]).toString()), gid: Number(execFileSync('id', ['-g', USER]).toString()) };
}

let attacker: { uid: number; gid: number } | undefined;
let anyUserPython = 'python3';
let skipReason = '';
beforeAll(() => {
  const made = ensureUser();
  if (typeof made === 'string') {
    skipReason = made;
    console.warn(`test/e2e/attacks.test.ts skipped: ${made}`);
  } else attacker = made;
});

/** Run a shell command as the attacker; returns its exit status. */
function asAttacker(script: string): { status: number; stderr: string } {
  const result = spawnSync('runuser', ['-u', USER, '--', 'sh', '-c', script], { encoding: 'utf8' });
  return { status: result.status ?? -1, stderr: result.stderr };
}

let ws: Workspace | undefined;
afterEach(async () => {
  await ws?.cleanup();
  ws = undefined;
});

const MANIFEST = { custom_nodes: [{ name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}' } }] };

/** A workspace the attacker owns (as after `gpu-boot install` as that user), a victim folder root owns, and a shared tmpfs base like /dev/shm. */
async function hostileWorkspace(): Promise<{ w: Workspace; victim: string; env: Record<string, string> }> {
  const w = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 1 });
  await chmod(w.root, 0o755);
  execFileSync('chown', ['-R', `${attacker!.uid}:${attacker!.gid}`, w.workspace]);
  // The manifest is the image's (root's): it decides which secrets each node gets.
  execFileSync('chown', ['0:0', path.join(w.workspace, 'config_nodes.json')]);
  const victim = path.join(w.root, 'victim');
  await mkdir(victim, { mode: 0o755 });
  await writeFile(path.join(victim, 'passwd'), 'root:x:0:0:root:/root:/bin/sh\n', { mode: 0o644 });
  await writeFile(path.join(victim, '.env'), 'ROOT_ONLY=1\n', { mode: 0o600 });
  await mkdir(w.tmpfs, { mode: 0o1777 });
  await chmod(w.tmpfs, 0o1777);
  return { w, victim, env: { ...w.env, HF_TOKEN: SECRET, COMFYUI_USER: USER, COMFYUI_PYTHON: anyUserPython } };
}

/** Names, bytes, modes, owners and inodes of every entry: equal before and after, or the attack worked. */
async function fingerprint(dir: string): Promise<string> {
  const hash = createHash('sha256');
  for (const name of (await readdir(dir)).sort()) {
    const full = path.join(dir, name);
    const info = await lstat(full);
    hash.update(`${name} ${info.mode} ${info.uid}:${info.gid} ${info.ino} ${info.nlink}\n`);
    if (info.isFile()) hash.update(await readFile(full));
  }
  const self = await stat(dir);
  hash.update(`self ${self.mode} ${self.uid}:${self.gid} ${self.ino}`);
  return hash.digest('hex');
}

/** Every regular file under `dir` that holds the canary. */
async function filesHolding(dir: string, canary: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await filesHolding(full, canary)));
    else if (entry.isFile() && (await readFile(full, 'utf8')).includes(canary)) out.push(full);
  }
  return out;
}

describe('before the start', () => {
  it('a link planted at the state folder\'s name is refused (65): nothing written through it, nothing written at all', async (ctx) => {
    if (!attacker) return ctx.skip(skipReason);
    const { w, victim, env } = await hostileWorkspace();
    ws = w;
    const before = await fingerprint(victim);
    expect(asAttacker(`ln -s ${victim} ${w.stateDir}`).status).toBe(0);
    const result = await runBoot(['start'], env);
    expect(result.exitCode).toBe(65);
    expect(result.stderr).toContain(`the state folder ${w.stateDir} is a link, not gpu-boot's folder; nothing was touched`);
    expect(await fingerprint(victim)).toBe(before);
    expect(existsSync(w.envFile('hf_node'))).toBe(false);
    expect(await filesHolding(w.root, SECRET)).toEqual([]);
    expect(await filesHolding(w.tmpfs, SECRET)).toEqual([]);
  });

  it('a forged record naming the victim\'s files, in a state folder the attacker made, is refused (65) and nothing is touched', async (ctx) => {
    if (!attacker) return ctx.skip(skipReason);
    const { w, victim, env } = await hostileWorkspace();
    ws = w;
    const id = async (p: string) => {
      const s = await lstat(p, { bigint: true });
      return `${s.dev}:${s.ino}`;
    };
    const forged = {
      version: 2,
      pid: 4194311,
      run: { pid: 4194311, start: '1', boot: 'x', pidNs: 'y' },
      startedAt: new Date().toISOString(),
      files: [{ node: 'victim', path: path.join(victim, '.env'), dir: await id(victim), ids: [await id(path.join(victim, '.env'))], temps: [], backup: { name: '.env.gpu-boot-orig', id: await id(path.join(victim, 'passwd')) } }],
    };
    await writeFile(path.join(w.root, 'forged.json'), JSON.stringify(forged), { mode: 0o644 });
    expect(asAttacker(`mkdir -m 700 ${w.stateDir} && cp ${path.join(w.root, 'forged.json')} ${w.stateDir}/written-files.json`).status).toBe(0);
    const before = await fingerprint(victim);
    for (const command of ['start', 'wipe']) {
      const result = await runBoot([command], env);
      expect(result.exitCode).toBe(65);
      expect(result.stderr).toContain(`the state folder ${w.stateDir} is not gpu-boot's: it belongs to uid ${attacker.uid}, not to gpu-boot's uid 0; nothing was touched`);
      expect(await fingerprint(victim)).toBe(before);
    }
    expect(existsSync(w.envFile('hf_node'))).toBe(false);
  });

  it('links and folders planted in the tmpfs under gpu-boot-* names are never used: the secrets go to a fresh root-owned folder', async (ctx) => {
    if (!attacker) return ctx.skip(skipReason);
    const { w, victim, env } = await hostileWorkspace();
    ws = w;
    // The name the last version derived from the workspace, and any name a run could pick.
    const oldName = `gpu-boot-${createHash('sha256').update(w.stateDir).digest('hex').slice(0, 12)}`;
    expect(asAttacker(`ln -s ${victim} ${w.tmpfs}/${oldName} && ln -s ${victim} ${w.tmpfs}/gpu-boot-000000000000 && mkdir ${w.tmpfs}/gpu-boot-111111111111 && echo '{"pid":4194311,"start":"1","boot":"x","pidNs":"y"}' > ${w.tmpfs}/gpu-boot-111111111111/.gpu-boot-run`).status).toBe(0);
    const before = await fingerprint(victim);
    const planted = (await readdir(w.tmpfs)).sort();
    const boot = startBoot(['start'], env);
    await boot.waitForLog((l) => l.phase === 'ready', 'ready', 60_000);
    const content = await readlink(w.envFile('hf_node'));
    const folder = path.dirname(content);
    expect(path.basename(folder)).toMatch(/^gpu-boot-[A-Za-z0-9_-]{12}$/);
    expect(planted).not.toContain(path.basename(folder));
    const info = await stat(folder);
    expect([info.uid, info.gid, info.mode & 0o7777]).toEqual([0, attacker.gid, 0o710]);
    const file = await stat(content);
    expect([file.uid, file.mode & 0o777]).toEqual([attacker.uid, 0o600]);
    expect(await filesHolding(w.root, SECRET)).toEqual([]);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
    expect(await fingerprint(victim)).toBe(before);
    // What the attacker planted is theirs: left as it was.
    expect((await readdir(w.tmpfs)).sort()).toEqual(planted);
    expect(await readlink(path.join(w.tmpfs, oldName))).toBe(victim);
  });
});

describe('paths gpu-boot reads as root', () => {
  it('a PM2_HOME the attacker owns is refused (78) before PM2 or a pid file is touched', async (ctx) => {
    if (!attacker) return ctx.skip(skipReason);
    const { w, env } = await hostileWorkspace();
    ws = w;
    const home = path.join(w.workspace, 'pm2');
    expect(asAttacker(`mkdir ${home} && mkdir ${home}/pids && echo 1 > ${home}/pids/comfyui-gpu0-0.pid`).status).toBe(0);
    for (const command of ['start', 'wipe']) {
      const result = await runBoot([command], { ...env, PM2_HOME: home });
      expect(result.exitCode).toBe(78);
      expect(result.stderr).toContain(`PM2_HOME: ${home} belongs to uid ${attacker.uid}; as root, gpu-boot runs PM2 there`);
    }
    expect(await readdir(home)).toEqual(['pids']);
    expect(existsSync(w.envFile('hf_node'))).toBe(false);
  });

  it('`pm2 start ecosystem.config.cjs` as root refuses a plan the attacker wrote, and starts nothing', async (ctx) => {
    if (!attacker) return ctx.skip(skipReason);
    const { w } = await hostileWorkspace();
    ws = w;
    const forged = path.join(w.workspace, 'plan.json');
    const plan = { instances: [{ name: 'comfyui-gpu0', script: '/bin/sh', interpreter: 'none', args: ['-c', `touch ${w.root}/pwned`], cwd: w.root, env: {} }], withheldVariables: [] };
    await writeFile(path.join(w.root, 'forged-plan.json'), JSON.stringify(plan));
    expect(asAttacker(`cp ${path.join(w.root, 'forged-plan.json')} ${forged}`).status).toBe(0);
    const { execa } = await import('execa');
    const { PM2_BIN } = await import('../helpers/boot.js');
    const shell = { PATH: w.env.PATH!, HOME: w.root, PM2_HOME: w.pm2Home, GPU_BOOT_PLAN_FILE: forged };
    const started = await execa('node', [PM2_BIN, 'start', path.resolve('ecosystem.config.cjs')], { env: shell, extendEnv: false, reject: false });
    expect(`${started.stdout}${started.stderr}`).toContain(`cannot read the plan ${forged} (not gpu-boot's: not root's alone (file uid ${attacker.uid}`);
    const jlist = await execa('node', [PM2_BIN, 'jlist'], { env: shell, extendEnv: false, reject: false });
    expect(JSON.parse(jlist.stdout.trim().split('\n').pop()!)).toEqual([]);
    expect(existsSync(path.join(w.root, 'pwned'))).toBe(false);
  });

  it('a FIFO at the manifest\'s path is refused at the start (78), and before a rotation it neither hangs the re-read nor the shutdown', async (ctx) => {
    if (!attacker) return ctx.skip(skipReason);
    const { w, env } = await hostileWorkspace();
    ws = w;
    const manifest = path.join(w.workspace, 'config_nodes.json');
    const token = path.join(w.secrets, 'hf');
    await writeFile(token, `${SECRET}\n`);
    const { HF_TOKEN: _plain, ...rest } = env;
    const bootEnv = { ...rest, HF_TOKEN_FILE: token, ROTATION_DEBOUNCE_MS: '60000' };
    const boot = startBoot(['start'], bootEnv);
    await boot.waitForLog((l) => l.phase === 'ready', 'ready', 60_000);
    expect(asAttacker(`rm ${manifest} && mkfifo ${manifest}`).status).toBe(0);
    boot.child.kill('SIGHUP');
    const refused = await boot.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('rotation refused'), 'rotation refused');
    expect(refused.problems).toEqual([`CUSTOM_NODES_CONFIG: ${manifest} is not a regular file`]);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
    const again = await runBoot(['start'], bootEnv);
    expect(again.exitCode).toBe(78);
    expect(again.stderr).toContain(`CUSTOM_NODES_CONFIG: ${manifest} is not a regular file`);
  });
});

describe('what decides who runs what', () => {
  it('a COMFYUI_PATH swapped for a link to a root-owned folder is refused (78): no instance runs as root', async (ctx) => {
    if (!attacker) return ctx.skip(skipReason);
    const { w, env } = await hostileWorkspace();
    ws = w;
    // A root-owned sticky folder anyone can write, like /var/tmp: the attacker's main.py in it.
    const sticky = path.join(w.root, 'sticky');
    await mkdir(sticky);
    await chmod(sticky, 0o1777);
    expect(asAttacker(`mv ${w.comfyui} ${w.comfyui}.x && cp ${w.comfyui}.x/main.py ${sticky}/main.py && mkdir ${sticky}/custom_nodes && ln -s ${sticky} ${w.comfyui}`).status).toBe(0);
    const { COMFYUI_USER: _user, ...noUser } = env;
    for (const command of ['check', 'start']) {
      const result = await runBoot([command], noUser);
      expect(result.exitCode).toBe(78);
      expect(`${result.stdout}${result.stderr}`).toContain(`COMFYUI_PATH: ${w.comfyui} is a link; as root, gpu-boot takes the instances' user from its owner`);
    }
    // Not a link, but root's and open to others: refused too.
    expect(asAttacker(`rm ${w.comfyui}`).status).toBe(0);
    execFileSync('mkdir', ['-m', '1777', w.comfyui]);
    const open = await runBoot(['start'], noUser);
    expect(open.exitCode).toBe(78);
    expect(open.stderr).toContain(`COMFYUI_PATH: ${w.comfyui} is root's, so the instances would run as root, but it or ${w.workspace} can be changed by another user`);
  });

  it('a manifest the attacker rewrote is refused as root (78): it would decide which secrets their node gets and what is masked', async (ctx) => {
    if (!attacker) return ctx.skip(skipReason);
    const { w, env } = await hostileWorkspace();
    ws = w;
    const manifest = path.join(w.workspace, 'config_nodes.json');
    const forged = { not_secret: ['HF_TOKEN'], custom_nodes: [{ name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}', STOLEN: '${ROOT_ONLY_KEY}' } }] };
    await writeFile(path.join(w.root, 'forged.json'), JSON.stringify(forged));
    expect(asAttacker(`rm -f ${manifest} && cp ${path.join(w.root, 'forged.json')} ${manifest}`).status).toBe(0);
    const result = await runBoot(['start'], { ...env, ROOT_ONLY_KEY: 'rootonly-canary-9f31' });
    expect(result.exitCode).toBe(78);
    expect(result.stderr).toContain(`CUSTOM_NODES_CONFIG: ${manifest} cannot be trusted as root: it belongs to uid ${attacker.uid}; the manifest decides which secrets each node gets`);
    expect(`${result.stdout}${result.stderr}`).not.toContain(SECRET);
    expect(existsSync(w.envFile('hf_node'))).toBe(false);
  });
});

describe('during a run', () => {
  it('a node folder replaced by a file during the run is reported and left alone: the boot stops with 0 and the next start is not refused', async (ctx) => {
    if (!attacker) return ctx.skip(skipReason);
    const { w, env } = await hostileWorkspace();
    ws = w;
    const boot = startBoot(['start'], env);
    await boot.waitForLog((l) => l.phase === 'ready', 'ready', 60_000);
    const nodeDir = path.dirname(w.envFile('hf_node'));
    expect(asAttacker(`mv ${nodeDir} ${nodeDir}.x && echo > ${nodeDir}`).status).toBe(0);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
    expect(boot.logs().some((l) => l.msg === `${w.envFile('hf_node')}: ${nodeDir} is gone or no longer a folder (moved during the run?); nothing removed there`)).toBe(true);
    expect(existsSync(path.join(w.stateDir, 'written-files.json'))).toBe(false);
    const wipe = await runBoot(['wipe'], env);
    expect(wipe.exitCode).toBe(0);
  });

  it('files in place: a node folder renamed during the run is still wiped where it went, and a rotation zeroes the old file (a hard link to it reads empty)', async (ctx) => {
    if (!attacker) return ctx.skip(skipReason);
    const { w, env } = await hostileWorkspace();
    ws = w;
    const token = path.join(w.secrets, 'hf');
    await writeFile(token, `${SECRET}\n`);
    const { HF_TOKEN: _plain, ...rest } = env;
    const boot = startBoot(['start'], { ...rest, HF_TOKEN_FILE: token, SECRETS_TMPFS: 'off', ROTATION_DEBOUNCE_MS: '60000', ROTATION: 'files' });
    await boot.waitForLog((l) => l.phase === 'ready', 'ready', 60_000);
    // In place, the file carries gpu-boot's header: the mark a crashed run's unrecorded temp is shredded by.
    expect((await readFile(w.envFile('hf_node'), 'utf8')).split('\n')[0]).toBe('# gpu-boot: generated at start, wiped at stop; do not edit');
    const nodeDir = path.dirname(w.envFile('hf_node'));
    // A copy by a second name before the rotation: the rotation must zero what it names.
    expect(asAttacker(`ln ${w.envFile('hf_node')} ${w.workspace}/kept`).status).toBe(0);
    await writeFile(token, `${SECRET}-rotated\n`);
    boot.child.kill('SIGHUP');
    await boot.waitForLog((l) => l.phase === 'rotation', 'rotation');
    expect(await readFile(path.join(w.workspace, 'kept'), 'utf8')).toBe('');
    expect(await readFile(w.envFile('hf_node'), 'utf8')).toContain(`${SECRET}-rotated`);
    expect((await readFile(w.envFile('hf_node'), 'utf8')).startsWith('# gpu-boot: generated at start, wiped at stop; do not edit\n')).toBe(true);
    expect(asAttacker(`mv ${nodeDir} ${nodeDir}.moved`).status).toBe(0);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
    expect(existsSync(path.join(`${nodeDir}.moved`, '.env'))).toBe(false);
    expect(await filesHolding(w.root, SECRET)).toEqual([path.join(w.secrets, 'hf')]);
  });


  it('a content file its owner grows to 5 GiB is still shredded and removed: the wipe neither fails nor fills memory', async (ctx) => {
    if (!attacker) return ctx.skip(skipReason);
    const { w, env } = await hostileWorkspace();
    ws = w;
    const boot = startBoot(['start'], env);
    await boot.waitForLog((l) => l.phase === 'ready', 'ready', 60_000);
    const content = await readlink(w.envFile('hf_node'));
    expect(asAttacker(`truncate -s 5G ${content}`).status).toBe(0);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
    expect(existsSync(path.dirname(content))).toBe(false);
    expect(existsSync(path.join(w.stateDir, 'written-files.json'))).toBe(false);
  });


  it('the attacker can neither rename nor add to the secrets folder or the state folder, and a node folder swapped for a link to the victim is not wiped into', async (ctx) => {
    if (!attacker) return ctx.skip(skipReason);
    const { w, victim, env } = await hostileWorkspace();
    ws = w;
    const boot = startBoot(['start'], env);
    await boot.waitForLog((l) => l.phase === 'ready', 'ready', 60_000);
    const folder = path.dirname(await readlink(w.envFile('hf_node')));
    expect(asAttacker(`mv ${folder} ${w.tmpfs}/mine`).status).not.toBe(0);
    expect(asAttacker(`ln -s ${victim}/passwd ${folder}/x.env`).status).not.toBe(0);
    expect(asAttacker(`mv ${await readlink(w.envFile('hf_node'))} ${folder}/y`).status).not.toBe(0);
    expect(asAttacker(`echo forged > ${w.stateDir}/written-files.json`).status).not.toBe(0);
    // The node folder is the attacker's: swap it for a link to the victim before the wipe.
    const nodeDir = path.dirname(w.envFile('hf_node'));
    expect(asAttacker(`mv ${nodeDir} ${nodeDir}.old && ln -s ${victim} ${nodeDir}`).status).toBe(0);
    const before = await fingerprint(victim);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
    expect(await fingerprint(victim)).toBe(before);
    expect(boot.logs().some((l) => l.msg === `${w.envFile('hf_node')}: ${nodeDir} is not the folder gpu-boot wrote to (replaced since); left alone`)).toBe(true);
    // Its own secrets folder went all the same.
    expect(existsSync(folder)).toBe(false);
    expect(await filesHolding(w.root, SECRET)).toEqual([]);
  });

  it('before a rotation (files in place): a node folder swapped for a link to the victim fails the rotation, reported, with the instance kept', async (ctx) => {
    if (!attacker) return ctx.skip(skipReason);
    const { w, victim, env } = await hostileWorkspace();
    ws = w;
    const token = path.join(w.secrets, 'hf');
    await writeFile(token, `${SECRET}\n`);
    const { HF_TOKEN: _plain, ...rest } = env;
    const boot = startBoot(['start'], { ...rest, HF_TOKEN_FILE: token, SECRETS_TMPFS: 'off', ROTATION_DEBOUNCE_MS: '60000' });
    await boot.waitForLog((l) => l.phase === 'ready', 'ready', 60_000);
    const pid = (boot.logs().find((l) => l.phase === 'pm2-start')!.instances as Array<{ pid: number }>)[0]!.pid;
    const nodeDir = path.dirname(w.envFile('hf_node'));
    expect(asAttacker(`mv ${nodeDir} ${nodeDir}.old && ln -s ${victim} ${nodeDir}`).status).toBe(0);
    const before = await fingerprint(victim);
    await writeFile(token, `${SECRET}-rotated\n`);
    boot.child.kill('SIGHUP');
    const failed = await boot.waitForLog((l) => typeof l.msg === 'string' && /^rotation (failed|refused)/.test(l.msg), 'rotation failed');
    expect(failed.msg).toBe('rotation refused, old files and instances kept: cannot prepare the custom nodes\' .env files (1 problem)');
    expect(failed.problems).toEqual([`node "hf_node": ${nodeDir} is a link that leads outside ${path.dirname(nodeDir)}; refusing to write through it`]);
    const status = (await getJson(w.healthPort, '/status')) as { lastError: string; rotation: { failed: number; last: { ok: boolean } } };
    expect([status.rotation.failed, status.rotation.last.ok]).toEqual([1, false]);
    expect(status.lastError).toContain('refusing to write through it');
    expect(process.kill(pid, 0)).toBe(true);
    expect(await fingerprint(victim)).toBe(before);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
    expect(await fingerprint(victim)).toBe(before);
  });
});

describe('nothing lost', () => {
  it('a .env edited during a run survives it and the next run, and so does the kept-aside original', async (ctx) => {
    if (!attacker) return ctx.skip(skipReason);
    const { w, env } = await hostileWorkspace();
    ws = w;
    const envFile = w.envFile('hf_node');
    expect(asAttacker(`printf 'ORIGINAL=1\\n' > ${envFile}`).status).toBe(0);
    const first = startBoot(['start'], env);
    await first.waitForLog((l) => l.phase === 'ready', 'ready', 60_000);
    // An editor writes a new file and renames it over .env (the link).
    expect(asAttacker(`printf 'EDITED=1\\n' > ${envFile}.new && mv ${envFile}.new ${envFile}`).status).toBe(0);
    first.child.kill('SIGTERM');
    expect((await first.child).exitCode).toBe(0);
    expect(first.logs().some((l) => typeof l.msg === 'string' && l.msg.includes('.env.gpu-boot-orig: kept, since'))).toBe(true);
    const second = startBoot(['start'], env);
    await second.waitForLog((l) => l.phase === 'ready', 'ready', 60_000);
    expect(await readFile(`${envFile}.gpu-boot-orig-2`, 'utf8')).toBe('EDITED=1\n');
    second.child.kill('SIGTERM');
    expect((await second.child).exitCode).toBe(0);
    expect(await readFile(envFile, 'utf8')).toBe('EDITED=1\n');
    expect(await readFile(`${envFile}.gpu-boot-orig`, 'utf8')).toBe('ORIGINAL=1\n');
    expect((await lstat(envFile)).uid).toBe(attacker.uid);
  });
});

describe('writes are whole or fail', () => {
  it('a rotation into a full tmpfs keeps the old file and the running instance, and says so in /status', async (ctx) => {
    if (!isRoot) return ctx.skip('not root: cannot mount a tmpfs');
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 1 });
    const small = path.join(ws.root, 'small');
    await mkdir(small);
    if (!mountTmpfs(small, 'size=64k')) return ctx.skip('mount -t tmpfs is not allowed here');
    let boot: ReturnType<typeof startBoot> | undefined;
    try {
      const token = path.join(ws.secrets, 'hf');
      await writeFile(token, `${SECRET}\n`);
      boot = startBoot(['start'], { ...ws.env, HF_TOKEN_FILE: token, SECRETS_TMPFS: small, ROTATION_DEBOUNCE_MS: '60000' });
      await boot.waitForLog((l) => l.phase === 'ready', 'ready', 60_000);
      const pid = (boot.logs().find((l) => l.phase === 'pm2-start')!.instances as Array<{ pid: number }>)[0]!.pid;
      const old = await readFile(ws.envFile('hf_node'), 'utf8');
      // Fill what is left of the tmpfs.
      spawnSync('sh', ['-c', `cat /dev/zero > ${small}/filler`]);
      await writeFile(token, `${'z'.repeat(16 * 1024)}\n`);
      boot.child.kill('SIGHUP');
      const failed = await boot.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('rotation failed'), 'rotation failed');
      expect(failed.msg).toMatch(/^rotation failed, old files and instances kept: cannot write .*\/gpu-boot-[A-Za-z0-9_-]{12}\/1\.env \(node "hf_node"'s \.env\): no space left on the device$/);
      expect(await readFile(ws.envFile('hf_node'), 'utf8')).toBe(old);
      const status = (await getJson(ws.healthPort, '/status')) as { lastError: string; rotation: { failed: number; last: { ok: boolean } } };
      expect([status.rotation.failed, status.rotation.last.ok]).toEqual([1, false]);
      expect(status.lastError).toContain('no space left on the device');
      expect(process.kill(pid, 0)).toBe(true);
      expect(boot.logs().some((l) => l.phase === 'rotation')).toBe(false);
      await rm(path.join(small, 'filler'));
      boot.child.kill('SIGTERM');
      const exit = await boot.child;
      expect(exit.exitCode).toBe(0);
      expect(String(exit.all)).not.toContain('nhandled');
      expect((await readdir(small)).filter((n) => n.startsWith('gpu-boot-'))).toEqual([]);
    } finally {
      // A failed assertion leaves the boot running with the tmpfs open: stop it (its wipe empties the tmpfs), then unmount.
      if (boot && boot.child.exitCode === null && boot.child.signalCode === null) {
        boot.child.kill('SIGTERM');
        await boot.child.catch(() => undefined);
      }
      execFileSync('umount', [small]);
    }
  });

  it('a short write at the boot (a nearly full tmpfs takes part of a file) is a full disk: exit 73 naming the path, everything wiped', async (ctx) => {
    if (!isRoot) return ctx.skip('not root: cannot mount a tmpfs');
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: { custom_nodes: [{ name: 'hf_node', env: { BIG: '${BIG}' } }] }, gpus: 1 });
    const small = path.join(ws.root, 'small');
    await mkdir(small);
    if (!mountTmpfs(small, 'size=16k')) return ctx.skip('mount -t tmpfs is not allowed here');
    try {
      // The marker takes one page; the file needs four of the three left: write(2) takes part of it.
      const result = await runBoot(['start'], { ...ws.env, BIG: 'b'.repeat(13 * 1024), SECRETS_TMPFS: small });
      expect(result.exitCode).toBe(73);
      expect(result.stderr).toMatch(/cannot write .*small\/gpu-boot-[A-Za-z0-9_-]{12}\/1\.env \(node "hf_node"'s \.env\): no space left on the device/);
      expect(existsSync(ws.envFile('hf_node'))).toBe(false);
      expect(await readdir(small)).toEqual([]);
      expect(existsSync(path.join(ws.stateDir, 'written-files.json'))).toBe(false);
    } finally {
      execFileSync('umount', [small]);
    }
  });

  it('a read-only state folder fails with exit 73 naming it and the reason', async (ctx) => {
    if (!isRoot) return ctx.skip('not root: cannot mount a tmpfs');
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 1 });
    await mkdir(ws.stateDir, { mode: 0o700 });
    if (!mountTmpfs(ws.stateDir, 'ro,size=8k,mode=0700')) return ctx.skip('mount -t tmpfs is not allowed here');
    try {
      const result = await runBoot(['start'], { ...ws.env, HF_TOKEN: SECRET });
      expect(result.exitCode).toBe(73);
      expect(result.stderr).toContain(`cannot write ${path.join(ws.stateDir, 'plan.json')}: the file system is read-only`);
      expect(existsSync(ws.envFile('hf_node'))).toBe(false);
    } finally {
      execFileSync('umount', [ws.stateDir]);
    }
  });
});

describe('dead runs leave nothing', () => {
  it('the secrets folder of a SIGKILLed run whose workspace was discarded is removed by the next `wipe` or `start` elsewhere, a live run\'s is not', async () => {
    const dead = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 1 });
    ws = dead;
    const live = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 1 });
    const elsewhere2 = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 1 });
    const elsewhere3 = await makeWorkspace({ nodes: [], manifest: { custom_nodes: [] }, gpus: 1 });
    const { killPm2 } = await import('../helpers/boot.js');
    try {
      // Both runs share one tmpfs base, as runs on one machine share /dev/shm.
      const base = dead.tmpfs;
      const first = startBoot(['start'], { ...dead.env, HF_TOKEN: SECRET });
      await first.waitForLog((l) => l.phase === 'ready', 'ready', 60_000);
      const deadContent = await readlink(dead.envFile('hf_node'));
      const deadFolder = path.dirname(deadContent);
      const second = startBoot(['start'], { ...live.env, HF_TOKEN: `${SECRET}-live`, SECRETS_TMPFS: base });
      await second.waitForLog((l) => l.phase === 'ready', 'ready', 60_000);
      const liveContent = await readlink(live.envFile('hf_node'));
      const liveFolder = path.dirname(liveContent);
      first.child.kill('SIGKILL');
      await first.child;
      // Its instances, orphaned, and its workspace, discarded: only the tmpfs folder remains.
      await killPm2(dead.pm2Home);
      await rm(dead.workspace, { recursive: true, force: true });
      expect(existsSync(deadContent)).toBe(true);
      const elsewhere = await makeWorkspace({ nodes: [], manifest: { custom_nodes: [] }, gpus: 1 });
      try {
        const wipe = await runBoot(['wipe'], { ...elsewhere.env, SECRETS_TMPFS: base });
        expect(wipe.exitCode).toBe(0);
        await waitFor('the dead folder gone', () => !existsSync(deadFolder));
        expect(wipe.stdout).toContain('removed 1 secrets folder(s) of dead runs');
        expect(await readFile(liveContent, 'utf8')).toContain(`${SECRET}-live`);
      } finally {
        await elsewhere.cleanup();
      }
      // A second dead run, swept by the next `start` on another workspace.
      const third = startBoot(['start'], { ...elsewhere2.env, HF_TOKEN: SECRET, SECRETS_TMPFS: base });
      await third.waitForLog((l) => l.phase === 'ready', 'ready', 60_000);
      const thirdFolder = path.dirname(await readlink(elsewhere2.envFile('hf_node')));
      third.child.kill('SIGKILL');
      await third.child;
      await killPm2(elsewhere2.pm2Home);
      await rm(elsewhere2.workspace, { recursive: true, force: true });
      const fourth = startBoot(['start'], { ...elsewhere3.env, SECRETS_TMPFS: base });
      const swept = await fourth.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('removed 1 secrets folder(s) of dead runs'), 'the sweep at start');
      expect(swept.folders).toEqual([thirdFolder]);
      expect(existsSync(thirdFolder)).toBe(false);
      expect(existsSync(liveFolder)).toBe(true);
      fourth.child.kill('SIGTERM');
      expect((await fourth.child).exitCode).toBe(0);
      second.child.kill('SIGTERM');
      expect((await second.child).exitCode).toBe(0);
    } finally {
      await live.cleanup();
      await elsewhere2.cleanup();
      await elsewhere3.cleanup();
    }
  });
});




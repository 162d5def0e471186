import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, chown, lstat, mkdir, readdir, readFile, readlink, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { afterEach, describe, expect, it } from 'vitest';
import { pythonForAnyUser } from '../helpers/python.js';
import { makeWorkspace, mountTmpfs, PM2_BIN, runBoot, startBoot, tinyServerMain, type Workspace } from '../helpers/boot.js';

// One canary per kind of source; each may appear only where it belongs.
const PLAIN = 'canaryPLAIN-hf-4c1d';
const FROM_FILE = 'canaryFILE-aws-77e2';
const ENCODED = 'canaryENCODED-azure-91ab';
const AGENT = 'canaryAGENT-openai-5d0f';
const CANARIES = [PLAIN, FROM_FILE, ENCODED, AGENT];

const MANIFEST = {
  custom_nodes: [
    {
      name: 'emprops_custom_nodes',
      env: { AWS_SECRET_ACCESS_KEY: '${AWS_SECRET_ACCESS_KEY}', AZURE_STORAGE_KEY: '${AZURE_STORAGE_KEY}' },
    },
    // This node asks for HF_TOKEN in the instances' process environment too.
    { name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}' }, process_env: ['HF_TOKEN'] },
    { name: 'openai_node', env: { OPENAI_API_KEY: '${OPENAI_API_KEY}' } },
  ],
};

let ws: Workspace | undefined;
afterEach(async () => {
  await ws?.cleanup();
  ws = undefined;
});

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await filesUnder(full)));
    else if (entry.isFile()) out.push(full);
  }
  return out;
}

async function canaryEnv(w: Workspace): Promise<Record<string, string>> {
  await writeFile(path.join(w.secrets, 'aws'), `${FROM_FILE}\n`);
  await writeFile(path.join(w.secrets, 'agent.env'), `OPENAI_API_KEY="${AGENT}"\n`);
  return {
    ...w.env,
    HF_TOKEN: PLAIN,
    AWS_SECRET_ACCESS_KEY_FILE: path.join(w.secrets, 'aws'),
    AZURE_STORAGE_KEY_ENCODED: Buffer.from(ENCODED).toString('base64'),
    SECRETS_ENV_FILE: path.join(w.secrets, 'agent.env'),
  };
}

describe('canaries go only where they belong', () => {
  it('finds each secret only in its node\'s file on tmpfs, and HF_TOKEN only in the instances that declared it', async () => {
    ws = await makeWorkspace({ nodes: ['emprops_custom_nodes', 'hf_node', 'openai_node'], manifest: MANIFEST, gpus: 2 });
    const env = await canaryEnv(ws);
    const boot = startBoot(['start'], env);
    await boot.waitForLog((l) => l.phase === 'ready', 'ready');
    const pm2 = (args: string[]) =>
      execa('node', [PM2_BIN, ...args], { env: { PATH: env.PATH!, HOME: ws!.root, PM2_HOME: ws!.pm2Home }, extendEnv: false, reject: false });

    // Each .env is a link into a 0700 folder on tmpfs; the content there is 0600.
    const link = await readlink(ws.envFile('hf_node'));
    const storage = path.dirname(link);
    expect(storage).toMatch(new RegExp(`^${ws.tmpfs}/gpu-boot-[A-Za-z0-9_-]{12}$`));
    expect((await stat(storage)).mode & 0o777).toBe(0o700);
    // Marked with the run that made it, so a later run can tell when it is dead.
    expect(JSON.parse(await readFile(path.join(storage, '.gpu-boot-run'), 'utf8'))).toMatchObject({ pid: boot.child.pid });
    expect((await lstat(ws.envFile('hf_node'))).isSymbolicLink()).toBe(true);
    expect((await stat(link)).mode & 0o777).toBe(0o600);
    // One content file per node, named by number; each node's link names its own.
    const content = Object.fromEntries(await Promise.all(['emprops_custom_nodes', 'hf_node', 'openai_node'].map(async (n) => [n, await readlink(ws!.envFile(n))] as const)));
    expect(new Set(Object.values(content).map((p) => path.dirname(p)))).toEqual(new Set([storage]));
    expect((await readdir(storage)).sort()).toEqual(['.gpu-boot-run', ...Object.values(content).map((p) => path.basename(p))].sort());
    expect(Object.values(content).map((p) => path.basename(p)).sort()).toEqual(['1.env', '2.env', '3.env']);

    // Ask PM2 every way it can tell, and save its dump, before searching.
    const jlist = await pm2(['jlist']);
    const show = await pm2(['show', 'comfyui-gpu0']);
    const envDump = await pm2(['env', '0']);
    // PM2's RPC answers getReport (what `pm2 report` asks) with the environment of the process that
    // serves it: gpu-boot's own, which holds no secret once the boot is up (the runner and, again,
    // ecosystem.config.cjs remove them).
    const reportScript = `const pm2 = require(${JSON.stringify(path.dirname(PM2_BIN) + '/..')}); pm2.connect((e) => { if (e) throw e; pm2.Client.executeRemote('getReport', {}, (err, r) => { if (err) throw err; process.stdout.write(JSON.stringify(r.env)); pm2.disconnect(); }); });`;
    const report = await execa('node', ['-e', reportScript], { env: { PATH: env.PATH!, HOME: ws.root, PM2_HOME: ws.pm2Home }, extendEnv: false });
    const servedEnv = JSON.parse(report.stdout) as Record<string, string>;
    expect(servedEnv.PM2_HOME).toBe(ws.pm2Home);
    expect(servedEnv.WORKSPACE_PATH).toBe(env.WORKSPACE_PATH);
    expect((await pm2(['save'])).exitCode).toBe(0);
    const pm2Output = [jlist.stdout, show.stdout, envDump.stdout].join('\n');
    expect(show.stdout).toContain('comfyui-gpu0');

    const where = new Map<string, string[]>();
    const note = (canary: string, place: string) => where.set(canary, [...(where.get(canary) ?? []), place]);
    const searched = [...(await filesUnder(ws.workspace)), ...(await filesUnder(ws.pm2Home)), ...(await filesUnder(storage))];
    expect(searched).toContain(path.join(ws.pm2Home, 'dump.pm2'));
    for (const file of searched) {
      const text = await readFile(file, 'utf8');
      for (const canary of CANARIES) if (text.includes(canary)) note(canary, file);
    }
    for (const canary of CANARIES) {
      if (pm2Output.includes(canary)) note(canary, 'pm2 jlist/show/env');
      if (report.stdout.includes(canary)) note(canary, 'pm2 report');
      if (boot.lines.join('\n').includes(canary)) note(canary, 'log output');
    }
    expect(Object.fromEntries(where)).toEqual({
      [PLAIN]: [content.hf_node],
      [FROM_FILE]: [content.emprops_custom_nodes],
      [ENCODED]: [content.emprops_custom_nodes],
      [AGENT]: [content.openai_node],
    });

    // The instances' environments: HF_TOKEN (declared) and nothing else secret, nor any source variable.
    const apps = JSON.parse(jlist.stdout.trim().split('\n').pop()!) as Array<{ pid: number }>;
    for (const { pid } of apps) {
      const environ = (await readFile(`/proc/${pid}/environ`, 'utf8')).split('\0');
      expect(environ).toContain(`HF_TOKEN=${PLAIN}`);
      for (const canary of [FROM_FILE, ENCODED, AGENT]) expect(environ.join('\n')).not.toContain(canary);
      expect(environ.filter((e) => /^(\w+_FILE|\w+_ENCODED|SECRETS_ENV_FILE)=/.test(e))).toEqual([]);
    }
    // PM2 runs inside gpu-boot (its /proc/<pid>/environ is the start environment the platform gave it,
    // README "Security"): no other process holds PM2's copy of an environment.
    expect(Number.parseInt(await readFile(path.join(ws.pm2Home, 'pm2.pid'), 'utf8'), 10)).toBe(boot.child.pid);

    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
    expect(existsSync(storage)).toBe(false);
    for (const node of ['emprops_custom_nodes', 'hf_node', 'openai_node']) expect(existsSync(ws.envFile(node))).toBe(false);
    for (const canary of CANARIES) expect(boot.lines.join('\n')).not.toContain(canary);
  });
});

describe('masking instance output', () => {
  it('masks a value an instance prints in two writes', async () => {
    const leaky = tinyServerMain([
      'from dotenv import dotenv_values',
      'value = dotenv_values(os.path.join("custom_nodes", "hf_node", ".env"))["HF_TOKEN"]',
      'sys.stdout.write("token is " + value[:6]); sys.stdout.flush(); time.sleep(0.3)',
      'sys.stdout.write(value[6:] + " (end)\\n"); sys.stdout.flush()',
    ]);
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: { custom_nodes: [{ name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}' } }] }, gpus: 1, mainPy: leaky });
    const boot = startBoot(['start'], { ...ws.env, HF_TOKEN: PLAIN });
    const line = await boot.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('token is'), 'the leaky line');
    expect(line.msg).toBe('token is [masked:HF_TOKEN] (end)');
    expect(line.instance).toBe('comfyui-gpu0');
    boot.child.kill('SIGTERM');
    await boot.child;
    expect(boot.lines.join('\n')).not.toContain(PLAIN);
    expect(boot.lines.join('\n')).not.toContain(PLAIN.slice(6));
    // PM2 keeps no unmasked copy of the instances' output on disk: they go to /dev/null, the bus feeds the log.
    const pm2Files = await filesUnder(ws.pm2Home);
    expect(pm2Files.filter((f) => /comfyui-gpu0.*\.log$/.test(f))).toEqual([]);
    for (const file of pm2Files) expect({ file, leaks: (await readFile(file, 'utf8').catch(() => '')).includes(PLAIN.slice(6)) }).toEqual({ file, leaks: false });
  });

  it('drops a line longer than 64 KiB whole (8 MiB without a newline, a secret inside): no part of it is logged, and the boot stays responsive', async () => {
    const flood = tinyServerMain([
      'from dotenv import dotenv_values',
      'value = dotenv_values(os.path.join("custom_nodes", "hf_node", ".env"))["HF_TOKEN"]',
      // The secret sits across the 64 KiB mark: a cut there would log half of it, unmasked.
      'sys.stderr.write("x" * (65536 - 6) + value + "y" * (8 * 1024 * 1024)); sys.stderr.flush()',
      'sys.stderr.write(" tail\\nafter the flood\\n"); sys.stderr.flush()',
    ]);
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: { custom_nodes: [{ name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}' } }] }, gpus: 1, mainPy: flood });
    const boot = startBoot(['start'], { ...ws.env, HF_TOKEN: PLAIN });
    const dropped = await boot.waitForLog((l) => typeof l.msg === 'string' && l.msg.includes('without a newline; dropped'), 'the dropped line', 60_000);
    expect(dropped.droppedChars).toBe(65536 - 6 + PLAIN.length + 8 * 1024 * 1024 + ' tail'.length);
    await boot.waitForLog((l) => l.msg === 'after the flood', 'the next line');
    await boot.waitForLog((l) => l.phase === 'ready', 'ready', 60_000);
    expect(((await (await fetch(`http://127.0.0.1:${ws.healthPort}/health`)).status))).toBe(200);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
    const all = boot.lines.join('\n');
    expect(all).not.toContain(PLAIN.slice(0, 6));
    expect(all).not.toContain(PLAIN.slice(6));
    expect(Math.max(...boot.lines.map((l) => l.length))).toBeLessThan(70 * 1024);
  });
});

describe('short values', () => {
  it('refuses a secret under 4 characters, unless ALLOW_SHORT_SECRETS lists it', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: { custom_nodes: [{ name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}' } }] }, gpus: 1 });
    const refused = await runBoot(['check'], { ...ws.env, HF_TOKEN: 'x7z' });
    expect(refused.exitCode).toBe(78);
    expect(refused.stdout).toContain('HF_TOKEN (from HF_TOKEN): the value is shorter than 4 characters, too short to mask in logs; use a longer secret or list HF_TOKEN in ALLOW_SHORT_SECRETS');
    expect(refused.stdout + refused.stderr).not.toContain('x7z');
    const allowed = await runBoot(['check'], { ...ws.env, HF_TOKEN: 'x7z', ALLOW_SHORT_SECRETS: 'OTHER, HF_TOKEN' });
    expect(allowed.exitCode).toBe(0);
  });
});

describe('instances as another user', () => {
  it.skipIf(process.getuid?.() !== 0)('as root with COMFYUI_USER=nobody: files owned by nobody, 0600, and the instances run as nobody', async (ctx) => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: { custom_nodes: [{ name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}' } }] }, gpus: 1 });
    // nobody must be able to reach main.py, and the node folder is theirs (as after `gpu-boot install` as that user).
    await chmod(ws.root, 0o755);
    await chown(path.dirname(ws.envFile('hf_node')), Number(execFileSync('id', ['-u', 'nobody']).toString()), Number(execFileSync('id', ['-g', 'nobody']).toString()));
    const nobody = Number(execFileSync('id', ['-u', 'nobody']).toString());
    const { python, reason } = pythonForAnyUser();
    if (!python) return ctx.skip(reason);
    const boot = startBoot(['start'], { ...ws.env, HF_TOKEN: PLAIN, COMFYUI_USER: 'nobody', COMFYUI_PYTHON: python });
    await boot.waitForLog((l) => l.phase === 'ready', 'ready');
    const content = await readlink(ws.envFile('hf_node'));
    const info = await stat(content);
    expect([info.uid, info.mode & 0o777]).toEqual([nobody, 0o600]);
    // The folder stays root's (nobody cannot rename, replace or add entries), reachable through nobody's group only.
    const folder = await stat(path.dirname(content));
    expect([folder.uid, folder.gid, folder.mode & 0o777]).toEqual([0, Number(execFileSync('id', ['-g', 'nobody']).toString()), 0o710]);
    const pid = (boot.logs().find((l) => l.phase === 'pm2-start')!.instances as Array<{ pid: number }>)[0]!.pid;
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    expect(status).toMatch(new RegExp(`^Uid:\\s+${nobody}\\s`, 'm'));
    const report = (await (await fetch(`http://127.0.0.1:${ws.portStart}/gpu-boot/nodes`)).json()) as { nodes: Record<string, { keys?: string[] }> };
    expect(report.nodes.hf_node!.keys).toEqual(['HF_TOKEN']);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
    expect(existsSync(content)).toBe(false);
  });

  it('refuses an unknown COMFYUI_USER with exit 78', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: { custom_nodes: [{ name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}' } }] }, gpus: 1 });
    const result = await runBoot(['start'], { ...ws.env, HF_TOKEN: PLAIN, COMFYUI_USER: 'no-such-user-xyz' });
    expect(result.exitCode).toBe(78);
    expect(result.stderr).toContain('COMFYUI_USER: no such user "no-such-user-xyz"');
    expect(existsSync(ws.envFile('hf_node'))).toBe(false);
  });
});

describe('a full or read-only disk', () => {
  it.skipIf(process.getuid?.() !== 0)('a full secrets folder fails with exit 73 naming the path, and leaves no partial state', async (ctx) => {
    ws = await makeWorkspace({
      nodes: ['a_node', 'b_node'],
      manifest: { custom_nodes: [{ name: 'a_node', env: { BIG: '${BIG}' } }, { name: 'b_node', env: { HF_TOKEN: '${HF_TOKEN}' } }] },
      gpus: 1,
    });
    const small = path.join(ws.root, 'small');
    await mkdir(small);
    if (!mountTmpfs(small, 'size=8k')) return ctx.skip();
    // b_node ships its own .env: kept aside before the failed write, it must come back as the only copy.
    await writeFile(ws.envFile('b_node'), 'MINE=1\n');
    try {
      const result = await runBoot(['start'], { ...ws.env, HF_TOKEN: PLAIN, BIG: 'y'.repeat(64 * 1024), SECRETS_TMPFS: small });
      expect(result.exitCode).toBe(73);
      expect(result.stderr).toMatch(/cannot write .*small\/gpu-boot-[A-Za-z0-9_-]{12}\/[12]\.env \(node "[ab]_node"'s \.env\): no space left on the device/);
      expect(existsSync(ws.envFile('a_node'))).toBe(false);
      expect(await readdir(path.dirname(ws.envFile('b_node')))).toEqual(['.env', '__init__.py']);
      expect(await readFile(ws.envFile('b_node'), 'utf8')).toBe('MINE=1\n');
      expect(await filesUnder(small)).toEqual([]);
      expect(existsSync(path.join(ws.stateDir, 'written-files.json'))).toBe(false);
      expect(existsSync(path.join(ws.pm2Home, 'pm2.pid'))).toBe(false);
    } finally {
      execFileSync('umount', [small]);
    }
  });

  it.skipIf(process.getuid?.() !== 0)('a read-only node folder fails with exit 73 naming the path', async (ctx) => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: { custom_nodes: [{ name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}' } }] }, gpus: 1 });
    const nodeDir = path.dirname(ws.envFile('hf_node'));
    if (!mountTmpfs(nodeDir, 'ro,size=8k')) return ctx.skip();
    try {
      const result = await runBoot(['start'], { ...ws.env, HF_TOKEN: PLAIN });
      expect(result.exitCode).toBe(73);
      expect(result.stderr).toContain(`cannot link ${ws.envFile('hf_node')}: the file system is read-only`);
      expect(existsSync(path.join(ws.stateDir, 'written-files.json'))).toBe(false);
      expect(await filesUnder(ws.tmpfs)).toEqual([]);
    } finally {
      execFileSync('umount', [nodeDir]);
    }
  });
});

describe('PM2 used by hand', () => {
  it('`pm2 start ecosystem.config.cjs` from a shell holding the secrets records none of them', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: { custom_nodes: [{ name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}', AWS_KEY: '${NODE_AWS}' } }] }, gpus: 1 });
    const plan = await runBoot(['plan'], { ...ws.env, LOG_LEVEL: 'silent' });
    expect(plan.exitCode).toBe(0);
    const planFile = path.join(ws.root, 'plan.json');
    await writeFile(planFile, plan.stdout);
    // The operator's shell: the platform's secrets, and a stale value under a manifest key.
    const shell = { PATH: ws.env.PATH!, HOME: ws.root, PM2_HOME: ws.pm2Home, GPU_BOOT_PLAN_FILE: planFile, HF_TOKEN: PLAIN, NODE_AWS: FROM_FILE, AWS_KEY: ENCODED };
    const started = await execa('node', [PM2_BIN, 'start', path.resolve('ecosystem.config.cjs')], { env: shell, extendEnv: false, reject: false });
    expect(started.exitCode).toBe(0);
    const jlist = await execa('node', [PM2_BIN, 'jlist'], { env: shell, extendEnv: false });
    const apps = JSON.parse(jlist.stdout.trim().split('\n').pop()!) as Array<{ name: string; pid: number }>;
    expect(apps.map((a) => a.name)).toEqual(['comfyui-gpu0']);
    for (const canary of [PLAIN, FROM_FILE, ENCODED]) expect(jlist.stdout).not.toContain(canary);
    const environ = await readFile(`/proc/${apps[0]!.pid}/environ`, 'utf8');
    for (const canary of [PLAIN, FROM_FILE, ENCODED]) expect(environ).not.toContain(canary);
    expect(environ.split('\0').some((e) => e.startsWith('AWS_KEY='))).toBe(false);
  });
});

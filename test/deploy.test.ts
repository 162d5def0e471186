import { existsSync, readFileSync } from 'node:fs';
import { cp, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import dockerignore from '@balena/dockerignore';
import { DockerfileParser, type Entrypoint } from 'dockerfile-ast';
import { parse as parseDotenv } from 'dotenv';
import { execa, execaSync } from 'execa';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml, parseAllDocuments } from 'yaml';
import { parse as parseShell } from 'shell-quote';
import { loadConfig, SETTING_NAMES, SETTINGS_DOC } from '../src/config.js';
import { extractFlagNames } from '../src/instances/comfy-args.js';
import type { GpuDetection } from '../src/gpus/detect.js';
import { buildPlan, LAUNCHER } from '../src/instances/plan.js';
import { parseManifest, referencedVariables, type Manifest } from '../src/secrets/manifest.js';
import { dockerfileProblems, SECRET_NAME } from './helpers/dockerfile-policy.js';
import { detection, gpuList } from './helpers/gpus.js';

/**
 * What ships the boot: the image, the compose profiles, the Kubernetes manifests and the
 * platform guide. No Docker engine is needed: the Dockerfile is parsed, the YAML is parsed, and
 * docker-compose (where installed) validates both profiles.
 */

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const at = (...parts: string[]) => path.join(ROOT, ...parts);
const read = (...parts: string[]) => readFileSync(at(...parts), 'utf8');

type Dict = Record<string, unknown>;
const asDict = (value: unknown): Dict => (value && typeof value === 'object' && !Array.isArray(value) ? (value as Dict) : {});
const asList = (value: unknown): unknown[] => (Array.isArray(value) ? value : []);

const SHUTDOWN_DEFAULT_MS = Number(SETTINGS_DOC.find((s) => s.name === 'SHUTDOWN_TIMEOUT_MS')?.default);
const HEALTH_PORT = Number(SETTINGS_DOC.find((s) => s.name === 'HEALTH_PORT')?.default);
const PORT_START = Number(SETTINGS_DOC.find((s) => s.name === 'COMFYUI_PORT_START')?.default);

const imageManifest: Manifest = parseManifest(read('docker', 'config_nodes.json'), at('docker', 'config_nodes.json'));
const demoManifest: Manifest = parseManifest(read('demo', 'workspace', 'config_nodes.json'), at('demo', 'workspace', 'config_nodes.json'));

/** Variables a manifest needs with no default, over the nodes whose folder exists (others are skipped). */
function requiredVariables(manifest: Manifest, customNodesDir?: string): string[] {
  const names = new Set<string>();
  for (const node of manifest.nodes) {
    if (customNodesDir && !existsSync(path.join(customNodesDir, node.name))) continue;
    for (const { template } of node.env) for (const part of template) if (part.kind === 'ref' && part.fallback === undefined) names.add(part.variable);
  }
  return [...names].sort();
}

/** The variable a source variable feeds: HF_TOKEN_FILE -> HF_TOKEN. */
const baseName = (name: string) => name.replace(/_(FILE|ENCODED)$/, '');
const isSourceOf = (name: string, variable: string) => [variable, `${variable}_FILE`, `${variable}_ENCODED`].includes(name);

/** Compose durations: 15s, 1m30s, 500ms. */
function durationMs(value: unknown): number {
  const text = String(value);
  const units: Record<string, number> = { h: 3_600_000, m: 60_000, s: 1000, ms: 1, us: 0.001 };
  const parts = [...text.matchAll(/(\d+(?:\.\d+)?)(ms|us|h|m|s)/g)];
  if (parts.map((p) => p[0]).join('') !== text) throw new Error(`not a compose duration: ${text}`);
  return parts.reduce((sum, p) => sum + Number(p[1]) * units[p[2]!]!, 0);
}

function environmentOf(service: Dict): Record<string, string> {
  const env = service.environment;
  if (Array.isArray(env)) return Object.fromEntries(env.map((e) => String(e).split(/=(.*)/s).slice(0, 2)));
  return Object.fromEntries(Object.entries(asDict(env)).map(([k, v]) => [k, String(v)]));
}

// ---------------------------------------------------------------------------------------------
describe('docker/Dockerfile', () => {
  const text = read('docker', 'Dockerfile');
  const dockerfile = DockerfileParser.parse(text);

  it('passes every rule: no secret ARG/ENV, no .env copied, multi-stage, non-root, tini, SIGTERM, HEALTHCHECK on /ready', () => {
    expect(dockerfileProblems(text)).toEqual([]);
  });

  // Each rule must be able to fail: break the real Dockerfile one way at a time.
  const broken: Array<[string, (t: string) => string, string]> = [
    ['a secret ARG', (t) => t.replace('ARG COMFYUI_VERSION', 'ARG HF_TOKEN\nARG COMFYUI_VERSION'), 'ARG HF_TOKEN looks like a secret'],
    ['a secret ENV', (t) => t.replace('ENV WORKSPACE_PATH=/workspace', 'ENV AWS_SECRET_ACCESS_KEY=x WORKSPACE_PATH=/workspace'), 'ENV AWS_SECRET_ACCESS_KEY looks like a secret'],
    ['an API key ARG', (t) => t.replace('ARG COMFYUI_VERSION', 'ARG OPENAI_API_KEY=\nARG COMFYUI_VERSION'), 'ARG OPENAI_API_KEY looks like a secret'],
    ['a password ENV', (t) => t.replace('ENV WORKSPACE_PATH=/workspace', 'ENV DB_PASSWORD=x WORKSPACE_PATH=/workspace'), 'ENV DB_PASSWORD looks like a secret'],
    ['a copied .env', (t) => t.replace('COPY launcher/', 'COPY .env /workspace/.env\nCOPY launcher/'), 'COPY of a .env file: .env'],
    ['a copied .env.production', (t) => t.replace('COPY launcher/', 'ADD config/.env.production /x\nCOPY launcher/'), 'ADD of a .env file: config/.env.production'],
    ['a .env through a build arg', (t) => t.replace('ARG NODES_MANIFEST=docker/config_nodes.json', 'ARG NODES_MANIFEST=.env'), 'COPY of a .env file: .env'],
    ['USER root', (t) => t.replace('USER comfy', 'USER root'), 'final stage runs as root (USER root)'],
    ['USER 0:0', (t) => t.replace('USER comfy', 'USER 0:0'), 'final stage runs as root (USER 0:0)'],
    ['no USER', (t) => t.replace('USER comfy\n', ''), 'final stage has no USER: it runs as root'],
    ['a final USER root after comfy', (t) => t.replace('CMD ["start"]', 'USER root\nCMD ["start"]'), 'final stage runs as root (USER root)'],
    ['no tini', (t) => t.replace('"/usr/bin/tini", "--", ', ''), 'ENTRYPOINT does not start with tini: node'],
    ['a shell-form ENTRYPOINT', (t) => t.replace(/^ENTRYPOINT .*$/m, 'ENTRYPOINT /usr/bin/tini -- node /opt/gpu-boot/dist/entrypoint.js'), 'ENTRYPOINT is not in exec (JSON) form: a shell would be PID 1'],
    ['no STOPSIGNAL', (t) => t.replace('STOPSIGNAL SIGTERM\n', ''), 'no STOPSIGNAL'],
    ['STOPSIGNAL SIGKILL', (t) => t.replace('STOPSIGNAL SIGTERM', 'STOPSIGNAL SIGKILL'), 'STOPSIGNAL is SIGKILL, not SIGTERM'],
    ['a HEALTHCHECK on /health', (t) => t.replace('9090}/ready', '9090}/health'), 'HEALTHCHECK does not probe /ready'],
    ['a HEALTHCHECK on a fixed port', (t) => t.replace('${HEALTH_PORT:-9090}/ready', '9090/ready'), 'HEALTHCHECK does not probe the port HEALTH_PORT names (${HEALTH_PORT:-9090})'],
    ['HEALTHCHECK NONE', (t) => t.replace(/^HEALTHCHECK [\s\S]*?\|\| exit 1\n/m, 'HEALTHCHECK NONE\n'), 'HEALTHCHECK has no CMD'],
    ['one stage', (t) => t.slice(t.indexOf('FROM nvidia/cuda')), 'not multi-stage: 1 FROM'],
  ];
  it.each(broken)('fails on %s', (_what, mutate, problem) => {
    const mutated = mutate(text);
    expect(mutated).not.toBe(text);
    expect(dockerfileProblems(mutated)).toContain(problem);
  });

  it('builds with node:22 and runs on an NVIDIA CUDA runtime image with ComfyUI at a pinned tag', () => {
    const froms = dockerfile.getFROMs();
    expect(froms.map((f) => f.getImage())).toEqual(['node:22-bookworm-slim', 'nvidia/cuda:12.4.1-runtime-ubuntu22.04']);
    const args = Object.fromEntries(dockerfile.getARGs().map((a) => [a.getProperty()?.getName(), a.getProperty()?.getValue()]));
    // A release tag (vMAJOR.MINOR.PATCH), at least the v0.8 line of the flags recorded in 2026-01.
    expect(args.COMFYUI_VERSION).toMatch(/^v\d+\.\d+\.\d+$/);
    const [major, minor] = args.COMFYUI_VERSION!.slice(1).split('.').map(Number);
    expect(major! > 0 || minor! >= 8).toBe(true);
    expect(args.NODES_MANIFEST).toBe('docker/config_nodes.json');
    expect(text).toContain('git clone --depth 1 --branch "${COMFYUI_VERSION}" https://github.com/comfyanonymous/ComfyUI.git');
    expect(text).toMatch(/npm ci\b/);
    expect(text).toContain('npm prune --omit=dev');
    expect(text).toContain('COPY --from=build /usr/local/bin/node /usr/local/bin/node');
  });

  it('pins a ComfyUI whose flags include every flag gpu-boot passes (test/fixtures/comfyui/cli-flags-2026-01.txt)', () => {
    const recorded = new Set(read('test', 'fixtures', 'comfyui', 'cli-flags-2026-01.txt').split('\n').filter(Boolean));
    const gpus = (count: number): GpuDetection => detection(count, { gpus: gpuList(count, 'GPU', 81920) });
    const passed = new Set<string>();
    // Every folder per instance (COMFYUI_SHARED_FOLDERS=none), in both modes, a listen list, keys through the launcher.
    for (const env of [
      { GPU_MODE: 'mock', NUM_GPUS: '2', COMFYUI_SHARED_FOLDERS: 'none' },
      { GPU_MODE: 'actual', COMFYUI_SHARED_FOLDERS: 'none', COMFYUI_LISTEN: '0.0.0.0,::' },
      { GPU_MODE: 'actual', INSTANCES_PER_GPU: '2' },
    ]) {
      const plan = buildPlan(loadConfig({ WORKSPACE_PATH: '/workspace', ...env }), gpus(2), [], { processEnv: [{ file: '/workspace/ComfyUI/custom_nodes/n/.env', keys: ['K'] }] });
      for (const instance of plan.instances) {
        // With the launcher, ComfyUI's own arguments follow main.py.
        const argv = instance.script === LAUNCHER ? instance.args.slice(instance.args.indexOf('--') + 2) : instance.args;
        for (const flag of extractFlagNames(argv)) passed.add(flag);
      }
    }
    // Never --cuda-device: it would overwrite each instance's CUDA_VISIBLE_DEVICES (its device's UUID) with an index.
    expect([...passed].sort()).toEqual(['--cpu', '--input-directory', '--listen', '--output-directory', '--port', '--temp-directory', '--user-directory']);
    for (const flag of passed) expect(recorded.has(flag), flag).toBe(true);
  });

  it('builds (`npm run build`) from what its build stage copies, and no more: the bundles and PM2\'s code cache for the image\'s flags', async () => {
    const dockerfile = DockerfileParser.parse(read('docker', 'Dockerfile'));
    const instructions = dockerfile.getInstructions();
    const stageStart = instructions.findIndex((i) => i.getKeyword() === 'FROM' && /\bAS\s+build\b/i.test(i.getRawArgumentsContent() ?? ''));
    const buildRun = instructions.findIndex((i, n) => n > stageStart && i.getKeyword() === 'RUN' && (i.getRawArgumentsContent() ?? '').includes('npm run build'));
    expect(stageStart).toBeGreaterThanOrEqual(0);
    expect(buildRun).toBeGreaterThan(stageStart);
    const copies = instructions.slice(stageStart, buildRun).filter((i) => i.getKeyword() === 'COPY').map((i) => i.getArguments().map((a) => a.getValue()));
    const dir = await mkdtemp(path.join(os.tmpdir(), 'gpu-boot-build-stage-'));
    try {
      for (const words of copies) {
        expect(words.some((w) => w.startsWith('--'))).toBe(false);
        const dest = path.join(dir, words.at(-1)!);
        for (const source of words.slice(0, -1)) await cp(at(source), source.endsWith('/') ? dest : path.join(dest, path.basename(source)), { recursive: true });
      }
      // `npm ci` of the stage: this checkout's node_modules, linked file by file (one disk), else copied.
      const linked = await execa('cp', ['-al', at('node_modules'), path.join(dir, 'node_modules')], { reject: false });
      if (linked.exitCode !== 0) await cp(at('node_modules'), path.join(dir, 'node_modules'), { recursive: true });
      const build = await execa('npm', ['run', 'build'], { cwd: dir, reject: false, all: true });
      expect(build.exitCode, build.all).toBe(0);
      const record = JSON.parse(await readFile(path.join(dir, 'dist', 'pm2-daemon.cjs.cache.json'), 'utf8')) as { flags: string[] };
      expect(record.flags).toEqual((JSON.parse(read('package.json')) as { gpuBoot: { nodeFlags: string[] } }).gpuBoot.nodeFlags);
      expect(existsSync(path.join(dir, 'dist', 'entrypoint.js'))).toBe(true);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 120_000);

  it('gives node the same flags as `npm start` does, and as the build makes PM2\'s code cache for (package.json\'s gpuBoot.nodeFlags; the bench reads them from here)', () => {
    const dockerfile = DockerfileParser.parse(read('docker', 'Dockerfile'));
    const entry = (dockerfile.getInstructions().filter((i) => i.getKeyword() === 'ENTRYPOINT').at(-1) as Entrypoint).getJSONStrings().map((w) => w.getJSONValue());
    const imageFlags = entry.slice(entry.indexOf('node') + 1, entry.indexOf('/opt/gpu-boot/dist/entrypoint.js'));
    expect(imageFlags).toEqual(['--max-semi-space-size=4']);
    const start = (JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts.start!;
    // The last command of the script: shell-quote splits it as the shell would.
    const parsed = parseShell(start);
    const words = parsed.slice(parsed.findLastIndex((w) => typeof w !== 'string') + 1).filter((w): w is string => typeof w === 'string');
    expect(words.slice(words.indexOf('node') + 1, words.indexOf('dist/entrypoint.js'))).toEqual(imageFlags);
    // V8 takes a code cache only with the flags it was made with (src/instances/code-cache.ts).
    expect((JSON.parse(read('package.json')) as { gpuBoot: { nodeFlags: string[] } }).gpuBoot.nodeFlags).toEqual(imageFlags);
    // And `gpu-boot ...` in `docker exec` (the wrapper the image writes) runs with them too.
    const wrapper = dockerfile.getInstructions().map((i) => i.getRawArgumentsContent() ?? '').find((text) => text.includes('/usr/local/bin/gpu-boot'));
    expect(wrapper?.match(/exec node (.*?) ?\/opt\/gpu-boot\/dist\/entrypoint\.js/)?.[1]?.split(' ')).toEqual(imageFlags);
  });

  it('runs `install` for the manifest at build time, before switching to the non-root user', () => {
    const lines = dockerfile.getInstructions().map((i) => `${i.getKeyword()} ${i.getRawArgumentsContent() ?? ''}`);
    const install = lines.findIndex((l) => l.startsWith('RUN node /opt/gpu-boot/dist/entrypoint.js install'));
    const copyManifest = lines.findIndex((l) => l === 'COPY ${NODES_MANIFEST} /workspace/config_nodes.json');
    const user = lines.findIndex((l) => l === 'USER comfy');
    expect(copyManifest).toBeGreaterThan(0);
    expect(install).toBeGreaterThan(copyManifest);
    expect(user).toBeGreaterThan(install);
  });

  it('sets no ARG or ENV that a manifest template references (`install` would refuse to run)', () => {
    const names = dockerfile.getInstructions().flatMap((i) =>
      i.getKeyword() === 'ARG'
        ? [(i as import('dockerfile-ast').Arg).getProperty()?.getName() ?? '']
        : i.getKeyword() === 'ENV'
          ? (i as import('dockerfile-ast').Env).getProperties().map((p) => p.getName())
          : [],
    );
    const referenced = referencedVariables(imageManifest).flatMap((v) => [v, `${v}_FILE`, `${v}_ENCODED`]);
    expect(names.filter((n) => referenced.includes(n))).toEqual([]);
    expect(names).toContain('SHUTDOWN_TIMEOUT_MS');
  });

  it('sets only real settings to their documented non-secret values, and exposes the instance and health ports', () => {
    const env = Object.fromEntries(
      dockerfile.getENVs().flatMap((e) => e.getProperties().map((p) => [p.getName(), p.getValue()])),
    );
    expect(env).toMatchObject({
      WORKSPACE_PATH: '/workspace',
      COMFYUI_PATH: '/workspace/ComfyUI',
      PM2_HOME: '/home/comfy/.pm2',
      SHUTDOWN_TIMEOUT_MS: String(SHUTDOWN_DEFAULT_MS),
      HEALTH_PORT: String(HEALTH_PORT),
    });
    for (const name of ['WORKSPACE_PATH', 'COMFYUI_PATH', 'COMFYUI_PYTHON', 'PM2_HOME', 'SHUTDOWN_TIMEOUT_MS', 'HEALTH_PORT']) {
      expect(SETTING_NAMES).toContain(name);
    }
    const expose = dockerfile.getInstructions().filter((i) => i.getKeyword() === 'EXPOSE').flatMap((i) => i.getArguments().map((a) => a.getValue()));
    expect(expose).toEqual([`${PORT_START}-${PORT_START + 7}`, String(HEALTH_PORT)]);
  });
});

describe('docker/config_nodes.json (the image manifest)', () => {
  it('is a valid manifest with one node to clone at a branch, and templates instead of values', () => {
    const raw = JSON.parse(read('docker', 'config_nodes.json')) as { custom_nodes: Array<Record<string, unknown>> };
    expect(raw.custom_nodes).toHaveLength(1);
    const [node] = raw.custom_nodes;
    expect(node).toMatchObject({ name: 'emprops_custom_nodes', url: expect.stringMatching(/^https:\/\/github\.com\/.+\.git$/), branch: 'master', requirements: true });
    // Every value is a template: no literal secret in a committed manifest.
    for (const value of Object.values(node!.env as Record<string, string>)) expect(value).toMatch(/^\$\{[A-Z0-9_]+(:-[^}]*)?\}$/);
    expect(requiredVariables(imageManifest)).toEqual(['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AZURE_STORAGE_ACCOUNT', 'AZURE_STORAGE_KEY', 'HF_TOKEN']);
  });
});

describe('.dockerignore', () => {
  // The package's CommonJS default export: Docker's own matching rules, ported.
  const ig = dockerignore.default().add(read('.dockerignore'));

  it('keeps every .env file, key and installed or built folder out of the build context', () => {
    for (const p of [
      '.env',
      '.env.local.prod-test',
      '.env.local.prod-test.example',
      '.env.production',
      'demo/workspace/ComfyUI/custom_nodes/emprops_custom_nodes/.env',
      'docker/.env',
      'docker/secrets/hf_token',
      'certs/server.pem',
      'node_modules/pm2/package.json',
      'dist/entrypoint.js',
      '.git/config',
      'test/deploy.test.ts',
    ]) {
      expect({ path: p, ignored: ig.ignores(p) }).toEqual({ path: p, ignored: true });
    }
  });

  it('keeps what the Dockerfile copies from the context', () => {
    const dockerfile = DockerfileParser.parse(read('docker', 'Dockerfile'));
    const sources = dockerfile
      .getCOPYs()
      .filter((c) => !c.getFlags().some((f) => f.getName() === 'from'))
      .flatMap((c) => c.getExpandedArguments().map((a) => a.getValue()).slice(0, -1));
    expect(sources.sort()).toEqual(['docker/config_nodes.json', 'ecosystem.config.cjs', 'launcher/', 'package-lock.json', 'package.json', 'scripts/', 'src/', 'tsconfig.json']);
    for (const source of sources) {
      expect(existsSync(at(source))).toBe(true);
      const probe = source.endsWith('/') ? `${source}x.ts` : source;
      expect({ path: probe, ignored: ig.ignores(probe) }).toEqual({ path: probe, ignored: false });
    }
  });
});

// ---------------------------------------------------------------------------------------------
describe('docker/docker-compose.yml', () => {
  const compose = asDict(parseYaml(read('docker', 'docker-compose.yml')));
  const services = asDict(compose.services);
  const byProfile = (profile: string) => {
    const found = Object.entries(services).filter(([, s]) => asList(asDict(s).profiles).includes(profile));
    expect(found.map(([name]) => name)).toHaveLength(1);
    return asDict(found[0]![1]);
  };
  const local = byProfile('local');
  const prodTest = byProfile('prod-test');

  it('has exactly the profiles local and prod-test, each built from docker/Dockerfile with the repo as context', () => {
    expect(Object.keys(services).sort()).toEqual(['gpu-boot-local', 'gpu-boot-prod-test']);
    for (const service of [local, prodTest]) expect(service.build).toEqual({ context: '..', dockerfile: 'docker/Dockerfile' });
  });

  it('gives each profile a stop_grace_period above SHUTDOWN_TIMEOUT_MS, a /ready healthcheck, a /run tmpfs and no second init', () => {
    for (const service of [local, prodTest]) {
      const shutdownMs = Number(environmentOf(service).SHUTDOWN_TIMEOUT_MS ?? SHUTDOWN_DEFAULT_MS);
      expect(shutdownMs).toBe(8000);
      expect(durationMs(service.stop_grace_period)).toBe(15_000);
      expect(durationMs(service.stop_grace_period)).toBeGreaterThan(shutdownMs);
      // Through a shell, so the port is the container's HEALTH_PORT ($$ is compose's escape for $).
      expect(asDict(service.healthcheck).test).toEqual(['CMD-SHELL', `curl -fsS -o /dev/null http://127.0.0.1:$\${HEALTH_PORT:-${HEALTH_PORT}}/ready || exit 1`]);
      expect(service.tmpfs).toEqual(['/run']);
      expect(service.init).toBeUndefined();
      expect(asList(service.ports)).toContain(`127.0.0.1:${HEALTH_PORT}:${HEALTH_PORT}`);
    }
  });

  it('local: mock GPUs, the demo workspace, and every secret as a *_FILE from a compose secret with a fake value', () => {
    const env = environmentOf(local);
    expect(env).toMatchObject({ GPU_MODE: 'mock', NUM_GPUS: '2' });
    expect(local.volumes).toEqual(['../demo/workspace:/workspace']);
    expect(asList(local.ports)).toContain('127.0.0.1:8188-8189:8188-8189');

    const fileVars = Object.entries(env).filter(([name]) => name.endsWith('_FILE'));
    expect(fileVars.map(([name]) => name).sort()).toEqual(['AWS_ACCESS_KEY_ID_FILE', 'AWS_SECRET_ACCESS_KEY_FILE', 'AZURE_STORAGE_KEY_FILE', 'CIVITAI_TOKEN_FILE', 'HF_TOKEN_FILE']);
    const topSecrets = asDict(compose.secrets);
    for (const [name, value] of fileVars) {
      const secret = path.basename(value);
      expect(value).toBe(`/run/secrets/${secret}`);
      expect(asList(local.secrets)).toContain(secret);
      const file = asDict(topSecrets[secret]).file as string;
      const content = readFileSync(path.join(ROOT, 'docker', file), 'utf8');
      expect({ name, fake: /fake/i.test(content) && /not[-+ ]?(a[-+ ])?real/i.test(content) }).toEqual({ name, fake: true });
    }
    // Every variable the demo manifest needs (for the nodes it has) comes from exactly one source.
    const needed = requiredVariables(demoManifest, at('demo', 'workspace', 'ComfyUI', 'custom_nodes'));
    expect(needed).toEqual(['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AZURE_STORAGE_ACCOUNT', 'AZURE_STORAGE_KEY', 'CIVITAI_TOKEN', 'HF_TOKEN']);
    for (const variable of needed) {
      expect({ variable, sources: Object.keys(env).filter((n) => isSourceOf(n, variable)).length }).toEqual({ variable, sources: 1 });
    }
  });

  it('prod-test: all NVIDIA GPUs reserved, GPU_MODE=actual, secrets only from the git-ignored env file', () => {
    expect(asDict(asDict(asDict(prodTest.deploy).resources).reservations).devices).toEqual([{ driver: 'nvidia', count: 'all', capabilities: ['gpu'] }]);
    const env = environmentOf(prodTest);
    expect(env).toEqual({ GPU_MODE: 'actual', SHUTDOWN_TIMEOUT_MS: '8000' });
    expect(prodTest.env_file).toEqual(['${PROD_TEST_ENV_FILE:-../.env.local.prod-test}']);
    expect(path.resolve(ROOT, 'docker', '../.env.local.prod-test')).toBe(at('.env.local.prod-test'));
    expect(asList(prodTest.ports)).toContain(`127.0.0.1:${PORT_START}-${PORT_START + 7}:${PORT_START}-${PORT_START + 7}`);
  });

  it('the npm scripts bring each profile up and down, and check:compose validates both; CI runs it before the tests', async () => {
    const pkg = JSON.parse(read('package.json')) as { scripts: Record<string, string> };
    const file = 'docker compose -f docker/docker-compose.yml';
    expect(pkg.scripts['machine:local:up']).toMatch(new RegExp(`${file} --profile local up --build$`));
    expect(pkg.scripts['machine:local:down']).toMatch(new RegExp(`${file} --profile local down$`));
    expect(pkg.scripts['machine:prod-test:up']).toBe(`${file} --profile prod-test up --build`);
    expect(pkg.scripts['machine:prod-test:down']).toBe(`${file} --profile prod-test down`);
    for (const profile of ['local', 'prod-test']) {
      expect(pkg.scripts['check:compose']).toContain(`docker-compose -f docker/docker-compose.yml --profile ${profile} config -q`);
    }
    const ci = await readFile(at('.ci', 'run'), 'utf8');
    const update = ci.indexOf('apt-get update');
    const installCompose = ci.indexOf('apt_install docker-compose');
    const check = ci.indexOf('\nnpm run check:compose\n');
    expect([update, installCompose, check].every((i) => i > 0)).toBe(true);
    expect(update).toBeLessThan(installCompose);
    expect(check).toBeLessThan(ci.indexOf('\nnpm test\n'));
  });

  const hasDockerCompose = execaSync('sh', ['-c', 'command -v docker-compose'], { reject: false }).exitCode === 0;
  const composeEnv = { PROD_TEST_ENV_FILE: at('.env.local.prod-test.example') };

  it.skipIf(!hasDockerCompose).each(['local', 'prod-test'])('docker-compose validates the %s profile (config -q exits 0)', async (profile) => {
    const result = await execa('docker-compose', ['-f', 'docker/docker-compose.yml', '--profile', profile, 'config', '-q'], { cwd: ROOT, env: composeEnv, reject: false });
    expect({ exitCode: result.exitCode, stdout: result.stdout, stderr: result.stderr }).toEqual({ exitCode: 0, stdout: '', stderr: '' });
  });

  it.skipIf(!hasDockerCompose)('docker-compose rejects a broken copy of the file (the check can fail)', async () => {
    const broken = read('docker', 'docker-compose.yml').replace('stop_grace_period: 15s', 'stop_grace_periodd: 15s');
    const result = await execa('docker-compose', ['-f', '-', '--project-directory', 'docker', '--profile', 'local', 'config', '-q'], { cwd: ROOT, env: composeEnv, input: broken, reject: false });
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toContain("Unsupported config option for services.gpu-boot-local: 'stop_grace_periodd'");
  });
});

// ---------------------------------------------------------------------------------------------
describe('deploy/kubernetes', () => {
  const dir = at('deploy', 'kubernetes');
  // YAML 1.1, as Kubernetes reads it: `defaultMode: 0440` is octal.
  const load = (file: string) => parseAllDocuments(readFileSync(path.join(dir, file), 'utf8'), { version: '1.1' }).map((d) => asDict(d.toJS()));
  const deployment = load('deployment.yaml')[0]!;
  const podSpec = asDict(asDict(asDict(deployment.spec).template).spec);
  const container = asDict(asList(podSpec.containers)[0]);
  const env = Object.fromEntries(asList(container.env).map((e) => [asDict(e).name as string, asDict(e).value as string]));
  const containerPorts = Object.fromEntries(asList(container.ports).map((p) => [asDict(p).name as string, asDict(p).containerPort as number]));
  const portNumber = (port: unknown) => (typeof port === 'number' ? port : containerPorts[String(port)]);
  const shutdownMs = Number(env.SHUTDOWN_TIMEOUT_MS ?? SHUTDOWN_DEFAULT_MS);

  it('holds a Deployment, a Service, an example Secret and a kustomization that leaves the example out', async () => {
    expect((await readdir(dir)).sort()).toEqual(['deployment.yaml', 'kustomization.yaml', 'secret.example.yaml', 'service.yaml']);
    expect(deployment).toMatchObject({ apiVersion: 'apps/v1', kind: 'Deployment', spec: { replicas: 1 } });
    expect(load('kustomization.yaml')[0]!.resources).toEqual(['deployment.yaml', 'service.yaml']);
  });

  it('requests one nvidia.com/gpu (request and limit) and runs as non-root', () => {
    const resources = asDict(container.resources);
    expect(asDict(resources.requests)['nvidia.com/gpu']).toBe(1);
    expect(asDict(resources.limits)['nvidia.com/gpu']).toBe(1);
    expect(podSpec.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 1000, fsGroup: 1000 });
    expect(container.securityContext).toMatchObject({ allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } });
  });

  it('mounts the Secret as a whole volume (no subPath) and wires every key through a *_FILE variable', () => {
    const volumes = asList(podSpec.volumes).map(asDict);
    const secretVolume = volumes.find((v) => v.secret);
    expect(secretVolume).toMatchObject({ name: 'secrets', secret: { secretName: 'gpu-boot-secrets', defaultMode: 0o440 } });
    const mounts = asList(container.volumeMounts).map(asDict).filter((m) => m.name === secretVolume!.name);
    expect(mounts).toEqual([{ name: 'secrets', mountPath: '/run/secrets/gpu-boot', readOnly: true }]);
    expect(asList(container.volumeMounts).map(asDict).filter((m) => m.subPath !== undefined || m.subPathExpr !== undefined)).toEqual([]);

    const secret = load('secret.example.yaml')[0]!;
    expect(secret).toMatchObject({ apiVersion: 'v1', kind: 'Secret', metadata: { name: 'gpu-boot-secrets' } });
    const keys = Object.keys(asDict(secret.stringData)).sort();
    const fileVars = Object.entries(env).filter(([name]) => name.endsWith('_FILE'));
    expect(fileVars.map(([, value]) => value).sort()).toEqual(keys.map((k) => `/run/secrets/gpu-boot/${k}`));
    for (const [name, value] of fileVars) expect(path.basename(value)).toBe(baseName(name).toLowerCase());
    // The image manifest's required variables all arrive through the mount.
    for (const variable of requiredVariables(imageManifest)) expect(env[`${variable}_FILE`]).toBe(`/run/secrets/gpu-boot/${variable.toLowerCase()}`);
    for (const value of Object.values(asDict(secret.stringData))) expect(String(value)).toMatch(/fake/i);
  });

  it('keeps the .env contents in memory: an emptyDir medium Memory on /dev/shm', () => {
    const shm = asList(podSpec.volumes).map(asDict).find((v) => asDict(v.emptyDir).medium === 'Memory');
    expect(shm).toBeDefined();
    const mount = asList(container.volumeMounts).map(asDict).find((m) => m.name === shm!.name);
    expect(mount?.mountPath).toBe('/dev/shm');
  });

  it('probes /ready for readiness and /health for liveness on the health port', () => {
    expect(containerPorts).toEqual({ 'comfyui-0': PORT_START, health: HEALTH_PORT });
    const readiness = asDict(asDict(container.readinessProbe).httpGet);
    const liveness = asDict(asDict(container.livenessProbe).httpGet);
    expect({ path: readiness.path, port: portNumber(readiness.port) }).toEqual({ path: '/ready', port: HEALTH_PORT });
    expect({ path: liveness.path, port: portNumber(liveness.port) }).toEqual({ path: '/health', port: HEALTH_PORT });
    // A startupProbe holds liveness back while a slow model load runs: at least 5 minutes.
    const startup = asDict(container.startupProbe);
    expect({ path: asDict(startup.httpGet).path, port: portNumber(asDict(startup.httpGet).port) }).toEqual({ path: '/health', port: HEALTH_PORT });
    expect(Number(startup.periodSeconds) * Number(startup.failureThreshold)).toBeGreaterThanOrEqual(300);
  });

  it('gives the shutdown time to finish: grace period > preStop sleep + SHUTDOWN_TIMEOUT_MS', () => {
    const graceMs = Number(podSpec.terminationGracePeriodSeconds) * 1000;
    expect(graceMs).toBe(15_000);
    expect(graceMs).toBeGreaterThan(shutdownMs);
    const command = asList(asDict(asDict(asDict(container.lifecycle).preStop).exec).command).map(String);
    expect(command).toEqual(['sleep', '2']);
    const sleepMs = Number(command[1]) * 1000;
    expect(sleepMs + shutdownMs).toBeLessThan(graceMs);
  });

  it('exposes the instance port and the health port through a Service that selects the pods', () => {
    const service = load('service.yaml')[0]!;
    expect(service).toMatchObject({ apiVersion: 'v1', kind: 'Service' });
    const labels = asDict(asDict(asDict(deployment.spec).template).metadata).labels;
    expect(asDict(service.spec).selector).toEqual(labels);
    const ports = asList(asDict(service.spec).ports).map(asDict);
    expect(ports.map((p) => [p.port, portNumber(p.targetPort)])).toEqual([[PORT_START, PORT_START], [HEALTH_PORT, HEALTH_PORT]]);
  });
});

// ---------------------------------------------------------------------------------------------
describe('.env.local.prod-test.example', () => {
  const example = parseDotenv(read('.env.local.prod-test.example'));

  it('lists every secret source the image manifest, the compose prod-test profile and the Kubernetes manifests reference', () => {
    const compose = asDict(parseYaml(read('docker', 'docker-compose.yml')));
    const prodTestEnv = Object.keys(environmentOf(asDict(asDict(compose.services)['gpu-boot-prod-test'])));
    const podSpec = asDict(asDict(asDict(asDict(parseYaml(read('deploy', 'kubernetes', 'deployment.yaml'))).spec).template).spec);
    const k8sNames = asList(asDict(asList(podSpec.containers)[0]).env).map((e) => String(asDict(e).name));
    const referenced = new Set([
      ...referencedVariables(imageManifest),
      ...[...prodTestEnv, ...k8sNames].filter((n) => /_(FILE|ENCODED)$/.test(n)).map(baseName),
    ]);
    expect([...referenced].sort()).toEqual([
      'AWS_ACCESS_KEY_ID', 'AWS_DEFAULT_REGION', 'AWS_SECRET_ACCESS_KEY', 'AZURE_STORAGE_ACCOUNT', 'AZURE_STORAGE_KEY',
      'CLOUD_MODELS_CONTAINER', 'CLOUD_PROVIDER', 'HF_TOKEN',
    ]);
    for (const variable of referenced) {
      expect({ variable, sources: Object.keys(example).filter((n) => isSourceOf(n, variable)).length }).toEqual({ variable, sources: 1 });
    }
    // Nothing else: a misspelt name would never reach the manifest.
    for (const name of Object.keys(example)) expect(referenced.has(baseName(name)) || SETTING_NAMES.includes(name)).toBe(true);
  });

  it('holds only fake values for secrets', () => {
    const secrets = Object.entries(example).filter(([name]) => SECRET_NAME.test(name) || /_KEY(_|$)/.test(name));
    expect(secrets.map(([name]) => name).sort()).toEqual(['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AZURE_STORAGE_KEY', 'HF_TOKEN']);
    for (const [name, value] of secrets) expect({ name, fake: /fake/i.test(value) }).toEqual({ name, fake: true });
  });

  it('is tracked while .env.local.prod-test is git-ignored', async () => {
    const check = (file: string) => execa('git', ['check-ignore', '-q', file], { cwd: ROOT, reject: false }).then((r) => r.exitCode);
    expect(await check('.env.local.prod-test')).toBe(0);
    expect(await check('.env.local.prod-test.example')).toBe(1);
    expect(await check('docker/secrets/hf_token')).toBe(1);
  });
});

// ---------------------------------------------------------------------------------------------
describe('docs/platforms.md', () => {
  const doc = read('docs', 'platforms.md');
  const sections = doc.split(/^## /m).slice(1);

  it('covers each way to run it, each section ending with the one command that starts it', () => {
    expect(sections.map((s) => s.split('\n')[0])).toEqual(['SaladCloud', 'vast.ai', 'RunPod', 'Plain `docker run`', 'Docker Compose', 'Kubernetes', 'Vault Agent']);
    for (const section of sections) {
      const blocks = [...section.matchAll(/^```(\w*)\n([\s\S]*?)^```/gm)];
      const lastBlock = blocks.at(-1);
      expect(section.trimEnd().endsWith('```')).toBe(true);
      expect(lastBlock?.[1]).toBe('sh');
      expect(lastBlock?.[2]!.trim().split('\n')).toHaveLength(1);
    }
  });

  it('names only real settings and npm scripts', () => {
    const settingLike = /\b(?:COMFYUI_[A-Z_]+|COMFY_ARGS|GPU_(?:MODE|MODEL|MEMORY_GB)|NUM_GPUS|HEALTH_[A-Z_]+|SECRETS_[A-Z_]+|SHUTDOWN_[A-Z_]+|ROTATION[A-Z_]*|READY_[A-Z_]+|WORKSPACE_PATH|PM2_HOME|CUSTOM_NODES_CONFIG)\b/g;
    const used = new Set(doc.match(settingLike));
    expect(used.size).toBeGreaterThan(10);
    for (const name of used) expect({ name, known: SETTING_NAMES.includes(name) }).toEqual({ name, known: true });
    const scripts = Object.keys((JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts);
    const npmRuns = [...doc.matchAll(/npm run ([\w:-]+)/g)].map((m) => m[1]!);
    expect(npmRuns.length).toBeGreaterThan(0);
    for (const name of npmRuns) expect(scripts).toContain(name);
    expect(doc).toContain(`\`SHUTDOWN_TIMEOUT_MS\` (${SHUTDOWN_DEFAULT_MS} ms)`);
    expect(doc).toContain('**exit 78**');
    expect(doc).toContain('exits **69**');
  });
});

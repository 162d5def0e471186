import { lstat } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import type { Logger } from 'pino';
import * as z from 'zod';
import type { Config } from '../config.js';
import { BootError, ConfigError, ExitCode } from '../errors.js';
import { loadManifest, readManifestFile, referencedVariables } from '../secrets/manifest.js';

/**
 * `install`, for build time: clone each manifest entry that has a `url` into
 * custom_nodes/<name> at its `branch` or pinned `commit`, install its requirements
 * with COMFYUI_PYTHON -m pip, run its `custom_script`. It runs with no secret in
 * its environment and refuses to start if a variable a template references is set:
 * a secret must never be baked into an image layer. A node already at the right
 * commit is left alone.
 */

const InstallEntry = z.looseObject({
  name: z.string(),
  url: z.string().min(1, { error: 'is empty' }).optional(),
  branch: z.string().min(1).optional(),
  commit: z.string().regex(/^[0-9a-f]{7,40}$/i, { error: 'must be a commit hash (7 to 40 hex digits)' }).optional(),
  requirements: z.boolean({ error: 'must be true or false' }).optional(),
  custom_script: z.string().min(1).optional(),
});
const InstallManifest = z.looseObject({ custom_nodes: z.array(InstallEntry) });
type Entry = z.infer<typeof InstallEntry>;

export interface InstallResult {
  name: string;
  action: 'cloned' | 'updated' | 'unchanged' | 'skipped';
  commit?: string;
  ms: number;
}

/** git, pip and scripts run with a small, known environment: nothing of the caller's secrets. */
function toolEnv(): NodeJS.ProcessEnv {
  const keep = ['PATH', 'HOME', 'LANG', 'LC_ALL', 'TMPDIR', 'PIP_DISABLE_PIP_VERSION_CHECK', 'PIP_INDEX_URL', 'PIP_EXTRA_INDEX_URL', 'PIP_NO_CACHE_DIR', 'VIRTUAL_ENV', 'HTTP_PROXY', 'HTTPS_PROXY', 'NO_PROXY'];
  const env: NodeJS.ProcessEnv = { GIT_TERMINAL_PROMPT: '0' };
  for (const name of keep) if (process.env[name] !== undefined) env[name] = process.env[name];
  return env;
}

class StepError extends Error {}

async function run(command: string, args: string[], cwd: string, what: string): Promise<string> {
  const result = await execa(command, args, { cwd, env: toolEnv(), extendEnv: false, reject: false, all: true, stdin: 'ignore' });
  if (result.failed) {
    const tail = (result.all ?? '').trim().split('\n').slice(-5).join(' | ').slice(0, 600);
    const code = (result as { code?: string }).code;
    throw new StepError(`${what} failed (${code === 'ENOENT' ? `${command} not found` : `exit ${result.exitCode}`})${tail ? `: ${tail}` : ''}`);
  }
  return result.stdout.trim();
}

async function isDir(p: string): Promise<boolean> {
  return lstat(p).then((s) => s.isDirectory(), () => false);
}

async function headCommit(dir: string): Promise<string> {
  return run('git', ['-C', dir, 'rev-parse', 'HEAD'], dir, 'git rev-parse');
}

/** Bring one node to its commit; returns what was done. */
async function checkout(entry: Entry & { url: string }, dir: string, parent: string): Promise<'cloned' | 'updated' | 'unchanged'> {
  if (await isDir(dir)) {
    if (!(await isDir(path.join(dir, '.git')))) throw new StepError(`${dir} exists and is not a git checkout; remove it or drop the url`);
    const origin = await run('git', ['-C', dir, 'remote', 'get-url', 'origin'], dir, 'git remote');
    if (origin !== entry.url) throw new StepError(`${dir} is a checkout of ${origin}, not ${entry.url}; remove it to reinstall`);
    const head = await headCommit(dir);
    if (entry.commit && head.startsWith(entry.commit.toLowerCase())) return 'unchanged';
    const ref = entry.commit ?? entry.branch ?? 'HEAD';
    await run('git', ['-C', dir, 'fetch', '--quiet', 'origin', ...(entry.commit ? [] : [ref])], dir, 'git fetch');
    const target = entry.commit ?? (await run('git', ['-C', dir, 'rev-parse', 'FETCH_HEAD'], dir, 'git rev-parse'));
    if (head.startsWith(target.toLowerCase())) return 'unchanged';
    await run('git', ['-C', dir, '-c', 'advice.detachedHead=false', 'checkout', '--quiet', '--detach', target], dir, 'git checkout');
    return 'updated';
  }
  const branch = entry.branch && !entry.commit ? ['--branch', entry.branch, '--single-branch'] : [];
  await run('git', ['clone', '--quiet', ...branch, entry.url, dir], parent, 'git clone');
  if (entry.commit) await run('git', ['-C', dir, '-c', 'advice.detachedHead=false', 'checkout', '--quiet', '--detach', entry.commit], dir, 'git checkout');
  return 'cloned';
}

export async function runInstall(config: Config, env: NodeJS.ProcessEnv, logger: Logger): Promise<InstallResult[]> {
  // The same manifest as `start`, validated the same way; then the install fields.
  const manifest = await loadManifest(config.manifestPath).catch((error: unknown) => {
    const problems = (error as { problems?: string[] }).problems ?? [];
    throw new ConfigError((error as Error).message, problems);
  });
  const setSecrets = referencedVariables(manifest)
    .flatMap((v) => [v, `${v}_FILE`, `${v}_ENCODED`])
    .filter((name) => env[name] !== undefined && env[name] !== '');
  if (config.secretsEnvFile) setSecrets.push('SECRETS_ENV_FILE');
  if (setSecrets.length) {
    throw new ConfigError(
      `install runs at build time and must not see secrets, but ${setSecrets.length} variable(s) the manifest references are set; unset them (a secret would be baked into the image)`,
      setSecrets.map((name) => `${name} is set`),
    );
  }
  // Already validated by loadManifest (strict JSON, UTF-8); a byte order mark is dropped as there.
  const parsed = InstallManifest.safeParse(JSON.parse((await readManifestFile(config.manifestPath)).replace(/^\uFEFF/, '')));
  if (!parsed.success) {
    throw new ConfigError(
      `manifest ${config.manifestPath} has install fields of the wrong type`,
      parsed.error.issues.map((i) => `${config.manifestPath}: ${i.path.map(String).join('.')}: ${i.message}`),
    );
  }

  const results: InstallResult[] = [];
  const entries = parsed.data.custom_nodes;
  for (const [index, entry] of entries.entries()) {
    const started = performance.now();
    const progress = `[${index + 1}/${entries.length}]`;
    if (!entry.url) {
      results.push({ name: entry.name, action: 'skipped', ms: 0 });
      logger.info({ node: entry.name }, `${progress} ${entry.name}: no url, nothing to install`);
      continue;
    }
    const dir = path.join(config.customNodesPath, entry.name);
    try {
      logger.info({ node: entry.name, url: entry.url, ref: entry.commit ?? entry.branch ?? 'default branch' }, `${progress} ${entry.name}: checking out`);
      const action = await checkout({ ...entry, url: entry.url }, dir, config.customNodesPath);
      if (action !== 'unchanged') {
        if (entry.requirements) {
          const requirements = path.join(dir, 'requirements.txt');
          if (await lstat(requirements).then(() => true, () => false)) {
            logger.info({ node: entry.name }, `${progress} ${entry.name}: installing requirements.txt`);
            await run(config.comfyuiPython, ['-m', 'pip', 'install', '--no-input', '-r', requirements], dir, `${config.comfyuiPython} -m pip install -r requirements.txt`);
          }
        }
        if (entry.custom_script) {
          const script = path.resolve(dir, entry.custom_script);
          if (!script.startsWith(`${dir}${path.sep}`)) throw new StepError(`custom_script ${entry.custom_script} is outside the node's folder`);
          logger.info({ node: entry.name, script: entry.custom_script }, `${progress} ${entry.name}: running ${entry.custom_script}`);
          const [command, args] = script.endsWith('.py') ? [config.comfyuiPython, [script]] : ['sh', [script]];
          await run(command, args, dir, `custom_script ${entry.custom_script}`);
        }
      }
      const commit = await headCommit(dir);
      const ms = Math.round(performance.now() - started);
      results.push({ name: entry.name, action, commit, ms });
      logger.info({ node: entry.name, action, commit, ms }, `${progress} ${entry.name}: ${action} at ${commit.slice(0, 12)} in ${ms} ms`);
    } catch (error) {
      if (!(error instanceof StepError)) throw error;
      throw new BootError(ExitCode.failed, `install failed at node "${entry.name}": ${error.message}`, [
        ...results.map((r) => `${r.name}: ${r.action}`),
        `${entry.name}: failed`,
      ]);
    }
  }
  const count = (action: InstallResult['action']) => results.filter((r) => r.action === action).length;
  logger.info(
    { cloned: count('cloned'), updated: count('updated'), unchanged: count('unchanged'), skipped: count('skipped') },
    `install: ${count('cloned')} cloned, ${count('updated')} updated, ${count('unchanged')} unchanged, ${count('skipped')} without url`,
  );
  return results;
}

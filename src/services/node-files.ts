import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { ConfigError } from '../errors.js';
import { SecretMasker } from '../log.js';
import { renderEnvFile, UnrepresentableValueError, quoteValue } from './dotenv-format.js';
import { nodeEnvPath, type NodeFile } from './env-files.js';
import { loadManifest, ManifestError, referencedVariables, type Manifest } from './manifest.js';
import { resolveSecrets, type SecretResolution } from './secrets.js';

/**
 * The RuntimeEnvCreator phase without any write: manifest -> resolved values ->
 * the text of each node's .env. Every problem is collected, then reported at once.
 */
export interface PreparedNodes {
  manifest: Manifest;
  resolution: SecretResolution;
  files: NodeFile[];
  skipped: string[];
}

/**
 * The variables no instance may inherit: each referenced VAR with its _FILE and _ENCODED forms,
 * SECRETS_ENV_FILE and any extra names (the agent file's keys), and every key a node gets from its
 * .env (load_dotenv does not override, so a stale platform value of the same name would win).
 */
export function withheldVariableNames(manifest: Manifest, extra: readonly string[] = []): string[] {
  const names = new Set<string>([...extra, 'SECRETS_ENV_FILE']);
  for (const v of referencedVariables(manifest)) for (const n of [v, `${v}_FILE`, `${v}_ENCODED`]) names.add(n);
  for (const node of manifest.nodes) for (const { key } of node.env) names.add(key);
  return [...names].sort();
}

/** Names only, for /status: each node's file and the keys in it. */
export function nodeSummaries(prepared: PreparedNodes): Array<{ name: string; file: string; keys: string[] }> {
  const byName = new Map(prepared.resolution.nodes.map((n) => [n.name, n]));
  return prepared.files.map((f) => ({ name: f.node, file: f.path, keys: byName.get(f.node)?.values.map((v) => v.key) ?? [] }));
}

export async function loadManifestOrEmpty(config: Config, logger: Logger): Promise<Manifest> {
  try {
    return await loadManifest(config.manifestPath);
  } catch (error) {
    if (error instanceof ManifestError) {
      if (!config.manifestExplicit && /does not exist/.test(error.message)) {
        logger.warn({ manifest: config.manifestPath }, 'no manifest found: no custom node gets a .env (set CUSTOM_NODES_CONFIG)');
        return { path: config.manifestPath, nodes: [] };
      }
      throw new ConfigError(error.message, error.problems);
    }
    throw error;
  }
}

export async function prepareNodeFiles(
  config: Config,
  env: NodeJS.ProcessEnv,
  masker: SecretMasker,
  logger: Logger,
): Promise<PreparedNodes> {
  const manifest = await loadManifestOrEmpty(config, logger);
  // Folders first: a node that is not installed is skipped, and its variables are not required.
  const problems: string[] = [];
  const skipped: string[] = [];
  const targets = new Map<string, string>();
  await Promise.all(
    manifest.nodes.map(async (node) => {
      const target = await nodeEnvPath(config.customNodesPath, node.name);
      if (target.error) problems.push(target.error);
      else if (target.path) targets.set(node.name, target.path);
      else {
        skipped.push(node.name);
        logger.warn({ node: node.name }, `custom node "${node.name}" is in the manifest but ${target.skip}; skipped`);
      }
    }),
  );
  const installed: Manifest = { path: manifest.path, nodes: manifest.nodes.filter((n) => targets.has(n.name)) };
  const resolution = await resolveSecrets(installed, env, config.secretsEnvFile);
  // Every variable the whole manifest names is withheld from PM2, installed node or not.
  resolution.sourceVariableNames = withheldVariableNames(manifest, resolution.sourceVariableNames);
  // Mask before anything else can print: values are known from here on.
  for (const resolved of resolution.variables.values()) masker.add(resolved.variable, resolved.value);
  problems.push(...resolution.problems);
  // A value this short cannot be masked in logs without masking ordinary text: refuse it unless allowed.
  for (const resolved of resolution.variables.values()) {
    const allowed = config.allowShortSecrets.has('*') || config.allowShortSecrets.has(resolved.variable);
    if (resolved.value.length < SecretMasker.minLength && !allowed) {
      problems.push(
        `${resolved.variable} (from ${resolved.source}): the value is shorter than ${SecretMasker.minLength} characters, too short to mask in logs; use a longer secret or list ${resolved.variable} in ALLOW_SHORT_SECRETS`,
      );
    }
  }

  const files: NodeFile[] = [];
  for (const node of resolution.nodes) {
    const target = targets.get(node.name);
    // A node whose manifest entry declares no env gets no file.
    if (!target || node.values.length === 0) continue;
    const entries = node.values;
    let valid = true;
    for (const { key, value, variables } of entries) {
      // A value made only of manifest text is not a secret; one built from a variable is.
      if (variables.length > 0) masker.add(`${node.name}.${key}`, value);
      try {
        quoteValue(value);
      } catch (error) {
        if (!(error instanceof UnrepresentableValueError)) throw error;
        valid = false;
        problems.push(`node "${node.name}" key ${key}: the value ${error.message}`);
      }
    }
    if (valid) files.push({ node: node.name, path: target, text: renderEnvFile(node.name, entries) });
  }
  if (problems.length) {
    problems.sort();
    throw new ConfigError(`cannot prepare the custom nodes' .env files (${problems.length} problem${problems.length === 1 ? '' : 's'})`, problems);
  }
  files.sort((a, b) => a.node.localeCompare(b.node));
  return { manifest, resolution, files, skipped: skipped.sort() };
}

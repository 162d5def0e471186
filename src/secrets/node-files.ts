import type { Stats } from 'node:fs';
import { lstatSync, statSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { isNeverSecret, type Config } from '../config.js';
import { ConfigError } from '../errors.js';
import { SecretMasker } from '../log.js';
import { renderEnvFile, UnrepresentableValueError, quoteValue } from './dotenv-format.js';
import { errnoText, nodeEnvPath, type NodeFile } from '../files/env-files.js';
import { loadManifestReading, ManifestError, referencedVariables, type Manifest, type ManifestReading } from './manifest.js';
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
 * Whether a variable is a secret: every variable the manifest references is, except gpu-boot's own
 * settings, the basic process variables (HOME, PATH, LC_*, ...) and what the manifest lists in
 * `not_secret`. Those are neither masked in logs nor withheld from the instances.
 */
export function secretTest(manifest: Manifest): (name: string) => boolean {
  const declared = new Set(manifest.notSecret ?? []);
  return (name) => !isNeverSecret(name) && !declared.has(name);
}

/**
 * The variables no instance may inherit: each referenced secret VAR with its _FILE and _ENCODED forms,
 * SECRETS_ENV_FILE and any extra names (the agent file's keys), and every key a node gets from its
 * .env (load_dotenv does not override, so a stale platform value of the same name would win).
 * Names that are not secrets (secretTest) are never withheld: instances keep HOME, PATH, STAGE...
 * SECRETS_ENV_FILE always is: it leads to the agent's file of secrets.
 */
export function withheldVariableNames(manifest: Manifest, extra: readonly string[] = []): string[] {
  const isSecret = secretTest(manifest);
  const names = new Set<string>(extra);
  for (const v of referencedVariables(manifest)) {
    names.add(v);
    names.add(`${v}_FILE`);
    names.add(`${v}_ENCODED`);
  }
  for (const node of manifest.nodes) for (const { key } of node.env) names.add(key);
  return [...names].filter(isSecret).concat('SECRETS_ENV_FILE').sort();
}

/** Names only, for /status: each node's file and the keys in it. */
export function nodeSummaries(prepared: PreparedNodes): Array<{ name: string; file: string; keys: string[] }> {
  const byName = new Map(prepared.resolution.nodes.map((n) => [n.name, n]));
  return prepared.files.map((f) => ({ name: f.node, file: f.path, keys: byName.get(f.node)?.values.map((v) => v.key) ?? [] }));
}

/** The manifest with its problems (a missing default manifest is none); what stops the reading at once is thrown. */
async function readManifestOrEmpty(config: Config, logger: Logger): Promise<ManifestReading> {
  try {
    return await loadManifestReading(config.manifestPath, { rootAlone: process.geteuid?.() === 0 });
  } catch (error) {
    if (error instanceof ManifestError) {
      if (!config.manifestExplicit && /does not exist/.test(error.message)) {
        logger.warn({ manifest: config.manifestPath }, 'no manifest found: no custom node gets a .env (set CUSTOM_NODES_CONFIG)');
        return { manifest: { path: config.manifestPath, nodes: [] }, problems: [], message: '' };
      }
      throw new ConfigError(error.message, error.problems);
    }
    throw error;
  }
}

/** The manifest, every entry valid; a missing default manifest is an empty one (with a warning). */
export async function loadManifestOrEmpty(config: Config, logger: Logger): Promise<Manifest> {
  const reading = await readManifestOrEmpty(config, logger);
  if (reading.problems.length) throw new ConfigError(reading.message, reading.problems);
  return reading.manifest;
}

/** What lstat says a path is, in words, for a `.env` that is neither a file nor a link. */
function kindOf(stats: Stats): string {
  if (stats.isDirectory()) return 'a folder';
  if (stats.isFIFO()) return 'a FIFO (named pipe)';
  if (stats.isSocket()) return 'a socket';
  if (stats.isBlockDevice() || stats.isCharacterDevice()) return 'a device';
  return 'not a regular file';
}

/**
 * A node's folder and what is at its .env now, before anything is written: the .env must be nothing,
 * a file or a link (those are kept aside and put back); anything else would be replaced and lost.
 * lstat only: opening a FIFO would block (synchronous, as nodeEnvPath). Returns the folder's identity (device and inode, links
 * followed), so that two entries reaching one folder are caught.
 */
function inspectNodeFolder(node: string, target: string): { id?: string; error?: string } {
  const dir = path.dirname(target);
  let folder;
  try {
    folder = statSync(dir);
  } catch (error) {
    return { error: `node "${node}": cannot inspect ${dir}: ${errnoText(error)}` };
  }
  try {
    const existing = lstatSync(target, { throwIfNoEntry: false });
    if (existing && !existing.isFile() && !existing.isSymbolicLink()) {
      return { error: `node "${node}": ${target} is ${kindOf(existing)}, not a file or a link; move it away (gpu-boot would replace it)` };
    }
  } catch (error) {
    return { error: `node "${node}": cannot inspect ${target}: ${errnoText(error)}` };
  }
  return { id: `${folder.dev}:${folder.ino}` };
}

export async function prepareNodeFiles(
  config: Config,
  env: NodeJS.ProcessEnv,
  masker: SecretMasker,
  logger: Logger,
): Promise<PreparedNodes> {
  // A manifest entry with a problem is left out here, and its problems reported with the others' below.
  const reading = await readManifestOrEmpty(config, logger);
  const { manifest } = reading;
  // Folders first: a node that is not installed is skipped, and its variables are not required.
  const problems: string[] = [...reading.problems];
  const skipped: string[] = [];
  const targets = new Map<string, string>();
  const folders = new Map<string, string>();
  for (const node of manifest.nodes) {
    const target = nodeEnvPath(config.customNodesPath, node.name);
    if (target.error) problems.push(target.error);
    else if (target.path) {
      const inspected = inspectNodeFolder(node.name, target.path);
      if (inspected.error) problems.push(inspected.error);
      else {
        targets.set(node.name, target.path);
        if (inspected.id) folders.set(node.name, inspected.id);
      }
    } else {
      skipped.push(node.name);
      logger.warn({ node: node.name }, `custom node "${node.name}" is in the manifest but ${target.skip}; skipped`);
    }
  }
  // Two entries whose folders are one (a link to the other, or both links to a third) would write one .env.
  const byFolder = new Map<string, string>();
  for (const node of manifest.nodes) {
    const id = folders.get(node.name);
    if (id === undefined) continue;
    const first = byFolder.get(id);
    if (first === undefined) {
      byFolder.set(id, node.name);
      continue;
    }
    problems.push(
      `node "${node.name}": ${path.join(config.customNodesPath, node.name)} is the same folder as node "${first}"'s (${path.join(config.customNodesPath, first)}), through a symbolic link; both would write the same .env`,
    );
    targets.delete(node.name);
  }
  const installed: Manifest = { path: manifest.path, nodes: manifest.nodes.filter((n) => targets.has(n.name)) };
  const resolution = await resolveSecrets(installed, env, config.secretsEnvFile);
  // Every variable the whole manifest names is withheld from PM2, installed node or not.
  resolution.sourceVariableNames = withheldVariableNames(manifest, resolution.sourceVariableNames);
  // Mask before anything else can print: values are known from here on. Not secrets (HOME,
  // WORKSPACE_PATH, not_secret) are not masked: a log line keeps its paths.
  const isSecret = secretTest(manifest);
  for (const resolved of resolution.variables.values()) if (isSecret(resolved.variable)) masker.add(resolved.variable, resolved.value);
  problems.push(...resolution.problems);
  // A value this short cannot be masked in logs without masking ordinary text: refuse it unless allowed.
  for (const resolved of resolution.variables.values()) {
    const allowed = !isSecret(resolved.variable) || config.allowShortSecrets.has('*') || config.allowShortSecrets.has(resolved.variable);
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
      // A value made only of manifest text and variables that are not secrets is not a secret; one built from a secret is.
      if (variables.some(isSecret)) masker.add(`${node.name}.${key}`, value);
      try {
        quoteValue(value);
      } catch (error) {
        if (!(error instanceof UnrepresentableValueError)) throw error;
        valid = false;
        problems.push(`node "${node.name}" key ${key}: the value ${error.message}`);
      }
    }
    if (valid) files.push({ node: node.name, path: target, text: renderEnvFile(entries) });
  }
  if (problems.length) {
    // The manifest's own message when it is the only trouble; else one message for every problem.
    if (problems.length === reading.problems.length) throw new ConfigError(reading.message, problems);
    problems.sort();
    throw new ConfigError(`cannot prepare the custom nodes' .env files (${problems.length} problem${problems.length === 1 ? '' : 's'})`, problems);
  }
  // By code unit, not localeCompare: ICU's collation was ~9 ms of the boot at 500 nodes.
  files.sort((a, b) => (a.node < b.node ? -1 : a.node > b.node ? 1 : 0));
  return { manifest, resolution, files, skipped: skipped.sort() };
}

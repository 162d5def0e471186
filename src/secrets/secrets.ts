import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import dotenv from 'dotenv';
import type { Manifest, TemplatePart } from './manifest.js';

/**
 * Sources -> resolved values. A reference to VAR is looked up in exactly one of:
 *   VAR_FILE          a mounted secret file (one trailing newline dropped)
 *   VAR_ENCODED       strict base64 or base64url, decoded to UTF-8
 *   VAR               the plain environment variable
 *   SECRETS_ENV_FILE  a dotenv file rendered by an agent (Vault Agent, ...)
 * Two of them set for the same VAR is an error: which one was meant cannot be guessed.
 * An empty value counts as unset, as in the official Docker images' file_env.
 */

export const MAX_SECRET_FILE_BYTES = 1024 * 1024;

export type SourceKind = 'file' | 'encoded' | 'env' | 'env-file';

export interface ResolvedVariable {
  variable: string;
  value: string;
  /** Where it came from: the variable name (VAR_FILE, VAR_ENCODED, VAR) or the agent file. */
  source: string;
  kind: SourceKind;
  /** For VAR_FILE: the file that was read. */
  path?: string;
}

export interface NodeValues {
  name: string;
  values: Array<{ key: string; value: string; variables: string[] }>;
}

export interface SecretResolution {
  variables: Map<string, ResolvedVariable>;
  nodes: NodeValues[];
  problems: string[];
  /** Every variable name that carried a secret into this process: never passed on to PM2 or instances. */
  sourceVariableNames: string[];
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function decodeUtf8(bytes: Uint8Array, what: string): string {
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch {
    throw new Error(`${what} is not valid UTF-8`);
  }
  if (text.includes('\u0000')) throw new Error(`${what} contains a NUL character`);
  return text;
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const BASE64URL = /^[A-Za-z0-9_-]*$/;

/** Strict base64 (padded) or base64url (unpadded or padded); anything Node would silently skip is refused. */
export function decodeBase64Strict(input: string, variable: string): string {
  const text = input.trim();
  let bytes: Buffer;
  if (BASE64.test(text)) {
    bytes = Buffer.from(text, 'base64');
    if (bytes.toString('base64') !== text) throw new Error(`${variable} is not canonical base64 (stray bits in the padding)`);
  } else {
    const unpadded = text.replace(/={1,2}$/, '');
    // Padding, when present, must fill the last group (RFC 4648): 'YQ=' or 'YWJj=' is refused, not guessed at.
    if (!BASE64URL.test(unpadded) || unpadded.length % 4 === 1 || (unpadded !== text && text.length % 4 !== 0)) {
      throw new Error(`${variable} is not valid base64 or base64url (encode it with \`base64 -w0\`)`);
    }
    bytes = Buffer.from(unpadded, 'base64url');
    if (bytes.toString('base64url') !== unpadded) throw new Error(`${variable} is not canonical base64url`);
  }
  return decodeUtf8(bytes, `${variable} (decoded)`);
}

/** Read a mounted secret: a regular file (links followed, as Kubernetes uses them), at most 1 MiB, UTF-8. */
export async function readSecretFile(filePath: string, variable: string): Promise<string> {
  let handle;
  try {
    // O_NONBLOCK: opening a FIFO must not hang the boot; it is refused just below.
    handle = await open(filePath, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'does not exist' : code === 'EACCES' ? 'is not readable (permission denied)' : `cannot be opened (${code})`;
    throw new Error(`${variable}: ${filePath} ${why}`);
  }
  try {
    const stat = await handle.stat();
    if (stat.isDirectory()) throw new Error(`${variable}: ${filePath} is a folder, not a file`);
    if (!stat.isFile()) throw new Error(`${variable}: ${filePath} is not a regular file`);
    if (stat.size > MAX_SECRET_FILE_BYTES) {
      throw new Error(`${variable}: ${filePath} is larger than ${MAX_SECRET_FILE_BYTES} bytes`);
    }
    const buffer = Buffer.alloc(MAX_SECRET_FILE_BYTES + 1);
    let length = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, length, buffer.length - length, length);
      if (bytesRead === 0) break;
      length += bytesRead;
      if (length > MAX_SECRET_FILE_BYTES) throw new Error(`${variable}: ${filePath} is larger than ${MAX_SECRET_FILE_BYTES} bytes`);
    }
    let text = decodeUtf8(buffer.subarray(0, length), `${variable}: ${filePath}`);
    if (text.endsWith('\r\n')) text = text.slice(0, -2);
    else if (text.endsWith('\n')) text = text.slice(0, -1);
    return text;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EISDIR') throw new Error(`${variable}: ${filePath} is a folder, not a file`);
    throw error;
  } finally {
    await handle.close();
  }
}

/** Load the agent-rendered dotenv file (parsed by the dotenv library, not by hand). */
export async function loadEnvFile(filePath: string): Promise<Record<string, string>> {
  const text = await readSecretFile(filePath, 'SECRETS_ENV_FILE');
  return dotenv.parse(text);
}

const present = (value: string | undefined): value is string => value !== undefined && value !== '';

/** Look up one variable in every source; exactly one may be set. */
export async function resolveVariable(
  variable: string,
  env: NodeJS.ProcessEnv,
  envFile: Record<string, string> | undefined,
  envFilePath: string | undefined,
): Promise<ResolvedVariable | undefined> {
  const set: string[] = [];
  if (present(env[`${variable}_FILE`])) set.push(`${variable}_FILE`);
  if (present(env[`${variable}_ENCODED`])) set.push(`${variable}_ENCODED`);
  if (present(env[variable])) set.push(variable);
  if (envFile && present(envFile[variable])) set.push(`SECRETS_ENV_FILE (${envFilePath ?? ''})`);
  if (set.length > 1) throw new Error(`${variable} is set by more than one source: ${set.join(', ')}; keep exactly one`);
  const filePath = env[`${variable}_FILE`];
  if (present(filePath)) {
    const value = await readSecretFile(filePath, `${variable}_FILE`);
    return { variable, value, source: `${variable}_FILE`, kind: 'file', path: filePath };
  }
  const encoded = env[`${variable}_ENCODED`];
  if (present(encoded)) {
    return { variable, value: decodeBase64Strict(encoded, `${variable}_ENCODED`), source: `${variable}_ENCODED`, kind: 'encoded' };
  }
  const plain = env[variable];
  if (present(plain)) {
    if (plain.includes('\u0000')) throw new Error(`${variable} contains a NUL character`);
    return { variable, value: plain, source: variable, kind: 'env' };
  }
  const fromFile = envFile?.[variable];
  if (present(fromFile)) return { variable, value: fromFile, source: 'SECRETS_ENV_FILE', kind: 'env-file' };
  return undefined;
}

function sourcesHint(variable: string, envFilePath: string | undefined): string {
  const names = [variable, `${variable}_FILE`, `${variable}_ENCODED`];
  return `looked for ${names.join(', ')}${envFilePath ? ' and SECRETS_ENV_FILE' : ''}`;
}

/** Resolve every reference in the manifest. All problems are collected, none thrown. No value appears in a problem. */
export async function resolveSecrets(
  manifest: Manifest,
  env: NodeJS.ProcessEnv,
  envFilePath: string | undefined,
): Promise<SecretResolution> {
  const problems: string[] = [];
  let envFile: Record<string, string> | undefined;
  if (envFilePath) {
    try {
      envFile = await loadEnvFile(envFilePath);
    } catch (error) {
      problems.push((error as Error).message);
    }
  }

  const variables = new Map<string, ResolvedVariable>();
  const failed = new Set<string>();
  const names = new Set<string>();
  for (const node of manifest.nodes) for (const { template } of node.env) for (const p of template) if (p.kind === 'ref') names.add(p.variable);
  await Promise.all(
    [...names].map(async (variable) => {
      try {
        const resolved = await resolveVariable(variable, env, envFile, envFilePath);
        if (resolved) variables.set(variable, resolved);
      } catch (error) {
        failed.add(variable);
        problems.push((error as Error).message);
      }
    }),
  );

  const nodes: NodeValues[] = manifest.nodes.map((node) => ({
    name: node.name,
    values: node.env.flatMap(({ key, template }) => {
      const rendered = renderTemplate(template, variables, (variable) => {
        if (!failed.has(variable)) {
          problems.push(
            `node "${node.name}" key ${key}: required variable ${variable} is not set (${sourcesHint(variable, envFilePath)})`,
          );
        }
      });
      return rendered === undefined ? [] : [{ key, value: rendered.value, variables: rendered.variables }];
    }),
  }));

  const sourceVariableNames = new Set<string>();
  for (const variable of names) {
    sourceVariableNames.add(variable);
    sourceVariableNames.add(`${variable}_FILE`);
    sourceVariableNames.add(`${variable}_ENCODED`);
  }
  for (const key of Object.keys(envFile ?? {})) sourceVariableNames.add(key);
  return { variables, nodes, problems: problems.sort(), sourceVariableNames: [...sourceVariableNames].sort() };
}

function renderTemplate(
  template: TemplatePart[],
  variables: Map<string, ResolvedVariable>,
  onMissing: (variable: string) => void,
): { value: string; variables: string[] } | undefined {
  let value = '';
  let missing = false;
  const used: string[] = [];
  for (const part of template) {
    if (part.kind === 'text') {
      value += part.text;
      continue;
    }
    const resolved = variables.get(part.variable);
    if (resolved) {
      value += resolved.value;
      used.push(part.variable);
    } else if (part.fallback !== undefined) {
      value += part.fallback;
    } else {
      missing = true;
      onMissing(part.variable);
    }
  }
  return missing ? undefined : { value, variables: used };
}

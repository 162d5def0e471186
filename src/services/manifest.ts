import { readFile } from 'node:fs/promises';
import { z } from 'zod';

/**
 * The manifest (config_nodes.json) that images already ship:
 *   {"custom_nodes":[{"name":"emprops_custom_nodes","env":{"KEY":"text ${VAR} ${OPT:-default}"}}]}
 * Keys other than name and env (url, branch, requirements, ...) belong to other tools and are kept as they are.
 */

export const VARIABLE_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** A node name is one folder under custom_nodes: no separators, no dot-names, no control characters. */
const NodeName = z
  .string()
  .min(1, { error: 'is empty' })
  .max(255, { error: 'is longer than 255 characters' })
  .refine((n) => !n.includes('/') && !n.includes('\\'), { error: 'must be a folder name, without / or \\' })
  .refine((n) => n !== '.' && n !== '..', { error: 'must not be . or ..' })
  // eslint-disable-next-line no-control-regex
  .refine((n) => !/[\u0000-\u001f\u007f]/.test(n), { error: 'must not contain control characters' });

const NodeEntry = z.looseObject({
  name: NodeName,
  env: z
    .record(z.string(), z.unknown())
    // Keys and values are checked in one pass, so a bad key is reported even beside a bad value
    // (and with our message: zod's for a record's key schema is generic).
    .superRefine((env, ctx) => {
      for (const [key, value] of Object.entries(env)) {
        if (!VARIABLE_NAME.test(key)) {
          ctx.addIssue({ code: 'custom', path: [key], message: 'is not a valid variable name (letters, digits, _; not starting with a digit)' });
        }
        if (typeof value !== 'string') ctx.addIssue({ code: 'custom', path: [key], message: 'must be a string' });
      }
    })
    .transform((env) => env as Record<string, string>)
    .optional(),
  /** Keys of `env` that must also be in the instances' process environment (some libraries read HF_TOKEN there). */
  process_env: z.array(z.string({ error: 'must be a list of key names' }), { error: 'must be a list of key names' }).optional(),
});

const ManifestSchema = z.looseObject({
  custom_nodes: z.array(NodeEntry, { error: 'must be a list of nodes' }),
});

export type TemplatePart = { kind: 'text'; text: string } | { kind: 'ref'; variable: string; fallback?: string };

export interface NodeSpec {
  name: string;
  /** key -> parsed template, in manifest order */
  env: Array<{ key: string; template: TemplatePart[] }>;
  /** Keys that also go to the instances' process environment. */
  processEnv: string[];
}

export interface Manifest {
  path: string;
  nodes: NodeSpec[];
}

export class ManifestError extends Error {
  override name = 'ManifestError';
  constructor(
    message: string,
    readonly problems: string[],
  ) {
    super(message);
  }
}

/**
 * Parse `text ${VAR} ${VAR:-default}`. `$` not followed by `{` is text. A `${`
 * that is not a well-formed reference is an error, since it is almost always a typo.
 */
export function parseTemplate(value: string): TemplatePart[] {
  const parts: TemplatePart[] = [];
  let text = '';
  let i = 0;
  while (i < value.length) {
    if (value[i] === '$' && value[i + 1] === '{') {
      const close = value.indexOf('}', i + 2);
      if (close === -1) throw new Error(`unclosed "\${" at character ${i + 1}`);
      const body = value.slice(i + 2, close);
      const sep = body.indexOf(':-');
      const variable = sep === -1 ? body : body.slice(0, sep);
      if (!VARIABLE_NAME.test(variable)) {
        // The text itself is not repeated: a manifest can hold a pasted secret by mistake.
        throw new Error(`the "\${" at character ${i + 1} is not a reference: use \${NAME} or \${NAME:-default}`);
      }
      if (text) parts.push({ kind: 'text', text });
      text = '';
      parts.push(sep === -1 ? { kind: 'ref', variable } : { kind: 'ref', variable, fallback: body.slice(sep + 2) });
      i = close + 1;
    } else {
      text += value[i];
      i += 1;
    }
  }
  if (text) parts.push({ kind: 'text', text });
  return parts;
}

export function parseManifest(text: string, manifestPath: string): Manifest {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    // JSON.parse's message quotes the text around the error; the manifest could hold a pasted secret.
    const position = /position (\d+)/.exec((error as Error).message)?.[1];
    let where = '';
    if (position !== undefined) {
      const before = text.slice(0, Number(position));
      const line = before.split('\n').length;
      where = ` at line ${line}, column ${Number(position) - before.lastIndexOf('\n')}`;
    }
    throw new ManifestError(`manifest ${manifestPath} is not valid JSON`, [`${manifestPath}: not valid JSON${where}`]);
  }
  const parsed = ManifestSchema.safeParse(json);
  const problems: string[] = [];
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      const where = issue.path.length ? issue.path.map(String).join('.') : '(top level)';
      problems.push(`${manifestPath}: ${where}: ${issue.message}`);
    }
    throw new ManifestError(`manifest ${manifestPath} has the wrong shape`, problems);
  }
  const nodes: NodeSpec[] = [];
  const seen = new Set<string>();
  parsed.data.custom_nodes.forEach((entry, index) => {
    if (seen.has(entry.name)) problems.push(`${manifestPath}: custom_nodes.${index}: node "${entry.name}" is listed twice`);
    seen.add(entry.name);
    const env: NodeSpec['env'] = [];
    for (const [key, value] of Object.entries(entry.env ?? {})) {
      try {
        env.push({ key, template: parseTemplate(value) });
      } catch (error) {
        problems.push(`${manifestPath}: node "${entry.name}" key ${key}: ${(error as Error).message}`);
      }
    }
    const processEnv = entry.process_env ?? [];
    for (const key of processEnv) {
      if (!(entry.env && key in entry.env)) {
        problems.push(`${manifestPath}: node "${entry.name}" process_env: ${key} is not a key of its env`);
      }
    }
    nodes.push({ name: entry.name, env, processEnv });
  });
  if (problems.length) throw new ManifestError(`manifest ${manifestPath} has errors`, problems);
  return { path: manifestPath, nodes };
}

export async function loadManifest(manifestPath: string): Promise<Manifest> {
  let text: string;
  try {
    text = await readFile(manifestPath, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'error';
    const why = code === 'ENOENT' ? 'does not exist' : code === 'EISDIR' ? 'is a folder' : `cannot be read (${code})`;
    throw new ManifestError(`manifest ${manifestPath} ${why}`, [`CUSTOM_NODES_CONFIG: ${manifestPath} ${why}`]);
  }
  return parseManifest(text, manifestPath);
}

/** Every variable the manifest refers to, sorted. */
export function referencedVariables(manifest: Manifest): string[] {
  const names = new Set<string>();
  for (const node of manifest.nodes) {
    for (const { template } of node.env) {
      for (const part of template) if (part.kind === 'ref') names.add(part.variable);
    }
  }
  return [...names].sort();
}

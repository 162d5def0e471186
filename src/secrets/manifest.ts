import { readRegularFile, rootAlone } from '../files/owned.js';
import { parse as parseJson, type DocumentNode, type ValueNode } from '@humanwhocodes/momoa';
import { visit } from 'jsonc-parser';
import * as z from 'zod';

/**
 * The manifest (config_nodes.json) that images already ship:
 *   {"custom_nodes":[{"name":"emprops_custom_nodes","env":{"KEY":"text ${VAR} ${OPT:-default}"}}]}
 * Keys other than name and env (url, branch, requirements, ...) belong to other tools and are kept as they are.
 */

export const VARIABLE_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** The longest node name, in bytes of UTF-8: one folder's name (NAME_MAX). */
export const MAX_NODE_NAME_BYTES = 255;

/** A node name is one folder under custom_nodes: no separators, no dot-names, no control characters. */
const NodeName = z
  .string()
  .min(1, { error: 'is empty' })
  .refine((n) => Buffer.byteLength(n, 'utf8') <= MAX_NODE_NAME_BYTES, {
    error: `is longer than ${MAX_NODE_NAME_BYTES} bytes of UTF-8 (a folder name has at most 255 bytes)`,
  })
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

/** The top level; each entry is checked on its own (NodeEntry), so that one bad entry does not hide the others. */
const ManifestSchema = z.looseObject({
  custom_nodes: z.array(z.unknown(), { error: 'must be a list of nodes' }),
  /** Variables the manifest references that are not secrets: neither masked in logs nor withheld from the instances. */
  not_secret: z
    .array(
      z.string({ error: 'must be a variable name' }).regex(VARIABLE_NAME, { error: 'is not a valid variable name (letters, digits, _; not starting with a digit)' }),
      { error: 'must be a list of variable names' },
    )
    .optional(),
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
  /** The manifest's `not_secret` list, when it has one. */
  notSecret?: string[];
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

/** Where something is in the manifest: 1-based line and column, as editors count them. */
interface Position {
  line: number;
  column: number;
}

const at = (p: Position): string => `line ${p.line}, column ${p.column}`;

/** The line and column of a character offset (UTF-16 units, as in the parser's locations). */
function positionOf(text: string, offset: number): Position {
  const before = text.slice(0, offset);
  return { line: before.split('\n').length, column: offset - before.lastIndexOf('\n') };
}

/** Keys that mean something to JavaScript objects: never a manifest's business, and `__proto__` was dropped silently. */
const RESERVED_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

/** A problem found while reading the JSON, with the path of the object it is in. */
interface JsonProblem {
  /** The object the key is in. */
  path: Array<string | number>;
  key: string;
  message: string;
}

const pathText = (p: ReadonlyArray<string | number>): string => (p.length ? p.map(String).join('.') : '(top level)');

/**
 * True when jsonc-parser's scan finds no syntax error, no comment, no key twice in one object and no
 * reserved key: JSON.parse then gives the value the strict parse would (~6 ms for 500 nodes, no tree).
 */
function plainJson(text: string): boolean {
  let plain = true;
  const keys: Array<Set<string>> = [];
  visit(
    text,
    {
      onObjectBegin: () => void keys.push(new Set()),
      onObjectEnd: () => void keys.pop(),
      onObjectProperty: (property) => {
        const seen = keys.at(-1);
        if (!seen || seen.has(property) || RESERVED_KEYS.has(property)) plain = false;
        seen?.add(property);
      },
      onComment: () => void (plain = false),
      onError: () => void (plain = false),
    },
    { disallowComments: true, allowTrailingComma: false, allowEmptyContent: false },
  );
  return plain;
}

/**
 * Strict JSON (RFC 8259) through momoa, the value built from its syntax tree. Refused, each with its
 * line and column and none of the text: a syntax error (thrown), a raw control character in a string
 * (JSON.parse refuses it too; thrown), the same key twice in one object (JSON.parse keeps the last
 * silently) and `__proto__`, `constructor` or `prototype` as a key (returned as problems).
 */
function parseStrictJson(text: string, manifestPath: string): { value: unknown; problems: JsonProblem[] } {
  // The usual manifest first: JSON.parse reads it as the strict parse would. momoa's syntax tree (a
  // few MB of garbage for 500 nodes, and 22 ms) is built only for a text this scan does not pass,
  // for the exact place of each problem.
  if (plainJson(text)) {
    try {
      return { value: JSON.parse(text) as unknown, problems: [] };
    } catch {
      // the strict parse below says where
    }
  }
  const invalid = (where: Position, why: string): ManifestError =>
    new ManifestError(`manifest ${manifestPath} is not valid JSON`, [`${manifestPath}: not valid JSON at ${at(where)} (${why})`]);
  let document: DocumentNode;
  try {
    document = parseJson(text, { mode: 'json', ranges: false, tokens: false });
  } catch (error) {
    // momoa's message quotes the offending character: only its kind and place are kept.
    const { line, column } = error as { line?: unknown; column?: unknown };
    if (typeof line !== 'number' || typeof column !== 'number') throw error;
    const kind = (error as Error).constructor.name;
    if (kind === 'UnexpectedEOF') throw invalid(positionOf(text, text.length), 'the text ends before the JSON does');
    throw invalid({ line, column }, kind === 'UnexpectedToken' ? 'unexpected token' : 'unexpected character');
  }
  const problems: JsonProblem[] = [];
  const build = (node: ValueNode, where: Array<string | number>): unknown => {
    switch (node.type) {
      case 'Object': {
        const object: Record<string, unknown> = {};
        const first = new Map<string, Position>();
        for (const member of node.members) {
          const key = member.name.type === 'String' ? member.name.value : member.name.name;
          const position = member.name.loc.start;
          if (RESERVED_KEYS.has(key)) {
            problems.push({ path: where, key, message: `key ${JSON.stringify(key)} at ${at(position)} is not allowed (__proto__, constructor and prototype are reserved names in JavaScript)` });
            continue;
          }
          const earlier = first.get(key);
          if (earlier) {
            problems.push({ path: where, key, message: `duplicate key ${JSON.stringify(key)} at ${at(position)} (first at ${at(earlier)}); JSON.parse would keep only the last one, silently` });
            continue;
          }
          first.set(key, position);
          object[key] = build(member.value, [...where, key]);
        }
        return object;
      }
      case 'Array':
        return node.elements.map((element, index) => build(element.value, [...where, index]));
      case 'String': {
        // eslint-disable-next-line no-control-regex
        const raw = /[\u0000-\u001f]/.exec(text.slice(node.loc.start.offset, node.loc.end.offset));
        if (raw) throw invalid(positionOf(text, node.loc.start.offset + raw.index), 'a control character inside a string: write it as an escape, such as \\n or \\t');
        return node.value;
      }
      case 'Number':
      case 'Boolean':
        return node.value;
      case 'Null':
        return null;
      default:
        // NaN and Infinity exist only in momoa's JSON5 mode.
        throw invalid(node.loc.start, 'unexpected token');
    }
  };
  const value = build(document.body, []);
  return { value, problems };
}

/**
 * What could be read of a manifest: its valid entries, and every problem. An entry with a problem is
 * left out of `manifest.nodes`, so that the other entries' secrets can still be checked and reported
 * in the same report; when custom_nodes itself is wrong, no entry is kept.
 */
export interface ManifestReading {
  manifest: Manifest;
  problems: string[];
  /** The message of the ManifestError these problems make. */
  message: string;
}

const UTF8_BOM = '\ufeff';

export function readManifestText(text: string, manifestPath: string): ManifestReading {
  // A UTF-8 byte order mark is accepted and dropped, as Node's own JSON module loader does.
  const { value, problems: jsonProblems } = parseStrictJson(text.startsWith(UTF8_BOM) ? text.slice(1) : text, manifestPath);
  const problems: string[] = [];
  const badEntries = new Set<number>();
  let unusable = false;
  // Which entry a problem at `where` belongs to: a problem inside custom_nodes but outside any entry spoils them all.
  const blame = (where: ReadonlyArray<string | number>, key: string): void => {
    if (where[0] === 'custom_nodes' && typeof where[1] === 'number') badEntries.add(where[1]);
    else if (where[0] === 'custom_nodes' || (where.length === 0 && key === 'custom_nodes')) unusable = true;
  };
  for (const problem of jsonProblems) {
    problems.push(`${manifestPath}: ${pathText(problem.path)}: ${problem.message}`);
    blame(problem.path, problem.key);
  }

  const top = ManifestSchema.safeParse(value);
  let shapeProblems = false;
  const entries: unknown[] = [];
  let notSecret: string[] | undefined;
  if (!top.success) {
    shapeProblems = true;
    for (const issue of top.error.issues) {
      problems.push(`${manifestPath}: ${pathText(issue.path as Array<string | number>)}: ${issue.message}`);
      if (issue.path[0] !== 'not_secret') unusable = true;
    }
    // not_secret problems alone leave the entries readable.
    const nodes = (value as { custom_nodes?: unknown } | null)?.custom_nodes;
    if (!unusable && Array.isArray(nodes)) entries.push(...nodes);
  } else {
    entries.push(...top.data.custom_nodes);
    notSecret = top.data.not_secret;
  }

  const nodes: NodeSpec[] = [];
  const seen = new Set<string>();
  entries.forEach((raw, index) => {
    const parsed = NodeEntry.safeParse(raw);
    if (!parsed.success) {
      shapeProblems = true;
      badEntries.add(index);
      for (const issue of parsed.error.issues) {
        problems.push(`${manifestPath}: ${pathText(['custom_nodes', index, ...(issue.path as Array<string | number>)])}: ${issue.message}`);
      }
      return;
    }
    const entry = parsed.data;
    let valid = !badEntries.has(index);
    if (seen.has(entry.name)) {
      problems.push(`${manifestPath}: custom_nodes.${index}: node "${entry.name}" is listed twice`);
      valid = false;
    }
    seen.add(entry.name);
    const env: NodeSpec['env'] = [];
    for (const [key, text] of Object.entries(entry.env ?? {})) {
      try {
        env.push({ key, template: parseTemplate(text) });
      } catch (error) {
        problems.push(`${manifestPath}: node "${entry.name}" key ${key}: ${(error as Error).message}`);
        valid = false;
      }
    }
    const processEnv = entry.process_env ?? [];
    for (const key of processEnv) {
      if (!(entry.env && key in entry.env)) {
        problems.push(`${manifestPath}: node "${entry.name}" process_env: ${key} is not a key of its env`);
        valid = false;
      }
    }
    if (valid) nodes.push({ name: entry.name, env, processEnv });
  });
  const manifest: Manifest = { path: manifestPath, nodes: unusable ? [] : nodes, ...(notSecret ? { notSecret } : {}) };
  const message = `manifest ${manifestPath} ${shapeProblems || jsonProblems.length ? 'has the wrong shape' : 'has errors'}`;
  return { manifest, problems, message };
}

export function parseManifest(text: string, manifestPath: string): Manifest {
  const reading = readManifestText(text, manifestPath);
  if (reading.problems.length) throw new ManifestError(reading.message, reading.problems);
  return reading.manifest;
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** The byte offset of the first byte that is not valid UTF-8 (the text is known to be invalid). */
function firstInvalidByte(bytes: Uint8Array): number {
  // The lenient decoder replaces each invalid sequence by U+FFFD; every character before the first is valid and
  // takes exactly its own encoded length.
  let offset = 0;
  for (const char of new TextDecoder('utf-8', { ignoreBOM: true }).decode(bytes)) {
    const length = Buffer.byteLength(char, 'utf8');
    if (char === '\ufffd' && !(bytes[offset] === 0xef && bytes[offset + 1] === 0xbf && bytes[offset + 2] === 0xbd)) return offset;
    offset += length;
  }
  return offset;
}

/** The manifest's text: read as bytes, refused (with the byte offset and line) unless valid UTF-8. */
/** A manifest of 500 nodes is about 100 KiB. */
export const MAX_MANIFEST_BYTES = 16 * 1024 * 1024;

/**
 * The manifest's bytes. `rootAlone`: gpu-boot runs as root, and the manifest decides which secrets
 * each node gets and which variables are not secrets: it must be root's, writable by root alone.
 */
export async function readManifestFile(manifestPath: string, options: { rootAlone?: boolean } = {}): Promise<string> {
  let bytes: Buffer;
  try {
    // Never blocks on a FIFO, never reads a device or a huge file planted at the path.
    bytes = readRegularFile(manifestPath, MAX_MANIFEST_BYTES, options.rootAlone ? rootAlone : undefined);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'error';
    if (code === 'ENOTOURS') {
      const why = `${manifestPath} cannot be trusted as root: ${(error as Error).message}; the manifest decides which secrets each node gets, so as root it must be root's and writable by root alone (chown root and chmod go-w it, or keep it in the image)`;
      throw new ManifestError(`manifest ${why}`, [`CUSTOM_NODES_CONFIG: ${why}`]);
    }
    const why =
      code === 'ENOENT' ? 'does not exist' : code === 'EISDIR' ? 'is a folder' : code === 'EFTYPE' ? 'is not a regular file' : code === 'EFBIG' ? `is larger than ${MAX_MANIFEST_BYTES / 1024 / 1024} MiB` : `cannot be read (${code})`;
    throw new ManifestError(`manifest ${manifestPath} ${why}`, [`CUSTOM_NODES_CONFIG: ${manifestPath} ${why}`]);
  }
  try {
    return utf8.decode(bytes);
  } catch {
    // Decoded leniently, each bad byte would become U+FFFD and end up in a .env.
    const offset = firstInvalidByte(bytes);
    const line = bytes.subarray(0, offset).filter((b) => b === 0x0a).length + 1;
    throw new ManifestError(`manifest ${manifestPath} is not valid UTF-8`, [`${manifestPath}: not valid UTF-8 at byte offset ${offset} (line ${line})`]);
  }
}

/** Read and parse the manifest: its valid entries and every problem; a ManifestError when it cannot be read at all (missing, not UTF-8, not JSON). */
export async function loadManifestReading(manifestPath: string, options: { rootAlone?: boolean } = {}): Promise<ManifestReading> {
  return readManifestText(await readManifestFile(manifestPath, options), manifestPath);
}

export async function loadManifest(manifestPath: string): Promise<Manifest> {
  const reading = await loadManifestReading(manifestPath);
  if (reading.problems.length) throw new ManifestError(reading.message, reading.problems);
  return reading.manifest;
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

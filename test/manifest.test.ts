import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadManifest, ManifestError, parseManifest, parseTemplate, readManifestText, referencedVariables } from '../src/secrets/manifest.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'gpu-boot-manifest-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

const MANIFEST = '/app/config_nodes.json';

/** The ManifestError parseManifest/loadManifest throws; fails the test when none is thrown. */
async function manifestErrorOf(fn: () => unknown): Promise<ManifestError> {
  try {
    await fn();
  } catch (error) {
    expect(error).toBeInstanceOf(ManifestError);
    expect((error as ManifestError).name).toBe('ManifestError');
    return error as ManifestError;
  }
  throw new Error('expected a ManifestError, none was thrown');
}

const manifestText = (nodes: unknown): string => JSON.stringify({ custom_nodes: nodes });

const TOO_LONG = 'is longer than 255 bytes of UTF-8 (a folder name has at most 255 bytes)';

describe('parseTemplate', () => {
  it('reads plain text as one text part', () => {
    expect(parseTemplate('plain value')).toEqual([{ kind: 'text', text: 'plain value' }]);
  });

  it('reads an empty string as no parts', () => {
    expect(parseTemplate('')).toEqual([]);
  });

  it('reads a lone reference', () => {
    expect(parseTemplate('${TOKEN}')).toEqual([{ kind: 'ref', variable: 'TOKEN' }]);
  });

  it('reads text and references in order', () => {
    expect(parseTemplate('https://${HOST}:${PORT}/v1?key=${API_KEY}&x=1')).toEqual([
      { kind: 'text', text: 'https://' },
      { kind: 'ref', variable: 'HOST' },
      { kind: 'text', text: ':' },
      { kind: 'ref', variable: 'PORT' },
      { kind: 'text', text: '/v1?key=' },
      { kind: 'ref', variable: 'API_KEY' },
      { kind: 'text', text: '&x=1' },
    ]);
  });

  it('reads adjacent references without empty text between them', () => {
    expect(parseTemplate('${A}${B}')).toEqual([
      { kind: 'ref', variable: 'A' },
      { kind: 'ref', variable: 'B' },
    ]);
  });

  it('reads defaults, including an empty one and one holding :- and spaces', () => {
    expect(parseTemplate('models-${STAGE:-dev}')).toEqual([
      { kind: 'text', text: 'models-' },
      { kind: 'ref', variable: 'STAGE', fallback: 'dev' },
    ]);
    expect(parseTemplate('${X:-}')).toEqual([{ kind: 'ref', variable: 'X', fallback: '' }]);
    expect(parseTemplate('${X:-a b:-c}')).toEqual([{ kind: 'ref', variable: 'X', fallback: 'a b:-c' }]);
    expect(parseTemplate('${_lower_1:-$HOME}')).toEqual([{ kind: 'ref', variable: '_lower_1', fallback: '$HOME' }]);
  });

  it('keeps a reference without default apart from one with an empty default', () => {
    const [withoutDefault] = parseTemplate('${X}');
    expect(withoutDefault).toEqual({ kind: 'ref', variable: 'X' });
    expect(withoutDefault && 'fallback' in withoutDefault).toBe(false);
  });

  it('treats $ not followed by { as text', () => {
    expect(parseTemplate('$')).toEqual([{ kind: 'text', text: '$' }]);
    expect(parseTemplate('$HOME/x')).toEqual([{ kind: 'text', text: '$HOME/x' }]);
    expect(parseTemplate('pa$$word$')).toEqual([{ kind: 'text', text: 'pa$$word$' }]);
    expect(parseTemplate('$ {X} and $(cmd)')).toEqual([{ kind: 'text', text: '$ {X} and $(cmd)' }]);
    expect(parseTemplate('a$${B}')).toEqual([
      { kind: 'text', text: 'a$' },
      { kind: 'ref', variable: 'B' },
    ]);
  });

  it.each([
    ['abc${TOKEN', 'unclosed "${" at character 4'],
    ['${', 'unclosed "${" at character 1'],
    ['ok ${A} then ${', 'unclosed "${" at character 14'],
    ['${1BAD}', 'the "${" at character 1 is not a reference: use ${NAME} or ${NAME:-default}'],
    ['${}', 'the "${" at character 1 is not a reference: use ${NAME} or ${NAME:-default}'],
    ['${:-x}', 'the "${" at character 1 is not a reference: use ${NAME} or ${NAME:-default}'],
    ['${MY-VAR}', 'the "${" at character 1 is not a reference: use ${NAME} or ${NAME:-default}'],
    ['${A B}', 'the "${" at character 1 is not a reference: use ${NAME} or ${NAME:-default}'],
    ['${A:B}', 'the "${" at character 1 is not a reference: use ${NAME} or ${NAME:-default}'],
    ['${A-x}', 'the "${" at character 1 is not a reference: use ${NAME} or ${NAME:-default}'],
  ])('refuses %j', (template, message) => {
    expect(() => parseTemplate(template)).toThrow(new Error(message));
  });
});

describe('parseManifest', () => {
  it('reads a valid manifest, ignoring keys that belong to other tools', () => {
    const text = JSON.stringify({
      version: 3,
      custom_nodes: [
        {
          name: 'emprops_custom_nodes',
          url: 'https://github.com/stakeordie/emprops_comfy_nodes.git',
          branch: 'main',
          requirements: true,
          env: { AWS_ACCESS_KEY_ID: '${AWS_ACCESS_KEY_ID}', BUCKET: 'models-${STAGE:-dev}', PLAIN: 'x' },
        },
        { name: 'ComfyUI-Manager', url: 'https://github.com/ltdrdata/ComfyUI-Manager' },
        { name: 'with.dots and spaces', env: {} },
      ],
    });
    expect(parseManifest(text, MANIFEST)).toEqual({
      path: MANIFEST,
      nodes: [
        {
          name: 'emprops_custom_nodes',
          env: [
            { key: 'AWS_ACCESS_KEY_ID', template: [{ kind: 'ref', variable: 'AWS_ACCESS_KEY_ID' }] },
            {
              key: 'BUCKET',
              template: [
                { kind: 'text', text: 'models-' },
                { kind: 'ref', variable: 'STAGE', fallback: 'dev' },
              ],
            },
            { key: 'PLAIN', template: [{ kind: 'text', text: 'x' }] },
          ],
          processEnv: [],
        },
        { name: 'ComfyUI-Manager', env: [], processEnv: [] },
        { name: 'with.dots and spaces', env: [], processEnv: [] },
      ],
    });
  });

  it('reads an empty node list', () => {
    expect(parseManifest('{"custom_nodes":[]}', MANIFEST)).toEqual({ path: MANIFEST, nodes: [] });
  });

  it('keeps the env keys in manifest order', () => {
    const manifest = parseManifest(manifestText([{ name: 'n', env: { Z: 'z', A: 'a', M: 'm', _u: 'u' } }]), MANIFEST);
    expect(manifest.nodes[0]?.env.map((e) => e.key)).toEqual(['Z', 'A', 'M', '_u']);
  });

  it('refuses text that is not JSON', async () => {
    const error = await manifestErrorOf(() => parseManifest('{"custom_nodes": [', MANIFEST));
    expect(error.message).toBe(`manifest ${MANIFEST} is not valid JSON`);
    expect(error.problems).toHaveLength(1);
    expect(error.problems[0]?.startsWith(`${MANIFEST}: `)).toBe(true);
  });

  it.each([
    ['custom_nodes is missing', '{"nodes":[]}', [`${MANIFEST}: custom_nodes: must be a list of nodes`]],
    ['custom_nodes is an object', '{"custom_nodes":{"a":{}}}', [`${MANIFEST}: custom_nodes: must be a list of nodes`]],
    ['custom_nodes is a string', '{"custom_nodes":"a"}', [`${MANIFEST}: custom_nodes: must be a list of nodes`]],
    ['the top level is a list', '[]', [`${MANIFEST}: (top level): Invalid input: expected object, received array`]],
    ['the top level is null', 'null', [`${MANIFEST}: (top level): Invalid input: expected object, received null`]],
    ['a node name has /', manifestText([{ name: 'a/b' }]), [`${MANIFEST}: custom_nodes.0.name: must be a folder name, without / or \\`]],
    ['a node name has \\', manifestText([{ name: 'a\\b' }]), [`${MANIFEST}: custom_nodes.0.name: must be a folder name, without / or \\`]],
    ['a node name is ..', manifestText([{ name: '..' }]), [`${MANIFEST}: custom_nodes.0.name: must not be . or ..`]],
    ['a node name is .', manifestText([{ name: '.' }]), [`${MANIFEST}: custom_nodes.0.name: must not be . or ..`]],
    ['a node name is absolute', manifestText([{ name: '/etc' }]), [`${MANIFEST}: custom_nodes.0.name: must be a folder name, without / or \\`]],
    ['a node name is empty', manifestText([{ name: '' }]), [`${MANIFEST}: custom_nodes.0.name: is empty`]],
    ['a node name is too long', manifestText([{ name: 'n'.repeat(256) }]), [`${MANIFEST}: custom_nodes.0.name: ${TOO_LONG}`]],
    ['a node name has a newline', manifestText([{ name: 'a\nb' }]), [`${MANIFEST}: custom_nodes.0.name: must not contain control characters`]],
    ['a node has no name', manifestText([{ env: {} }]), [`${MANIFEST}: custom_nodes.0.name: Invalid input: expected string, received undefined`]],
    [
      'a key starts with a digit',
      manifestText([{ name: 'n', env: { '1KEY': 'v' } }]),
      [`${MANIFEST}: custom_nodes.0.env.1KEY: is not a valid variable name (letters, digits, _; not starting with a digit)`],
    ],
    [
      'a key has a dash',
      manifestText([{ name: 'n', env: { 'MY-KEY': 'v' } }]),
      [`${MANIFEST}: custom_nodes.0.env.MY-KEY: is not a valid variable name (letters, digits, _; not starting with a digit)`],
    ],
    ['an env value is a number', manifestText([{ name: 'n', env: { K: 5 } }]), [`${MANIFEST}: custom_nodes.0.env.K: must be a string`]],
    ['an env value is null', manifestText([{ name: 'n', env: { K: null } }]), [`${MANIFEST}: custom_nodes.0.env.K: must be a string`]],
    ['a node name is listed twice', manifestText([{ name: 'a' }, { name: 'b' }, { name: 'a' }]), [`${MANIFEST}: custom_nodes.2: node "a" is listed twice`]],
    [
      'a template is broken',
      manifestText([{ name: 'n', env: { OK: '${A}', BAD: 'x-${1BAD}' } }]),
      [`${MANIFEST}: node "n" key BAD: the "\${" at character 3 is not a reference: use \${NAME} or \${NAME:-default}`],
    ],
  ])('refuses a manifest where %s', async (_name, text, problems) => {
    const error = await manifestErrorOf(() => parseManifest(text, MANIFEST));
    expect(error.problems).toEqual(problems);
    expect(error.message).toMatch(new RegExp(`^manifest ${MANIFEST.replace(/[./]/g, '\\$&')} has (the wrong shape|errors)$`));
  });

  it('lists every shape problem, each naming the manifest', async () => {
    const text = manifestText([{ name: '..', url: 'x' }, { name: 'ok', env: { 'MY-KEY': 'v' } }, { name: 'also', env: { N: 7 } }]);
    const error = await manifestErrorOf(() => parseManifest(text, MANIFEST));
    expect(error.message).toBe(`manifest ${MANIFEST} has the wrong shape`);
    expect(error.problems).toEqual([
      `${MANIFEST}: custom_nodes.0.name: must not be . or ..`,
      `${MANIFEST}: custom_nodes.1.env.MY-KEY: is not a valid variable name (letters, digits, _; not starting with a digit)`,
      `${MANIFEST}: custom_nodes.2.env.N: must be a string`,
    ]);
  });

  it('lists every duplicate and template problem, each naming the manifest', async () => {
    const text = manifestText([
      { name: 'a', env: { K: '${' } },
      { name: 'b' },
      { name: 'a', env: { L: '${}', M: '${FINE}' } },
    ]);
    const error = await manifestErrorOf(() => parseManifest(text, MANIFEST));
    expect(error.message).toBe(`manifest ${MANIFEST} has errors`);
    expect(error.problems).toEqual([
      `${MANIFEST}: node "a" key K: unclosed "\${" at character 1`,
      `${MANIFEST}: custom_nodes.2: node "a" is listed twice`,
      `${MANIFEST}: node "a" key L: the "\${" at character 1 is not a reference: use \${NAME} or \${NAME:-default}`,
    ]);
    for (const problem of error.problems) expect(problem.startsWith(`${MANIFEST}: `)).toBe(true);
  });
});

describe('loadManifest', () => {
  it('reads and parses a real file', async () => {
    const file = path.join(dir, 'config_nodes.json');
    writeFileSync(file, manifestText([{ name: 'n', env: { K: '${V}' } }]));
    await expect(loadManifest(file)).resolves.toEqual({
      path: file,
      nodes: [{ name: 'n', env: [{ key: 'K', template: [{ kind: 'ref', variable: 'V' }] }], processEnv: [] }],
    });
  });

  it('reports a missing file', async () => {
    const file = path.join(dir, 'absent.json');
    const error = await manifestErrorOf(() => loadManifest(file));
    expect(error.message).toBe(`manifest ${file} does not exist`);
    expect(error.problems).toEqual([`CUSTOM_NODES_CONFIG: ${file} does not exist`]);
  });

  it('reports a folder', async () => {
    const folder = path.join(dir, 'config_nodes.json');
    mkdirSync(folder);
    const error = await manifestErrorOf(() => loadManifest(folder));
    expect(error.message).toBe(`manifest ${folder} is a folder`);
    expect(error.problems).toEqual([`CUSTOM_NODES_CONFIG: ${folder} is a folder`]);
  });

  it('passes on parse problems with the file named', async () => {
    const file = path.join(dir, 'bad.json');
    writeFileSync(file, manifestText([{ name: '..' }]));
    const error = await manifestErrorOf(() => loadManifest(file));
    expect(error.problems).toEqual([`${file}: custom_nodes.0.name: must not be . or ..`]);
  });
});

describe('referencedVariables', () => {
  it('returns every referenced name once, sorted', () => {
    const manifest = parseManifest(
      manifestText([
        { name: 'a', env: { X: '${ZETA}-${ALPHA}-${ZETA}', Y: '${MID:-d} $NOT_A_REF', Z: 'plain' } },
        { name: 'b', env: { W: '${ALPHA}${Beta}${_under}' } },
        { name: 'c' },
      ]),
      MANIFEST,
    );
    expect(referencedVariables(manifest)).toEqual(['ALPHA', 'Beta', 'MID', 'ZETA', '_under']);
  });

  it('returns nothing for a manifest without references', () => {
    expect(referencedVariables(parseManifest(manifestText([{ name: 'a', env: { K: 'v' } }]), MANIFEST))).toEqual([]);
  });
});

describe('parseManifest reports keys and values together, and never quotes the text', () => {
  it('a bad key beside a non-string value gives both problems', () => {
    const error = (() => {
      try {
        parseManifest(JSON.stringify({ custom_nodes: [{ name: 'n', env: { '1K': 'a', K: 5 } }] }), '/m.json');
      } catch (e) {
        return e as ManifestError;
      }
      throw new Error('expected a ManifestError');
    })();
    expect(error.problems).toEqual([
      '/m.json: custom_nodes.0.env.1K: is not a valid variable name (letters, digits, _; not starting with a digit)',
      '/m.json: custom_nodes.0.env.K: must be a string',
    ]);
  });

  it('invalid JSON is reported without any of the text around the error', () => {
    const canary = 'pasted-secret-canary-913';
    try {
      parseManifest(`{"custom_nodes": [{"name": "n", "env": {"K": "${canary}" }]`, '/m.json');
      throw new Error('expected a ManifestError');
    } catch (e) {
      const error = e as ManifestError;
      expect(error.message).toBe('manifest /m.json is not valid JSON');
      expect(error.problems.join('\n')).not.toContain(canary);
      expect(error.problems[0]).toMatch(/^\/m\.json: not valid JSON/);
    }
  });
});

describe('process_env', () => {
  it('lists keys that also go to the instances\' process environment', () => {
    const manifest = parseManifest(JSON.stringify({ custom_nodes: [{ name: 'n', env: { HF_TOKEN: '${HF_TOKEN}' }, process_env: ['HF_TOKEN'] }] }), '/m.json');
    expect(manifest.nodes[0]!.processEnv).toEqual(['HF_TOKEN']);
  });

  it('refuses a key that is not in the entry\'s env', () => {
    expect(() => parseManifest(JSON.stringify({ custom_nodes: [{ name: 'n', env: { A: 'x' }, process_env: ['HF_TOKEN'] }] }), '/m.json')).toThrow(
      expect.objectContaining({ problems: ['/m.json: node "n" process_env: HF_TOKEN is not a key of its env'] }),
    );
  });
});

describe('strict JSON: what JSON.parse accepts silently is refused, with its line and column and none of the text', () => {
  const RESERVED = '(__proto__, constructor and prototype are reserved names in JavaScript)';
  const LAST = 'JSON.parse would keep only the last one, silently';

  it.each([
    [
      'two "env" keys in one entry',
      '{"custom_nodes": [\n  {"name": "n", "env": {"A": "1"},\n   "env": {"B": "2"}}\n]}',
      [`${MANIFEST}: custom_nodes.0: duplicate key "env" at line 3, column 4 (first at line 2, column 17); ${LAST}`],
    ],
    [
      'two identical keys inside "env"',
      '{"custom_nodes": [{"name": "n", "env": {\n  "TOKEN": "${A}",\n  "TOKEN": "${B}"\n}}]}',
      [`${MANIFEST}: custom_nodes.0.env: duplicate key "TOKEN" at line 3, column 3 (first at line 2, column 3); ${LAST}`],
    ],
    [
      'two "custom_nodes"',
      '{"custom_nodes": [],\n "custom_nodes": [{"name": "n"}]}',
      [`${MANIFEST}: (top level): duplicate key "custom_nodes" at line 2, column 2 (first at line 1, column 2); ${LAST}`],
    ],
    [
      'two "name" keys, and a key three times',
      '{"custom_nodes": [{"name": "a", "name": "b", "env": {"K": "1", "K": "2", "K": "3"}}]}',
      [
        `${MANIFEST}: custom_nodes.0: duplicate key "name" at line 1, column 33 (first at line 1, column 20); ${LAST}`,
        `${MANIFEST}: custom_nodes.0.env: duplicate key "K" at line 1, column 64 (first at line 1, column 54); ${LAST}`,
        `${MANIFEST}: custom_nodes.0.env: duplicate key "K" at line 1, column 74 (first at line 1, column 54); ${LAST}`,
      ],
    ],
    [
      'the same key written once plainly and once with an escape',
      '{"custom_nodes": [{"name": "n", "env": {"TOKEN": "${A}", "TOK\\u0045N": "${B}"}}]}',
      [`${MANIFEST}: custom_nodes.0.env: duplicate key "TOKEN" at line 1, column 58 (first at line 1, column 41); ${LAST}`],
    ],
    ['__proto__ written with an escape', '{"\\u005f_proto__": {"x": 1}, "custom_nodes": []}', [`${MANIFEST}: (top level): key "__proto__" at line 1, column 2 is not allowed ${RESERVED}`]],
    ['__proto__ at the top level', '{"__proto__": {"x": 1}, "custom_nodes": []}', [`${MANIFEST}: (top level): key "__proto__" at line 1, column 2 is not allowed ${RESERVED}`]],
    [
      '__proto__ in an entry',
      '{"custom_nodes": [{"name": "n", "__proto__": {"env": {"K": "v"}}}]}',
      [`${MANIFEST}: custom_nodes.0: key "__proto__" at line 1, column 33 is not allowed ${RESERVED}`],
    ],
    [
      '__proto__, constructor and prototype in env',
      '{"custom_nodes": [{"name": "n", "env": {"__proto__": "a", "constructor": "b", "prototype": "c"}}]}',
      [
        `${MANIFEST}: custom_nodes.0.env: key "__proto__" at line 1, column 41 is not allowed ${RESERVED}`,
        `${MANIFEST}: custom_nodes.0.env: key "constructor" at line 1, column 59 is not allowed ${RESERVED}`,
        `${MANIFEST}: custom_nodes.0.env: key "prototype" at line 1, column 79 is not allowed ${RESERVED}`,
      ],
    ],
    ['constructor in a nested object another tool reads', '{"custom_nodes": [{"name": "n", "extra": [{"constructor": 1}]}]}', [`${MANIFEST}: custom_nodes.0.extra.0: key "constructor" at line 1, column 44 is not allowed ${RESERVED}`]],
  ])('refuses %s', async (_name, text, problems) => {
    // What JSON.parse makes of it: no error at all.
    expect(() => JSON.parse(text) as unknown).not.toThrow();
    const error = await manifestErrorOf(() => parseManifest(text, MANIFEST));
    expect(error.message).toBe(`manifest ${MANIFEST} has the wrong shape`);
    expect(error.problems).toEqual(problems);
  });

  it.each([
    ['an unclosed list', '{"custom_nodes": [', 'line 1, column 19 (the text ends before the JSON does)'],
    ['an unexpected character on line 3', '{\n  "custom_nodes": [\n    {"name": secret-canary-77}\n  ]\n}', 'line 3, column 14 (unexpected character)'],
    ['a trailing comma', '{"custom_nodes": [],\n}', 'line 2, column 1 (unexpected token)'],
    ['a comment', '{"custom_nodes": []} // secret-canary-77', 'line 1, column 22 (unexpected character)'],
    ['a raw tab inside a string', '{"custom_nodes": [{"name": "n", "env": {"K": "secret\tcanary-77"}}]}', 'line 1, column 53 (a control character inside a string: write it as an escape, such as \\n or \\t)'],
    ['a raw newline inside a string', '{"custom_nodes": [{"name": "n",\n "env": {"K": "secret\ncanary-77"}}]}', 'line 2, column 22 (a control character inside a string: write it as an escape, such as \\n or \\t)'],
    ['text after the JSON', '{"custom_nodes": []} x', 'line 1, column 22 (unexpected character)'],
    ['an empty file', '', 'line 1, column 1 (the text ends before the JSON does)'],
    ['a form feed between tokens (JSON allows space, tab, CR and LF only)', '{"custom_nodes":\f[]}', 'line 1, column 17 (unexpected character)'],
  ])('refuses %s as not JSON, with the line and column only', async (_name, text, where) => {
    const error = await manifestErrorOf(() => parseManifest(text, MANIFEST));
    expect(error.message).toBe(`manifest ${MANIFEST} is not valid JSON`);
    expect(error.problems).toEqual([`${MANIFEST}: not valid JSON at ${where}`]);
    expect(error.problems.join('\n')).not.toContain('secret');
    expect(error.problems.join('\n')).not.toContain('canary');
  });

  it('accepts a UTF-8 byte order mark (as Node\'s JSON module loader does)', async () => {
    const text = `\ufeff${manifestText([{ name: 'n', env: { K: '${V}' } }])}`;
    expect(() => JSON.parse(text) as unknown).toThrow();
    const expected = { path: MANIFEST, nodes: [{ name: 'n', env: [{ key: 'K', template: [{ kind: 'ref', variable: 'V' }] }], processEnv: [] }] };
    expect(parseManifest(text, MANIFEST)).toEqual(expected);
    const file = path.join(dir, 'bom.json');
    writeFileSync(file, Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(manifestText([{ name: 'n', env: { K: '${V}' } }]))]));
    await expect(loadManifest(file)).resolves.toEqual({ ...expected, path: file });
  });

  it('refuses invalid UTF-8 with the byte offset and the line, instead of reading U+FFFD into a .env', async () => {
    const file = path.join(dir, 'latin1.json');
    const before = Buffer.from('{"custom_nodes": [\n  {"name": "n", "env": {"K": "caf');
    writeFileSync(file, Buffer.concat([before, Buffer.from([0xe9]), Buffer.from('-secret"}}\n]}')]));
    const error = await manifestErrorOf(() => loadManifest(file));
    expect(error.message).toBe(`manifest ${file} is not valid UTF-8`);
    expect(error.problems).toEqual([`${file}: not valid UTF-8 at byte offset ${before.length} (line 2)`]);
    expect(error.problems.join('\n')).not.toContain('secret');
  });

  it.each([
    ['a lone continuation byte', [0x80], 0],
    ['a truncated sequence at the end', [0xe2, 0x82], 0],
    ['an overlong encoding', [0xc0, 0xaf], 0],
    ['a UTF-16 surrogate encoded in UTF-8', [0xed, 0xa0, 0x80], 0],
  ])('finds the offset of %s after valid multi-byte text', async (_name, bad, at) => {
    const file = path.join(dir, 'bad.json');
    const before = Buffer.from('{"custom_nodes": [{"name": "日本", "env": {"K": "\ufffd🚀');
    writeFileSync(file, Buffer.concat([before, Buffer.from(bad), Buffer.from('"}}]}')]));
    const error = await manifestErrorOf(() => loadManifest(file));
    expect(error.problems).toEqual([`${file}: not valid UTF-8 at byte offset ${before.length + at} (line 1)`]);
  });
});

describe('node name length, in bytes: one folder name (NAME_MAX, 255 bytes)', () => {
  it('accepts 255 ASCII characters', () => {
    const name = 'n'.repeat(255);
    expect(parseManifest(manifestText([{ name }]), MANIFEST).nodes.map((n) => n.name)).toEqual([name]);
  });

  it('refuses 256 ASCII characters, saying the limit and why', async () => {
    const error = await manifestErrorOf(() => parseManifest(manifestText([{ name: 'n'.repeat(256) }]), MANIFEST));
    expect(error.problems).toEqual([`${MANIFEST}: custom_nodes.0.name: ${TOO_LONG}`]);
  });

  it('refuses a multi-byte name of fewer than 255 characters but more than 255 bytes', async () => {
    const name = 'é'.repeat(128);
    expect([name.length, Buffer.byteLength(name)]).toEqual([128, 256]);
    const error = await manifestErrorOf(() => parseManifest(manifestText([{ name }]), MANIFEST));
    expect(error.problems).toEqual([`${MANIFEST}: custom_nodes.0.name: ${TOO_LONG}`]);
    // 127 of them (254 bytes) and one ASCII character: 255 bytes, accepted.
    expect(parseManifest(manifestText([{ name: `${'é'.repeat(127)}x` }]), MANIFEST).nodes).toHaveLength(1);
  });
});

describe('not_secret', () => {
  it('lists variables that are not secrets', () => {
    const manifest = parseManifest(JSON.stringify({ not_secret: ['STAGE', 'CLOUD_PROVIDER'], custom_nodes: [{ name: 'n', env: { B: 'models-${STAGE}' } }] }), MANIFEST);
    expect(manifest.notSecret).toEqual(['STAGE', 'CLOUD_PROVIDER']);
  });

  it.each([
    ['a string', '"STAGE"', [`${MANIFEST}: not_secret: must be a list of variable names`]],
    ['a bad name and a number', '["STAGE", "1X", 3]', [`${MANIFEST}: not_secret.1: is not a valid variable name (letters, digits, _; not starting with a digit)`, `${MANIFEST}: not_secret.2: must be a variable name`]],
  ])('refuses %s', async (_name, list, problems) => {
    const error = await manifestErrorOf(() => parseManifest(`{"custom_nodes": [], "not_secret": ${list}}`, MANIFEST));
    expect(error.problems).toEqual(problems);
  });
});

describe('readManifestText keeps the valid entries beside the problems of the others', () => {
  it('leaves out each entry with a problem, and every entry when custom_nodes itself is wrong', () => {
    const text = '{"custom_nodes": [{"name": "a", "env": {"K": "1", "K": "2"}}, {"name": "b", "env": {"L": "${B}"}}, {"name": "c", "env": 5}, {"name": "d", "env": {"M": "${"}}]}';
    const reading = readManifestText(text, MANIFEST);
    expect(reading.manifest.nodes.map((n) => n.name)).toEqual(['b']);
    expect(reading.problems).toHaveLength(3);
    expect(readManifestText('{"custom_nodes": [], "custom_nodes": [{"name": "b"}]}', MANIFEST).manifest.nodes).toEqual([]);
  });
});

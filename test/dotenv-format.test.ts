import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import dotenv from 'dotenv';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { EARLIER_HEADER, HEADER, hasGpuBootHeader, quoteValue, renderEnvFile, UnrepresentableValueError, withHeader } from '../src/secrets/dotenv-format.js';
import { PYTHON } from './helpers/python.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'gpu-boot-dotenv-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

// dotenv_values(path) interpolates by default, exactly as load_dotenv does in a custom node.
const PY_READ = 'import json, sys\nfrom dotenv import dotenv_values\nsys.stdout.write(json.dumps(dotenv_values(sys.argv[1])))\n';

/** python-dotenv's reading of a real file. `PYTHON_CANARY_HOME` is set so that any interpolation would show. */
function readWithPython(file: string): Record<string, string | null> {
  const out = execFileSync(PYTHON, ['-c', PY_READ, file], {
    encoding: 'utf8',
    env: { ...process.env, HOME: '/home/canary-home', X: 'canary-x' },
    maxBuffer: 64 * 1024 * 1024,
  });
  return JSON.parse(out) as Record<string, string | null>;
}

let fileCounter = 0;
/** Render entries into one real .env file; read it back with both parsers. */
function roundTrip(entries: Array<{ key: string; value: string }>): {
  text: string;
  python: Record<string, string | null>;
  node: Record<string, string>;
} {
  const text = renderEnvFile(entries);
  const file = path.join(dir, `rt-${fileCounter++}.env`);
  writeFileSync(file, text, { encoding: 'utf8' });
  const python = readWithPython(file);
  const node = dotenv.parse(readFileSync(file));
  return { text, python, node };
}

function expected(entries: Array<{ key: string; value: string }>): Record<string, string> {
  return Object.fromEntries(entries.map(({ key, value }) => [key, value]));
}

function isRepresentable(value: string): boolean {
  try {
    quoteValue(value);
    return true;
  } catch (error) {
    if (error instanceof UnrepresentableValueError) return false;
    throw error;
  }
}

describe('renderEnvFile', () => {
  it('writes KEY=value lines in order and a trailing newline, no comment line (each costs every load_dotenv)', () => {
    const text = renderEnvFile([
      { key: 'ZED', value: 'plain' },
      { key: 'ALPHA', value: "it's" },
      { key: 'MIDDLE', value: '' },
    ]);
    expect(text).toBe(["ZED='plain'", 'ALPHA="it\'s"', "MIDDLE=''", ''].join('\n'));
    expect(text.endsWith('\n')).toBe(true);
    expect(text.endsWith('\n\n')).toBe(false);
  });

  it('withHeader (a file written in place) puts the one short header line first', () => {
    const text = withHeader(renderEnvFile([{ key: 'ZED', value: 'plain' }, { key: 'PEM', value: 'a\nb' }]));
    expect(text).toBe(`${HEADER}\nZED='plain'\nPEM='a\nb'\n`);
    expect(dotenv.parse(text)).toEqual({ ZED: 'plain', PEM: 'a\nb' });
    const file = path.join(dir, 'in-place.env');
    writeFileSync(file, text, { encoding: 'utf8' });
    expect(readWithPython(file)).toEqual({ ZED: 'plain', PEM: 'a\nb' });
    expect(HEADER.startsWith('# ')).toBe(true);
    // One line, and a short one: every node's load_dotenv() parses it.
    expect(HEADER.includes('\n')).toBe(false);
    expect(HEADER.length).toBeLessThanOrEqual(60);
  });

  it('writes nothing for a node with no values (the header alone in place)', () => {
    expect(renderEnvFile([])).toBe('');
    expect(withHeader(renderEnvFile([]))).toBe(`${HEADER}\n`);
    expect(dotenv.parse(withHeader(renderEnvFile([])))).toEqual({});
  });

  it("recognises gpu-boot's header, and the two-line one it wrote before, as its mark (and nothing else)", () => {
    expect(hasGpuBootHeader(withHeader(renderEnvFile([{ key: 'K', value: 'v' }])))).toBe(true);
    expect(hasGpuBootHeader(renderEnvFile([{ key: 'K', value: 'v' }]))).toBe(false);
    expect(hasGpuBootHeader(`${EARLIER_HEADER} Do not edit; change the manifest or the secret instead.\n# node: n\nK='v'\n`)).toBe(true);
    expect(hasGpuBootHeader(`${HEADER}K=1\n`)).toBe(false);
    expect(hasGpuBootHeader(`# my own .env\n${HEADER}\n`)).toBe(false);
    expect(hasGpuBootHeader('K=1\n')).toBe(false);
  });

  it('throws UnrepresentableValueError when any value cannot be written', () => {
    expect(() => renderEnvFile([{ key: 'OK', value: 'x' }, { key: 'BAD', value: 'canary-51\u0000' }])).toThrow(
      UnrepresentableValueError,
    );
  });
});

describe('quoteValue picks the form', () => {
  it.each([
    ['plain', "'plain'"],
    ['', "''"],
    ['say "hi"', `'say "hi"'`],
    ["it's", `"it's"`],
    ['a\r\nb', '"a\\r\nb"'],
    ["it's\\", "it's\\"],
    ["it's \"quoted\"", `it's "quoted"`],
  ])('%j -> %s', (value, quoted) => {
    expect(quoteValue(value)).toBe(quoted);
  });
});

describe('round trip through python-dotenv and Node dotenv', () => {
  const cases: Array<[string, string]> = [
    ['single quote', "it's"],
    ['double quotes', 'say "hello"'],
    ['backtick', 'run `id`'],
    ['leading backtick', '`id`'],
    ['single and backtick', "it's `x`"],
    ['double quote and single quote', `it's "x"`],
    ['hash', 'abc#def'],
    ['hash after space', 'abc #not a comment'],
    ['leading hash', '#secret'],
    ['dollar', 'pa$$word$'],
    ['$HOME', '$HOME/x'],
    ['$X and braces apart', '$X {X} $ {X}'],
    ['unclosed ${', 'a${HOME'],
    ['${ with colon', '${a:b}'],
    ['windows path', 'C:\\path\\n'],
    ['backslash', 'a\\b'],
    ['backslash and single quote', "it's a\\b"],
    ['backslash and double quote', 'say "a\\b"'],
    ['double backslash', 'a\\\\b'],
    ['trailing backslash', 'ab\\'],
    ['lone backslash', '\\'],
    ['leading and trailing spaces', '  padded  '],
    ['only spaces', '   '],
    ['leading tab', '\tx\t'],
    ['tabs', 'a\tb'],
    [
      'multi-line PEM',
      '-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n',
    ],
    ['newline with single quote', "line one\nit's line two"],
    ['carriage return', 'a\rb'],
    ['CRLF', 'a\r\nb\r\n'],
    ['CR with single quote', "it's\r"],
    ['non-ASCII', 'café 日本 🚀 é'],
    ['emoji only', '🔐🗝️'],
    ['empty string', ''],
    [
      'GCP service-account JSON',
      JSON.stringify({
        type: 'service_account',
        project_id: 'demo-project',
        private_key_id: 'abc123',
        private_key: '-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----\n',
        client_email: 'svc@demo-project.iam.gserviceaccount.com',
      }),
    ],
    ['base64', 'q+/z9w==AbC+/0='],
    ['equals signs', 'a=b=c'],
    ['URL', 'https://user:p%40ss@example.com:8443/path?x=1&y=2#frag'],
    ['leading quote', "'quoted'"],
    ['leading double quote', '"quoted"'],
    ['unicode separator', "x\u2028'a'"],
    ['control characters and NEL at the ends', '\u001fx\u0085'],
    ['NEL with single quote', "it's\u0085x"],
    ['no-break space', '\u00a0x\u00a0'],
    ['BOM', '\ufeffx'],
  ];

  it.each(cases)('%s', (_name, value) => {
    const entries = [
      { key: 'BEFORE', value: 'before' },
      { key: 'VALUE', value },
      { key: 'AFTER', value: 'after' },
    ];
    const { python, node } = roundTrip(entries);
    expect(python).toEqual(expected(entries));
    expect(node).toEqual(expected(entries));
  });

  it('all named cases together in one file', () => {
    const entries = cases.map(([, value], i) => ({ key: `K${i}`, value }));
    const { python, node } = roundTrip(entries);
    expect(Object.keys(python)).toEqual(entries.map((e) => e.key));
    expect(python).toEqual(expected(entries));
    expect(node).toEqual(expected(entries));
  });

  // Checks that the harness can fail: a value written by hand in a form python reads differently.
  it('the harness sees a difference when the file is wrong', () => {
    const file = path.join(dir, 'wrong.env');
    writeFileSync(file, 'A="a\\tb"\nB=\'${HOME}\'\nC=  x  # note\n');
    expect(readWithPython(file)).toEqual({ A: 'a\tb', B: '/home/canary-home', C: 'x' });
    expect(dotenv.parse(readFileSync(file))).toEqual({ A: 'a\\tb', B: '${HOME}', C: 'x' });
  });
});

describe('values that are refused', () => {
  const refused: Array<[string, string]> = [
    ['NUL', 'canary-nul-4821\u0000tail'],
    ['${HOME}', 'canary-exp-4821${HOME}'],
    ['${X:-y} inside', 'a${X:-y}b-canary-4821'],
    ['${} empty', 'canary-4821${}'],
    ["', \" and #", 'it\'s "a" #1\\\\ canary-4821'],
    ["', \" and newline", 'it\'s\n"canary-4821"'],
    ["', \\\\ and leading space", " it's a\\\\b canary-4821"],
    ["', \" and CR", 'it\'s\r"canary-4821"'],
    ["', \" and a control character at the end", 'it\'s "canary-4821"\u001e'],
    ["', \" and U+2028", 'it\'s "canary-4821"\u2028\'x\''],
    ["', \" and NEL at the start", '\u0085it\'s "canary-4821"'],
    ["' and \\ before a CR", "it's\\\rcanary-4821"],
  ];

  it.each(refused)('%s', (_name, value) => {
    let caught: unknown;
    try {
      quoteValue(value);
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(UnrepresentableValueError);
    const error = caught as UnrepresentableValueError;
    expect(error.name).toBe('UnrepresentableValueError');
    expect(error.message).not.toContain('canary');
    expect(error.message).not.toContain(value);
    expect(() => renderEnvFile([{ key: 'K', value }])).toThrow(UnrepresentableValueError);
  });

  it('names the reason', () => {
    expect(() => quoteValue('a\u0000b')).toThrow('contains a NUL character');
    expect(() => quoteValue('${HOME}')).toThrow(
      'contains ${...}, which python-dotenv would expand when the node loads it',
    );
    expect(() => quoteValue('it\'s "a" #1')).toThrow(
      "mixes characters no single dotenv quoting carries for both python-dotenv and Node's dotenv (quotes of both kinds with a backslash, # or a newline)",
    );
  });

  it('python-dotenv really does expand ${...} in every quoting form', () => {
    const file = path.join(dir, 'expand.env');
    writeFileSync(file, "A='${HOME}'\nB=\"${HOME}\"\nC=${HOME}\nD='${NOPE_UNSET_4821:-dflt}'\n");
    expect(readWithPython(file)).toEqual({ A: '/home/canary-home', B: '/home/canary-home', C: '/home/canary-home', D: 'dflt' });
  });
});

describe('property: quoteValue refuses, or both readers read back exactly the value', () => {
  const SPECIALS = ["'", '"', '#', '$', '\\', ' ', '\n', '\r', '\t', '{', '}', '`', ':', '-', '='];
  const EXOTIC = ['\u001c', '\u001f', '\u0085', '\u00a0', '\u2028', '\u2029', '\ufeff', '\u000b', '\u000c', 'é', '🚀'];
  const letters = fc.constantFrom('a', 'b', 'X', 'Y', '0', '_');
  const biased = fc.string({
    unit: fc.oneof({ arbitrary: letters, weight: 3 }, { arbitrary: fc.constantFrom(...SPECIALS), weight: 2 }),
    maxLength: 24,
  });
  const exotic = fc.string({
    unit: fc.oneof(
      { arbitrary: letters, weight: 3 },
      { arbitrary: fc.constantFrom(...SPECIALS), weight: 2 },
      { arbitrary: fc.constantFrom(...EXOTIC), weight: 2 },
    ),
    maxLength: 24,
  });
  const binary = fc.string({ unit: 'binary', maxLength: 40 });

  /** One file, one python call per batch; returns the accepted share. */
  function checkBatch(values: string[]): number {
    const entries = values.filter(isRepresentable).map((value, i) => ({ key: `K${i}`, value }));
    const { python, node } = roundTrip(entries);
    for (const { key, value } of entries) {
      // Compared one by one so a failure names the value.
      expect({ value, python: python[key] }).toEqual({ value, python: value });
      expect({ value, node: node[key] }).toEqual({ value, node: value });
    }
    expect(Object.keys(python)).toHaveLength(entries.length);
    expect(Object.keys(node)).toHaveLength(entries.length);
    return entries.length / values.length;
  }

  it.each([
    ['special-character biased strings', biased],
    ['strings with exotic whitespace and separators', exotic],
    ['arbitrary Unicode strings', binary],
  ] as const)('%s', (_name, arbitrary) => {
    fc.assert(
      fc.property(fc.array(arbitrary, { minLength: 300, maxLength: 300 }), (values) => {
        checkBatch(values);
      }),
      { numRuns: 15 },
    );
  });

  it('accepts most special-character biased strings (the property is not vacuous)', () => {
    const values = fc.sample(biased, { numRuns: 2000, seed: 4821 });
    const accepted = values.filter(isRepresentable).length / values.length;
    expect(accepted).toBeGreaterThan(0.5);
    // and the accepted ones do carry the awkward characters
    const acceptedWithSpecials = values.filter((v) => isRepresentable(v) && /['"#$\\\n\r]/.test(v)).length;
    expect(acceptedWithSpecials / values.length).toBeGreaterThan(0.3);
  });

  it("accepts every string without ', \\, NUL, CR or ${...} (single quotes carry it)", () => {
    const safe = fc
      .string({ unit: fc.oneof(letters, fc.constantFrom('"', '#', '$', ' ', '\n', '\t', '{', '}', '`', '\u2028', '🚀')), maxLength: 30 })
      .filter((v) => !/\$\{[^}:]*(?::-[^}]*)?\}/.test(v));
    fc.assert(
      fc.property(safe, (value) => {
        expect(quoteValue(value)).toBe(`'${value}'`);
      }),
      { numRuns: 2000 },
    );
    fc.assert(
      fc.property(fc.string({ unit: 'binary' }), (raw) => {
        const value = raw.replace(/['\\\u0000\r{]/g, '');
        expect(quoteValue(value)).toBe(`'${value}'`);
      }),
      { numRuns: 2000 },
    );
  });

  it('accepts every string without ", \\, NUL or ${...} (double quotes carry it, CR included)', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary' }), (raw) => {
        const value = raw.replace(/["\\\u0000{]/g, '');
        expect(isRepresentable(value)).toBe(true);
      }),
      { numRuns: 2000 },
    );
  });

  it("but a CR together with both ' and \" has no form both readers share", () => {
    expect(isRepresentable('"\r\'')).toBe(false);
  });
});

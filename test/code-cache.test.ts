import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { readFile, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NODE_FLAGS, ROOT } from './helpers/boot.js';

// Children run script files, never `-e`: process.execArgv is then the flags alone, as in a boot.
// Made before the tests run, not as the file loads: a run that skips them all runs no afterAll.
let dir = '';
let lib = '';
beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'gpu-boot-codecache-'));
  lib = path.join(dir, 'lib.cjs');
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const CODE_CACHE = pathToFileURL(path.join(ROOT, 'dist', 'instances', 'code-cache.js')).href;

async function node(flags: string[], script: string, env: Record<string, string> = {}): Promise<Record<string, unknown>> {
  const file = path.join(dir, `script-${Math.random().toString(36).slice(2)}.mjs`);
  await writeFile(file, script);
  const { stdout } = await execa(process.execPath, [...flags, file], { env: { PATH: process.env.PATH!, ...env }, extendEnv: false });
  return JSON.parse(stdout.trim().split('\n').pop()!) as Record<string, unknown>;
}

const build = (flags: string[]) =>
  node(flags, [`import { writeCodeCache } from ${JSON.stringify(CODE_CACHE)};`, `const { bytes } = writeCodeCache(${JSON.stringify(lib)}, (e) => e.add(1, 2));`, 'console.log(JSON.stringify({ bytes }));'].join('\n'));
const load = (flags: string[], env: Record<string, string> = {}) =>
  node(
    flags,
    [
      "import { createRequire } from 'node:module';",
      `import { requireWithCodeCache } from ${JSON.stringify(CODE_CACHE)};`,
      `const file = ${JSON.stringify(lib)};`,
      'const first = requireWithCodeCache(file);',
      'const second = requireWithCodeCache(file);',
      'const e = first.exports;',
      'console.log(JSON.stringify({ codeCache: first.codeCache, again: second.codeCache, sameCopy: second.exports === e && createRequire(file)(file) === e,',
      '  sum: e.add(2, 3), file: e.file(), dir: e.dir, dep: e.dep(), strict: e.strict() }));',
    ].join('\n'),
    env,
  );

describe('a CommonJS file with its code cache', () => {
  it('is taken with the flags it was made with; without them, with NODE_OPTIONS, or once the file changed, none is offered; a refused one still loads', async () => {
    await writeFile(path.join(dir, 'dep.cjs'), 'exports.x = "from dep";\n');
    await writeFile(lib, "'use strict';\nexports.add = (a, b) => a + b;\nexports.file = () => module.filename;\nexports.dir = __dirname;\nexports.dep = () => require('./dep.cjs').x;\nexports.strict = () => (function () { return this; })() === undefined;\n");
    const flags = ['--max-semi-space-size=4'];
    const { bytes } = await build(flags);
    expect(bytes).toBeGreaterThan(0);
    expect((await readFile(`${lib}.cache`)).length).toBe(bytes);
    const record = JSON.parse(await readFile(`${lib}.cache.json`, 'utf8')) as Record<string, unknown>;
    expect(record).toMatchObject({ node: process.version, arch: process.arch, flags, nodeOptions: '' });
    // Loaded as require would: one copy (in require's cache), its own paths, its strictness.
    const same = { sameCopy: true, sum: 5, file: lib, dir, dep: 'from dep', strict: true };
    expect(await load(flags)).toEqual({ codeCache: 'accepted', again: 'accepted', ...same });
    // Other flags, or flags through NODE_OPTIONS: V8 would refuse it (after reading it), so it is not offered.
    expect(await load([])).toEqual({ codeCache: 'none', again: 'none', ...same });
    expect(await load(flags, { NODE_OPTIONS: '--max-old-space-size=512' })).toEqual({ codeCache: 'none', again: 'none', ...same });
    // A record that claims other flags than the cache was made with: V8 refuses it; the file loads all the same.
    await writeFile(`${lib}.cache.json`, JSON.stringify({ ...record, flags: [] }));
    expect(await load([])).toEqual({ codeCache: 'rejected', again: 'rejected', ...same });
    await writeFile(`${lib}.cache.json`, JSON.stringify(record));
    expect((await load(flags)).codeCache).toBe('accepted');
    // Its modification time cut to whole seconds, as an image's layers keep it: the same bytes, the cache taken.
    await utimes(lib, new Date(), new Date(Math.floor(Date.now() / 1000) * 1000 - 60_000));
    expect((await load(flags)).codeCache).toBe('accepted');
    // Other bytes of the same length: V8 itself checks only the length, and would run the old code.
    const text = await readFile(lib, 'utf8');
    await writeFile(lib, text.replace('(a, b) => a + b', '(b, a) => a + b'));
    expect(await load(flags)).toEqual({ codeCache: 'none', again: 'none', ...same });
  });

  it("PM2's daemon code from `npm run build` takes its cache with gpu-boot's flags, and loads as without it", async (ctx) => {
    const bundle = path.join(ROOT, 'dist', 'pm2-daemon.cjs');
    if (!existsSync(`${bundle}.cache.json`)) {
      console.log(`skipped: ${bundle}.cache.json is not built (npm run build makes it; npm test builds first)`);
      return ctx.skip();
    }
    const script = [
      `const { Pm2Host, pm2DaemonCode, PM2_DAEMON_BUNDLE } = await import(${JSON.stringify(pathToFileURL(path.join(ROOT, 'dist', 'instances', 'pm2-host.js')).href)});`,
      `const { pino } = await import(${JSON.stringify(pathToFileURL(path.join(ROOT, 'node_modules', 'pino', 'pino.js')).href)});`,
      "const { createRequire } = await import('node:module');",
      'const lines = [];',
      "const logger = pino({ level: 'debug' }, { write: (line) => lines.push(JSON.parse(line)) });",
      'Pm2Host.load(logger);',
      "const said = lines.find((l) => 'pm2Code' in l);",
      'const code = pm2DaemonCode(PM2_DAEMON_BUNDLE);',
      "const exec = createRequire(import.meta.url)('node:cluster').settings.exec;",
      // PM2 rewrites console as it loads.
      "process.stdout.write(JSON.stringify({ from: said.pm2Code, codeCache: said.codeCache, msg: said.msg, again: code.codeCache, God: typeof code.daemonCode().God.prepare, exec }) + '\\n');",
      'process.exit(0);',
    ].join('\n');
    const env = { PM2_HOME: path.join(dir, 'pm2'), HOME: dir };
    const withFlags = await node(NODE_FLAGS, script, env);
    expect(withFlags).toEqual({
      from: bundle,
      codeCache: 'accepted',
      msg: `PM2's daemon code from ${bundle} (code cache: accepted)`,
      again: 'accepted',
      God: 'function',
      exec: path.join(ROOT, 'node_modules', 'pm2', 'lib', 'ProcessContainer.js'),
    });
    // Without gpu-boot's flags: the bundle, compiled as it loads.
    expect(await node([], script, env)).toMatchObject({ from: bundle, codeCache: 'none', again: 'none', God: 'function' });
  });
});

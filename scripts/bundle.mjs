// npm run build, after tsc: dist/entrypoint.js becomes one ES module bundle (with a chunk per module
// the entrypoint loads on demand), zod, pino and the other small libraries inside. Node's module
// loader then resolves, reads and compiles one file where it did ~170 (our modules and zod's): the
// configuration is valid ~80 ms sooner on this project's machine (bench/RESULTS.md). tsc's one file
// per module stays beside it in dist/ for the bench and the type declarations. Left outside: PM2
// (CommonJS that requires its own files by path, pinned and loaded through createRequire), and
// what loads only on demand from node_modules (execa, pino-pretty, prom-client, systeminformation).
// pino is inside: its transports (worker threads that load files by __dirname) do not work from the
// bundle; gpu-boot uses none (its log is a stream, pino-pretty a stream too).
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const DIST = fileURLToPath(new URL('../dist/', import.meta.url));
// Chunks of an earlier build would otherwise stay beside the new ones.
for (const name of readdirSync(DIST)) if (name.startsWith('chunk-')) rmSync(path.join(DIST, name));

await build({
  entryPoints: [path.join(DIST, 'entrypoint.js')],
  outdir: DIST,
  allowOverwrite: true,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  chunkNames: 'chunk-[hash]',
  external: ['pm2', 'pm2/*', 'execa', 'pino-pretty', 'prom-client', 'systeminformation'],
  // jsonc-parser's `main` is a UMD build that requires its own files through a wrapper esbuild cannot
  // follow: its ES module build (its package's `module`) is bundled instead.
  alias: { 'jsonc-parser': 'jsonc-parser/lib/esm/main.js' },
  // The CommonJS libraries inside (dotenv, shell-quote) call require() for Node's own modules.
  banner: { js: "import { createRequire as __gpuBootRequire } from 'node:module'; const require = __gpuBootRequire(import.meta.url);" },
  // Maps to tsc's output in dist/ (it replaces tsc's map of the entrypoint).
  sourcemap: true,
  logLevel: 'warning',
});

// PM2's daemon code, what gpu-boot hosts in its own process (src/instances/pm2-host.ts: constants,
// Daemon, God, Common), as one CommonJS file, dist/pm2-daemon.cjs: Node's loader then reads and
// compiles one file where it did ~200 (PM2's and its libraries'), 73 -> 44 ms on this project's
// machine, on the path to the first instance of every boot (bench/RESULTS.md). Each bundled file
// keeps its own __filename, __dirname and module.filename, pointing into node_modules where the
// file is (PM2 starts ProcessContainerFork.js and its other containers from there by those paths),
// and resolves with require.resolve from there. dist/pm2-daemon.packages.json lists the version of
// each package bundled: the bundle is used only while node_modules has exactly those, else PM2
// loads from node_modules file by file. Stack traces name the bundle's lines (no source map).
const NODE_MODULES = path.join(DIST, '..', 'node_modules');
// Where the file's first statement is 'use strict', it must stay first: the lines put before it say it again.
const STRICT = /^(?:\s+|\/\*[\s\S]*?\*\/|\/\/[^\n]*\n)*(['"])use strict\1/;
const ownPaths = {
  name: 'own-module-paths',
  setup(b) {
    b.onLoad({ filter: /\.[cm]?js$/ }, (args) => {
      const rel = path.relative(NODE_MODULES, args.path);
      if (rel.startsWith('..') || path.isAbsolute(rel)) return undefined;
      const text = readFileSync(args.path, 'utf8');
      if (!/__dirname|__filename|module\.filename|require\.resolve/.test(text)) return undefined;
      const head = `${STRICT.test(text) ? "'use strict';" : ''}var __filename = __gpuBootModuleFile(${JSON.stringify(rel)}), __dirname = __gpuBootDirname(__filename);`;
      const own = text.replace(/\bmodule\.filename\b/g, '__filename').replace(/\brequire\.resolve\(/g, "require('module').createRequire(__filename).resolve(");
      return { contents: `${head}\n${own}`, loader: 'js', resolveDir: path.dirname(args.path) };
    });
  },
};
// PM2's version check (@pm2/pm2-version-check) requires Node's https, and with it tls, as it loads:
// ~3 ms on the path to the first instance, for a check gpu-boot turns off (PM2_DISABLE_VERSION_CHECK,
// src/instances/processes.ts). Bundled as a stand-in that loads the real one from node_modules
// only if it is ever called. Its one requirer is PM2's lib/VersionCheck.js.
const lazyVersionCheck = {
  name: 'lazy-version-check',
  setup(b) {
    b.onResolve({ filter: /^@pm2\/pm2-version-check$/ }, () => ({ path: '@pm2/pm2-version-check', namespace: 'lazy-version-check' }));
    b.onLoad({ filter: /.*/, namespace: 'lazy-version-check' }, () => ({
      // Resolved from PM2's VersionCheck.js, its one requirer, as PM2 itself would resolve it.
      contents: "exports.runCheck = (...args) => require('module').createRequire(__gpuBootModuleFile('pm2/lib/VersionCheck.js'))('@pm2/pm2-version-check').runCheck(...args);",
      loader: 'js',
    }));
  },
};
const pm2Daemon = await build({
  stdin: {
    // Each part runs when asked for, as a require would: the constants first, since PM2_HOME's
    // module configuration must exist before God's code reads it as it loads.
    contents: [
      "exports.constants = () => require('pm2/constants.js');",
      "exports.daemonCode = () => ({ Daemon: require('pm2/lib/Daemon.js'), God: require('pm2/lib/God.js'), Common: require('pm2/lib/Common.js') });",
    ].join('\n'),
    resolveDir: path.join(DIST, '..'),
    loader: 'js',
  },
  outfile: path.join(DIST, 'pm2-daemon.cjs'),
  bundle: true,
  format: 'cjs',
  platform: 'node',
  target: 'node20',
  plugins: [ownPaths, lazyVersionCheck],
  metafile: true,
  // node_modules as found from this file at run time (dist/ beside it, as npm installs the package).
  banner: {
    js: [
      "const __gpuBootNodeModules = require('path').join(__dirname, '..', 'node_modules');",
      "const __gpuBootModuleFile = (rel) => require('path').join(__gpuBootNodeModules, rel);",
      "const __gpuBootDirname = (file) => require('path').dirname(file);",
    ].join('\n'),
  },
  logLevel: 'warning',
});
// Each bundled file's package (its folder under the last node_modules/ of its path), by version.
const packages = {};
for (const input of Object.keys(pm2Daemon.metafile.inputs)) {
  const rel = path.relative(NODE_MODULES, path.resolve(DIST, '..', input));
  if (rel.startsWith('..')) continue;
  const parts = rel.split(path.sep);
  const at = parts.lastIndexOf('node_modules');
  const start = at + 1;
  const root = parts.slice(0, start + (parts[start].startsWith('@') ? 2 : 1)).join('/');
  packages[root] ??= JSON.parse(readFileSync(path.join(NODE_MODULES, root, 'package.json'), 'utf8')).version;
}
writeFileSync(path.join(DIST, 'pm2-daemon.packages.json'), `${JSON.stringify({ packages }, null, 2)}\n`);

// The bundle's code cache (src/instances/code-cache.ts), for the Node flags gpu-boot runs with
// (package.json's gpuBoot.nodeFlags: the image's ENTRYPOINT and `npm start` pass the same; a test
// keeps them equal). V8 takes a cache only with the flags it was made with, so it is made by a Node
// started with exactly those, and NODE_OPTIONS empty; PM2_HOME is a folder of the build's own.
const { gpuBoot } = JSON.parse(readFileSync(path.join(DIST, '..', 'package.json'), 'utf8'));
const pm2Home = mkdtempSync(path.join(os.tmpdir(), 'gpu-boot-build-pm2-'));
try {
  execFileSync(process.execPath, [...gpuBoot.nodeFlags, path.join(DIST, '..', 'scripts', 'pm2-code-cache.mjs'), path.join(DIST, 'pm2-daemon.cjs')], {
    env: { ...process.env, PM2_HOME: pm2Home, NODE_OPTIONS: '' },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
} finally {
  rmSync(pm2Home, { recursive: true, force: true });
}

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
import { readdirSync, rmSync } from 'node:fs';
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

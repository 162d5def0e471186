/**
 * A CommonJS file loaded with V8's code cache: the bytecode of its functions, compiled and written
 * next to it at build time (`<file>.cache`, with `<file>.cache.json` saying for what), so that a boot
 * does not parse and compile them again. For dist/pm2-daemon.cjs, on the path to the first instance
 * of every boot, that is ~20 ms of its ~50 (bench/RESULTS.md).
 *
 * V8 takes a cache only from its own version and with the same V8 flags (`--max-semi-space-size`
 * among them), and refuses it otherwise, after reading it: a refused cache costs more than none. So
 * the cache is offered only where the record matches this process: Node's version, the architecture,
 * its flags (`process.execArgv`), NODE_OPTIONS, and the file's SHA-256 (V8 checks the source by its
 * length alone; 0.4 ms for the 730 KB bundle). Not its modification time: an image's layers keep
 * whole seconds of it. Anywhere else the file loads with `require`, as without a cache.
 */
import { createHash } from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire, Module } from 'node:module';
import path from 'node:path';
import vm from 'node:vm';

/** What the code cache did for a load: V8 took it, V8 refused it, or none was offered (none built for this process). */
export type CodeCacheUse = 'accepted' | 'rejected' | 'none';

interface CacheRecord {
  node: string;
  arch: string;
  flags: string[];
  nodeOptions: string;
  sha256: string;
}

const used = new Map<string, CodeCacheUse>();

function thisProcess(): Pick<CacheRecord, 'node' | 'arch' | 'flags' | 'nodeOptions'> {
  return { node: process.version, arch: process.arch, flags: process.execArgv, nodeOptions: process.env.NODE_OPTIONS ?? '' };
}

const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

/** The cache built for this file's bytes and this process, or undefined. */
function matchingCache(file: string, bytes: Buffer): Buffer | undefined {
  try {
    const record = JSON.parse(readFileSync(`${file}.cache.json`, 'utf8')) as Partial<CacheRecord>;
    const here = thisProcess();
    const matches =
      record.node === here.node &&
      record.arch === here.arch &&
      record.nodeOptions === here.nodeOptions &&
      Array.isArray(record.flags) &&
      record.flags.length === here.flags.length &&
      record.flags.every((flag, i) => flag === here.flags[i]) &&
      record.sha256 === sha256(bytes);
    return matches ? readFileSync(`${file}.cache`) : undefined;
  } catch {
    return undefined; // no cache built (tsc alone, an older build), or unreadable
  }
}

/**
 * import() inside the file, as from the main context (Node 20.12 and later; package.json allows
 * 20.11, where the option does not exist and an import() there would throw: the bundle has none).
 */
const MAIN_CONTEXT_LOADER = (vm as { constants?: { USE_MAIN_CONTEXT_DEFAULT_LOADER?: typeof vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER } }).constants?.USE_MAIN_CONTEXT_DEFAULT_LOADER;

/** Compile and run `file`'s `bytes` as CommonJS does, registered in require's cache as `require(file)` would. */
function run(file: string, bytes: Buffer, cachedData: Buffer | undefined): { script: vm.Script; exports: unknown } {
  const require = createRequire(file);
  const source = bytes.toString('utf8');
  // The same wrapper and options at build time and at run time: V8 matches the cache against them.
  const script = new vm.Script(Module.wrap(source), { filename: file, ...(cachedData ? { cachedData } : {}), ...(MAIN_CONTEXT_LOADER ? { importModuleDynamically: MAIN_CONTEXT_LOADER } : {}) });
  const module = new Module(file);
  module.filename = file;
  module.paths = require.resolve.paths('x') ?? [];
  require.cache[file] = module;
  try {
    (script.runInThisContext() as (...args: unknown[]) => void).call(module.exports, module.exports, require, module, file, path.dirname(file));
  } catch (error) {
    delete require.cache[file];
    throw error;
  }
  module.loaded = true;
  return { script, exports: module.exports };
}

/** `require(file)`, with its code cache where one was built for this process. */
export function requireWithCodeCache(file: string): { exports: unknown; codeCache: CodeCacheUse } {
  const require = createRequire(file);
  const loaded = require.cache[file];
  if (loaded) return { exports: loaded.exports, codeCache: used.get(file) ?? 'none' };
  let bytes: Buffer | undefined;
  try {
    bytes = readFileSync(file);
  } catch {
    bytes = undefined; // require below says why
  }
  const cachedData = bytes && matchingCache(file, bytes);
  if (!bytes || !cachedData) {
    used.set(file, 'none');
    return { exports: require(file), codeCache: 'none' };
  }
  const { script, exports } = run(file, bytes, cachedData);
  const codeCache: CodeCacheUse = script.cachedDataRejected ? 'rejected' : 'accepted';
  used.set(file, codeCache);
  return { exports, codeCache };
}

/**
 * Build time: load `file`, run `warmUp` on its exports (the functions that run then are compiled, and
 * so cached), and write its code cache and record for this process's Node, flags and NODE_OPTIONS.
 * The record is written last, by rename: a cache is never offered half written.
 */
export function writeCodeCache(file: string, warmUp: (exports: unknown) => void): { bytes: number } {
  const bytes = readFileSync(file);
  const { script, exports } = run(file, bytes, undefined);
  warmUp(exports);
  const data = script.createCachedData();
  const record: CacheRecord = { ...thisProcess(), sha256: sha256(bytes) };
  writeFileSync(`${file}.cache`, data);
  writeFileSync(`${file}.cache.json.tmp`, `${JSON.stringify(record, null, 2)}\n`);
  renameSync(`${file}.cache.json.tmp`, `${file}.cache.json`);
  return { bytes: data.length };
}

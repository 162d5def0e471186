/**
 * A CommonJS file loaded with V8's code cache: the bytecode of its functions, compiled and written
 * next to it at build time (`<file>.cache`, with `<file>.cache.json` saying for what), so that a boot
 * does not parse and compile them again. For dist/pm2-daemon.cjs, on the path to the first instance
 * of every boot, that is ~20 ms of its ~50 (bench/RESULTS.md).
 *
 * V8 takes a cache only from its own version and with the same V8 flags (`--max-semi-space-size`
 * among them), and refuses it otherwise, after reading it: a refused cache costs more than none. So
 * the cache is offered only where the record matches this process: Node's version, the architecture,
 * its flags (`process.execArgv`), NODE_OPTIONS, and the file's size and modification time (V8 checks
 * the source by its length alone). Anywhere else the file loads with `require`, as without a cache.
 */
import { readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
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
  size: number;
  mtimeMs: number;
}

const used = new Map<string, CodeCacheUse>();

function thisProcess(): Pick<CacheRecord, 'node' | 'arch' | 'flags' | 'nodeOptions'> {
  return { node: process.version, arch: process.arch, flags: process.execArgv, nodeOptions: process.env.NODE_OPTIONS ?? '' };
}

/** The cache built for this file and this process, or undefined. */
function matchingCache(file: string): Buffer | undefined {
  try {
    const record = JSON.parse(readFileSync(`${file}.cache.json`, 'utf8')) as Partial<CacheRecord>;
    const here = thisProcess();
    const stat = statSync(file);
    const matches =
      record.node === here.node &&
      record.arch === here.arch &&
      record.nodeOptions === here.nodeOptions &&
      Array.isArray(record.flags) &&
      record.flags.length === here.flags.length &&
      record.flags.every((flag, i) => flag === here.flags[i]) &&
      record.size === stat.size &&
      record.mtimeMs === stat.mtimeMs;
    return matches ? readFileSync(`${file}.cache`) : undefined;
  } catch {
    return undefined; // no cache built (tsc alone, an older build), or unreadable
  }
}

/** Compile and run `file` as CommonJS does, registered in require's cache as `require(file)` would. */
function run(file: string, cachedData: Buffer | undefined): { script: vm.Script; exports: unknown } {
  const require = createRequire(file);
  const source = readFileSync(file, 'utf8');
  // The same wrapper and options at build time and at run time: V8 matches the cache against them.
  const script = new vm.Script(Module.wrap(source), { filename: file, ...(cachedData ? { cachedData } : {}), importModuleDynamically: vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER });
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
  const cachedData = matchingCache(file);
  if (!cachedData) {
    used.set(file, 'none');
    return { exports: require(file), codeCache: 'none' };
  }
  const { script, exports } = run(file, cachedData);
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
  const { script, exports } = run(file, undefined);
  warmUp(exports);
  const data = script.createCachedData();
  const stat = statSync(file);
  const record: CacheRecord = { ...thisProcess(), size: stat.size, mtimeMs: stat.mtimeMs };
  writeFileSync(`${file}.cache`, data);
  writeFileSync(`${file}.cache.json.tmp`, `${JSON.stringify(record, null, 2)}\n`);
  renameSync(`${file}.cache.json.tmp`, `${file}.cache.json`);
  return { bytes: data.length };
}

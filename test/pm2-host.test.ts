import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { PM2_DAEMON_BUNDLE, Pm2Host, pm2DaemonCode, SERVE_TIMEOUT_MS } from '../src/instances/pm2-host.js';
import { pm2HomeForThisFile } from './helpers/boot.js';
import { captureLogger } from './helpers/logger.js';
import { hostedGod } from './helpers/pm2.js';

// PM2 reads PM2_HOME once, when first loaded: one home for this file (its own worker).
const home = pm2HomeForThisFile('gpu-boot-pm2host-');

/** Run an ES module `script` in a fresh Node (from the project's root, with `pm2Home` as PM2_HOME): the JSON of its last line on stdout. */
async function childJson(script: string, pm2Home: string, flags: string[] = []): Promise<unknown> {
  const env = { PATH: process.env.PATH!, HOME: home.root, PM2_HOME: pm2Home };
  const { stdout } = await execa(process.execPath, [...flags, '--input-type=module', '-e', script], { cwd: path.resolve(import.meta.dirname, '..'), env, extendEnv: false });
  return JSON.parse(stdout.trim().split('\n').pop()!);
}

describe('Pm2Host', () => {
  it(`gives up within ${SERVE_TIMEOUT_MS} ms when something else holds PM2's socket, puts the pid file back, and restores console`, async () => {
    const consoleLog = console.log;
    // Another process's daemon, as far as the socket goes, and its pid file.
    const connections = new Set<net.Socket>();
    const squatter = net.createServer((socket) => connections.add(socket));
    await new Promise<void>((resolve) => squatter.listen(path.join(home.pm2Home, 'rpc.sock'), resolve));
    // Above Linux's largest possible pid (2^22): the cleanup's kill by pid can reach no process.
    await writeFile(path.join(home.pm2Home, 'pm2.pid'), '4194305');
    const { logger, lines } = captureLogger();
    // Pm2Host.load makes PM2_HOME's folders as PM2's client would, then loads the daemon code.
    const host = Pm2Host.load(logger);
    // PM2 rewrites console when it loads: its words go to the logger.
    expect(console.log).not.toBe(consoleLog);
    console.log('said by pm2');
    expect(lines.some((l) => l.includes('"component":"pm2"') && l.includes('said by pm2'))).toBe(true);
    // Formatted as console.log formats: PM2's debug lines use printf-style placeholders.
    console.log('pid=%d msg=process tree killed (%d pids)', 30086, 1);
    expect(lines.map((l) => JSON.parse(l) as { msg: string }).map((l) => l.msg)).toContain('pid=30086 msg=process tree killed (1 pids)');
    // PM2's worker (system metrics: it spawns `df`, which would inherit this environment) waits for
    // serving: 500 ms after loading it has not run.
    const God = hostedGod<{ system_infos: object | null }>();
    await new Promise((resolve) => setTimeout(resolve, 900));
    expect(God.system_infos).toEqual({});
    const started = Date.now();
    await expect(host.serve(() => undefined)).rejects.toThrow(`PM2 could not serve ${path.join(home.pm2Home, 'rpc.sock')} within ${SERVE_TIMEOUT_MS} ms`);
    expect(Date.now() - started).toBeLessThan(SERVE_TIMEOUT_MS + 1000);
    expect(await readFile(path.join(home.pm2Home, 'pm2.pid'), 'utf8')).toBe('4194305');
    // The squatter's socket is still its own.
    expect(existsSync(path.join(home.pm2Home, 'rpc.sock'))).toBe(true);
    await host.close();
    expect(console.log).toBe(consoleLog);
    // PM2's bind probed the squatter with a connection of its own.
    for (const socket of connections) socket.destroy();
    await new Promise<void>((resolve) => squatter.close(() => resolve()));
  }, SERVE_TIMEOUT_MS + 5000);

  it("delivers PM2's bus events after PM2's own handling, in order, the events of one turn on one setImmediate", async () => {
    const script = [
      "const { Pm2Host } = await import('./dist/instances/pm2-host.js');",
      "const { pino } = await import('pino');",
      "const { createRequire } = await import('node:module');",
      "setTimeout(() => { process.stderr.write('timed out\\n'); process.exit(3); }, 15000).unref();",
      "const host = Pm2Host.load(pino({ level: 'silent' }));",
      'await host.serve(() => undefined);',
      "const { pm2DaemonCode, PM2_DAEMON_BUNDLE } = await import('./dist/instances/pm2-host.js');",
      'const God = pm2DaemonCode(PM2_DAEMON_BUNDLE).daemonCode().God;',
      'const events = host.events();',
      'const seen = [];',
      "events.on('log:out', (p) => seen.push('out:' + p.data));",
      "events.on('process:event', (p) => seen.push('event:' + p.event));",
      'const realSetImmediate = globalThis.setImmediate;',
      'let scheduled = 0;',
      'globalThis.setImmediate = (...args) => { scheduled += 1; return realSetImmediate(...args); };',
      "God.bus.emit('log:out', { data: 'a' }); God.bus.emit('process:event', { event: 'online' }); God.bus.emit('log:out', { data: 'b' });",
      'const sync = seen.length;',
      'const firstTurn = scheduled;',
      'await new Promise((resolve) => realSetImmediate(resolve));',
      "God.bus.emit('log:out', { data: 'c' });",
      'await new Promise((resolve) => realSetImmediate(() => realSetImmediate(resolve)));',
      'globalThis.setImmediate = realSetImmediate;',
      'events.close();',
      "God.bus.emit('log:out', { data: 'after close' });",
      'await new Promise((resolve) => realSetImmediate(resolve));',
      'await host.close();',
      "process.stdout.write(JSON.stringify({ sync, firstTurn, scheduled, seen }) + '\\n');",
      'process.exit(0);',
    ].join('\n');
    expect(await childJson(script, path.join(home.root, 'events'))).toEqual({ sync: 0, firstTurn: 1, scheduled: 2, seen: ['out:a', 'event:online', 'out:b', 'out:c'] });
  });

  it("makes PM2_HOME's folders as PM2's client does, and loads where one cannot be made (PM2 reports it, as its client would let it)", async () => {
    const script = [
      "const { Pm2Host } = await import('./dist/instances/pm2-host.js');",
      "const { pino } = await import('pino');",
      "const { readFileSync, statSync } = await import('node:fs');",
      "Pm2Host.load(pino({ level: 'silent' }));",
      'const home = process.env.PM2_HOME;',
      "const kinds = ['logs', 'pids', 'modules'].map((name) => statSync(home + '/' + name).isDirectory());",
      "process.stdout.write(JSON.stringify({ kinds, conf: readFileSync(home + '/module_conf.json', 'utf8') }) + '\\n');",
      'process.exit(0);',
    ].join('\n');
    expect(await childJson(script, path.join(home.root, 'fresh'))).toEqual({ kinds: [true, true, true], conf: '{}' });
    // A file where PM2 wants its modules folder: PM2's client logged and went on; so does this.
    await mkdir(path.join(home.root, 'odd'), { recursive: true });
    await writeFile(path.join(home.root, 'odd', 'modules'), 'not a folder');
    expect(await childJson(script, path.join(home.root, 'odd'))).toEqual({ kinds: [true, true, false], conf: '{}' });
  });

  it('leaves source maps as they were (PM2\'s Daemon.js turns them on for the whole process as it loads)', async () => {
    const script = [
      "const { Pm2Host } = await import('./dist/instances/pm2-host.js');",
      "const { pino } = await import('pino');",
      'const before = process.sourceMapsEnabled;',
      "Pm2Host.load(pino({ level: 'silent' }));",
      "const { createRequire } = await import('node:module');",
      // Loaded: the bundle (npm run build), or PM2's Daemon.js from node_modules without one.
      "const { pm2DaemonCode, PM2_DAEMON_BUNDLE } = await import('./dist/instances/pm2-host.js');",
      "const from = pm2DaemonCode(PM2_DAEMON_BUNDLE).from;",
      "const file = from === PM2_DAEMON_BUNDLE ? from : createRequire(import.meta.url).resolve('pm2/lib/Daemon.js');",
      'const loaded = Boolean(createRequire(import.meta.url).cache[file]);',
      // Pm2Host.load sends console.* to the logger.
      "process.stdout.write(JSON.stringify({ before, after: process.sourceMapsEnabled, loaded }) + '\\n');",
      'process.exit(0);',
    ].join('\n');
    for (const flags of [[], ['--enable-source-maps']]) {
      const enabled = flags.length > 0;
      expect(await childJson(script, path.join(home.root, 'maps'), flags)).toEqual({ before: enabled, after: enabled, loaded: true });
    }
  });

  describe("PM2's daemon code", () => {
    const nodeModulesPm2 = path.resolve(import.meta.dirname, '..', 'node_modules', 'pm2');
    const bundleBuilt = (): boolean => {
      if (existsSync(PM2_DAEMON_BUNDLE)) return true;
      console.log(`skipped: ${PM2_DAEMON_BUNDLE} is not built (npm run build makes it; npm test builds first)`);
      return false;
    };

    it('comes from dist/pm2-daemon.cjs (npm run build), one copy, with each bundled file\'s own paths into node_modules', (ctx) => {
      if (!bundleBuilt()) return ctx.skip();
      const code = pm2DaemonCode(PM2_DAEMON_BUNDLE);
      expect(code.from).toBe(PM2_DAEMON_BUNDLE);
      const { God, Daemon } = code.daemonCode();
      // One copy: asked again, the same God (its tables are the ones the host serves).
      expect(pm2DaemonCode(PM2_DAEMON_BUNDLE).daemonCode().God).toBe(God);
      expect(typeof Daemon).toBe('function');
      expect(code.constants().PM2_HOME).toBe(process.env.PM2_HOME);
      // God sets the cluster containers' path from its own file's place as it loads: node_modules', which exists.
      const settings = (createRequire(import.meta.url)('node:cluster') as { settings: { exec?: string } }).settings;
      expect(settings.exec).toBe(path.join(nodeModulesPm2, 'lib', 'ProcessContainer.js'));
      expect(existsSync(settings.exec!)).toBe(true);
      // None of PM2's own files was loaded beside the bundle.
      const loaded = Object.keys(createRequire(import.meta.url).cache);
      expect(loaded.filter((file) => file.startsWith(path.join(nodeModulesPm2, 'lib')))).toEqual([]);
    });

    it('resolves from each bundled file\'s own folder: no require.resolve of the bundle\'s own is left', async (ctx) => {
      if (!bundleBuilt()) return ctx.skip();
      const text = await readFile(PM2_DAEMON_BUNDLE, 'utf8');
      // OtelManager's look for '@opentelemetry/sdk-node' (where `pm2 install-otel` puts it: PM2's own node_modules).
      expect(text).toContain('require("module").createRequire(__filename).resolve("@opentelemetry/sdk-node")');
      expect(text.match(/\brequire\.resolve\(/g)).toBeNull();
    });

    it("loads neither https nor tls: PM2's version check (turned off) loads the real one only when called", async (ctx) => {
      if (!bundleBuilt()) return ctx.skip();
      const script = [
        "const { pm2DaemonCode, PM2_DAEMON_BUNDLE } = await import('./dist/instances/pm2-host.js');",
        'const code = pm2DaemonCode(PM2_DAEMON_BUNDLE);',
        'code.constants(); code.daemonCode();',
        "const loaded = (name) => process.moduleLoadList.includes('NativeModule ' + name);",
        "process.stdout.write(JSON.stringify({ from: code.from, https: loaded('https'), tls: loaded('tls'), cluster: loaded('cluster') }) + '\\n');",
        'process.exit(0);',
      ].join('\n');
      expect(await childJson(script, path.join(home.root, 'no-https'))).toEqual({ from: PM2_DAEMON_BUNDLE, https: false, tls: false, cluster: true });
      // The stand-in resolves the real check from PM2's VersionCheck.js, as PM2 would: there, with its runCheck.
      const text = await readFile(PM2_DAEMON_BUNDLE, 'utf8');
      expect(text).toContain('require("module").createRequire(__gpuBootModuleFile("pm2/lib/VersionCheck.js"))("@pm2/pm2-version-check").runCheck(...args)');
      const real = createRequire(path.join(nodeModulesPm2, 'lib', 'VersionCheck.js'))('@pm2/pm2-version-check') as { runCheck?: unknown };
      expect(typeof real.runCheck).toBe('function');
    });

    const installed = (createRequire(import.meta.url)('pm2/package.json') as { version: string }).version;
    const stub = "exports.constants = () => ({ stub: true }); exports.daemonCode = () => ({});";
    it.each([
      ['missing', undefined, undefined],
      ['without its list of packages', stub, undefined],
      ['of another PM2 version', stub, { pm2: '0.0.1' }],
      ['built with a library at a version node_modules does not have', stub, { pm2: installed, semver: '0.0.0' }],
      ['built with a package node_modules does not have', stub, { pm2: installed, 'no-such-package': '1.0.0' }],
      ['broken', 'throw new Error("broken");', { pm2: installed }],
    ])('comes from node_modules, file by file, when the bundle is %s', async (_what, text, packages) => {
      const bundle = path.join(home.root, `bundle-${Math.random().toString(36).slice(2)}.cjs`);
      if (text !== undefined) await writeFile(bundle, text);
      if (packages !== undefined) await writeFile(bundle.replace(/\.cjs$/, '.packages.json'), JSON.stringify({ packages }));
      const code = pm2DaemonCode(bundle, path.dirname(nodeModulesPm2));
      expect(code.from).toBe(nodeModulesPm2);
      expect(code.constants()).toBe(createRequire(import.meta.url)('pm2/constants.js'));
    });

    it('comes from the bundle when node_modules has every package it lists, at its version', async () => {
      const bundle = path.join(home.root, 'bundle-current.cjs');
      await writeFile(bundle, stub);
      await writeFile(bundle.replace(/\.cjs$/, '.packages.json'), JSON.stringify({ packages: { pm2: installed, semver: (createRequire(import.meta.url)('semver/package.json') as { version: string }).version } }));
      const code = pm2DaemonCode(bundle, path.dirname(nodeModulesPm2));
      expect(code.from).toBe(bundle);
      expect(code.constants()).toEqual({ stub: true });
    });
  });
});


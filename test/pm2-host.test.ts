import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Pm2Host, SERVE_TIMEOUT_MS } from '../src/instances/pm2-host.js';
import { pm2HomeForThisFile } from './helpers/boot.js';
import { captureLogger } from './helpers/logger.js';

// PM2 reads PM2_HOME once, when first loaded: one home for this file (its own worker).
const home = pm2HomeForThisFile('gpu-boot-pm2host-');

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
    // As ProcessManager.load does: PM2's client first (it creates PM2_HOME's folders), then its daemon code.
    await import('pm2');
    const host = Pm2Host.load(logger);
    // PM2 rewrites console when it loads: its words go to the logger.
    expect(console.log).not.toBe(consoleLog);
    console.log('said by pm2');
    expect(lines.some((l) => l.includes('"component":"pm2"') && l.includes('said by pm2'))).toBe(true);
    // PM2's worker (system metrics: it spawns `df`, which would inherit this environment) waits for
    // serving: 500 ms after loading it has not run.
    const God = createRequire(import.meta.url)('pm2/lib/God.js') as { system_infos: object | null };
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
});

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { execa } from 'execa';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { acceptedListener, descendsFrom, instancePortProblems, listeningSockets, portHolders, portIsFree, portOwner } from '../src/instances/ports.js';
import { freePorts, portsInUse, ROOT, waitFor } from './helpers/boot.js';
import { PYTHON } from './helpers/python.js';

const servers: net.Server[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

async function hold(port: number, host = '127.0.0.1'): Promise<void> {
  const server = net.createServer();
  servers.push(server);
  await new Promise<void>((resolve) => server.listen({ port, host }, resolve));
}

describe('who holds a port', () => {
  it('finds the listening socket and its process; a free port has none', async () => {
    const port = await freePorts(1);
    expect(listeningSockets(port)!.inodes.size).toBe(0);
    expect(portOwner(port, process.pid)).toEqual({ owner: 'none', holders: [] });
    expect(await portIsFree(['127.0.0.1'], port)).toBe(true);
    await hold(port);
    expect(listeningSockets(port)!.inodes.size).toBe(1);
    expect(portHolders(port).map((h) => h.pid)).toEqual([process.pid]);
    expect(portHolders(port)[0]!.command).toContain('node');
    expect(portOwner(port, process.pid).owner).toBe('instance');
    // Held, but not by the process named: someone else's.
    expect(portOwner(port, 4194311).owner).toBe('other');
    // Asked with the address family of the probe: the same answers (the IPv4 table alone for the first, both tables after).
    expect(listeningSockets(port, ['/proc/net/tcp'])!.inodes.size).toBe(1);
    expect(listeningSockets(port, ['/proc/net/tcp6'])!.inodes.size).toBe(0);
    expect(portOwner(port, process.pid, 4)).toEqual({ owner: 'instance', holders: [{ pid: process.pid, command: portHolders(port)[0]!.command }] });
    expect(portOwner(port, process.pid, 6).owner).toBe('instance');
    expect(portOwner(port, 4194311, 4).owner).toBe('other');
    expect(portOwner(port, 4194311, 6).owner).toBe('other');
    expect(await portIsFree(['127.0.0.1'], port)).toBe(false);
    // A wildcard bind collides with a loopback one, as an instance listening on 0.0.0.0 would.
    expect(await portIsFree(['0.0.0.0'], port)).toBe(false);
    expect(await instancePortProblems(['0.0.0.0'], [{ name: 'comfyui-gpu0', port }])).toEqual([
      `COMFYUI_PORT_START: port ${port} (for comfyui-gpu0) is in use by pid ${process.pid} (${portHolders(port)[0]!.command}); stop it, or choose another COMFYUI_PORT_START`,
    ]);
  });

  it('counts a child of the instance\'s process as the instance (a launcher that forks), and nothing else', async () => {
    const port = await freePorts(1);
    const child = execa(PYTHON, ['-c', `import socket,time\ns=socket.socket(); s.bind(("127.0.0.1", ${port})); s.listen(); time.sleep(60)`], { reject: false });
    let exited = '';
    void child.then((result) => (exited = `the child exited (${result.exitCode}): ${result.stderr}`));
    try {
      await waitFor('the child listening', () => {
        // A bind that fails ends the child at once: say why, not a timeout 20 s later.
        if (exited) throw new Error(exited);
        return listeningSockets(port)!.inodes.size > 0;
      });
      expect(portHolders(port).map((h) => h.pid)).toEqual([child.pid]);
      expect(descendsFrom(child.pid!, process.pid)).toBe(true);
      expect(portOwner(port, process.pid).owner).toBe('instance');
      expect(portOwner(port, child.pid).owner).toBe('instance');
      expect(descendsFrom(process.pid, child.pid!)).toBe(false);
    } finally {
      child.kill('SIGKILL');
      await child;
    }
  });
});

describe('a listener found among the listeners', () => {
  // Records as /proc/net/tcp prints them: 149 characters and a newline.
  const record = (sl: number, port: number, state: string, inode: number) =>
    `${String(sl).padStart(4)}: 0100007F:${port.toString(16).toUpperCase().padStart(4, '0')} 00000000:0000 ${state} 00000000:00000000 00:00000000 00000000     0        0 ${inode} 1 0000000000000000 100 0 0 10 0`.padEnd(149) + '\n';
  const header = '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode'.padEnd(149) + '\n';
  // Made before the tests run, not as the file loads: a filtered run (-t) runs no afterAll here.
  let dir = '';
  beforeAll(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'gpu-boot-ports-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const table = (name: string, text: string) => {
    const file = path.join(dir, name);
    writeFileSync(file, text);
    return file;
  };

  it('is taken at its record; one in another state ends the search, and so does a table that cannot be read', () => {
    const seen: string[] = [];
    const accept = (wanted: string) => (inode: string) => (seen.push(inode), inode === wanted);
    const file = table('tcp', header + record(0, 8000, '0A', 111) + record(1, 8188, '0A', 222) + record(2, 8188, '0A', 333) + record(3, 8188, '01', 444) + record(4, 8188, '0A', 555));
    expect(acceptedListener(file, 8188, accept('222'))).toBe(true);
    // Only the listeners on the port were asked about, up to the one taken.
    expect(seen).toEqual(['222']);
    seen.length = 0;
    expect(acceptedListener(file, 8188, accept('333'))).toBe(true);
    expect(seen).toEqual(['222', '333']);
    seen.length = 0;
    // Past the first record in another state nothing is asked: the caller reads the whole table.
    expect(acceptedListener(file, 8188, accept('555'))).toBe(false);
    expect(seen).toEqual(['222', '333']);
    expect(acceptedListener(file, 9999, accept('111'))).toBe(false);
    expect(acceptedListener(path.join(dir, 'missing'), 8188, accept('222'))).toBe(false);
  });

  it('reads no further than the record it takes (the rest of a real table is the kernel\'s walk of every connection)', async () => {
    const fifoDir = mkdtempSync(path.join(os.tmpdir(), 'gpu-boot-ports-fifo-'));
    const fifo = path.join(fifoDir, 'tcp');
    await execa('mkfifo', [fifo]);
    // The writer gives the header and one record, then nothing for 30 s: a read past them would wait, then find the end and say false.
    const writer = execa(PYTHON, ['-c', `import sys,time\nf=open(sys.argv[1],"w")\nf.write(sys.argv[2])\nf.flush()\ntime.sleep(30)`, fifo, header + record(0, 8188, '0A', 222)], { reject: false });
    try {
      // In a child of its own: a FIFO blocks whoever opens or reads it, and this worker must stay free to time out.
      const reader = [
        `const { acceptedListener } = await import(${JSON.stringify(pathToFileURL(path.join(ROOT, 'dist', 'instances', 'ports.js')).href)});`,
        `process.stdout.write(String(acceptedListener(${JSON.stringify(fifo)}, 8188, (inode) => inode === '222')));`,
      ].join('\n');
      const found = await execa(process.execPath, ['--input-type=module', '-e', reader], { timeout: 20_000, reject: false });
      expect({ stdout: found.stdout, exitCode: found.exitCode, timedOut: found.timedOut }).toEqual({ stdout: 'true', exitCode: 0, timedOut: false });
    } finally {
      writer.kill('SIGKILL');
      await writer;
      rmSync(fifoDir, { recursive: true, force: true });
    }
  }, 45_000);

  it('answers as the whole table does, for real sockets: this process\'s listener, and not another pid\'s', async () => {
    const port = await freePorts(1);
    await hold(port);
    expect(acceptedListener('/proc/net/tcp', port, (inode) => listeningSockets(port)!.inodes.has(inode))).toBe(true);
    expect(portOwner(port, process.pid, 4)).toEqual({ owner: 'instance', holders: [{ pid: process.pid, command: portHolders(port)[0]!.command }] });
    expect(portOwner(port, 4194311, 4).owner).toBe('other');
  });
});

describe('the tests\' free ports', () => {
  it('skips a port in TIME_WAIT: Node could listen on it (SO_REUSEADDR), a plain bind as Python\'s cannot; freePorts does not hand it out', async () => {
    const port = await freePorts(1);
    // A server that closes first leaves its side of the connection in TIME_WAIT, on its own port.
    const server = net.createServer((socket) => socket.end());
    await new Promise<void>((resolve) => server.listen({ port, host: '127.0.0.1' }, resolve));
    await new Promise<void>((resolve) => net.connect(port, '127.0.0.1').on('close', () => resolve()).resume());
    await new Promise((resolve) => server.close(resolve));
    expect(portsInUse().has(port)).toBe(true);
    const bind = await execa(PYTHON, ['-c', `import socket\nsocket.socket().bind(("127.0.0.1", ${port}))`], { reject: false });
    expect(bind.exitCode).toBe(1);
    expect(bind.stderr).toContain('Address already in use');
    // freePorts' first random pick lands on that port: it is passed over for another.
    const random = vi.spyOn(Math, 'random').mockReturnValueOnce((port - 20000 + 0.5) / (12000 - 1));
    try {
      const picked = await freePorts(1);
      // The first pick was that port; another pick followed (more than one if it too was in use).
      expect(random.mock.calls.length).toBeGreaterThanOrEqual(2);
      expect(20000 + Math.floor((random.mock.results[0]!.value as number) * (12000 - 1))).toBe(port);
      expect(picked).not.toBe(port);
    } finally {
      random.mockRestore();
    }
  });
});

describe('/ready counts only the instance\'s own answer', () => {
  it('PM2 silent: 503 saying so; the instance not in PM2: 503 naming the holder; PM2\'s pid holding it: 200', async () => {
    const { readiness } = await import('../src/health/health.js');
    const { BootState } = await import('../src/health/state.js');
    const { captureLogger } = await import('./helpers/logger.js');
    const port = await freePorts(1);
    const { createServer } = await import('node:http');
    const server = createServer((_req, res) => res.end('{}'));
    servers.push(server as unknown as net.Server);
    await new Promise<void>((resolve) => server.listen({ port, host: '127.0.0.1' }, resolve));
    const state = new BootState();
    state.phase = 'running';
    state.instances = [{ name: 'comfyui-gpu0', gpuIndex: 0, port } as unknown as (typeof state.instances)[number]];
    const deps = (list: unknown) => ({ state, logger: captureLogger().logger, probeHost: '127.0.0.1', listInstances: async () => list as never });
    expect(await readiness(deps(undefined))).toMatchObject({ ready: false, reason: "PM2 does not answer: cannot tell who serves the instances' ports" });
    const absent = await readiness(deps([]));
    expect(absent.ready).toBe(false);
    expect(absent.reason).toContain(`port ${port} of comfyui-gpu0 is held by pid ${process.pid} (`);
    expect(await readiness(deps([{ name: 'comfyui-gpu0', pid: process.pid, status: 'online', restarts: 0 }]))).toMatchObject({ ready: true });
    // Another pid in PM2's list: the answer is someone else's.
    expect((await readiness(deps([{ name: 'comfyui-gpu0', pid: 4194311, status: 'online', restarts: 0 }]))).ready).toBe(false);
  });
});

describe('binding as the instance will', () => {
  it('an IPv6 address is bound IPv6-only, as asyncio does: an IPv4 listener on the port does not make it busy', async () => {
    const { bindProblem } = await import('../src/instances/ports.js');
    const port = await freePorts(1);
    await hold(port, '0.0.0.0');
    expect(await bindProblem(['0.0.0.0'], port)).toBe('in-use');
    expect(await bindProblem(['::1'], port)).toBeUndefined();
    // An address this host does not have (TEST-NET-1): no socket can bind it, nothing is sent.
    expect(await bindProblem(['192.0.2.1'], port)).toBe('no-address');
  });
});

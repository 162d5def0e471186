import net from 'node:net';
import { execa } from 'execa';
import { afterEach, describe, expect, it } from 'vitest';
import { descendsFrom, instancePortProblems, listeningSockets, portHolders, portIsFree, portOwner } from '../src/instances/ports.js';
import { freePorts, portsInUse, waitFor } from './helpers/boot.js';
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

describe('the tests\' free ports', () => {
  it('skips a port in TIME_WAIT: Node could listen on it (SO_REUSEADDR), a plain bind as Python\'s cannot', async () => {
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

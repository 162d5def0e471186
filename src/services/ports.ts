import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import net from 'node:net';
import { procStat } from './processes.js';

/**
 * Who holds a TCP port: the kernel's table of listening sockets (/proc/net/tcp, tcp6) gives the
 * socket's inode, and /proc/<pid>/fd gives the processes that hold it. That is how gpu-boot tells
 * "an instance answers" from "this instance answers": a port someone else took answers HTTP too.
 */

export interface PortHolder {
  pid: number;
  /** The command line, shortened; '' when it cannot be read. */
  command: string;
}

const LISTEN = '0A';

/** Inodes of the sockets listening on `port`, IPv4 and IPv6. */
export function listeningInodes(port: number): Set<string> {
  const inodes = new Set<string>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
      const fields = line.trim().split(/\s+/);
      const local = fields[1];
      if (!local || fields[3] !== LISTEN) continue;
      if (Number.parseInt(local.slice(local.lastIndexOf(':') + 1), 16) === port && fields[9] && fields[9] !== '0') inodes.add(fields[9]);
    }
  }
  return inodes;
}

function commandOf(pid: number): string {
  try {
    const command = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean).join(' ');
    return command.length > 120 ? `${command.slice(0, 117)}...` : command;
  } catch {
    return '';
  }
}

/** The processes holding a socket that listens on `port` (those whose /proc/<pid>/fd this process can read). */
export function portHolders(port: number): PortHolder[] {
  const inodes = listeningInodes(port);
  if (inodes.size === 0) return [];
  const wanted = new Set([...inodes].map((i) => `socket:[${i}]`));
  const holders: PortHolder[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${name}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      let target: string;
      try {
        target = readlinkSync(`/proc/${name}/fd/${fd}`);
      } catch {
        continue;
      }
      if (wanted.has(target)) {
        const pid = Number(name);
        holders.push({ pid, command: commandOf(pid) });
        break;
      }
    }
  }
  return holders;
}

/** Is `pid` the process `ancestor` or one of its descendants? */
export function descendsFrom(pid: number, ancestor: number): boolean {
  let current: number | undefined = pid;
  for (let hops = 0; current !== undefined && current > 1 && hops < 64; hops += 1) {
    if (current === ancestor) return true;
    current = procStat(current)?.ppid;
  }
  return false;
}

/**
 * Whose is the socket listening on `port`: `instance` when a holder is `pid` or its child,
 * `other` (with the holders) when only other processes hold it, `unknown` when the holders cannot
 * be seen from here (another user's processes, as non-root) or nothing listens.
 */
export function portOwner(port: number, pid: number | undefined): { owner: 'instance' | 'other' | 'unknown' | 'none'; holders: PortHolder[] } {
  if (listeningInodes(port).size === 0) return { owner: 'none', holders: [] };
  const holders = portHolders(port);
  if (holders.length === 0) return { owner: 'unknown', holders };
  if (pid !== undefined && pid > 0 && holders.some((h) => descendsFrom(h.pid, pid))) return { owner: 'instance', holders };
  return { owner: 'other', holders };
}

export function describeHolders(holders: PortHolder[]): string {
  if (holders.length === 0) return 'another process (not visible from here)';
  return holders.map((h) => `pid ${h.pid}${h.command ? ` (${h.command})` : ''}`).join(', ');
}

/** COMFYUI_LISTEN's addresses (a comma-separated list, as ComfyUI's --listen takes). */
export function listenAddresses(listen: string): string[] {
  return listen.split(',').map((a) => a.trim()).filter(Boolean);
}

/** Can `port` be bound on every address of `listen` now? The way an instance will bind it. */
export async function portIsFree(listen: string[], port: number): Promise<boolean> {
  for (const host of listen) {
    const free = await new Promise<boolean>((resolve) => {
      const server = net.createServer();
      server.once('error', (error: NodeJS.ErrnoException) => resolve(error.code !== 'EADDRINUSE' && error.code !== 'EACCES'));
      server.listen({ port, host, exclusive: true }, () => server.close(() => resolve(true)));
    });
    if (!free) return false;
  }
  return true;
}

/**
 * Problems with the instances' ports before anything starts: each port that cannot be bound,
 * naming the instance and, where readable, the process holding it.
 */
export async function instancePortProblems(listen: string[], instances: ReadonlyArray<{ name: string; port: number }>): Promise<string[]> {
  const problems: string[] = [];
  for (const instance of instances) {
    if (await portIsFree(listen, instance.port)) continue;
    problems.push(
      `COMFYUI_PORT_START: port ${instance.port} (for ${instance.name}) is in use by ${describeHolders(portHolders(instance.port))}; stop it, or choose another COMFYUI_PORT_START`,
    );
  }
  return problems;
}

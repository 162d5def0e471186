import { closeSync, openSync, readdirSync, readFileSync, readlinkSync, readSync } from 'node:fs';
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

const TABLES = ['/proc/net/tcp', '/proc/net/tcp6'] as const;

/**
 * One record of /proc/net/tcp or tcp6 (`sl local_address rem_address st tx_queue:rx_queue
 * tr:tm->when retrnsmt uid timeout inode`): its state, local port, owner's uid and inode ('0' for
 * none). Undefined for a blank line.
 */
export function tcpRecord(line: string): { state: string; port: number; uid: number; inode: string } | undefined {
  const fields = line.trim().split(/\s+/);
  const local = fields[1];
  if (!local) return undefined;
  return { state: fields[3] ?? '', port: Number.parseInt(local.slice(local.lastIndexOf(':') + 1), 16), uid: Number(fields[7]), inode: fields[9] ?? '0' };
}

/** A record of /proc/net/tcp is 150 bytes (tcp6's are longer): read one at a time, the kernel makes no more than it is asked for. */
const RECORD_BYTES = 150;

/**
 * Is there a socket listening on `port` in `table` whose inode `accept` takes? Read record by record,
 * only as far as needed: the kernel lists the listening sockets first, each read makes only the
 * records it is asked for, and the rest of the table is its walk of the whole hash table of
 * connections (262,144 buckets on this project's machine, more on a large GPU host: ~4 ms of kernel
 * CPU per table, connections or none). So the usual answer, found among the listeners, costs
 * ~0.4 ms. False when none is found before the first record in another state, or the table cannot
 * be read: the caller then reads the whole table and decides (no order of the kernel's is relied on
 * for a negative answer).
 */
export function acceptedListener(table: string, port: number, accept: (inode: string) => boolean): boolean {
  let fd: number;
  try {
    fd = openSync(table, 'r');
  } catch {
    return false;
  }
  try {
    const buffer = Buffer.alloc(RECORD_BYTES);
    let text = '';
    let header = true;
    for (;;) {
      const read = readSync(fd, buffer, 0, RECORD_BYTES, null);
      if (read === 0) return false;
      text += buffer.toString('latin1', 0, read);
      for (let end = text.indexOf('\n'); end >= 0; end = text.indexOf('\n')) {
        const record = tcpRecord(text.slice(0, end));
        text = text.slice(end + 1);
        if (header) {
          header = false;
          continue;
        }
        if (record?.state !== LISTEN) return false;
        if (record.port === port && record.inode !== '0' && accept(record.inode)) return true;
      }
    }
  } catch {
    return false;
  } finally {
    closeSync(fd);
  }
}

/**
 * The sockets listening on `port` (in `tables`, both by default): their inodes and owners' uids.
 * Undefined when /proc/net cannot be read. Each table costs ~4 ms of the kernel's walk of its
 * whole hash table here, however few sockets there are (see acceptedListener).
 */
export function listeningSockets(port: number, tables: readonly string[] = TABLES): { inodes: Set<string>; uids: Set<number> } | undefined {
  const inodes = new Set<string>();
  const uids = new Set<number>();
  let readable = false;
  for (const table of tables) {
    let text: string;
    try {
      text = readFileSync(table, 'utf8');
      readable = true;
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const record = tcpRecord(line);
      if (record?.state === LISTEN && record.port === port && record.inode !== '0') {
        inodes.add(record.inode);
        uids.add(record.uid);
      }
    }
  }
  return readable ? { inodes, uids } : undefined;
}

function uidOf(pid: number): number | undefined {
  try {
    const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('Uid:'));
    return line ? Number(line.split(/\s+/)[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** The process's name (/proc/<pid>/comm), never its arguments: they can hold someone's token, and /ready is unauthenticated. */
function commandOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

/** Does process `pid` hold one of the sockets `wanted` (as /proc/<pid>/fd's links name them)? False when unreadable. */
function holdsSocket(pid: string, wanted: ReadonlySet<string>): boolean {
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return false;
  }
  for (const fd of fds) {
    try {
      if (wanted.has(readlinkSync(`/proc/${pid}/fd/${fd}`))) return true;
    } catch {
      // closed meanwhile
    }
  }
  return false;
}

const socketLinks = (inodes: ReadonlySet<string>) => new Set([...inodes].map((i) => `socket:[${i}]`));

/** The processes holding a socket that listens on `port` (those whose /proc/<pid>/fd this process can read). */
export function portHolders(port: number, sockets = listeningSockets(port)): PortHolder[] {
  if (!sockets || sockets.inodes.size === 0) return [];
  const wanted = socketLinks(sockets.inodes);
  const holders: PortHolder[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    if (holdsSocket(name, wanted)) {
      const pid = Number(name);
      holders.push({ pid, command: commandOf(pid) });
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
export function portOwner(port: number, pid: number | undefined, family?: 4 | 6): { owner: 'instance' | 'other' | 'unknown' | 'none'; holders: PortHolder[] } {
  // The usual answer first: the instance's own process holds it (one folder read, not all of /proc),
  // asked of the table of the family it was probed on before the other is read at all.
  const holdsOne = (inodes: ReadonlySet<string>) => pid !== undefined && pid > 0 && inodes.size > 0 && holdsSocket(String(pid), socketLinks(inodes));
  const [firstTable, secondTable] = family === 6 ? [TABLES[1], TABLES[0]] : TABLES;
  // Found among the listeners, without the kernel's walk of its connections.
  if (pid !== undefined && pid > 0 && acceptedListener(firstTable, port, (inode) => holdsOne(new Set([inode])))) return { owner: 'instance', holders: [{ pid, command: commandOf(pid) }] };
  const first = listeningSockets(port, [firstTable]);
  if (first && holdsOne(first.inodes)) return { owner: 'instance', holders: [{ pid: pid!, command: commandOf(pid!) }] };
  const second = listeningSockets(port, [secondTable]);
  const sockets = first && second ? { inodes: new Set([...first.inodes, ...second.inodes]), uids: new Set([...first.uids, ...second.uids]) } : (first ?? second);
  if (!sockets) return { owner: 'unknown', holders: [] };
  if (sockets.inodes.size === 0) return { owner: 'none', holders: [] };
  // Without the instance's pid nothing can be told apart: not "someone else".
  if (pid === undefined || pid <= 0) return { owner: 'unknown', holders: [] };
  if (second && holdsOne(second.inodes)) return { owner: 'instance', holders: [{ pid, command: commandOf(pid) }] };
  const holders = portHolders(port, sockets);
  if (holders.length === 0) {
    // Another user's /proc/<pid>/fd needs CAP_SYS_PTRACE (root in a default Docker container lacks it):
    // the socket's owner uid, which /proc/net/tcp shows to anyone, must then be the instance's.
    const uid = uidOf(pid);
    if (uid === undefined) return { owner: 'unknown', holders };
    return sockets.uids.has(uid) ? { owner: 'instance', holders } : { owner: 'other', holders: [{ pid: 0, command: `a process of uid ${[...sockets.uids].join(', ')}` }] };
  }
  if (holders.some((h) => descendsFrom(h.pid, pid))) return { owner: 'instance', holders };
  return { owner: 'other', holders };
}

export function describeHolders(holders: PortHolder[]): string {
  if (holders.length === 0) return 'another process (not visible from here)';
  return holders.map((h) => (h.pid > 0 ? `pid ${h.pid}${h.command ? ` (${h.command})` : ''}` : h.command)).join(', ');
}

/** COMFYUI_LISTEN's addresses (a comma-separated list, as ComfyUI's --listen takes). */
export function listenAddresses(listen: string): string[] {
  return listen.split(',').map((a) => a.trim()).filter(Boolean);
}

/** Can `port` be bound on every address of `listen` now, the way an instance binds it (IPv6 only for an IPv6 address, as asyncio does)? */
export async function bindProblem(listen: string[], port: number): Promise<'in-use' | 'denied' | 'no-address' | undefined> {
  for (const host of listen) {
    const problem = await new Promise<'in-use' | 'denied' | 'no-address' | undefined>((resolve) => {
      const server = net.createServer();
      server.once('error', (error: NodeJS.ErrnoException) =>
        resolve(error.code === 'EADDRINUSE' ? 'in-use' : error.code === 'EACCES' ? 'denied' : error.code === 'EADDRNOTAVAIL' ? 'no-address' : undefined),
      );
      server.listen({ port, host, exclusive: true, ipv6Only: net.isIPv6(host) }, () => server.close(() => resolve(undefined)));
    });
    if (problem) return problem;
  }
  return undefined;
}

export async function portIsFree(listen: string[], port: number): Promise<boolean> {
  return (await bindProblem(listen, port)) === undefined;
}

/**
 * Problems with the instances' ports before anything starts: each port that cannot be bound,
 * naming the instance and, where readable, the process holding it.
 */
export async function instancePortProblems(listen: string[], instances: ReadonlyArray<{ name: string; port: number }>): Promise<string[]> {
  const problems: string[] = [];
  // Each port on its own, side by side: 16 listen-and-close round trips one after another were on the way to the first spawn.
  const found = await Promise.all(instances.map((instance) => bindProblem(listen, instance.port)));
  for (const [i, instance] of instances.entries()) {
    const problem = found[i];
    if (problem === 'in-use') {
      problems.push(`COMFYUI_PORT_START: port ${instance.port} (for ${instance.name}) is in use by ${describeHolders(portHolders(instance.port))}; stop it, or choose another COMFYUI_PORT_START`);
    } else if (problem === 'denied') {
      problems.push(`COMFYUI_PORT_START: port ${instance.port} (for ${instance.name}) may not be bound by this user (below 1024 without root?); choose another COMFYUI_PORT_START`);
    } else if (problem === 'no-address') {
      problems.push(`COMFYUI_LISTEN: an address in it is not one of this host's, so ${instance.name} could not listen on port ${instance.port}`);
    }
  }
  return problems;
}

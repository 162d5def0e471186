import net from 'node:net';
import type { Config } from './config.js';
import { BootError, ConfigError, ExitCode } from './errors.js';
import type { StatusReport } from './health/health.js';
import type { Readiness } from './health/rules.js';

/**
 * `gpu-boot status`: what an operator asks first, read from the running boot's health server
 * (/status and /ready on HEALTH_BIND:HEALTH_PORT). A table at a terminal, JSON with --json. Exit 0
 * when the container is ready, 1 when it answers but is not ready, 69 when no boot answers there.
 * It only reads: nothing is started, stopped or written, and /status holds no secret value.
 */

export interface StatusResult {
  url: string;
  ready: Readiness;
  status: StatusReport;
}

/** Where the boot's health server answers from inside the container: a wildcard bind is reached on loopback. */
export function healthUrl(config: Pick<Config, 'healthPort' | 'healthBind'>): string {
  if (config.healthPort === 0) {
    throw new ConfigError('invalid configuration', ['HEALTH_PORT: 0 turns the health server off, and status reads it: set the port the boot serves on']);
  }
  const bind = config.healthBind;
  // Node's `::` listener takes IPv4 too, and ::1 is missing where IPv6 is turned off: both wildcards on 127.0.0.1.
  const host = bind === '0.0.0.0' || bind === '' || bind === '::' ? '127.0.0.1' : bind;
  return `http://${net.isIPv6(host) ? `[${host}]` : host}:${config.healthPort}`;
}

async function getJson(url: string, timeoutMs: number): Promise<{ status: number; body: unknown }> {
  const response = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  const text = await response.text();
  try {
    return { status: response.status, body: JSON.parse(text) as unknown };
  } catch {
    return { status: response.status, body: undefined };
  }
}

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

/** The bodies as gpu-boot's health server sends them: the fields the table reads, of the right kinds. */
function looksLikeReady(body: unknown): body is Readiness {
  return isObject(body) && typeof body.ready === 'boolean' && typeof body.reason === 'string' && isObject(body.instances);
}

function looksLikeStatus(body: unknown): body is StatusReport {
  return (
    isObject(body) &&
    typeof body.phase === 'string' &&
    typeof body.uptimeSeconds === 'number' &&
    Array.isArray(body.phases) &&
    Array.isArray(body.instances) &&
    body.instances.every((i) => isObject(i) && Array.isArray(i.nodes)) &&
    isObject(body.rotation)
  );
}

/**
 * /ready and /status of the boot at `base`. No answer, or an answer that is not gpu-boot's
 * (another server on the port, or the boot's own 500), is exit 69 (EX_UNAVAILABLE), saying which.
 */
export async function readStatus(base: string, timeoutMs = 5000): Promise<StatusResult> {
  let ready: { status: number; body: unknown };
  let status: { status: number; body: unknown };
  try {
    [ready, status] = await Promise.all([getJson(`${base}/ready`, timeoutMs), getJson(`${base}/status`, timeoutMs)]);
  } catch (error) {
    const cause = (error as { cause?: { code?: string } }).cause?.code ?? (error as Error).name;
    throw new BootError(ExitCode.unavailable, `no gpu-boot answers at ${base} (${cause === 'TimeoutError' ? `no answer within ${timeoutMs} ms` : cause ?? 'error'}): is it running, on HEALTH_PORT=${new URL(base).port}?`);
  }
  const bad = [
    ...((ready.status === 200 || ready.status === 503) && looksLikeReady(ready.body) ? [] : [`/ready (HTTP ${ready.status})`]),
    ...(status.status === 200 && looksLikeStatus(status.body) ? [] : [`/status (HTTP ${status.status})`]),
  ];
  if (bad.length) throw new BootError(ExitCode.unavailable, `the server at ${base} answered ${bad.join(' and ')}, but not as gpu-boot's health server does: another process on HEALTH_PORT, or the boot failed to say (its log tells)`);
  return { url: base, ready: ready.body as Readiness, status: status.body as StatusReport };
}

/**
 * Texts in the table come from the instances' own output (an exception's message, a node's name as
 * its import lines give it; masked by the boot): control and direction-changing characters, which a
 * terminal would obey (clear the screen, print a fake table), are shown as `?`. One for one, so the
 * columns stay aligned.
 */
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

/** Columns padded to their widest cell; the last column is not padded. */
function table(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => (r[c] ?? '').length)));
  const line = (cells: string[]) => `  ${cells.map((cell, c) => (c === cells.length - 1 ? cell : cell.padEnd(widths[c]!))).join('  ')}`.trimEnd();
  return [line(header), ...rows.map(line)];
}

function duration(seconds: number): string {
  if (seconds < 60) return `${seconds} s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m} min ${seconds % 60} s`;
  const h = Math.floor(m / 60);
  return `${h} h ${m % 60} min`;
}

function shorten(text: string, max: number): string {
  const one = text.replace(/\s+/g, ' ').trim();
  return one.length <= max ? one : `${one.slice(0, max - 1)}…`;
}

function lastExit(instance: StatusReport['instances'][number]): string {
  const exit = instance.lastExit;
  if (!exit) return '-';
  const how = exit.signal ? `signal ${exit.signal}` : `exit ${exit.code ?? '?'}`;
  const at = exit.at.replace(/\.\d+Z$/, 'Z');
  return `${how} at ${at}${instance.lastError ? `: ${shorten(instance.lastError, 100)}` : ''}`;
}

/** The table an operator reads; every text in it comes from /status and /ready, which are masked. */
export function formatStatus({ url, ready, status }: StatusResult): string {
  const counts = ready.counts ? ` (${ready.counts.ready} of ${ready.counts.total} instance(s) ready, ${ready.counts.required} required)` : '';
  const out = [`gpu-boot at ${url}: ${status.phase}, ${ready.ready ? 'READY' : 'NOT READY'}${counts}, up ${duration(status.uptimeSeconds)}`];
  if (!ready.ready) out.push(`  why: ${ready.reason}`);

  out.push('', 'GPUs');
  const devices = status.gpus?.devices ?? [];
  if (devices.length === 0) out.push('  (not detected yet)');
  else {
    out.push(
      ...table(
        ['DEVICE', 'GPU', 'MODEL', 'MEMORY', 'UUID', 'USED'],
        devices.map((d) => [d.id, String(d.gpu), d.profile ? `${d.name} ${d.profile}` : d.name, `${Math.round((d.memoryMiB / 1024) * 10) / 10} GiB`, d.uuid || '-', d.used ? 'yes' : `no: ${d.why}`]),
      ),
    );
  }

  out.push('', 'Instances');
  if (status.instances.length === 0) out.push('  (none started yet)');
  else {
    out.push(
      ...table(
        ['NAME', 'DEVICE', 'STATE', 'PORT', 'READY', 'RESTARTS', 'LAST EXIT'],
        status.instances.map((i) => {
          const out = i.health?.out;
          const isReady = ready.instances[i.name] === true;
          const why = ready.notReady?.[i.name];
          return [
            i.name,
            i.device,
            out ? `${i.state} (${out.kind})` : i.state,
            String(i.port),
            isReady ? 'yes' : why ? `no: ${shorten(why, 50)}` : 'no',
            String(i.restarts ?? '-'),
            lastExit(i),
          ];
        }),
      ),
    );
  }

  out.push('', 'Nodes');
  const withNodes = status.instances.filter((i) => i.nodes.length > 0);
  if (withNodes.length === 0) out.push('  (no node import reported yet)');
  else {
    out.push(
      ...table(
        ['INSTANCE', 'LOADED', 'FAILED'],
        withNodes.map((i) => {
          const loaded = i.nodes.filter((n) => n.loaded).map((n) => n.name);
          const failed = i.nodes.filter((n) => !n.loaded).map((n) => (n.error ? `${n.name} (${shorten(n.error, 60)})` : n.name));
          return [i.name, loaded.length ? `${loaded.length}: ${shorten(loaded.join(', '), 60)}` : '0', failed.length ? failed.join('; ') : '-'];
        }),
      ),
    );
  }

  out.push('', 'Rotation');
  const last = status.rotation.last;
  const lastText = last
    ? `last ${last.ok ? 'ok' : 'FAILED'} at ${last.at.replace(/\.\d+Z$/, 'Z')} (${last.reason}): ${last.variables.length} variable(s) changed, ${last.instances.length} instance(s) restarted${last.error ? `: ${shorten(last.error, 80)}` : ''}`
    : 'none yet';
  out.push(`  ${status.rotation.ok} ok, ${status.rotation.failed} failed; ${status.rotation.rotating ? 'rotating now; ' : ''}${lastText}`);

  out.push('', 'Phases');
  out.push(status.phases.length ? `  ${status.phases.map((p) => `${p.name} ${p.ms} ms`).join(', ')}` : '  (none yet)');
  if (status.lastError) out.push('', `Last error: ${shorten(status.lastError, 200)}`);
  return `${out.map((line) => line.replace(CONTROL, '?')).join('\n')}\n`;
}

/** Exit status of `gpu-boot status`: 0 ready, 1 answering but not ready. */
export function statusExitCode(result: StatusResult): number {
  return result.ready.ready ? ExitCode.ok : ExitCode.failed;
}

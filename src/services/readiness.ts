import http from 'node:http';
import { setTimeout as delay } from 'node:timers/promises';

/**
 * An instance is ready when it answers HTTP on its port (ComfyUI cannot send
 * PM2's IPC 'ready'). Any HTTP status counts: the server is up and serving.
 */
export function probeHttp(host: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const request = http.get({ host, port, path: '/', timeout: timeoutMs, agent: false }, (response) => {
      response.resume();
      resolve(true);
    });
    request.on('timeout', () => request.destroy());
    request.on('error', () => resolve(false));
  });
}

/**
 * Poll until the port answers or the deadline passes: 25 ms at first, growing
 * to 500 ms, so a fast instance is seen at once and a slow one is not hammered.
 */
export async function waitForHttp(
  host: string,
  port: number,
  deadline: number,
  signal?: AbortSignal,
): Promise<boolean> {
  let interval = 25;
  while (!signal?.aborted) {
    const left = deadline - Date.now();
    if (left <= 0) return false;
    if (await probeHttp(host, port, Math.min(2000, left))) return true;
    try {
      await delay(Math.min(interval, Math.max(0, deadline - Date.now())), undefined, { signal });
    } catch {
      return false;
    }
    interval = Math.min(500, Math.round(interval * 1.5));
  }
  return false;
}

import type { Server, ServerResponse } from 'node:http';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { capReason, detectPlatform, REALLOCATE_REASON_MAX, requestReallocation, SALAD_IMDS_URL } from '../src/gpus/reallocate.js';
import { standInImds as sharedStandInImds } from './helpers/imds.js';

/** What SaladCloud sets in every container instance (values made up). */
const SALAD_ENV = { SALAD_MACHINE_ID: 'a1b2c3d4-machine', SALAD_CONTAINER_GROUP_ID: 'e5f6a7b8-group' };

/** The shared stand-in, each server closed after the test. */
async function standInImds(answer: (res: ServerResponse) => void) {
  const imds = await sharedStandInImds(answer);
  servers.push(imds.server);
  return imds;
}

const servers: Server[] = [];
afterEach(async () => {
  vi.restoreAllMocks();
  for (const server of servers.splice(0)) {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
});

describe('detectPlatform', () => {
  it('SaladCloud when both SALAD_MACHINE_ID and SALAD_CONTAINER_GROUP_ID are set', () => {
    expect(detectPlatform(SALAD_ENV)).toBe('saladcloud');
    expect(detectPlatform({ ...SALAD_ENV, PATH: '/usr/bin' })).toBe('saladcloud');
  });

  it('nothing elsewhere, or with only one of them, or with them empty', () => {
    expect(detectPlatform({})).toBeNull();
    expect(detectPlatform({ SALAD_MACHINE_ID: 'LOCAL_001' })).toBeNull();
    expect(detectPlatform({ SALAD_CONTAINER_GROUP_ID: 'g' })).toBeNull();
    expect(detectPlatform({ SALAD_MACHINE_ID: ' ', SALAD_CONTAINER_GROUP_ID: '' })).toBeNull();
    expect(detectPlatform({ RUNPOD_POD_ID: 'x', VAST_CONTAINERLABEL: 'y' })).toBeNull();
  });
});

describe('capReason', () => {
  it('keeps a short reason, trimmed; never empty; at most 1000 characters, no half surrogate pair', () => {
    expect(REALLOCATE_REASON_MAX).toBe(1000);
    expect(capReason('  no healthy GPU left (GPU 0: lost)  ')).toBe('no healthy GPU left (GPU 0: lost)');
    expect(capReason('')).toBe('gpu-boot: no reason given');
    expect(capReason(' \n ')).toBe('gpu-boot: no reason given');
    expect(capReason('x'.repeat(1500))).toBe('x'.repeat(1000));
    expect(capReason('x'.repeat(1000))).toBe('x'.repeat(1000));
    // 999 units, then a two-unit emoji across the limit: cut before it.
    expect(capReason(`${'x'.repeat(999)}\u{1F525}tail`)).toBe('x'.repeat(999));
  });
});

describe('requestReallocation', () => {
  it('the default IMDS is SaladCloud\'s link-local address (never called by a test)', () => {
    expect(SALAD_IMDS_URL).toBe('http://169.254.169.254');
  });

  it('on SaladCloud: POST /v1/reallocate, Metadata: true, JSON {"reason"}; 204 is ok', async () => {
    const imds = await standInImds((res) => res.writeHead(204).end());
    const result = await requestReallocation({ env: SALAD_ENV, imdsUrl: imds.url, reason: 'no healthy GPU left (GPU 0: nvidia-smi reports [GPU is lost])', timeoutMs: 5000 });
    expect(result).toEqual({ asked: true, ok: true, status: 204, platform: 'saladcloud' });
    expect(imds.seen).toHaveLength(1);
    const [request] = imds.seen;
    expect(request!.method).toBe('POST');
    expect(request!.url).toBe('/v1/reallocate');
    expect(request!.headers.metadata).toBe('true');
    expect(request!.headers['content-type']).toBe('application/json');
    expect(Object.keys(request!.headers).filter((h) => h.startsWith('x-forwarded'))).toEqual([]);
    expect(JSON.parse(request!.body)).toEqual({ reason: 'no healthy GPU left (GPU 0: nvidia-smi reports [GPU is lost])' });
  });

  it('a trailing slash on the URL does not double the path; a long reason is capped at 1000', async () => {
    const imds = await standInImds((res) => res.writeHead(204).end());
    await requestReallocation({ env: SALAD_ENV, imdsUrl: `${imds.url}/`, reason: 'r'.repeat(5000), timeoutMs: 5000 });
    expect(imds.seen.map((s) => s.url)).toEqual(['/v1/reallocate']);
    expect(JSON.parse(imds.seen[0]!.body)).toEqual({ reason: 'r'.repeat(1000) });
  });

  it('off SaladCloud nothing is requested', async () => {
    const imds = await standInImds((res) => res.writeHead(204).end());
    const fetchSpy = vi.spyOn(globalThis, 'fetch');
    for (const env of [{}, { SALAD_MACHINE_ID: 'LOCAL_001' }, { PATH: '/usr/bin' }]) {
      expect(await requestReallocation({ env, imdsUrl: imds.url, reason: 'no GPU', timeoutMs: 5000 })).toEqual({ asked: false, ok: false, platform: null });
    }
    expect(fetchSpy).not.toHaveBeenCalled();
    expect(imds.seen).toEqual([]);
  });

  it('a refusal: ok false with the status and the IMDS\'s words', async () => {
    const imds = await standInImds((res) =>
      res.writeHead(403, { 'Content-Type': 'application/json' }).end(JSON.stringify({ title: 'Forbidden', detail: 'missing Metadata header' })),
    );
    const result = await requestReallocation({ env: SALAD_ENV, imdsUrl: imds.url, reason: 'x', timeoutMs: 5000 });
    expect(result).toEqual({
      asked: true,
      ok: false,
      status: 403,
      platform: 'saladcloud',
      error: 'the IMDS answered 403 Forbidden: {"title":"Forbidden","detail":"missing Metadata header"}',
    });
  });

  it('an IMDS that never answers: given up after timeoutMs, without throwing', async () => {
    const imds = await standInImds(() => undefined);
    const startedAt = Date.now();
    const result = await requestReallocation({ env: SALAD_ENV, imdsUrl: imds.url, reason: 'x', timeoutMs: 300 });
    expect(Date.now() - startedAt).toBeGreaterThanOrEqual(290);
    expect(result).toEqual({ asked: true, ok: false, platform: 'saladcloud', error: 'the IMDS did not answer within 300 ms' });
    // The server may read the request after the client gave up (a busy machine): wait for it.
    for (let i = 0; i < 100 && imds.seen.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(imds.seen).toHaveLength(1);
  });

  it('a redirect is not followed', async () => {
    const target = await standInImds((res) => res.writeHead(204).end());
    const imds = await standInImds((res) => res.writeHead(307, { Location: `${target.url}/v1/reallocate` }).end());
    const result = await requestReallocation({ env: SALAD_ENV, imdsUrl: imds.url, reason: 'x', timeoutMs: 5000 });
    expect(result).toMatchObject({ asked: true, ok: false, platform: 'saladcloud' });
    expect(result.error).toMatch(/^the IMDS could not be reached: /);
    expect(target.seen).toEqual([]);
  });

  it('nothing listening, or a URL that is not http: ok false with the reason, never a throw', async () => {
    const closed = await standInImds(() => undefined);
    const url = closed.url;
    await new Promise((resolve) => closed.server.close(resolve));
    servers.splice(servers.indexOf(closed.server), 1);
    const refused = await requestReallocation({ env: SALAD_ENV, imdsUrl: url, reason: 'x', timeoutMs: 5000 });
    expect(refused).toEqual({ asked: true, ok: false, platform: 'saladcloud', error: 'the IMDS could not be reached: fetch failed (ECONNREFUSED)' });

    for (const imdsUrl of ['not a url', 'file:///etc/passwd', '']) {
      const result = await requestReallocation({ env: SALAD_ENV, imdsUrl, reason: 'x', timeoutMs: 5000 });
      expect(result, imdsUrl).toMatchObject({ asked: false, ok: false, platform: 'saladcloud' });
      expect(result.error, imdsUrl).toMatch(/^the IMDS URL ".*" is not an http URL$/);
    }
  });
});

/**
 * Asking the platform for another machine when this one is no good (no healthy GPU left).
 *
 * SaladCloud: its Instance Metadata Service (IMDS) at http://169.254.169.254 (port 80, reachable only
 * from inside a container instance) takes `POST /v1/reallocate` with `{"reason": "..."}` (1 to 1000
 * characters, reported to SaladCloud support) and answers 204. Every IMDS request must carry the
 * header `Metadata: true` and no X-Forwarded-* header (else 403), and must not go through a proxy
 * (Node's fetch uses none unless told to). See docs.salad.com/container-engine/imds and
 * SaladTechnologies/salad-cloud-imds-sdk-* (MetadataService.reallocate).
 */
export const SALAD_IMDS_URL = 'http://169.254.169.254';
export const REALLOCATE_PATH = '/v1/reallocate';
/** The IMDS refuses a longer reason (ReallocatePrototype: reason 1..1000 characters). */
export const REALLOCATE_REASON_MAX = 1000;

export type Platform = 'saladcloud';

export interface ReallocationResult {
  /** A request was sent (only on SaladCloud, with a usable URL). */
  asked: boolean;
  ok: boolean;
  status?: number;
  error?: string;
  platform: string | null;
}

/**
 * SaladCloud sets SALAD_MACHINE_ID and SALAD_CONTAINER_GROUP_ID in every container instance; both
 * are required, so that one copied into a local .env to name a worker does not count.
 */
export function detectPlatform(env: NodeJS.ProcessEnv): Platform | null {
  const set = (name: string): boolean => (env[name] ?? '').trim() !== '';
  return set('SALAD_MACHINE_ID') && set('SALAD_CONTAINER_GROUP_ID') ? 'saladcloud' : null;
}

/** The reason as the IMDS takes it: trimmed, never empty, at most 1000 UTF-16 units, no half surrogate pair at the cut. */
export function capReason(reason: string): string {
  let text = reason.trim() || 'gpu-boot: no reason given';
  if (text.length > REALLOCATE_REASON_MAX) {
    text = text.slice(0, REALLOCATE_REASON_MAX);
    const last = text.charCodeAt(text.length - 1);
    if (last >= 0xd800 && last <= 0xdbff) text = text.slice(0, -1);
  }
  return text;
}

function oneLine(text: string, max = 200): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max)}...` : flat;
}

/** Ask the platform to move this container to another machine; off SaladCloud nothing is sent. Never throws. */
export async function requestReallocation(options: { env: NodeJS.ProcessEnv; imdsUrl: string; reason: string; timeoutMs: number }): Promise<ReallocationResult> {
  const platform = detectPlatform(options.env);
  if (platform === null) return { asked: false, ok: false, platform: null };

  let url: URL;
  try {
    url = new URL(`${options.imdsUrl.replace(/\/+$/, '')}${REALLOCATE_PATH}`);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`not http: ${url.protocol}`);
  } catch {
    return { asked: false, ok: false, platform, error: `the IMDS URL "${oneLine(options.imdsUrl, 100)}" is not an http URL` };
  }
  const timeoutMs = Math.max(1, options.timeoutMs);
  try {
    const response = await fetch(url, {
      method: 'POST',
      headers: { Metadata: 'true', 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ reason: capReason(options.reason) }),
      // The IMDS never redirects: a redirect is someone else answering.
      redirect: 'error',
      signal: AbortSignal.timeout(timeoutMs),
    });
    if (response.ok) {
      await response.body?.cancel().catch(() => undefined);
      return { asked: true, ok: true, status: response.status, platform };
    }
    const body = await response.text().catch(() => '');
    return {
      asked: true,
      ok: false,
      status: response.status,
      platform,
      error: `the IMDS answered ${response.status}${response.statusText ? ` ${response.statusText}` : ''}${body.trim() ? `: ${oneLine(body)}` : ''}`,
    };
  } catch (error) {
    const err = error as Error & { cause?: { code?: string; message?: string } };
    if (err.name === 'TimeoutError' || err.name === 'AbortError') {
      return { asked: true, ok: false, platform, error: `the IMDS did not answer within ${timeoutMs} ms` };
    }
    const cause = err.cause?.code ?? err.cause?.message;
    return { asked: true, ok: false, platform, error: `the IMDS could not be reached: ${err.message}${cause ? ` (${cause})` : ''}` };
  }
}

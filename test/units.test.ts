import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { pm2HomeOf } from '../src/instances/pm2-host.js';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { SecretMasker } from '../src/log.js';
import { detection } from './helpers/gpus.js';
import { buildPlan, LAUNCHER, parseComfyArgs, probeHost } from '../src/instances/plan.js';
import { probeHttp, reportReadiness, waitForHttp } from '../src/instances/readiness.js';
import type { InstancePlan } from '../src/instances/plan.js';
import { captureLogger } from './helpers/logger.js';
import { freePorts } from './helpers/boot.js';

describe('SecretMasker', () => {
  it('masks every occurrence, the JSON-escaped form, and each line of a multi-line value', () => {
    const masker = new SecretMasker();
    masker.add('PEM', '-----BEGIN-----\nsecretLINE1\nsecretLINE2\n-----END-----');
    masker.add('TOKEN', 'tok"en\\x');
    expect(masker.mask('a secretLINE2 b')).toBe('a [masked:PEM] b');
    expect(masker.mask(JSON.stringify({ v: '-----BEGIN-----\nsecretLINE1\nsecretLINE2\n-----END-----' }))).toBe('{"v":"[masked:PEM]"}');
    expect(masker.mask(JSON.stringify('x tok"en\\x y'))).toBe('"x [masked:TOKEN] y"');
    expect(masker.mask('tok"en\\x twice tok"en\\x')).toBe('[masked:TOKEN] twice [masked:TOKEN]');
  });

  it('keeps the first name a value was known by, masks the longer of two overlapping values whole, and skips values under 4 characters', () => {
    const masker = new SecretMasker();
    masker.add('A', 'abcd');
    masker.add('node.A', 'abcd');
    masker.add('B', 'abcdefgh');
    masker.add('SHORT', 'xyz');
    expect(masker.mask('abcd abcdefgh xyz')).toBe('[masked:A] [masked:B] xyz');
  });

  it('tells apart 2,500 values of one provider (one long prefix), short and long at one position, the longest whole', () => {
    const masker = new SecretMasker();
    for (let n = 0; n < 500; n += 1) for (let k = 0; k < 5; k += 1) masker.add(`S_${n}_${k}`, `sk-proj-shared-prefix-${n}-${k}-tail`);
    masker.add('SHORT', 'sk-proj-sh');
    masker.add('LONGER', 'sk-proj-shared-prefix-7-3-tail-and-more');
    const line = 'x sk-proj-shared-prefix-499-4-tail y sk-proj-shared-prefix-7-3-tail-and-more z sk-proj-shx sk-proj-shared-prefix-12-';
    expect(masker.mask(line)).toBe('x [masked:S_499_4] y [masked:LONGER] z [masked:SHORT]x [masked:SHORT]ared-prefix-12-');
    // A path that shares the prefix and no value is left whole.
    expect(masker.mask('/tmp/sk-proj-shared-prefix/node_1')).toBe('/tmp/[masked:SHORT]ared-prefix/node_1');
    expect(masker.mask('/tmp/sk-proj-s/node_1')).toBe('/tmp/sk-proj-s/node_1');
  });
});

describe('SecretMasker property', () => {
  it('no registered value survives whole in a masked line, whatever overlaps', () => {
    // A tiny alphabet makes values overlap and contain each other often.
    // Up to 24 characters: values of 16 and more are indexed apart from shorter ones.
    const value = fc.string({ unit: fc.constantFrom('a', 'b', 'c', '"', '\\', '\n'), minLength: 4, maxLength: 24 });
    fc.assert(
      fc.property(fc.array(value, { minLength: 1, maxLength: 6 }), fc.array(fc.oneof(value, fc.string({ maxLength: 5 })), { maxLength: 12 }), (secrets, parts) => {
        const masker = new SecretMasker();
        secrets.forEach((v, i) => masker.add(`S${i}`, v));
        const line = parts.join('') + secrets.join('x');
        const masked = masker.mask(line);
        const jsonMasked = masker.mask(JSON.stringify({ line }));
        for (const v of secrets) {
          expect(masked.includes(v)).toBe(false);
          expect(jsonMasked.includes(JSON.stringify(v).slice(1, -1))).toBe(false);
        }
      }),
      // The first is what CI found: a value already known as a line of a longer one kept its JSON-escaped form unmasked.
      { numRuns: 500, examples: [[['\n""b\\', '""b\\', 'aaaa'], []]] },
    );
  });
});


describe('buildPlan', () => {
  it('one app per GPU, each on its own device and port, COMFY_ARGS appended', () => {
    const config = loadConfig({ WORKSPACE_PATH: '/w', COMFYUI_PORT_START: '9000', COMFY_ARGS: "--preview-method auto --extra-model-paths-config '/data/extra paths.yaml'" });
    const plan = buildPlan(config, detection(2), ['HF_TOKEN']);
    expect(plan.instances.map((i) => [i.name, i.port, i.script, i.cwd])).toEqual([
      ['comfyui-gpu0', 9000, '/w/ComfyUI/main.py', '/w/ComfyUI'],
      ['comfyui-gpu1', 9001, '/w/ComfyUI/main.py', '/w/ComfyUI'],
    ]);
    // Pinned by UUID, never by --cuda-device (ComfyUI would overwrite CUDA_VISIBLE_DEVICES with its index).
    expect(plan.instances[1]!.args).toEqual(['--listen', '0.0.0.0', '--port', '9001', '--temp-directory', '/w/instances/comfyui-gpu1', '--preview-method', 'auto', '--extra-model-paths-config', '/data/extra paths.yaml']);
    expect(plan.instances[1]!.env).toEqual({
      CUDA_DEVICE_ORDER: 'PCI_BUS_ID',
      CUDA_VISIBLE_DEVICES: 'GPU-1',
      GPU_INDEX: '1',
      GPU_UUID: 'GPU-1',
      GPU_DEVICE: 'gpu1',
      GPU_SLOT: '0',
      GPU_MODEL: 'NVIDIA H100 80GB HBM3',
      GPU_MEMORY_GB: '79.6',
      COMFYUI_PORT: '9001',
    });
    expect(plan.layout).toEqual({ instancesPerGpu: 1, devices: 2, minInstanceMemoryGb: 8, warnings: [] });
    expect(plan.pm2).toEqual({ killTimeoutMs: 5000, restartDelayMs: 1000, minUptimeMs: 10_000, maxRestarts: 1_000_000 });
    expect(plan.withheldVariables).toEqual(['HF_TOKEN']);
  });

  it('mock mode gets --cpu and no visible device; process_env keys go through the launcher, by name only', () => {
    const config = loadConfig({ WORKSPACE_PATH: '/w', GPU_MODE: 'mock' });
    const plan = buildPlan(config, detection(1), [], { processEnv: [{ file: '/w/ComfyUI/custom_nodes/hf/.env', keys: ['HF_TOKEN', 'B'] }], owner: { uid: 1000, gid: 1001 } });
    const app = plan.instances[0]!;
    expect(app.script).toBe(LAUNCHER);
    expect(app.args).toEqual(['--from', '/w/ComfyUI/custom_nodes/hf/.env:HF_TOKEN,B', '--', '/w/ComfyUI/main.py', '--listen', '0.0.0.0', '--port', '8188', '--cpu', '--temp-directory', '/w/instances/comfyui-gpu0']);
    expect(app.env.CUDA_VISIBLE_DEVICES).toBe('');
    expect([app.uid, app.gid]).toEqual([1000, 1001]);
  });

  it('refuses ports past 65535 and shell operators in COMFY_ARGS', () => {
    expect(() => buildPlan(loadConfig({ COMFYUI_PORT_START: '65535' }), detection(2), [])).toThrow(expect.objectContaining({ problems: ['COMFYUI_PORT_START: 2 instances need ports up to 65536, above 65535'] }));
    expect(() => parseComfyArgs('--a; rm -rf /')).toThrow(expect.objectContaining({ exitCode: 78 }));
    expect(parseComfyArgs('')).toEqual([]);
  });

  it('probes a wildcard listener on loopback', () => {
    expect(probeHost('0.0.0.0')).toBe('127.0.0.1');
    expect(probeHost('::')).toBe('::1');
    expect(probeHost('[::1]')).toBe('::1');
    expect(probeHost('10.1.2.3')).toBe('10.1.2.3');
  });
});

describe('readiness', () => {
  it('is false on a closed port until the deadline, and true once a server answers (any status)', async () => {
    const port = await freePorts(1);
    expect(await probeHttp('127.0.0.1', port, 500)).toBe(false);
    expect(await waitForHttp('127.0.0.1', port, Date.now() + 150)).toBe(false);
    const server = http.createServer((_req, res) => {
      res.statusCode = 503;
      res.end();
    });
    const waiting = waitForHttp('127.0.0.1', port, Date.now() + 10_000);
    setTimeout(() => server.listen(port, '127.0.0.1'), 100);
    expect(await waiting).toBe(true);
    expect((server.address() as AddressInfo).port).toBe(port);
    server.close();
  });

  it('asks the port at once when the instance says it serves (the wake), not at its next poll', async () => {
    const port = await freePorts(1);
    let accepted = 0;
    const server = http.createServer((_req, res) => res.end());
    server.on('connection', () => (accepted += 1));
    let wakeUp: (() => void) | undefined;
    let unsubscribed = false;
    const wake = (listener: () => void) => {
      wakeUp = listener;
      return () => (unsubscribed = true);
    };
    // Polls 60 s apart here: after the first refusal the next poll is a minute away, so only the wake
    // can make it answer within this test's time (a mutation that ignores the wake times out).
    const waiting = waitForHttp('127.0.0.1', port, Date.now() + 120_000, undefined, wake, { firstMs: 60_000, wokenMaxMs: 60_000 });
    await new Promise((resolve) => setTimeout(resolve, 300));
    await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
    wakeUp!();
    expect(await waiting).toBe(true);
    // The probe's own connections after the wake (TCP first, then the HTTP request), no more.
    expect(accepted).toBeLessThanOrEqual(2);
    expect(unsubscribed).toBe(true);
    server.close();
  }, 20_000);

  it('with a wake source that never fires, still finds the port by polling, every WOKEN_POLL_MAX_MS at most', async () => {
    const port = await freePorts(1);
    const server = http.createServer((_req, res) => res.end());
    const waiting = waitForHttp('127.0.0.1', port, Date.now() + 30_000, undefined, () => () => undefined);
    setTimeout(() => server.listen(port, '127.0.0.1'), 1500);
    expect(await waiting).toBe(true);
    server.close();
  });

  it('stops waiting when aborted', async () => {
    const port = await freePorts(1);
    const abort = new AbortController();
    const waiting = waitForHttp('127.0.0.1', port, Number.POSITIVE_INFINITY, abort.signal);
    setTimeout(() => abort.abort(), 100);
    expect(await waiting).toBe(false);
  });

  it('waits on 16 instances with one abort signal without a listener-leak warning, and reports them ready', async () => {
    const start = await freePorts(16);
    const servers = Array.from({ length: 16 }, () => http.createServer((_req, res) => res.end()));
    const warnings: Error[] = [];
    const onWarning = (warning: Error) => warnings.push(warning);
    process.on('warning', onWarning);
    const { logger, lines } = captureLogger();
    const instances = Array.from({ length: 16 }, (_, i) => ({ name: `comfyui-gpu${i}`, port: start + i, gpuIndex: i }) as InstancePlan);
    // Closed ports first: every instance waits (listening on the signal) at least once.
    const reporting = reportReadiness(logger, { readyTimeoutMs: 10_000, comfyuiListen: '127.0.0.1' }, instances, performance.now(), new AbortController().signal);
    setTimeout(() => servers.forEach((server, i) => server.listen(start + i, '127.0.0.1')), 150);
    await reporting;
    await new Promise((resolve) => setImmediate(resolve));
    process.off('warning', onWarning);
    for (const server of servers) server.close();
    expect(warnings.map((w) => w.name)).toEqual([]);
    expect(lines.filter((l) => l.includes('answers on port'))).toHaveLength(16);
    expect(lines.some((l) => l.includes('"phase":"ready"') && l.includes('all 16 instance(s) answer'))).toBe(true);
  });
});

describe('pm2HomeOf', () => {
  it('resolves PM2_HOME as PM2 does: the variable unless empty, else ~/.pm2', () => {
    expect(pm2HomeOf({ PM2_HOME: '/srv/pm2' })).toBe('/srv/pm2');
    expect(pm2HomeOf({ PM2_HOME: '' })).toBe(path.resolve(os.homedir(), '.pm2'));
    expect(pm2HomeOf({})).toBe(path.resolve(os.homedir(), '.pm2'));
  });
});

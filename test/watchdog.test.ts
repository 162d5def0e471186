import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NvidiaSmiError, parseNvidiaSmiCsv } from '../src/gpus/nvidia-smi.js';
import {
  decodeThrottleReasons,
  GpuWatchdog,
  healthyGpuCount,
  parseWatchdogCsv,
  WATCHDOG_QUERY_ARGS,
  type Finding,
  type GpuSample,
  type GpuWatchdogOptions,
  type WatchdogGpu,
  type WatchdogRun,
  type WatchdogRunResult,
  type WatchdogSnapshot,
} from '../src/gpus/watchdog.js';
import { processGone } from './helpers/boot.js';

const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures');
const FAKE_SMI = path.join(FIXTURES, 'nvidia-smi');
const MODES = ['h100x1', 'h100x8', 'h200x2', 'mixed', 'h200-mig7', 'mig-mixed', 'rtx4090x1'];
const H100_UUID = 'GPU-5f8e8a3c-1b2d-4c6e-9f0a-3b7c2d1e4f5a';
const H200X2 = ['GPU-9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d', 'GPU-9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5e'];
const QUERY_LINE = WATCHDOG_QUERY_ARGS.join(' ');
/** The line the stand-in (like nvidia-smi) prints for GPU <index> it cannot reach; bus 0x18 + 0x10 * index. */
const UNREACHABLE = (bus: string): string => `Unable to determine the device handle for GPU0000:${bus}:00.0: GPU is lost.  Reboot the system to recover this GPU`;
const ALL_LOST = 'nvidia-smi reports [GPU is lost] for every field';
const ECC_ROSE = (from: number, to: number): string => `uncorrected ECC errors rose from ${from} to ${to} since the first sample`;
const RETIRED = 'memory pages are pending retirement (retired_pages.pending=Yes): needs a reboot';
const REMAPPED = 'memory rows are pending remapping (remapped_rows.pending=Yes): needs a GPU reset';
const TIMED_OUT = (ms: number): string => `${FAKE_SMI} did not answer within ${ms} ms (killed)`;
const DRIVER_FAILED = `${FAKE_SMI} failed (exit 9): NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.`;

const ENV_KEYS = ['FAKE_NVIDIA_SMI_MODE', 'FAKE_NVIDIA_SMI_LOG', 'FAKE_NVIDIA_SMI_PIDFILE', 'FAKE_NVIDIA_SMI_STATE'] as const;
let savedEnv: Record<string, string | undefined>;
let tmp: string;
let stateFile: string;
const started: GpuWatchdog[] = [];

beforeEach(() => {
  savedEnv = Object.fromEntries(ENV_KEYS.map((k) => [k, process.env[k]]));
  tmp = mkdtempSync(path.join(tmpdir(), 'gpu-boot-watchdog-'));
  stateFile = path.join(tmp, 'state');
  writeState({});
  process.env.FAKE_NVIDIA_SMI_STATE = stateFile;
  delete process.env.FAKE_NVIDIA_SMI_LOG;
  delete process.env.FAKE_NVIDIA_SMI_PIDFILE;
});

afterEach(async () => {
  await Promise.all(started.splice(0).map((w) => w.stop()));
  for (const key of ENV_KEYS) {
    if (savedEnv[key] === undefined) delete process.env[key];
    else process.env[key] = savedEnv[key];
  }
  rmSync(tmp, { recursive: true, force: true });
});

/** Rewrite the stand-in's state file at once (write, then rename): a query never reads half of it. */
function writeState(values: Record<string, string>): void {
  const next = `${stateFile}.next`;
  writeFileSync(next, Object.entries(values).map(([k, v]) => `FAKE_NVIDIA_SMI_${k}=${v}\n`).join(''));
  renameSync(next, stateFile);
}

function fixture(mode: string, kind: 'query.csv' | 'watch.csv' | 'L.txt'): string {
  return readFileSync(path.join(FIXTURES, 'gpus', `${mode}.${kind}`), 'utf8');
}

/** The GPUs of a fixture machine, as detection lists them. */
function gpusOf(mode: string): WatchdogGpu[] {
  return parseNvidiaSmiCsv(fixture(mode, 'query.csv')).gpus.map((g) => ({ index: g.index, uuid: g.uuid }));
}

/** Poll `condition` until it holds; fails after `ms` (generous: the machine is busy). */
async function waitFor(condition: () => boolean, what: string, ms = 20_000): Promise<void> {
  const until = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

interface Harness {
  watchdog: GpuWatchdog;
  cordons: Array<[WatchdogGpu, string]>;
  findings: Finding[];
  snap: () => WatchdogSnapshot;
  gpu: (index: number) => WatchdogSnapshot['gpus'][number];
}

function harness(mode: string, options: Partial<GpuWatchdogOptions> = {}): Harness {
  process.env.FAKE_NVIDIA_SMI_MODE = mode;
  const cordons: Array<[WatchdogGpu, string]> = [];
  const findings: Finding[] = [];
  const watchdog = new GpuWatchdog({
    nvidiaSmiPath: FAKE_SMI,
    timeoutMs: 10_000,
    intervalMs: 60_000,
    failuresToCordon: 3,
    gpus: options.gpus ?? gpusOf(mode),
    onCordon: (gpu, reason) => cordons.push([gpu, reason]),
    onFinding: (f) => findings.push(f),
    ...options,
  });
  started.push(watchdog);
  const snap = (): WatchdogSnapshot => watchdog.snapshot();
  const gpu = (index: number) => {
    const found = snap().gpus.find((g) => g.index === index);
    if (!found) throw new Error(`no GPU ${index} in the snapshot`);
    return found;
  };
  return { watchdog, cordons, findings, snap, gpu };
}

describe('WATCHDOG_QUERY_ARGS', () => {
  it('asks for the eleven fields, CSV without header or units', () => {
    expect(WATCHDOG_QUERY_ARGS).toEqual([
      '--query-gpu=index,uuid,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw,ecc.errors.uncorrected.volatile.total,retired_pages.pending,remapped_rows.pending,clocks_throttle_reasons.active',
      '--format=csv,noheader,nounits',
    ]);
  });
});

describe('parseWatchdogCsv', () => {
  it('parses a healthy H100 sample exactly', () => {
    const parsed = parseWatchdogCsv(fixture('h100x1', 'watch.csv'));
    expect([...parsed.keys()]).toEqual([H100_UUID]);
    expect(parsed.get(H100_UUID)).toEqual({
      index: 0,
      uuid: H100_UUID,
      utilizationPct: 0,
      memoryUsedMiB: 1,
      memoryTotalMiB: 81559,
      temperatureC: 31,
      powerW: 69.82,
      eccUncorrected: 0,
      retiredPagesPending: null,
      remappedRowsPending: false,
      throttleReasons: ['gpu_idle'],
    } satisfies GpuSample);
  });

  it('every fixture machine: the same GPUs (index, uuid, memory.total) as its detection query', () => {
    for (const mode of MODES) {
      const detected = parseNvidiaSmiCsv(fixture(mode, 'query.csv')).gpus;
      const watched = [...parseWatchdogCsv(fixture(mode, 'watch.csv')).values()] as GpuSample[];
      expect(watched.map((s) => [s.index, s.uuid, s.memoryTotalMiB]), mode).toEqual(detected.map((g) => [g.index, g.uuid, g.memoryMiB]));
      // GPU utilization is [N/A] in MIG mode.
      expect(watched.map((s) => s.utilizationPct === null), mode).toEqual(detected.map((g) => g.migMode === 'enabled'));
      expect(watched.every((s) => s.throttleReasons.join() === 'gpu_idle' && !('error' in s)), mode).toBe(true);
    }
    // A GeForce card with ECC off: no ECC count, no pending pages of either kind.
    expect(parseWatchdogCsv(fixture('rtx4090x1', 'watch.csv')).get('GPU-1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c01')).toMatchObject({
      eccUncorrected: null,
      retiredPagesPending: null,
      remappedRowsPending: null,
    });
  });

  it('one value nvidia-smi could not read ([Unknown Error]) is missing, not a GPU fault; a lost GPU or every field failing is', () => {
    const parsed = parseWatchdogCsv(
      [
        '0, GPU-a, 3, 512, 24564, 41, [Unknown Error], [N/A], [N/A], [N/A], 0x0000000000000001',
        '1, GPU-b, [Unknown Error], [Unknown Error], [Unknown Error], [Unknown Error], [Unknown Error], [Unknown Error], [Unknown Error], [Unknown Error], [Unknown Error]',
        '2, GPU-c, 0, 512, 24564, [GPU is lost], 20.1, 0, [N/A], No, 0x0000000000000001',
      ].join('\n'),
    );
    expect(parsed.get('GPU-a')).toMatchObject({ index: 0, powerW: null, temperatureC: 41, utilizationPct: 3 });
    expect(parsed.get('GPU-b')).toMatchObject({ index: 1, uuid: 'GPU-b', lost: false, error: expect.stringContaining('Unknown Error') });
    expect(parsed.get('GPU-c')).toMatchObject({ index: 2, uuid: 'GPU-c', lost: true });
  });

  it('reads a busy GPU, and [N/A], [Not Supported], [Insufficient Permissions] as null', () => {
    const parsed = parseWatchdogCsv(
      [
        '0, GPU-a, 97, 70123, 81559, 78, 612.40, 2, No, Yes, 0x0000000000000064',
        '1, GPU-b, [Not Supported], [N/A], 81559, [Insufficient Permissions], [N/A], [N/A], [N/A], [N/A], [N/A]',
      ].join('\n'),
    );
    expect(parsed.get('GPU-a')).toEqual({
      index: 0,
      uuid: 'GPU-a',
      utilizationPct: 97,
      memoryUsedMiB: 70123,
      memoryTotalMiB: 81559,
      temperatureC: 78,
      powerW: 612.4,
      eccUncorrected: 2,
      retiredPagesPending: false,
      remappedRowsPending: true,
      throttleReasons: ['sw_power_cap', 'sw_thermal_slowdown', 'hw_thermal_slowdown'],
    });
    expect(parsed.get('GPU-b')).toEqual({
      index: 1,
      uuid: 'GPU-b',
      utilizationPct: null,
      memoryUsedMiB: null,
      memoryTotalMiB: 81559,
      temperatureC: null,
      powerW: null,
      eccUncorrected: null,
      retiredPagesPending: null,
      remappedRowsPending: null,
      throttleReasons: [],
    });
  });

  it('decodes the throttle mask bit by bit, unnamed bits as hex', () => {
    expect(decodeThrottleReasons(0n)).toEqual([]);
    expect(decodeThrottleReasons(0x1ffn)).toEqual([
      'gpu_idle',
      'applications_clocks_setting',
      'sw_power_cap',
      'hw_slowdown',
      'sync_boost',
      'sw_thermal_slowdown',
      'hw_thermal_slowdown',
      'hw_power_brake_slowdown',
      'display_clock_setting',
    ]);
    expect(decodeThrottleReasons(0x600n)).toEqual(['board_limit', 'reliability']);
    expect(decodeThrottleReasons(0x8000000000000801n)).toEqual(['gpu_idle', '0x800', '0x8000000000000000']);
    const row = (mask: string): string => `0, GPU-a, 0, 1, 81559, 31, 69.82, 0, [N/A], No, ${mask}`;
    expect((parseWatchdogCsv(row('0x0000000000000088')).get('GPU-a') as GpuSample).throttleReasons).toEqual(['hw_slowdown', 'hw_power_brake_slowdown']);
    expect(parseWatchdogCsv(row('Active')).get('GPU-a')).toEqual({
      index: 0,
      uuid: 'GPU-a',
      error: 'nvidia-smi reports an unreadable value "Active" for clocks_throttle_reasons.active',
      lost: false,
    });
  });

  it('a GPU whose values read [GPU is lost] or [GPU requires reset] is lost; other errors are not', () => {
    const lost = ', [GPU is lost]'.repeat(9);
    const parsed = parseWatchdogCsv(
      [
        `0, GPU-a${lost}`,
        '1, GPU-b, 0, 1, 81559, 31, [GPU requires reset], 0, [N/A], No, 0x0000000000000001',
        '2, GPU-c, [Unknown Error], [Unknown Error], 81559, abc, 69.82, 0, [N/A], No, 0x0000000000000001',
        `3, [GPU is lost]${lost}`,
        '4, GPU-e, 101, 1, 81559, 31, 69.82, , [N/A], Maybe, 0x0000000000000001',
      ].join('\n'),
    );
    expect([...parsed.keys()]).toEqual(['GPU-a', 'GPU-b', 'GPU-c', 'index:3', 'GPU-e']);
    expect(parsed.get('GPU-a')).toEqual({ index: 0, uuid: 'GPU-a', error: ALL_LOST, lost: true });
    expect(parsed.get('GPU-b')).toEqual({ index: 1, uuid: 'GPU-b', error: 'nvidia-smi reports [GPU requires reset] for power.draw', lost: true });
    expect(parsed.get('GPU-c')).toEqual({
      index: 2,
      uuid: 'GPU-c',
      error: 'nvidia-smi reports [Unknown Error] for utilization.gpu, memory.used; an unreadable value "abc" for temperature.gpu',
      lost: false,
    });
    expect(parsed.get('index:3')).toEqual({ index: 3, uuid: null, error: ALL_LOST, lost: true });
    expect(parsed.get('GPU-e')).toEqual({
      index: 4,
      uuid: 'GPU-e',
      error:
        'nvidia-smi reports an unreadable value "101" for utilization.gpu; an unreadable value "(empty)" for ecc.errors.uncorrected.volatile.total; an unreadable value "Maybe" for remapped_rows.pending',
      lost: false,
    });
  });

  it('leaves out lines that are not a GPU row; throws on output that is not CSV', () => {
    const text = [
      UNREACHABLE('28'),
      'No devices were found',
      '0, GPU-a, 0, 1, 81559, 31, 69.82, 0, [N/A], No, 0x0000000000000001',
      'x, GPU-b, 0, 1, 81559, 31, 69.82, 0, [N/A], No, 0x0000000000000001',
      '2, not-a-uuid, 0, 1, 81559, 31, 69.82, 0, [N/A], No, 0x0000000000000001',
      '3, GPU-d, 0, 1',
    ].join('\n');
    expect([...parseWatchdogCsv(text).keys()]).toEqual(['GPU-a']);
    expect(parseWatchdogCsv('').size).toBe(0);
    let caught: unknown;
    try {
      parseWatchdogCsv('"GPU-a, 0, 1\n');
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(NvidiaSmiError);
    expect((caught as Error).message).toMatch(/^nvidia-smi printed output that is not CSV \(.+\)$/);
  });
});

describe('the stand-in nvidia-smi answers the watchdog query', () => {
  async function ask(mode: string, env: Record<string, string> = {}, args: readonly string[] = WATCHDOG_QUERY_ARGS) {
    const { execa } = await import('execa');
    return execa(FAKE_SMI, [...args], { reject: false, env: { FAKE_NVIDIA_SMI_MODE: mode, FAKE_NVIDIA_SMI_STATE: stateFile, ...env } });
  }

  it('healthy: exactly <mode>.watch.csv, exit 0, nothing on stderr', async () => {
    for (const mode of MODES) {
      const result = await ask(mode);
      expect([result.exitCode, result.stderr], mode).toEqual([0, '']);
      expect(`${result.stdout}\n`, mode).toBe(fixture(mode, 'watch.csv'));
    }
  });

  it('GPU_LOST: the row prints [GPU is lost], stderr names the GPU, exit 15', async () => {
    const result = await ask('h200x2', { FAKE_NVIDIA_SMI_GPU_LOST: '1' });
    expect(result.exitCode).toBe(15);
    expect(result.stderr).toBe(UNREACHABLE('28'));
    expect(result.stdout.split('\n')).toEqual([fixture('h200x2', 'watch.csv').split('\n')[0], `1, ${H200X2[1]}${', [GPU is lost]'.repeat(9)}`]);
  });

  it('GPU_GONE: no row, stderr names each GPU, exit 15; ECC and PENDING change the rows asked', async () => {
    const result = await ask('h100x8', { FAKE_NVIDIA_SMI_GPU_GONE: '5,6', FAKE_NVIDIA_SMI_ECC: '0:3,7:12', FAKE_NVIDIA_SMI_PENDING: '1' });
    expect(result.exitCode).toBe(15);
    expect(result.stderr.split('\n')).toEqual([UNREACHABLE('68'), UNREACHABLE('78')]);
    const rows = parseWatchdogCsv(result.stdout);
    expect([...rows.values()].map((r) => r.index)).toEqual([0, 1, 2, 3, 4, 7]);
    const sample = (i: number): GpuSample => rows.get(`GPU-5f8e8a3c-1b2d-4c6e-9f0a-3b7c2d1e4f5${i}`) as GpuSample;
    expect([sample(0).eccUncorrected, sample(7).eccUncorrected, sample(2).eccUncorrected]).toEqual([3, 12, 0]);
    expect([sample(1).retiredPagesPending, sample(1).remappedRowsPending, sample(0).remappedRowsPending]).toEqual([true, true, false]);
  });

  it('the state file wins over the environment; names it lacks come from the environment', async () => {
    writeState({ ECC: '0:9' });
    const result = await ask('h100x1', { FAKE_NVIDIA_SMI_ECC: '0:3', FAKE_NVIDIA_SMI_PENDING: '0' });
    const sample = parseWatchdogCsv(result.stdout).get(H100_UUID) as GpuSample;
    expect([result.exitCode, sample.eccUncorrected, sample.remappedRowsPending]).toEqual([0, 9, true]);
  });

  it('still refuses anything else, and answers the detection queries from their files', async () => {
    const other = await ask('h100x1', {}, ['--query-gpu=index,uuid,utilization.gpu', '--format=csv,noheader,nounits']);
    expect([other.exitCode, other.stdout, other.stderr]).toEqual([
      2,
      '',
      "ERROR: Option --query-gpu=index,uuid,utilization.gpu --format=csv,noheader,nounits is not recognized. Please run 'nvidia-smi -h'.",
    ]);
    for (const mode of MODES) {
      const query = await ask(mode, { FAKE_NVIDIA_SMI_GPU_LOST: '0' }, ['--query-gpu=index,name,memory.total,uuid,driver_version,mig.mode.current', '--format=csv,noheader,nounits']);
      expect([query.exitCode, `${query.stdout}\n`], mode).toEqual([0, fixture(mode, 'query.csv')]);
      const list = await ask(mode, { FAKE_NVIDIA_SMI_WATCH_HANG: '1' }, ['-L']);
      expect([list.exitCode, `${list.stdout}\n`], mode).toEqual([0, fixture(mode, 'L.txt')]);
    }
  });
});

describe('GpuWatchdog with the stand-in nvidia-smi', () => {
  it('before any check every GPU is unknown; a healthy check makes each healthy with its sample', async () => {
    const { watchdog, snap, cordons, findings } = harness('h200x2');
    expect(snap()).toEqual({
      intervalMs: 60_000,
      running: false,
      checks: 0,
      failedChecks: 0,
      skippedTicks: 0,
      lastCheckAt: null,
      lastDurationMs: null,
      lastError: null,
      gpus: H200X2.map((uuid, index) => ({ index, uuid, state: 'unknown', consecutiveFailures: 0, reason: null, cordonedAt: null, sample: null })),
    });
    expect(healthyGpuCount(snap())).toBe(0);

    const before = Date.now();
    await watchdog.checkOnce();
    const s = snap();
    const samples = parseWatchdogCsv(fixture('h200x2', 'watch.csv'));
    expect(s.gpus).toEqual(H200X2.map((uuid, index) => ({ index, uuid, state: 'healthy', consecutiveFailures: 0, reason: null, cordonedAt: null, sample: samples.get(uuid) })));
    expect(s).toMatchObject({ checks: 1, failedChecks: 0, skippedTicks: 0, lastError: null, running: false });
    expect(s.lastCheckAt).toBeGreaterThanOrEqual(before);
    expect(s.lastDurationMs).toBeGreaterThanOrEqual(0);
    expect(healthyGpuCount(s)).toBe(2);
    expect([cordons, findings]).toEqual([[], []]);
  });

  it('a GPU lost mid-run is cordoned at once with the reason; onCordon is called once', async () => {
    const { watchdog, snap, gpu, cordons, findings } = harness('h200x2', { intervalMs: 50, failuresToCordon: 3 });
    watchdog.start();
    expect(snap().running).toBe(true);
    await waitFor(() => snap().checks >= 2 && healthyGpuCount(snap()) === 2, 'two healthy checks');

    writeState({ GPU_LOST: '1' });
    await waitFor(() => gpu(1).state === 'cordoned', 'GPU 1 cordoned');
    const atCordon = snap().checks;
    expect(gpu(1)).toMatchObject({ state: 'cordoned', reason: ALL_LOST });
    expect(gpu(1).cordonedAt).toEqual(expect.any(Number));
    expect(cordons).toEqual([[{ index: 1, uuid: H200X2[1] }, ALL_LOST]]);

    // Later checks: still cordoned (final), no second onCordon, no more findings for it; GPU 0 fine.
    await waitFor(() => snap().checks >= atCordon + 3, 'three more checks');
    expect(cordons).toHaveLength(1);
    expect(findings).toEqual([{ at: gpu(1).cordonedAt, kind: 'gpu-lost', gpu: { index: 1, uuid: H200X2[1] }, message: ALL_LOST }]);
    expect(gpu(1)).toMatchObject({ state: 'cordoned', reason: ALL_LOST });
    expect(gpu(1).consecutiveFailures).toBeGreaterThanOrEqual(4);
    expect(gpu(0)).toMatchObject({ state: 'healthy', consecutiveFailures: 0, reason: null });
    expect(healthyGpuCount(snap())).toBe(1);
    expect(snap().lastError).toBe(`GPU 1 (${H200X2[1]}): ${ALL_LOST}`);

    await watchdog.stop();
    expect(snap().running).toBe(false);
  });

  it('a GPU nvidia-smi cannot reach (no row, its handle line, exit 15) is cordoned at once', async () => {
    writeState({ GPU_GONE: '0' });
    const two = harness('h200x2');
    await two.watchdog.checkOnce();
    const reason = `nvidia-smi cannot reach it: ${UNREACHABLE('18')}`;
    expect(two.gpu(0)).toMatchObject({ state: 'cordoned', reason, consecutiveFailures: 1 });
    expect(two.gpu(1).state).toBe('healthy');
    expect(two.cordons).toEqual([[{ index: 0, uuid: H200X2[0] }, reason]]);

    // The only GPU: nothing on stdout at all, still that GPU lost, not a failed query.
    const one = harness('h100x1');
    await one.watchdog.checkOnce();
    expect(one.gpu(0)).toMatchObject({ state: 'cordoned', reason });
    expect(one.findings.map((f) => f.kind)).toEqual(['gpu-lost']);
  });

  it('uncorrected ECC errors rising: failing, cordoned after failuresToCordon checks in a row', async () => {
    writeState({ ECC: '0:5' });
    const { watchdog, gpu, cordons, findings, snap } = harness('h100x1', { failuresToCordon: 3 });
    await watchdog.checkOnce();
    // The first sample is the baseline: errors from before gpu-boot started are not this run's.
    expect(gpu(0)).toMatchObject({ state: 'healthy', consecutiveFailures: 0 });

    writeState({ ECC: '0:7' });
    await watchdog.checkOnce();
    expect(gpu(0)).toMatchObject({ state: 'failing', consecutiveFailures: 1, reason: ECC_ROSE(5, 7), cordonedAt: null });
    expect(gpu(0).sample?.eccUncorrected).toBe(7);
    expect(healthyGpuCount(snap())).toBe(0);
    await watchdog.checkOnce();
    expect(gpu(0)).toMatchObject({ state: 'failing', consecutiveFailures: 2 });
    expect(cordons).toEqual([]);
    await watchdog.checkOnce();
    const reason = `3 consecutive failed checks; the last: ${ECC_ROSE(5, 7)}`;
    expect(gpu(0)).toMatchObject({ state: 'cordoned', consecutiveFailures: 3, reason });
    expect(cordons).toEqual([[{ index: 0, uuid: H100_UUID }, reason]]);
    expect(findings.map((f) => [f.kind, f.message])).toEqual(Array(3).fill(['ecc-increased', ECC_ROSE(5, 7)]));
    expect(snap()).toMatchObject({ checks: 4, failedChecks: 3 });

    // Cordoned is final, even after a good sample.
    writeState({ ECC: '0:5' });
    await watchdog.checkOnce();
    expect(gpu(0)).toMatchObject({ state: 'cordoned', reason });
    expect(cordons).toHaveLength(1);
  });

  it('pending retired pages or remapped rows: failing; a good sample resets the count; then cordoned', async () => {
    const { watchdog, gpu, cordons } = harness('h200x2', { failuresToCordon: 3 });
    writeState({ PENDING: '1' });
    await watchdog.checkOnce();
    await watchdog.checkOnce();
    expect(gpu(1)).toMatchObject({ state: 'failing', consecutiveFailures: 2, reason: `${RETIRED}; ${REMAPPED}` });
    expect(gpu(0).state).toBe('healthy');

    writeState({});
    await watchdog.checkOnce();
    expect(gpu(1)).toMatchObject({ state: 'healthy', consecutiveFailures: 0, reason: null });

    writeState({ PENDING: '1' });
    for (let i = 0; i < 3; i++) await watchdog.checkOnce();
    expect(gpu(1)).toMatchObject({ state: 'cordoned', consecutiveFailures: 3, reason: `3 consecutive failed checks; the last: ${RETIRED}; ${REMAPPED}` });
    expect(cordons.map(([g]) => g.index)).toEqual([1]);
  });

  it('a hung query is killed after timeoutMs, leaves no process, counts as a failed check, and is never stacked', async () => {
    const pidFile = path.join(tmp, 'smi.pid');
    const log = path.join(tmp, 'smi.log');
    process.env.FAKE_NVIDIA_SMI_PIDFILE = pidFile;
    process.env.FAKE_NVIDIA_SMI_LOG = log;
    writeState({ WATCH_HANG: '1' });
    let stopped: Promise<void> | undefined;
    const { watchdog, snap, gpu, findings } = harness('h100x1', {
      intervalMs: 20,
      timeoutMs: 1500,
      // Stop on the timeout, before the next tick could start another query.
      onFinding: (f) => {
        findings.push(f);
        if (f.kind === 'query-timeout') stopped ??= watchdog.stop();
      },
    });
    const startedAt = Date.now();
    watchdog.start();
    await waitFor(() => stopped !== undefined, 'the timeout finding');
    await stopped;

    expect(Date.now() - startedAt).toBeGreaterThanOrEqual(1500);
    const s = snap();
    expect(s).toMatchObject({ running: false, checks: 1, failedChecks: 1, lastError: TIMED_OUT(1500) });
    expect(s.skippedTicks).toBeGreaterThan(0);
    expect(s.lastDurationMs).toBeGreaterThanOrEqual(1500);
    expect(gpu(0)).toMatchObject({ state: 'failing', consecutiveFailures: 1, reason: TIMED_OUT(1500), sample: null });
    expect(findings).toEqual([{ at: s.lastCheckAt, kind: 'query-timeout', gpu: null, message: TIMED_OUT(1500) }]);
    expect(readFileSync(log, 'utf8')).toBe(`${QUERY_LINE}\n`);
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    expect(Number.isInteger(pid) && pid > 0).toBe(true);
    expect(processGone(pid)).toBe(true);
  });

  it('nvidia-smi failing as a whole (driver gone, exit 9): one finding, every GPU failing, then cordoned', async () => {
    const { watchdog, gpu, findings, cordons, snap } = harness('h200x2', { failuresToCordon: 2 });
    process.env.FAKE_NVIDIA_SMI_MODE = 'fail';
    await watchdog.checkOnce();
    expect(findings).toEqual([{ at: snap().lastCheckAt, kind: 'query-failed', gpu: null, message: DRIVER_FAILED }]);
    expect([gpu(0), gpu(1)].map((g) => [g.state, g.consecutiveFailures, g.reason])).toEqual([
      ['failing', 1, DRIVER_FAILED],
      ['failing', 1, DRIVER_FAILED],
    ]);
    expect(snap().lastError).toBe(DRIVER_FAILED);
    await watchdog.checkOnce();
    const reason = `2 consecutive failed checks; the last: ${DRIVER_FAILED}`;
    expect(cordons).toEqual([
      [{ index: 0, uuid: H200X2[0] }, reason],
      [{ index: 1, uuid: H200X2[1] }, reason],
    ]);
    expect(healthyGpuCount(snap())).toBe(0);
  });

  it('a missing row, garbage output, a missing nvidia-smi: failed checks with the reason', async () => {
    const absent = harness('h100x1', { gpus: [{ index: 0, uuid: H100_UUID }, { index: 1, uuid: 'GPU-not-on-this-machine' }] });
    await absent.watchdog.checkOnce();
    expect(absent.gpu(0).state).toBe('healthy');
    expect(absent.gpu(1)).toMatchObject({ state: 'failing', reason: 'nvidia-smi printed no row for it' });
    expect(absent.findings.map((f) => [f.kind, f.gpu?.index])).toEqual([['missing-row', 1]]);

    const garbage = harness('garbage', { gpus: [{ index: 0, uuid: H100_UUID }] });
    await garbage.watchdog.checkOnce();
    expect(garbage.gpu(0)).toMatchObject({ state: 'failing', reason: 'nvidia-smi printed no row for it (it printed: Xid 79 @@ 0x7f3a "GPU has fallen off the bus, retry")' });

    const missing = path.join(tmp, 'no-such-nvidia-smi');
    const notFound = harness('h100x1', { nvidiaSmiPath: missing });
    await notFound.watchdog.checkOnce();
    expect(notFound.gpu(0)).toMatchObject({ state: 'failing', reason: `${missing} could not be run: not found` });
  });
});

describe('GpuWatchdog with an injected runner', () => {
  const GPUS = gpusOf('h200x2');
  const healthy = (): WatchdogRunResult => ({ stdout: fixture('h200x2', 'watch.csv'), stderr: '', exitCode: 0, timedOut: false });

  /** A runner whose calls stay pending until the test settles them. */
  function manualRun() {
    const calls: Array<{ args: readonly string[]; signal: AbortSignal; settle: (r: WatchdogRunResult) => void }> = [];
    const run: WatchdogRun = (args, { signal }) => new Promise((resolve) => calls.push({ args, signal, settle: resolve }));
    return { run, calls };
  }

  function make(options: Partial<GpuWatchdogOptions>) {
    const cordons: Array<[WatchdogGpu, string]> = [];
    const watchdog = new GpuWatchdog({ nvidiaSmiPath: 'nvidia-smi', timeoutMs: 10_000, intervalMs: 60_000, failuresToCordon: 3, gpus: GPUS, onCordon: (g, r) => cordons.push([g, r]), ...options });
    started.push(watchdog);
    return { watchdog, cordons };
  }

  it('timestamps come from `now`: lastCheckAt, lastDurationMs, cordonedAt', async () => {
    let clock = 1_000;
    let answer = healthy();
    const run: WatchdogRun = async () => {
      clock += 250;
      return answer;
    };
    const { watchdog, cordons } = make({ run, now: () => clock });
    await watchdog.checkOnce();
    expect(watchdog.snapshot()).toMatchObject({ checks: 1, lastCheckAt: 1_250, lastDurationMs: 250 });
    answer = { stdout: `${fixture('h200x2', 'watch.csv').split('\n')[0]}\n1, ${H200X2[1]}${', [GPU requires reset]'.repeat(9)}\n`, stderr: '', exitCode: 15, timedOut: false };
    await watchdog.checkOnce();
    const reset = 'nvidia-smi reports [GPU requires reset] for every field';
    expect(watchdog.snapshot().gpus[1]).toMatchObject({ state: 'cordoned', cordonedAt: 1_500, reason: reset });
    expect(watchdog.snapshot().gpus[0]).toMatchObject({ state: 'healthy' });
    expect(cordons).toEqual([[{ index: 1, uuid: H200X2[1] }, reset]]);
  });

  it('checkOnce while a check runs joins it: one query; stop() waits for it', async () => {
    const { run, calls } = manualRun();
    const { watchdog } = make({ run });
    watchdog.start();
    const joined = watchdog.checkOnce();
    expect(calls).toHaveLength(1);
    expect(calls[0]!.args).toEqual(WATCHDOG_QUERY_ARGS);

    let stopped = false;
    const stopping = watchdog.stop().then(() => {
      stopped = true;
    });
    for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
    expect(stopped).toBe(false);
    expect(watchdog.snapshot()).toMatchObject({ running: false, checks: 0 });

    calls[0]!.settle(healthy());
    await Promise.all([joined, stopping]);
    expect(watchdog.snapshot()).toMatchObject({ running: false, checks: 1, failedChecks: 0 });
    expect(healthyGpuCount(watchdog.snapshot())).toBe(2);
    expect(calls).toHaveLength(1);
    // Never started, or already stopped: stop() resolves at once.
    await watchdog.stop();
    await make({ run }).watchdog.stop();
  });

  it('a killed query that never exits: no second query; each later tick is a failed check, until cordoned', async () => {
    const { run, calls } = manualRun();
    const findings: Finding[] = [];
    const { watchdog, cordons } = make({ run, intervalMs: 30, timeoutMs: 200, failuresToCordon: 3, onFinding: (f) => findings.push(f) });
    watchdog.start();
    await waitFor(() => cordons.length === 2, 'both GPUs cordoned');
    expect(calls).toHaveLength(1);
    expect(calls[0]!.signal.aborted).toBe(true);
    const s = watchdog.snapshot();
    expect(s.skippedTicks).toBeGreaterThan(0);
    expect(s.gpus.map((g) => g.state)).toEqual(['cordoned', 'cordoned']);
    expect(findings[0]).toMatchObject({ kind: 'query-timeout', gpu: null, message: 'nvidia-smi did not answer within 200 ms (killed); it has not exited yet' });
    expect(findings.slice(1, 3).map((f) => f.message)).toEqual([expect.stringMatching(/^nvidia-smi was killed \d+ ms ago and has not exited \(a hung driver\?\); no new query is started$/), expect.any(String)]);
    expect(cordons[0]![1]).toMatch(/^3 consecutive failed checks; the last: nvidia-smi was killed \d+ ms ago and has not exited/);

    // Once it exits, the next tick queries again.
    calls[0]!.settle({ stdout: '', stderr: '', exitCode: null, timedOut: true });
    await waitFor(() => calls.length === 2, 'a second query');
    calls[1]!.settle(healthy());
    await watchdog.stop();
  });

  it('a query the runner reports timed out is a failed check for every GPU', async () => {
    const { watchdog } = make({ run: async () => ({ stdout: '', stderr: '', exitCode: null, timedOut: true }), timeoutMs: 700, failuresToCordon: 2 });
    await watchdog.checkOnce();
    expect(watchdog.snapshot().gpus.map((g) => [g.state, g.reason])).toEqual([
      ['failing', 'nvidia-smi did not answer within 700 ms (killed)'],
      ['failing', 'nvidia-smi did not answer within 700 ms (killed)'],
    ]);
    expect(watchdog.snapshot()).toMatchObject({ checks: 1, failedChecks: 1 });
  });

  it('nvidia-smi refusing the query itself (exit 2, a field this driver does not know) fails no GPU', async () => {
    const refusal = 'Field "clocks_throttle_reasons.active" is not a valid field to query.';
    const findings: Finding[] = [];
    const { watchdog, cordons } = make({ run: async () => ({ stdout: `${refusal}\n`, stderr: '', exitCode: 2, timedOut: false }), failuresToCordon: 1, onFinding: (f) => findings.push(f) });
    await watchdog.checkOnce();
    await watchdog.checkOnce();
    const message = `nvidia-smi refused the watchdog's query (exit 2): ${refusal}; GPUs are not judged by it`;
    expect(watchdog.snapshot()).toMatchObject({ checks: 2, failedChecks: 0, lastError: message });
    expect(watchdog.snapshot().gpus.map((g) => [g.state, g.consecutiveFailures])).toEqual([
      ['unknown', 0],
      ['unknown', 0],
    ]);
    expect(cordons).toEqual([]);
    expect(findings.map((f) => [f.kind, f.gpu, f.message])).toEqual(Array(2).fill(['query-failed', null, message]));
  });

  it('its timers never keep the process alive', async () => {
    const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const { run, calls } = manualRun();
    const { watchdog } = make({ run, intervalMs: 1_000 });
    const before = timers();
    watchdog.start();
    expect(calls).toHaveLength(1);
    expect(timers()).toBe(before);
    calls[0]!.settle(healthy());
    await watchdog.stop();
  });

  it('a throwing onCordon does not stop the bookkeeping', async () => {
    const lost = `0, ${H200X2[0]}${', [GPU is lost]'.repeat(9)}\n1, ${H200X2[1]}${', [GPU is lost]'.repeat(9)}\n`;
    const watchdog = new GpuWatchdog({
      nvidiaSmiPath: 'nvidia-smi',
      timeoutMs: 1_000,
      intervalMs: 1_000,
      failuresToCordon: 3,
      gpus: GPUS,
      run: async () => ({ stdout: lost, stderr: '', exitCode: 15, timedOut: false }),
      onCordon: () => {
        throw new Error('caller bug');
      },
    });
    await watchdog.checkOnce();
    expect(watchdog.snapshot().gpus.map((g) => g.state)).toEqual(['cordoned', 'cordoned']);
    expect([watchdog.callbackErrors, watchdog.lastCallbackError]).toEqual([2, 'caller bug']);
  });

  it('refuses settings that cannot work', () => {
    const base = { nvidiaSmiPath: 'nvidia-smi', timeoutMs: 1_000, intervalMs: 1_000, failuresToCordon: 3, gpus: GPUS, onCordon: () => undefined };
    expect(() => new GpuWatchdog({ ...base, failuresToCordon: 0 })).toThrow(new RangeError('GpuWatchdog: failuresToCordon must be a positive integer, not 0'));
    expect(() => new GpuWatchdog({ ...base, intervalMs: 0.5 })).toThrow(RangeError);
    expect(() => new GpuWatchdog({ ...base, timeoutMs: -1 })).toThrow(RangeError);
  });
});

describe('healthyGpuCount', () => {
  it('counts only healthy GPUs: not failing, cordoned or unknown', () => {
    const gpu = (index: number, state: 'healthy' | 'failing' | 'cordoned' | 'unknown') => ({ index, uuid: `GPU-${index}`, state, consecutiveFailures: 0, reason: null, cordonedAt: null, sample: null });
    const snapshot = (gpus: WatchdogSnapshot['gpus']): WatchdogSnapshot => ({
      intervalMs: 1,
      running: true,
      checks: 0,
      failedChecks: 0,
      skippedTicks: 0,
      lastCheckAt: null,
      lastDurationMs: null,
      lastError: null,
      gpus,
    });
    expect(healthyGpuCount(snapshot([]))).toBe(0);
    expect(healthyGpuCount(snapshot([gpu(0, 'healthy'), gpu(1, 'failing'), gpu(2, 'cordoned'), gpu(3, 'unknown'), gpu(4, 'healthy')]))).toBe(2);
    expect(healthyGpuCount(snapshot([gpu(0, 'cordoned')]))).toBe(0);
  });
});

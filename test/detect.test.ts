import os from 'node:os';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig, type Config } from '../src/config.js';
import { BootError, ConfigError, NoGpuError } from '../src/errors.js';
import {
  detectGpus,
  hintMismatches,
  NVIDIA_SMI_LIST_ARGS,
  NVIDIA_SMI_QUERY_ARGS,
  NvidiaSmiError,
  parseNvidiaSmiCsv,
  parseNvidiaSmiList,
  attachMigDevices,
  type DeviceChoice,
  type GpuInfo,
  type Selection,
} from '../src/gpus/detect.js';
import { processGone } from './helpers/boot.js';
import { detection, gpuList } from './helpers/gpus.js';
import { captureLogger } from './helpers/logger.js';

const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures');
const FAKE_SMI = path.join(FIXTURES, 'nvidia-smi');
const H100 = 'NVIDIA H100 80GB HBM3';
const H200 = 'NVIDIA H200';
const DRIVER = '580.159.04';
const SYSINFO_SKIPPED = 'systeminformation was not asked: it would call the same failing nvidia-smi without a timeout';
const QUERY_LINE = `${NVIDIA_SMI_QUERY_ARGS.join(' ')}\n`;
const UNEXPECTED = (line: number): string =>
  `nvidia-smi printed an unexpected line ${line} (expected index, name, memory.total in MiB, uuid, driver_version, mig.mode.current)`;
const UNEXPECTED_L = (line: number): string =>
  `nvidia-smi -L printed an unexpected line ${line} (expected "GPU <n>: <name> (UUID: GPU-...)" or "  MIG <profile> Device <n>: (UUID: MIG-...)")`;
const ALL_DEVICES = 'CUDA_VISIBLE_DEVICES is not set: every device nvidia-smi lists';
const NVIDIA_NOT_SET = 'not set: nothing to cross-check (Docker --gpus, CDI and device plugins need not set it)';
const NO_MIG_DEVICE = 'in MIG mode with no MIG device: CUDA cannot use it (create MIG devices, or turn MIG mode off)';
const H100_UUID = 'GPU-5f8e8a3c-1b2d-4c6e-9f0a-3b7c2d1e4f5a';
const H200_UUID = 'GPU-9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d';
/** GPU <i> of h100x8. */
const H100X8 = (i: number): string => `GPU-5f8e8a3c-1b2d-4c6e-9f0a-3b7c2d1e4f5${i}`;
/** GPU <i> of mig-mixed. */
const MIXED_MIG_GPU = (i: number): string => `GPU-6a7b8c9d-1b2d-4c6e-9f0a-3b7c2d1e4f6${i}`;
/** MIG device <i> of h200-mig7 (and of GPU 0 of mig-mixed). */
const MIG = (i: number): string => `MIG-7c1e000${i}-5d3a-5b8e-a1f2-0c9d8e7f6a0${i}`;

const ENV_KEYS = ['PATH', 'FAKE_NVIDIA_SMI_MODE', 'FAKE_NVIDIA_SMI_LOG', 'FAKE_NVIDIA_SMI_PIDFILE'] as const;
let savedEnv: Record<string, string | undefined>;
let tmp: string;

beforeEach(() => {
  savedEnv = Object.fromEntries(ENV_KEYS.map((k) => [k, process.env[k]]));
  tmp = mkdtempSync(path.join(tmpdir(), 'gpu-boot-hw-'));
});

afterEach(() => {
  for (const key of ENV_KEYS) {
    if (savedEnv[key] === undefined) delete process.env[key];
    else process.env[key] = savedEnv[key];
  }
  rmSync(tmp, { recursive: true, force: true });
});

function actualConfig(extra: Record<string, string> = {}): Config {
  return loadConfig({ GPU_MODE: 'actual', NVIDIA_SMI_PATH: FAKE_SMI, ...extra });
}

/** Run detection with the stand-in in `mode`; returns the result or the thrown error. */
async function detectWith(mode: string, extra: Record<string, string> = {}) {
  process.env.FAKE_NVIDIA_SMI_MODE = mode;
  const { logger, lines } = captureLogger();
  const detected = await detectGpus(actualConfig(extra), logger);
  return { detected, lines };
}

async function expectNoGpu(promise: Promise<unknown>): Promise<NoGpuError> {
  const error = await promise.then(
    () => {
      throw new Error('expected detectGpus to reject');
    },
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(NoGpuError);
  expect(error).toBeInstanceOf(BootError);
  const noGpu = error as NoGpuError;
  expect(noGpu.exitCode).toBe(69);
  expect(noGpu.message).toBe('no GPU found (GPU_MODE=actual). Set GPU_MODE=mock to run without a GPU');
  return noGpu;
}

/** PATH holding only an empty folder and a folder with a link to node: no nvidia-smi, no lspci. */
function barePath(): string {
  const empty = path.join(tmp, 'empty-bin');
  const nodeBin = path.join(tmp, 'node-bin');
  mkdirSync(empty);
  mkdirSync(nodeBin);
  symlinkSync(process.execPath, path.join(nodeBin, 'node'));
  return [empty, nodeBin].join(path.delimiter);
}

/** The GPUs of a fixture machine as detection builds them: the query, with `-L`'s MIG devices for the GPUs in MIG mode. */
function fixtureGpus(mode: string): GpuInfo[] {
  const { gpus } = parseNvidiaSmiCsv(readFileSync(path.join(FIXTURES, 'gpus', `${mode}.query.csv`), 'utf8'));
  const byGpu = parseNvidiaSmiList(readFileSync(path.join(FIXTURES, 'gpus', `${mode}.L.txt`), 'utf8'));
  attachMigDevices(gpus, byGpu);
  return gpus;
}

/** A whole GPU as selectDevices reports it when CUDA_VISIBLE_DEVICES is not set. */
function wholeGpu(index: number, uuid: string, name: string, memoryMiB: number, why = ALL_DEVICES): DeviceChoice {
  return { id: `gpu${index}`, kind: 'gpu', gpuIndex: index, gpuUuid: uuid, migIndex: null, profile: null, uuid, name, memoryMiB, used: true, why };
}

/** A stand-in in tmp answering the query as FAKE_NVIDIA_SMI_MODE=`queryMode` and `-L` as `listMode`. */
function splitStandIn(queryMode: string, listMode: string): string {
  const script = path.join(tmp, 'nvidia-smi-split');
  writeFileSync(
    script,
    `#!/bin/sh\nif [ "$1" = "-L" ]; then FAKE_NVIDIA_SMI_MODE=${listMode}; else FAKE_NVIDIA_SMI_MODE=${queryMode}; fi\nexport FAKE_NVIDIA_SMI_MODE\nexec "${FAKE_SMI}" "$@"\n`,
  );
  chmodSync(script, 0o755);
  return script;
}

/** The process whose pid `pidFile` holds is gone (killed, not left behind). */
function expectKilled(pidFile: string): void {
  const pid = Number(readFileSync(pidFile, 'utf8').trim());
  expect(Number.isInteger(pid) && pid > 0).toBe(true);
  expect(processGone(pid)).toBe(true);
}

function logged(lines: string[]): Array<{ level: number; msg: string }> {
  return lines.map((l) => JSON.parse(l) as { level: number; msg: string }).map(({ level, msg }) => ({ level, msg }));
}

describe('parseNvidiaSmiCsv', () => {
  const h100x8 = readFileSync(path.join(FIXTURES, 'gpus', 'h100x8.query.csv'), 'utf8');

  it('asks for the six columns, MIG mode last, and -L for MIG devices', () => {
    expect(NVIDIA_SMI_QUERY_ARGS).toEqual([
      '--query-gpu=index,name,memory.total,uuid,driver_version,mig.mode.current',
      '--format=csv,noheader,nounits',
    ]);
    expect(NVIDIA_SMI_LIST_ARGS).toEqual(['-L']);
  });

  it('parses the 8 x H100 output', () => {
    const { gpus, driver } = parseNvidiaSmiCsv(h100x8);
    expect(driver).toBe(DRIVER);
    expect(gpus).toHaveLength(8);
    expect(gpus.map((g) => g.index)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(new Set(gpus.map((g) => g.name))).toEqual(new Set([H100]));
    expect(new Set(gpus.map((g) => g.memoryMiB))).toEqual(new Set([81559]));
    expect(gpus[0]).toEqual({ index: 0, name: H100, memoryMiB: 81559, uuid: H100X8(0), migMode: 'disabled', migDevices: [] });
    expect(gpus[7]?.uuid).toBe(H100X8(7));
    expect(new Set(gpus.map((g) => g.uuid)).size).toBe(8);
    expect(new Set(gpus.map((g) => g.migMode))).toEqual(new Set(['disabled']));
    expect(gpus.every((g) => g.migDevices.length === 0)).toBe(true);
  });

  it('sorts rows by index whatever order nvidia-smi prints them in', () => {
    const shuffled = h100x8.trim().split('\n');
    const reordered = [shuffled[5], shuffled[0], shuffled[7], shuffled[2], shuffled[1], shuffled[6], shuffled[4], shuffled[3]];
    const { gpus } = parseNvidiaSmiCsv(`${reordered.join('\n')}\n`);
    expect(gpus.map((g) => g.index)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(gpus.map((g) => g.uuid.slice(-2))).toEqual(['50', '51', '52', '53', '54', '55', '56', '57']);
  });

  it('parses a mixed H100 + H200 output with per-GPU memory', () => {
    const text = [
      `0, ${H100}, 81559, ${H100_UUID}, ${DRIVER}, Disabled`,
      `1, ${H200}, 143771, ${H200_UUID}, ${DRIVER}, Disabled`,
      '',
    ].join('\n');
    expect(parseNvidiaSmiCsv(text)).toEqual({
      driver: DRIVER,
      gpus: [
        { index: 0, name: H100, memoryMiB: 81559, uuid: H100_UUID, migMode: 'disabled', migDevices: [] },
        { index: 1, name: H200, memoryMiB: 143771, uuid: H200_UUID, migMode: 'disabled', migDevices: [] },
      ],
    });
  });

  it('maps the MIG column: Enabled, Disabled, [N/A] (any case, N/A and [Not Supported] too)', () => {
    const text = [
      `0, ${H100}, 81559, GPU-a, ${DRIVER}, Enabled`,
      `1, ${H100}, 81559, GPU-b, ${DRIVER}, Disabled`,
      `2, NVIDIA GeForce RTX 4090, 24564, GPU-c, ${DRIVER}, [N/A]`,
      `3, ${H100}, 81559, GPU-d, ${DRIVER}, enabled`,
      `4, ${H100}, 81559, GPU-e, ${DRIVER}, DISABLED`,
      `5, Tesla T4, 15360, GPU-f, ${DRIVER}, N/A`,
      `6, Tesla T4, 15360, GPU-g, ${DRIVER}, [Not Supported]`,
    ].join('\n');
    const { gpus } = parseNvidiaSmiCsv(text);
    expect(gpus.map((g) => [g.uuid, g.migMode])).toEqual([
      ['GPU-a', 'enabled'],
      ['GPU-b', 'disabled'],
      ['GPU-c', 'unsupported'],
      ['GPU-d', 'enabled'],
      ['GPU-e', 'disabled'],
      ['GPU-f', 'unsupported'],
      ['GPU-g', 'unsupported'],
    ]);
    // The query never lists MIG devices: -L fills them in.
    expect(gpus.map((g) => g.migDevices)).toEqual([[], [], [], [], [], [], []]);
  });

  it('parses every fixture machine with its MIG modes', () => {
    const modes = (mode: string) => parseNvidiaSmiCsv(readFileSync(path.join(FIXTURES, 'gpus', `${mode}.query.csv`), 'utf8')).gpus.map((g) => g.migMode);
    expect(modes('h100x1')).toEqual(['disabled']);
    expect(modes('h200x2')).toEqual(['disabled', 'disabled']);
    expect(modes('mixed')).toEqual(['disabled', 'disabled']);
    expect(modes('h200-mig7')).toEqual(['enabled']);
    expect(modes('mig-mixed')).toEqual(['enabled', 'disabled', 'enabled']);
    expect(modes('rtx4090x1')).toEqual(['unsupported']);
  });

  it('rejects an unknown MIG mode value, naming the line', () => {
    const text = `0, ${H100}, 81559, GPU-a, ${DRIVER}, Enabled\n1, ${H100}, 81559, GPU-b, ${DRIVER}, Pending\n`;
    expect(() => parseNvidiaSmiCsv(text)).toThrow(new NvidiaSmiError(UNEXPECTED(2)));
    expect(() => parseNvidiaSmiCsv(`0, ${H100}, 81559, GPU-a, ${DRIVER}, \n`)).toThrow(new NvidiaSmiError(UNEXPECTED(1)));
    expect(() => parseNvidiaSmiCsv(`0, ${H100}, 81559, GPU-a, ${DRIVER}, Enabled (pending)\n`)).toThrow(new NvidiaSmiError(UNEXPECTED(1)));
  });

  it('rejects empty output', () => {
    expect(() => parseNvidiaSmiCsv('')).toThrow(new NvidiaSmiError('nvidia-smi printed no GPU rows'));
    expect(() => parseNvidiaSmiCsv('\n\n')).toThrow(new NvidiaSmiError('nvidia-smi printed no GPU rows'));
  });

  it('rejects text that is not the expected CSV', () => {
    expect(() => parseNvidiaSmiCsv('No devices were found\n')).toThrow(new NvidiaSmiError(UNEXPECTED(1)));
    // Rows of different widths: csv-parse itself refuses them.
    let caught: unknown;
    try {
      parseNvidiaSmiCsv('a, b\nc, d, e, f\n');
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(NvidiaSmiError);
    expect((caught as Error).message).toMatch(/^nvidia-smi printed output that is not CSV \(.+\)$/);
  });

  it('rejects a row whose memory is not a number, naming the line', () => {
    const text = `0, ${H100}, 81559, GPU-a, ${DRIVER}, Disabled\n1, ${H100}, [N/A], GPU-b, ${DRIVER}, Disabled\n`;
    expect(() => parseNvidiaSmiCsv(text)).toThrow(new NvidiaSmiError(UNEXPECTED(2)));
  });

  it('rejects rows with the wrong number of columns, the old five-column answer included', () => {
    const message = UNEXPECTED(1);
    expect(() => parseNvidiaSmiCsv(`0, ${H100}, 81559, GPU-a\n`)).toThrow(new NvidiaSmiError(message));
    expect(() => parseNvidiaSmiCsv(`0, ${H100}, 81559, GPU-a, ${DRIVER}\n`)).toThrow(new NvidiaSmiError(message));
    expect(() => parseNvidiaSmiCsv(`0, ${H100}, 81559, GPU-a, ${DRIVER}, Disabled, extra\n`)).toThrow(new NvidiaSmiError(message));
  });
});

describe('parseNvidiaSmiList', () => {
  const list = (mode: string): string => readFileSync(path.join(FIXTURES, 'gpus', `${mode}.L.txt`), 'utf8');

  it('h200-mig7: the seven 1g.18gb devices of GPU 0, by index, with 18 GiB each', () => {
    const byGpu = parseNvidiaSmiList(list('h200-mig7'));
    expect([...byGpu.keys()]).toEqual([H200_UUID]);
    expect(byGpu.get(H200_UUID)).toEqual(
      Array.from({ length: 7 }, (_, i) => ({ index: i, profile: '1g.18gb', uuid: MIG(i), memoryMiB: 18432 })),
    );
  });

  it('mig-mixed: GPU 0 with four devices of three profiles, GPU 1 and GPU 2 with none', () => {
    const byGpu = parseNvidiaSmiList(list('mig-mixed'));
    expect([...byGpu.entries()]).toEqual([
      [
        MIXED_MIG_GPU(0),
        [
          { index: 0, profile: '3g.40gb', uuid: MIG(0), memoryMiB: 40960 },
          { index: 1, profile: '2g.20gb', uuid: MIG(1), memoryMiB: 20480 },
          { index: 2, profile: '1g.10gb', uuid: MIG(2), memoryMiB: 10240 },
          { index: 3, profile: '1g.10gb', uuid: MIG(3), memoryMiB: 10240 },
        ],
      ],
      [MIXED_MIG_GPU(1), []],
      [MIXED_MIG_GPU(2), []],
    ]);
  });

  it('a machine without MIG: every GPU, none with MIG devices', () => {
    const byGpu = parseNvidiaSmiList(list('h100x8'));
    expect([...byGpu.entries()]).toEqual(Array.from({ length: 8 }, (_, i) => [H100X8(i), []]));
    expect([...parseNvidiaSmiList(list('rtx4090x1')).entries()]).toEqual([['GPU-1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c01', []]]);
  });

  it('reads compute-instance profiles (1c.3g.20gb) and the -me, +me.all, +gfx variants by their memory', () => {
    const text = [
      'GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-a)',
      '  MIG 1c.3g.20gb     Device  0: (UUID: MIG-GPU-a/1/0)',
      '  MIG 1g.24gb-me     Device  1: (UUID: MIG-b)',
      '  MIG 1g.24gb+me.all Device  2: (UUID: MIG-c)',
      '  MIG 4g.96gb+gfx    Device  3: (UUID: MIG-d)',
      '',
    ].join('\n');
    expect(parseNvidiaSmiList(text).get('GPU-a')!.map((d) => [d.index, d.profile, d.uuid, d.memoryMiB])).toEqual([
      [0, '1c.3g.20gb', 'MIG-GPU-a/1/0', 20 * 1024],
      [1, '1g.24gb-me', 'MIG-b', 24 * 1024],
      [2, '1g.24gb+me.all', 'MIG-c', 24 * 1024],
      [3, '4g.96gb+gfx', 'MIG-d', 96 * 1024],
    ]);
  });

  it('keeps the legacy MIG-GPU-<uuid>/<gi>/<ci> form, CRLF line ends, +me profiles and blank lines', () => {
    const gpu = 'GPU-2fa5cf01-9520-1bc1-995b-cc0c6d9bca7c';
    const text = [
      `GPU 0: NVIDIA A100-SXM4-40GB (UUID: ${gpu})\r`,
      `  MIG 3g.20gb Device 0: (UUID: MIG-${gpu}/7/0)\r`,
      '',
      `  MIG 1g.5gb+me     Device  1: (UUID: MIG-${gpu}/13/0)\r`,
      '',
    ].join('\n');
    expect([...parseNvidiaSmiList(text).entries()]).toEqual([
      [
        gpu,
        [
          { index: 0, profile: '3g.20gb', uuid: `MIG-${gpu}/7/0`, memoryMiB: 20480 },
          { index: 1, profile: '1g.5gb+me', uuid: `MIG-${gpu}/13/0`, memoryMiB: 5120 },
        ],
      ],
    ]);
  });

  it('rejects a malformed line with its line number (blank lines counted)', () => {
    const good = list('h200-mig7').trimEnd().split('\n');
    const withJunk = [good[0], good[1], '', 'No MIG devices found', ...good.slice(2)].join('\n');
    expect(() => parseNvidiaSmiList(withJunk)).toThrow(new NvidiaSmiError(UNEXPECTED_L(4)));
    // A MIG line before any GPU line, a profile that names no memory, a GPU line without its UUID.
    expect(() => parseNvidiaSmiList(`  MIG 1g.10gb     Device  0: (UUID: ${MIG(0)})\n`)).toThrow(new NvidiaSmiError(UNEXPECTED_L(1)));
    expect(() => parseNvidiaSmiList(`GPU 0: ${H200} (UUID: ${H200_UUID})\n  MIG 1g     Device  0: (UUID: ${MIG(0)})\n`)).toThrow(
      new NvidiaSmiError(UNEXPECTED_L(2)),
    );
    expect(() => parseNvidiaSmiList(`GPU 0: ${H200}\n`)).toThrow(new NvidiaSmiError(UNEXPECTED_L(1)));
  });

  it('reads nothing from empty output', () => {
    expect(parseNvidiaSmiList('').size).toBe(0);
    expect(parseNvidiaSmiList('\n\n').size).toBe(0);
  });
});

describe('detectGpus with nvidia-smi', () => {
  it('detects one H100 and calls nvidia-smi with exactly the query', async () => {
    const log = path.join(tmp, 'calls.log');
    process.env.FAKE_NVIDIA_SMI_LOG = log;
    const { detected, lines } = await detectWith('h100x1');
    const selection: Selection = {
      devices: [wholeGpu(0, H100_UUID, H100, 81559)],
      unusable: [],
      by: 'all',
      cudaVisibleDevices: null,
      nvidiaVisibleDevices: null,
      nvidiaCheck: NVIDIA_NOT_SET,
      warnings: [],
    };
    expect(detected).toEqual({
      count: 1,
      model: H100,
      memoryGb: 79.6,
      driver: DRIVER,
      source: 'nvidia-smi',
      gpus: [{ index: 0, name: H100, memoryMiB: 81559, uuid: H100_UUID, migMode: 'disabled', migDevices: [] }],
      host: { cpu: expect.any(String), cores: os.cpus().length, memoryGiB: expect.any(Number) },
      selection,
      used: [wholeGpu(0, H100_UUID, H100, 81559)],
    });
    expect(readFileSync(log, 'utf8')).toBe(QUERY_LINE);
    expect(lines).toEqual([]);
  });

  it('uses the mode default (h100x1) when FAKE_NVIDIA_SMI_MODE is unset, found on PATH by name', async () => {
    delete process.env.FAKE_NVIDIA_SMI_MODE;
    process.env.PATH = `${FIXTURES}${path.delimiter}${savedEnv.PATH ?? ''}`;
    const { logger } = captureLogger();
    const detected = await detectGpus(loadConfig({ GPU_MODE: 'actual' }), logger);
    expect(detected.count).toBe(1);
    expect(detected.model).toBe(H100);
    expect(detected.source).toBe('nvidia-smi');
    expect(detected.used.map((d) => d.id)).toEqual(['gpu0']);
  });

  it('detects 8 H100s with only the query (no GPU in MIG mode: no -L)', async () => {
    const log = path.join(tmp, 'calls.log');
    process.env.FAKE_NVIDIA_SMI_LOG = log;
    const { detected, lines } = await detectWith('h100x8');
    expect(detected.count).toBe(8);
    expect(detected.model).toBe(H100);
    expect(detected.memoryGb).toBe(79.6);
    expect(detected.gpus.map((g) => g.index)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(detected.used).toEqual(Array.from({ length: 8 }, (_, i) => wholeGpu(i, H100X8(i), H100, 81559)));
    expect(detected.selection.by).toBe('all');
    expect(readFileSync(log, 'utf8')).toBe(QUERY_LINE);
    expect(lines).toEqual([]);
  });

  it('detects two H200s at 140.4 GiB each', async () => {
    const { detected } = await detectWith('h200x2');
    expect(detected).toMatchObject({ count: 2, model: H200, memoryGb: 140.4, driver: DRIVER, source: 'nvidia-smi' });
    expect(detected.gpus.map((g) => g.uuid)).toEqual([H200_UUID, 'GPU-9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5e']);
    expect(detected.used.map((d) => [d.id, d.uuid, d.memoryMiB])).toEqual([
      ['gpu0', H200_UUID, 143771],
      ['gpu1', 'GPU-9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5e', 143771],
    ]);
  });

  it('reports the smallest GPU memory when the GPUs differ', async () => {
    const { detected } = await detectWith('mixed');
    expect(detected).toMatchObject({ count: 2, model: H100, memoryGb: 79.6, source: 'nvidia-smi' });
    expect(detected.gpus.map((g) => g.memoryMiB)).toEqual([81559, 143771]);
    expect(detected.used.map((d) => [d.id, d.name, d.memoryMiB])).toEqual([
      ['gpu0', H100, 81559],
      ['gpu1', H200, 143771],
    ]);
  });

  it('h200-mig7: the query, then -L; seven used MIG devices gpu0-mig0..6 of 18 GiB', async () => {
    const log = path.join(tmp, 'calls.log');
    process.env.FAKE_NVIDIA_SMI_LOG = log;
    const { detected, lines } = await detectWith('h200-mig7');
    expect(readFileSync(log, 'utf8')).toBe(`${QUERY_LINE}-L\n`);
    expect(detected).toMatchObject({ count: 1, model: H200, memoryGb: 140.4, driver: DRIVER, source: 'nvidia-smi' });
    expect(detected.gpus).toEqual([
      {
        index: 0,
        name: H200,
        memoryMiB: 143771,
        uuid: H200_UUID,
        migMode: 'enabled',
        migDevices: Array.from({ length: 7 }, (_, i) => ({ index: i, profile: '1g.18gb', uuid: MIG(i), memoryMiB: 18432 })),
      },
    ]);
    expect(detected.used).toEqual(
      Array.from({ length: 7 }, (_, i): DeviceChoice => ({
        id: `gpu0-mig${i}`,
        kind: 'mig',
        gpuIndex: 0,
        gpuUuid: H200_UUID,
        migIndex: i,
        profile: '1g.18gb',
        uuid: MIG(i),
        name: 'NVIDIA H200 MIG 1g.18gb',
        memoryMiB: 18432,
        used: true,
        why: ALL_DEVICES,
      })),
    );
    expect(detected.selection).toMatchObject({ by: 'all', unusable: [], warnings: [] });
    expect(lines).toEqual([]);
  });

  it('mig-mixed: MIG devices of GPU 0, GPU 1 whole; GPU 2 (MIG mode, no device) unusable with a warning', async () => {
    const log = path.join(tmp, 'calls.log');
    process.env.FAKE_NVIDIA_SMI_LOG = log;
    const { detected, lines } = await detectWith('mig-mixed');
    expect(readFileSync(log, 'utf8')).toBe(`${QUERY_LINE}-L\n`);
    expect(detected.count).toBe(3);
    expect(detected.used.map((d) => [d.id, d.kind, d.uuid, d.name, d.memoryMiB])).toEqual([
      ['gpu0-mig0', 'mig', MIG(0), `${H100} MIG 3g.40gb`, 40960],
      ['gpu0-mig1', 'mig', MIG(1), `${H100} MIG 2g.20gb`, 20480],
      ['gpu0-mig2', 'mig', MIG(2), `${H100} MIG 1g.10gb`, 10240],
      ['gpu0-mig3', 'mig', MIG(3), `${H100} MIG 1g.10gb`, 10240],
      ['gpu1', 'gpu', MIXED_MIG_GPU(1), H100, 81559],
    ]);
    expect(detected.selection.devices.map((d) => d.id)).toEqual(detected.used.map((d) => d.id));
    expect(detected.selection.unusable).toEqual([{ gpuIndex: 2, uuid: MIXED_MIG_GPU(2), name: H100, why: NO_MIG_DEVICE }]);
    const warning = `GPU 2 (${H100}, ${MIXED_MIG_GPU(2)}) is ${NO_MIG_DEVICE}; it gets no instance`;
    expect(detected.selection.warnings).toEqual([warning]);
    expect(logged(lines)).toEqual([{ level: 40, msg: warning }]);
    expect(detected.gpus.map((g) => [g.migMode, g.migDevices.length])).toEqual([
      ['enabled', 4],
      ['disabled', 0],
      ['enabled', 0],
    ]);
  });

  it('rtx4090x1: MIG mode [N/A] is unsupported; the card is used whole, only the query asked', async () => {
    const log = path.join(tmp, 'calls.log');
    process.env.FAKE_NVIDIA_SMI_LOG = log;
    const { detected, lines } = await detectWith('rtx4090x1');
    const uuid = 'GPU-1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c01';
    expect(detected.gpus).toEqual([{ index: 0, name: 'NVIDIA GeForce RTX 4090', memoryMiB: 24564, uuid, migMode: 'unsupported', migDevices: [] }]);
    expect(detected.used).toEqual([wholeGpu(0, uuid, 'NVIDIA GeForce RTX 4090', 24564)]);
    expect(detected.memoryGb).toBe(24);
    expect(readFileSync(log, 'utf8')).toBe(QUERY_LINE);
    expect(lines).toEqual([]);
  });

  it('a GPU in MIG mode that -L does not list gets no MIG device; none usable: NoGpuError (69)', async () => {
    // The query says GPU 0 is in MIG mode; -L (h200x2's) lists it with no MIG device.
    const script = splitStandIn('h200-mig7', 'h200x2');
    const { logger } = captureLogger();
    const error = await detectGpus(loadConfig({ GPU_MODE: 'actual', NVIDIA_SMI_PATH: script }), logger).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(NoGpuError);
    expect((error as NoGpuError).exitCode).toBe(69);
    expect((error as NoGpuError).message).toBe('no GPU that CUDA can use');
    expect((error as NoGpuError).problems).toEqual([`GPU 0 (${H200}, ${H200_UUID}) is ${NO_MIG_DEVICE}`]);
  });
});

describe('detectGpus failures', () => {
  it('nvidia-smi missing from PATH and no lspci: NoGpuError naming both', async () => {
    process.env.PATH = barePath();
    const { logger } = captureLogger();
    const error = await expectNoGpu(detectGpus(loadConfig({ GPU_MODE: 'actual' }), logger));
    expect(error.problems).toEqual([
      'nvidia-smi was not found on PATH',
      'lspci is not installed, so systeminformation cannot list GPUs',
    ]);
  });

  it('NVIDIA_SMI_PATH pointing nowhere: NoGpuError naming the path', async () => {
    process.env.PATH = barePath();
    const missing = path.join(tmp, 'no-such-dir', 'nvidia-smi');
    const { logger } = captureLogger();
    const error = await expectNoGpu(detectGpus(loadConfig({ GPU_MODE: 'actual', NVIDIA_SMI_PATH: missing }), logger));
    expect(error.problems).toEqual([
      `${missing} was not found on PATH`,
      'lspci is not installed, so systeminformation cannot list GPUs',
    ]);
  });

  it('"No devices were found" (exit 6)', async () => {
    const error = await expectNoGpu(detectWith('none'));
    expect(error.problems).toEqual([`${FAKE_SMI} failed (exit 6): No devices were found`, SYSINFO_SKIPPED]);
  });

  it('"No devices were found" with NVIDIA_VISIBLE_DEVICES=none: the reason is named', async () => {
    const error = await expectNoGpu(detectWith('none', { NVIDIA_VISIBLE_DEVICES: 'none' }));
    expect(error.problems).toEqual([
      `${FAKE_SMI} failed (exit 6): No devices were found`,
      SYSINFO_SKIPPED,
      'NVIDIA_VISIBLE_DEVICES=none: the container runtime was told to give this container no GPU',
    ]);
  });

  it('driver not loaded (exit 9) reports the exit status and the first line', async () => {
    const error = await expectNoGpu(detectWith('fail'));
    expect(error.problems).toEqual([
      `${FAKE_SMI} failed (exit 9): NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. ` +
        'Make sure that the latest NVIDIA driver is installed and running.',
      SYSINFO_SKIPPED,
    ]);
  });

  it('garbage output with exit 0', async () => {
    const error = await expectNoGpu(detectWith('garbage'));
    expect(error.problems).toHaveLength(2);
    expect(error.problems[0]).toMatch(/^nvidia-smi printed (output that is not CSV|an unexpected line 1)/);
    expect(error.problems[1]).toBe(SYSINFO_SKIPPED);
  });

  /** A failed -L loses only the GPUs in MIG mode: with none left, 69 naming the GPU and the -L failure. */
  const expectNoCudaGpu = async (promise: Promise<unknown>, why: string) => {
    const error = await promise.then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(NoGpuError);
    expect((error as NoGpuError).exitCode).toBe(69);
    expect((error as NoGpuError).message).toBe('no GPU that CUDA can use');
    expect((error as NoGpuError).problems).toEqual([`GPU 0 (NVIDIA H200, ${H200_UUID}) is in MIG mode, and its MIG devices are not known: ${why}`]);
  };

  it('a failing -L after a query that shows MIG mode: the GPU in MIG mode is lost, naming the -L call (69 when it was the only one)', async () => {
    const script = splitStandIn('h200-mig7', 'fail');
    const { logger } = captureLogger();
    await expectNoCudaGpu(
      detectGpus(loadConfig({ GPU_MODE: 'actual', NVIDIA_SMI_PATH: script }), logger),
      `${script} -L failed (exit 9): NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.`,
    );
  });

  it('a failing -L on a mixed machine keeps the GPU not in MIG mode, and warns for the others', async () => {
    const script = splitStandIn('mig-mixed', 'fail');
    const { logger, lines } = captureLogger();
    const detected = await detectGpus(loadConfig({ GPU_MODE: 'actual', NVIDIA_SMI_PATH: script }), logger, false);
    expect(detected.used.map((d) => [d.id, d.uuid])).toEqual([['gpu1', 'GPU-6a7b8c9d-1b2d-4c6e-9f0a-3b7c2d1e4f61']]);
    expect(detected.selection.unusable.map((u) => u.gpuIndex)).toEqual([0, 2]);
    const warnings = logged(lines).filter((l) => l.level === 40).map((l) => l.msg);
    expect(warnings).toEqual([0, 2].map((i) => `GPU ${i} (NVIDIA H100 80GB HBM3, GPU-6a7b8c9d-1b2d-4c6e-9f0a-3b7c2d1e4f6${i}) is in MIG mode, and its MIG devices are not known: ${script} -L failed (exit 9): NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.; it gets no instance`));
  });

  it('-L printing garbage: the GPU in MIG mode is lost, naming the line -L printed', async () => {
    const script = splitStandIn('h200-mig7', 'garbage');
    const { logger } = captureLogger();
    await expectNoCudaGpu(detectGpus(loadConfig({ GPU_MODE: 'actual', NVIDIA_SMI_PATH: script }), logger), UNEXPECTED_L(1));
  });

  it('a GPU in MIG mode that -L does not list is told apart from one without MIG devices; UUIDs match whatever their case', async () => {
    const script = path.join(tmp, 'nvidia-smi-case');
    // -L prints the GPU UUIDs in upper case, and leaves GPU 2 out.
    writeFileSync(script, `#!/bin/sh\nif [ "$1" = "-L" ]; then\n  FAKE_NVIDIA_SMI_MODE=mig-mixed "${FAKE_SMI}" -L | sed -E -e 's/(UUID: GPU-)([0-9a-f-]+)/\\1\\U\\2/' -e '/^GPU 2:/d'\nelse\n  FAKE_NVIDIA_SMI_MODE=mig-mixed exec "${FAKE_SMI}" "$@"\nfi\n`);
    chmodSync(script, 0o755);
    const { logger } = captureLogger();
    const detected = await detectGpus(loadConfig({ GPU_MODE: 'actual', NVIDIA_SMI_PATH: script }), logger, false);
    expect(detected.used.map((d) => d.id)).toEqual(['gpu0-mig0', 'gpu0-mig1', 'gpu0-mig2', 'gpu0-mig3', 'gpu1']);
    expect(detected.selection.unusable.map((u) => [u.gpuIndex, u.why])).toEqual([[2, 'in MIG mode, and its MIG devices are not known: `nvidia-smi -L` does not list it']]);
  });

  it('a hung nvidia-smi is killed after NVIDIA_SMI_TIMEOUT_MS and leaves no process behind', async () => {
    const pidFile = path.join(tmp, 'smi.pid');
    process.env.FAKE_NVIDIA_SMI_PIDFILE = pidFile;
    const started = Date.now();
    const error = await expectNoGpu(detectWith('hang', { NVIDIA_SMI_TIMEOUT_MS: '300' }));
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(300);
    // A generous ceiling: a busy machine is slow, a timeout that does not fire is forever.
    expect(elapsed).toBeLessThan(10_000);
    expect(error.problems).toEqual([`${FAKE_SMI} did not answer within NVIDIA_SMI_TIMEOUT_MS=300`, SYSINFO_SKIPPED]);

    expect(existsSync(pidFile)).toBe(true);
    expectKilled(pidFile);
  });

  it('a hung -L is killed too, and the timeout names the -L call', async () => {
    const script = splitStandIn('h200-mig7', 'hang');
    const pidFile = path.join(tmp, 'smi-L.pid');
    process.env.FAKE_NVIDIA_SMI_PIDFILE = pidFile;
    const { logger } = captureLogger();
    const started = Date.now();
    await expectNoCudaGpu(
      detectGpus(loadConfig({ GPU_MODE: 'actual', NVIDIA_SMI_PATH: script, NVIDIA_SMI_TIMEOUT_MS: '1500' }), logger),
      `${script} -L did not answer within NVIDIA_SMI_TIMEOUT_MS=1500`,
    );
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(1500);
    // No timing ceiling: a busy machine may be slow; that the -L was killed is checked below.
    // The pid file holds the last call's pid: the -L that hung (exec keeps it through both scripts).
    expectKilled(pidFile);
  });

  it('a stand-in asked anything but the query or -L exits 2 with a usage error (the fixture is strict)', async () => {
    const { execa } = await import('execa');
    const result = await execa(FAKE_SMI, ['-q'], { reject: false });
    expect(result.exitCode).toBe(2);
    expect(result.stdout).toBe('');
    expect(result.stderr).toBe("ERROR: Option -q is not recognized. Please run 'nvidia-smi -h'.");
    // The old five-column query is refused as well.
    const old = await execa(FAKE_SMI, ['--query-gpu=index,name,memory.total,uuid,driver_version', '--format=csv,noheader,nounits'], { reject: false });
    expect(old.exitCode).toBe(2);
    expect(old.stdout).toBe('');
    expect(old.stderr).toBe(
      "ERROR: Option --query-gpu=index,name,memory.total,uuid,driver_version --format=csv,noheader,nounits is not recognized. Please run 'nvidia-smi -h'.",
    );
    // -L with anything more is refused.
    const extra = await execa(FAKE_SMI, ['-L', '-q'], { reject: false });
    expect(extra.exitCode).toBe(2);
    expect(extra.stderr).toBe("ERROR: Option -L -q is not recognized. Please run 'nvidia-smi -h'.");
  });

  it('the stand-in answers -L from the mode\'s .L.txt', async () => {
    const { execa } = await import('execa');
    const result = await execa(FAKE_SMI, ['-L'], { reject: false, env: { FAKE_NVIDIA_SMI_MODE: 'mig-mixed' } });
    expect(result.exitCode).toBe(0);
    expect(`${result.stdout}\n`).toBe(readFileSync(path.join(FIXTURES, 'gpus', 'mig-mixed.L.txt'), 'utf8'));
  });
});

describe('detectGpus with GPU_MODE=mock', () => {
  const MOCK_WHY = 'a mock GPU (GPU_MODE=mock): instances run with --cpu';
  const mockDevice = (index: number): DeviceChoice => wholeGpu(index, `MOCK-000${index}`, 'Mock GPU', 24576, MOCK_WHY);

  it('makes NUM_GPUS mock GPUs with distinct uuids and never runs nvidia-smi', async () => {
    const log = path.join(tmp, 'calls.log');
    process.env.FAKE_NVIDIA_SMI_LOG = log;
    const { logger, lines } = captureLogger();
    const detected = await detectGpus(loadConfig({ GPU_MODE: 'mock', NUM_GPUS: '3', NVIDIA_SMI_PATH: FAKE_SMI }), logger);
    expect(detected).toEqual({
      count: 3,
      model: 'Mock GPU',
      memoryGb: 24,
      driver: null,
      source: 'mock',
      host: { cpu: expect.any(String), cores: os.cpus().length, memoryGiB: expect.any(Number) },
      gpus: [
        { index: 0, name: 'Mock GPU', memoryMiB: 24576, uuid: 'MOCK-0000', migMode: 'unsupported', migDevices: [] },
        { index: 1, name: 'Mock GPU', memoryMiB: 24576, uuid: 'MOCK-0001', migMode: 'unsupported', migDevices: [] },
        { index: 2, name: 'Mock GPU', memoryMiB: 24576, uuid: 'MOCK-0002', migMode: 'unsupported', migDevices: [] },
      ],
      selection: {
        devices: [mockDevice(0), mockDevice(1), mockDevice(2)],
        unusable: [],
        by: 'mock',
        cudaVisibleDevices: null,
        nvidiaVisibleDevices: null,
        nvidiaCheck: 'not checked in mock mode',
        warnings: [],
      },
      used: [mockDevice(0), mockDevice(1), mockDevice(2)],
    });
    expect(new Set(detected.gpus.map((g) => g.uuid)).size).toBe(3);
    expect(existsSync(log)).toBe(false);
    expect(lines).toEqual([]);
  });

  it('defaults to one mock GPU', async () => {
    const { logger } = captureLogger();
    const detected = await detectGpus(loadConfig({ GPU_MODE: 'MOCK' }), logger);
    expect(detected.count).toBe(1);
    expect(detected.source).toBe('mock');
    expect(detected.gpus.map((g) => g.uuid)).toEqual(['MOCK-0000']);
    expect(detected.used.map((d) => d.id)).toEqual(['gpu0']);
  });

  it('takes the model and memory of the mock GPUs from GPU_MODEL and GPU_MEMORY_GB', async () => {
    const { logger } = captureLogger();
    const detected = await detectGpus(
      loadConfig({ GPU_MODE: 'mock', NUM_GPUS: '2', GPU_MODEL: ` ${H100} `, GPU_MEMORY_GB: '80' }),
      logger,
    );
    expect(detected).toMatchObject({ count: 2, model: H100, memoryGb: 80, driver: null, source: 'mock' });
    expect(detected.gpus.map((g) => [g.name, g.memoryMiB])).toEqual([
      [H100, 81920],
      [H100, 81920],
    ]);
    expect(detected.used.map((d) => [d.id, d.name, d.memoryMiB])).toEqual([
      ['gpu0', H100, 81920],
      ['gpu1', H100, 81920],
    ]);
  });

  it('applies neither CUDA_VISIBLE_DEVICES nor NVIDIA_VISIBLE_DEVICES: every mock GPU is used, by mock', async () => {
    const log = path.join(tmp, 'calls.log');
    process.env.FAKE_NVIDIA_SMI_LOG = log;
    for (const cuda of ['1', '9', '', 'GPU-0']) {
      const { logger, lines } = captureLogger();
      const detected = await detectGpus(
        loadConfig({ GPU_MODE: 'mock', NUM_GPUS: '3', CUDA_VISIBLE_DEVICES: cuda, NVIDIA_VISIBLE_DEVICES: 'GPU-not-here', NVIDIA_SMI_PATH: FAKE_SMI }),
        logger,
      );
      expect(detected.used.map((d) => [d.id, d.used, d.why])).toEqual([
        ['gpu0', true, MOCK_WHY],
        ['gpu1', true, MOCK_WHY],
        ['gpu2', true, MOCK_WHY],
      ]);
      expect(detected.selection).toMatchObject({
        by: 'mock',
        cudaVisibleDevices: cuda,
        nvidiaVisibleDevices: 'GPU-not-here',
        nvidiaCheck: 'not checked in mock mode',
        warnings: [],
        unusable: [],
      });
      expect(lines).toEqual([]);
    }
    expect(existsSync(log)).toBe(false);
  });
});

describe('hintMismatches', () => {
  const oneH100 = detection(1);
  const eightH100 = detection(8);
  const mig7 = detection(1, { gpus: fixtureGpus('h200-mig7') });
  const migMixed = detection(3, { gpus: fixtureGpus('mig-mixed') });
  const MIG7_IDS = 'gpu0-mig0, gpu0-mig1, gpu0-mig2, gpu0-mig3, gpu0-mig4, gpu0-mig5, gpu0-mig6';
  const hints = (env: Record<string, string>): Config => loadConfig({ GPU_MODE: 'actual', ...env });

  it('no hints, no warnings', () => {
    expect(hintMismatches(hints({}), oneH100)).toEqual([]);
    expect(hintMismatches(hints({}), mig7)).toEqual([]);
    expect(hintMismatches(hints({}), migMixed)).toEqual([]);
  });

  it('warns when NUM_GPUS differs from the count, with both figures', () => {
    expect(hintMismatches(hints({ NUM_GPUS: '2' }), oneH100)).toEqual(['NUM_GPUS=2 but 1 GPU(s) are used; using 1']);
    expect(hintMismatches(hints({ NUM_GPUS: '8' }), eightH100)).toEqual([]);
    expect(hintMismatches(hints({ NUM_GPUS: '4' }), eightH100)).toEqual(['NUM_GPUS=4 but 8 GPU(s) are used; using 8']);
  });

  it('checks NUM_GPUS against the used devices, after CUDA_VISIBLE_DEVICES', () => {
    const two = detection(8, { cudaVisibleDevices: '1,3' });
    expect(hintMismatches(hints({ NUM_GPUS: '2' }), two)).toEqual([]);
    expect(hintMismatches(hints({ NUM_GPUS: '8' }), two)).toEqual(['NUM_GPUS=8 but 2 GPU(s) are used; using 2']);
  });

  it('NUM_GPUS may count the used MIG devices or their GPUs', () => {
    expect(hintMismatches(hints({ NUM_GPUS: '7' }), mig7)).toEqual([]);
    expect(hintMismatches(hints({ NUM_GPUS: '1' }), mig7)).toEqual([]);
    expect(hintMismatches(hints({ NUM_GPUS: '2' }), mig7)).toEqual(['NUM_GPUS=2 but 7 device(s) on 1 GPU(s) are used; using 7']);
    // mig-mixed: 5 devices on GPUs 0 and 1; GPU 2 has no device, so it is not a GPU used.
    expect(hintMismatches(hints({ NUM_GPUS: '5' }), migMixed)).toEqual([]);
    expect(hintMismatches(hints({ NUM_GPUS: '2' }), migMixed)).toEqual([]);
    expect(hintMismatches(hints({ NUM_GPUS: '3' }), migMixed)).toEqual(['NUM_GPUS=3 but 5 device(s) on 2 GPU(s) are used; using 5']);
  });

  it('warns when GPU_MODEL names another GPU', () => {
    expect(hintMismatches(hints({ GPU_MODEL: 'RTX 4090' }), oneH100)).toEqual([
      `GPU_MODEL="RTX 4090" but 1 of 1 device(s) used are "${H100}" (gpu0); using the detected ones`,
    ]);
    expect(hintMismatches(hints({ GPU_MODEL: 'H200' }), eightH100)).toEqual([
      `GPU_MODEL="H200" but 8 of 8 device(s) used are "${H100}" (gpu0, gpu1, gpu2, gpu3, gpu4, gpu5, gpu6, gpu7); using the detected ones`,
    ]);
  });

  it('accepts GPU_MODEL as a short or full name, any case', () => {
    expect(hintMismatches(hints({ GPU_MODEL: 'H100' }), oneH100)).toEqual([]);
    expect(hintMismatches(hints({ GPU_MODEL: H100 }), oneH100)).toEqual([]);
    expect(hintMismatches(hints({ GPU_MODEL: 'nvidia h100' }), oneH100)).toEqual([]);
  });

  it('matches GPU_MODEL per used device: MIG devices carry their GPU\'s name', () => {
    expect(hintMismatches(hints({ GPU_MODEL: 'H200' }), mig7)).toEqual([]);
    expect(hintMismatches(hints({ GPU_MODEL: 'NVIDIA H200' }), mig7)).toEqual([]);
    expect(hintMismatches(hints({ GPU_MODEL: 'H100' }), mig7)).toEqual([
      `GPU_MODEL="H100" but 7 of 7 device(s) used are "NVIDIA H200 MIG 1g.18gb" (${MIG7_IDS}); using the detected ones`,
    ]);
    expect(hintMismatches(hints({ GPU_MODEL: 'H100' }), migMixed)).toEqual([]);
    expect(hintMismatches(hints({ GPU_MODEL: 'A100' }), migMixed)).toEqual([
      `GPU_MODEL="A100" but 5 of 5 device(s) used are "${H100} MIG 3g.40gb", "${H100} MIG 2g.20gb", "${H100} MIG 1g.10gb", "${H100}" (gpu0-mig0, gpu0-mig1, gpu0-mig2, gpu0-mig3, gpu1); using the detected ones`,
    ]);
  });

  it('names only the used devices of another model, and none left out by CUDA_VISIBLE_DEVICES', () => {
    const mixed = detection(2, { gpus: fixtureGpus('mixed') });
    expect(hintMismatches(hints({ GPU_MODEL: 'H200' }), mixed)).toEqual([
      `GPU_MODEL="H200" but 1 of 2 device(s) used are "${H100}" (gpu0); using the detected ones`,
    ]);
    expect(hintMismatches(hints({ GPU_MODEL: 'H200' }), detection(2, { gpus: fixtureGpus('mixed'), cudaVisibleDevices: '1' }))).toEqual([]);
  });

  it('accepts GPU_MEMORY_GB per GPU or in total, and warns when it fits neither', () => {
    expect(hintMismatches(hints({ GPU_MEMORY_GB: '80' }), oneH100)).toEqual([]);
    expect(hintMismatches(hints({ GPU_MEMORY_GB: '80' }), eightH100)).toEqual([]);
    expect(hintMismatches(hints({ GPU_MEMORY_GB: '640' }), eightH100)).toEqual([]);
    expect(hintMismatches(hints({ GPU_MEMORY_GB: '24' }), oneH100)).toEqual([
      'GPU_MEMORY_GB=24 but 1 of 1 device(s) used have 79.6 GiB (gpu0), 79.6 GiB in all; using the detected figures',
    ]);
    expect(hintMismatches(hints({ GPU_MEMORY_GB: '320' }), eightH100)).toEqual([
      'GPU_MEMORY_GB=320 but 8 of 8 device(s) used have 79.6 GiB (gpu0, gpu1, gpu2, gpu3, gpu4, gpu5, gpu6, gpu7), 636.8 GiB in all; using the detected figures',
    ]);
  });

  it('GPU_MEMORY_GB may be a MIG slice or the total of the used devices', () => {
    expect(hintMismatches(hints({ GPU_MEMORY_GB: '18' }), mig7)).toEqual([]);
    expect(hintMismatches(hints({ GPU_MEMORY_GB: '126' }), mig7)).toEqual([]);
    expect(hintMismatches(hints({ GPU_MEMORY_GB: '40' }), mig7)).toEqual([
      `GPU_MEMORY_GB=40 but 7 of 7 device(s) used have 18 GiB (${MIG7_IDS}), 126 GiB in all; using the detected figures`,
    ]);
    // One used MIG device (CUDA_VISIBLE_DEVICES names it): its slice is the total.
    const one = detection(1, { gpus: fixtureGpus('h200-mig7'), cudaVisibleDevices: MIG(3) });
    expect(hintMismatches(hints({ GPU_MEMORY_GB: '18' }), one)).toEqual([]);
    expect(hintMismatches(hints({ GPU_MEMORY_GB: '126' }), one)).toEqual([
      'GPU_MEMORY_GB=126 but 1 of 1 device(s) used have 18 GiB (gpu0-mig3), 18 GiB in all; using the detected figures',
    ]);
    // mig-mixed: 40 + 20 + 10 + 10 + 79.6 GiB; a 10 GB hint leaves out the three larger devices.
    expect(hintMismatches(hints({ GPU_MEMORY_GB: '160' }), migMixed)).toEqual([]);
    expect(hintMismatches(hints({ GPU_MEMORY_GB: '10' }), migMixed)).toEqual([
      'GPU_MEMORY_GB=10 but 3 of 5 device(s) used have 40, 20, 79.6 GiB (gpu0-mig0, gpu0-mig1, gpu1), 159.6 GiB in all; using the detected figures',
    ]);
  });

  it('detectGpus logs every mismatch as a warning and keeps the detected figures', async () => {
    const { detected, lines } = await detectWith('h100x1', { NUM_GPUS: '2', GPU_MODEL: 'RTX 4090', GPU_MEMORY_GB: '24' });
    expect(detected).toMatchObject({ count: 1, model: H100, memoryGb: 79.6 });
    expect(logged(lines)).toEqual([
      { level: 40, msg: 'NUM_GPUS=2 but 1 GPU(s) are used; using 1' },
      { level: 40, msg: `GPU_MODEL="RTX 4090" but 1 of 1 device(s) used are "${H100}" (gpu0); using the detected ones` },
      { level: 40, msg: 'GPU_MEMORY_GB=24 but 1 of 1 device(s) used have 79.6 GiB (gpu0), 79.6 GiB in all; using the detected figures' },
    ]);
  });

  it('detectGpus logs nothing when the hints match (8 x H100, total memory)', async () => {
    const { detected, lines } = await detectWith('h100x8', { NUM_GPUS: '8', GPU_MODEL: 'H100', GPU_MEMORY_GB: '640' });
    expect(detected.count).toBe(8);
    expect(lines).toEqual([]);
  });

  it('detectGpus logs nothing when the hints match the MIG devices (h200-mig7: 7 x 18 GB H200 slices)', async () => {
    const { detected, lines } = await detectWith('h200-mig7', { NUM_GPUS: '7', GPU_MODEL: 'H200', GPU_MEMORY_GB: '18' });
    expect(detected.used).toHaveLength(7);
    expect(lines).toEqual([]);
  });

  it('detectGpus logs the selection\'s warnings before the hint mismatches', async () => {
    const { lines } = await detectWith('mig-mixed', { NUM_GPUS: '3' });
    expect(logged(lines)).toEqual([
      { level: 40, msg: `GPU 2 (${H100}, ${MIXED_MIG_GPU(2)}) is ${NO_MIG_DEVICE}; it gets no instance` },
      { level: 40, msg: 'NUM_GPUS=3 but 5 device(s) on 2 GPU(s) are used; using 5' },
    ]);
  });
});

describe('summarize', () => {
  it('throws NoGpuError (69) naming each unusable GPU when no device is usable', () => {
    const gpus: GpuInfo[] = [
      { index: 0, name: H200, memoryMiB: 143771, uuid: 'GPU-a', migMode: 'enabled', migDevices: [] },
      { index: 1, name: H200, memoryMiB: 143771, uuid: 'GPU-b', migMode: 'enabled', migDevices: [] },
    ];
    let caught: unknown;
    try {
      detection(2, { gpus });
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(NoGpuError);
    expect((caught as NoGpuError).exitCode).toBe(69);
    expect((caught as NoGpuError).message).toBe('no GPU that CUDA can use');
    expect((caught as NoGpuError).problems).toEqual([
      `GPU 0 (${H200}, GPU-a) is ${NO_MIG_DEVICE}`,
      `GPU 1 (${H200}, GPU-b) is ${NO_MIG_DEVICE}`,
    ]);
  });

  it('counts every GPU and the smallest memory, whichever devices are used', () => {
    const detected = detection(8, { gpus: gpuList(8), cudaVisibleDevices: '1,3' });
    expect(detected).toMatchObject({ count: 8, model: H100, memoryGb: 79.6, driver: DRIVER, source: 'nvidia-smi' });
    expect(detected.used.map((d) => d.id)).toEqual(['gpu1', 'gpu3']);
    expect(detected.selection.devices).toHaveLength(8);
  });
});

describe('detectGpus with the platform\'s device settings', () => {
  it('CUDA_VISIBLE_DEVICES=1,3 on h100x8: two used, six not, and why', async () => {
    const { detected, lines } = await detectWith('h100x8', { CUDA_VISIBLE_DEVICES: '1,3' });
    expect(detected.used.map((d) => [d.id, d.uuid, d.why])).toEqual([
      ['gpu1', H100X8(1), 'in CUDA_VISIBLE_DEVICES (as 1)'],
      ['gpu3', H100X8(3), 'in CUDA_VISIBLE_DEVICES (as 3)'],
    ]);
    expect(detected.selection.devices.filter((d) => !d.used).map((d) => [d.id, d.why])).toEqual(
      [0, 2, 4, 5, 6, 7].map((i) => [`gpu${i}`, 'not in CUDA_VISIBLE_DEVICES']),
    );
    expect(detected.selection).toMatchObject({ by: 'CUDA_VISIBLE_DEVICES', cudaVisibleDevices: '1,3', nvidiaVisibleDevices: null });
    expect(detected.count).toBe(8);
    expect(lines).toEqual([]);
  });

  it('a CUDA_VISIBLE_DEVICES that does not fit: detectGpus rejects with the ConfigError (78), not NoGpuError', async () => {
    const error = await detectWith('h100x8', { CUDA_VISIBLE_DEVICES: '9' }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).exitCode).toBe(78);
    expect((error as ConfigError).message).toBe('CUDA_VISIBLE_DEVICES does not fit this machine');
    const listed = Array.from({ length: 8 }, (_, i) => `${i} (${H100X8(i)})`).join(', ');
    expect((error as ConfigError).problems).toEqual([`CUDA_VISIBLE_DEVICES names 9, which nvidia-smi does not list (it lists: ${listed})`]);
  });

  it('an empty CUDA_VISIBLE_DEVICES is not unset: detectGpus rejects (78)', async () => {
    const error = await detectWith('h100x8', { CUDA_VISIBLE_DEVICES: '' }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).exitCode).toBe(78);
    expect((error as ConfigError).message).toBe('no device to use');
  });

  it('NVIDIA_VISIBLE_DEVICES=none with GPUs present: a warning logged, every GPU used', async () => {
    const { detected, lines } = await detectWith('h200x2', { NVIDIA_VISIBLE_DEVICES: 'none' });
    expect(detected.used.map((d) => d.id)).toEqual(['gpu0', 'gpu1']);
    expect(logged(lines)).toEqual([
      {
        level: 40,
        msg: 'NVIDIA_VISIBLE_DEVICES=none exposes no GPU, yet nvidia-smi lists 2 GPU(s): they came another way (Docker --gpus, CDI, a device plugin); using what nvidia-smi lists',
      },
    ]);
    expect(detected.selection.nvidiaCheck).toBe('none: the runtime exposes no GPU, only the driver; yet nvidia-smi lists 2 GPU(s)');
  });

  it('NVIDIA_VISIBLE_DEVICES with a GPU count nvidia-smi does not show: detectGpus rejects (78)', async () => {
    const error = await detectWith('h200x2', { NVIDIA_VISIBLE_DEVICES: '0,1,2' }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).exitCode).toBe(78);
    expect((error as ConfigError).message).toBe('NVIDIA_VISIBLE_DEVICES does not match what nvidia-smi lists');
    expect((error as ConfigError).problems).toEqual([
      'NVIDIA_VISIBLE_DEVICES names 3 GPU(s) but nvidia-smi lists 2 GPU(s): the runtime did not apply it as given. Use CUDA_VISIBLE_DEVICES to choose among the GPUs this container has',
    ]);
  });
});

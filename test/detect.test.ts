import os from 'node:os';
import { mkdtempSync, readFileSync, rmSync, symlinkSync, mkdirSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig, type Config } from '../src/config.js';
import { BootError, NoGpuError } from '../src/errors.js';
import {
  detectGpus,
  hintMismatches,
  NVIDIA_SMI_QUERY_ARGS,
  NvidiaSmiError,
  parseNvidiaSmiCsv,
  type GpuDetection,
} from '../src/gpus/detect.js';
import { captureLogger } from './helpers/logger.js';

const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures');
const FAKE_SMI = path.join(FIXTURES, 'nvidia-smi');
const H100 = 'NVIDIA H100 80GB HBM3';
const H200 = 'NVIDIA H200';
const DRIVER = '580.159.04';
const SYSINFO_SKIPPED = 'systeminformation was not asked: it would call the same failing nvidia-smi without a timeout';

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

function detection(count: number, model: string, memoryGb: number): GpuDetection {
  return { count, model, memoryGb, driver: DRIVER, source: 'nvidia-smi', gpus: [] };
}

describe('parseNvidiaSmiCsv', () => {
  const h100x8 = readFileSync(path.join(FIXTURES, 'nvidia-smi-h100x8.csv'), 'utf8');

  it('parses the 8 x H100 output', () => {
    const { gpus, driver } = parseNvidiaSmiCsv(h100x8);
    expect(driver).toBe(DRIVER);
    expect(gpus).toHaveLength(8);
    expect(gpus.map((g) => g.index)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(new Set(gpus.map((g) => g.name))).toEqual(new Set([H100]));
    expect(new Set(gpus.map((g) => g.memoryMiB))).toEqual(new Set([81559]));
    expect(gpus[0]).toEqual({ index: 0, name: H100, memoryMiB: 81559, uuid: 'GPU-5f8e8a3c-1b2d-4c6e-9f0a-3b7c2d1e4f50' });
    expect(gpus[7]?.uuid).toBe('GPU-5f8e8a3c-1b2d-4c6e-9f0a-3b7c2d1e4f57');
    expect(new Set(gpus.map((g) => g.uuid)).size).toBe(8);
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
      `0, ${H100}, 81559, GPU-5f8e8a3c-1b2d-4c6e-9f0a-3b7c2d1e4f5a, ${DRIVER}`,
      `1, ${H200}, 143771, GPU-9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d, ${DRIVER}`,
      '',
    ].join('\n');
    expect(parseNvidiaSmiCsv(text)).toEqual({
      driver: DRIVER,
      gpus: [
        { index: 0, name: H100, memoryMiB: 81559, uuid: 'GPU-5f8e8a3c-1b2d-4c6e-9f0a-3b7c2d1e4f5a' },
        { index: 1, name: H200, memoryMiB: 143771, uuid: 'GPU-9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d' },
      ],
    });
  });

  it('rejects empty output', () => {
    expect(() => parseNvidiaSmiCsv('')).toThrow(new NvidiaSmiError('nvidia-smi printed no GPU rows'));
    expect(() => parseNvidiaSmiCsv('\n\n')).toThrow(new NvidiaSmiError('nvidia-smi printed no GPU rows'));
  });

  it('rejects text that is not the expected CSV', () => {
    expect(() => parseNvidiaSmiCsv('No devices were found\n')).toThrow(
      new NvidiaSmiError(
        'nvidia-smi printed an unexpected line 1 (expected index, name, memory.total in MiB, uuid, driver_version)',
      ),
    );
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
    const text = `0, ${H100}, 81559, GPU-a, ${DRIVER}\n1, ${H100}, [N/A], GPU-b, ${DRIVER}\n`;
    expect(() => parseNvidiaSmiCsv(text)).toThrow(
      new NvidiaSmiError(
        'nvidia-smi printed an unexpected line 2 (expected index, name, memory.total in MiB, uuid, driver_version)',
      ),
    );
  });

  it('rejects rows with the wrong number of columns', () => {
    const message =
      'nvidia-smi printed an unexpected line 1 (expected index, name, memory.total in MiB, uuid, driver_version)';
    expect(() => parseNvidiaSmiCsv(`0, ${H100}, 81559, GPU-a\n`)).toThrow(new NvidiaSmiError(message));
    expect(() => parseNvidiaSmiCsv(`0, ${H100}, 81559, GPU-a, ${DRIVER}, extra\n`)).toThrow(new NvidiaSmiError(message));
  });
});

describe('detectGpus with nvidia-smi', () => {
  it('detects one H100 and calls nvidia-smi with exactly the query', async () => {
    const log = path.join(tmp, 'calls.log');
    process.env.FAKE_NVIDIA_SMI_LOG = log;
    const { detected, lines } = await detectWith('h100x1');
    expect(detected).toEqual({
      count: 1,
      model: H100,
      memoryGb: 79.6,
      driver: DRIVER,
      source: 'nvidia-smi',
      gpus: [{ index: 0, name: H100, memoryMiB: 81559, uuid: 'GPU-5f8e8a3c-1b2d-4c6e-9f0a-3b7c2d1e4f5a' }],
      host: { cpu: expect.any(String), cores: os.cpus().length, memoryGiB: expect.any(Number) },
    });
    expect(readFileSync(log, 'utf8')).toBe(`${NVIDIA_SMI_QUERY_ARGS.join(' ')}\n`);
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
  });

  it('detects 8 H100s', async () => {
    const { detected } = await detectWith('h100x8');
    expect(detected.count).toBe(8);
    expect(detected.model).toBe(H100);
    expect(detected.memoryGb).toBe(79.6);
    expect(detected.gpus.map((g) => g.index)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
  });

  it('detects two H200s at 140.4 GiB each', async () => {
    const { detected } = await detectWith('h200x2');
    expect(detected).toMatchObject({ count: 2, model: H200, memoryGb: 140.4, driver: DRIVER, source: 'nvidia-smi' });
    expect(detected.gpus.map((g) => g.uuid)).toEqual([
      'GPU-9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d',
      'GPU-9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5e',
    ]);
  });

  it('reports the smallest GPU memory when the GPUs differ', async () => {
    const { detected } = await detectWith('mixed');
    expect(detected).toMatchObject({ count: 2, model: H100, memoryGb: 79.6, source: 'nvidia-smi' });
    expect(detected.gpus.map((g) => g.memoryMiB)).toEqual([81559, 143771]);
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

  it('a hung nvidia-smi is killed after NVIDIA_SMI_TIMEOUT_MS and leaves no process behind', async () => {
    const pidFile = path.join(tmp, 'smi.pid');
    process.env.FAKE_NVIDIA_SMI_PIDFILE = pidFile;
    const started = Date.now();
    const error = await expectNoGpu(detectWith('hang', { NVIDIA_SMI_TIMEOUT_MS: '300' }));
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(300);
    expect(elapsed).toBeLessThan(3000);
    expect(error.problems).toEqual([`${FAKE_SMI} did not answer within NVIDIA_SMI_TIMEOUT_MS=300`, SYSINFO_SKIPPED]);

    expect(existsSync(pidFile)).toBe(true);
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    expect(Number.isInteger(pid) && pid > 0).toBe(true);
    let killError: NodeJS.ErrnoException | undefined;
    try {
      process.kill(pid, 0);
    } catch (e) {
      killError = e as NodeJS.ErrnoException;
    }
    expect(killError?.code).toBe('ESRCH');
  });

  it('a stand-in asked anything but the query exits 2 with a usage error (the fixture is strict)', async () => {
    const { execa } = await import('execa');
    const result = await execa(FAKE_SMI, ['-L'], { reject: false });
    expect(result.exitCode).toBe(2);
    expect(result.stdout).toBe('');
    expect(result.stderr).toBe("ERROR: Option -L is not recognized. Please run 'nvidia-smi -h'.");
  });
});

describe('detectGpus with GPU_MODE=mock', () => {
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
        { index: 0, name: 'Mock GPU', memoryMiB: 24576, uuid: 'MOCK-0000' },
        { index: 1, name: 'Mock GPU', memoryMiB: 24576, uuid: 'MOCK-0001' },
        { index: 2, name: 'Mock GPU', memoryMiB: 24576, uuid: 'MOCK-0002' },
      ],
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
  });
});

describe('hintMismatches', () => {
  const oneH100 = detection(1, H100, 79.6);
  const eightH100 = detection(8, H100, 79.6);
  const hints = (env: Record<string, string>): Config => loadConfig({ GPU_MODE: 'actual', ...env });

  it('no hints, no warnings', () => {
    expect(hintMismatches(hints({}), oneH100)).toEqual([]);
  });

  it('warns when NUM_GPUS differs from the count, with both figures', () => {
    expect(hintMismatches(hints({ NUM_GPUS: '2' }), oneH100)).toEqual([
      'NUM_GPUS=2 but 1 GPU(s) were detected; using 1',
    ]);
    expect(hintMismatches(hints({ NUM_GPUS: '8' }), eightH100)).toEqual([]);
  });

  it('warns when GPU_MODEL names another GPU', () => {
    expect(hintMismatches(hints({ GPU_MODEL: 'RTX 4090' }), oneH100)).toEqual([
      `GPU_MODEL="RTX 4090" but the detected model is "${H100}"; using the detected one`,
    ]);
  });

  it('accepts GPU_MODEL as a short or full name, any case', () => {
    expect(hintMismatches(hints({ GPU_MODEL: 'H100' }), oneH100)).toEqual([]);
    expect(hintMismatches(hints({ GPU_MODEL: H100 }), oneH100)).toEqual([]);
    expect(hintMismatches(hints({ GPU_MODEL: 'nvidia h100' }), oneH100)).toEqual([]);
  });

  it('accepts GPU_MEMORY_GB per GPU or in total, and warns when it fits neither', () => {
    expect(hintMismatches(hints({ GPU_MEMORY_GB: '80' }), oneH100)).toEqual([]);
    expect(hintMismatches(hints({ GPU_MEMORY_GB: '80' }), eightH100)).toEqual([]);
    expect(hintMismatches(hints({ GPU_MEMORY_GB: '640' }), eightH100)).toEqual([]);
    expect(hintMismatches(hints({ GPU_MEMORY_GB: '24' }), oneH100)).toEqual([
      'GPU_MEMORY_GB=24 but the detected memory is 79.6 GiB per GPU; using the detected figure',
    ]);
    expect(hintMismatches(hints({ GPU_MEMORY_GB: '320' }), eightH100)).toEqual([
      'GPU_MEMORY_GB=320 but the detected memory is 79.6 GiB per GPU; using the detected figure',
    ]);
  });

  it('detectGpus logs every mismatch as a warning and keeps the detected figures', async () => {
    const { detected, lines } = await detectWith('h100x1', { NUM_GPUS: '2', GPU_MODEL: 'RTX 4090', GPU_MEMORY_GB: '24' });
    expect(detected).toMatchObject({ count: 1, model: H100, memoryGb: 79.6 });
    const logged = lines.map((l) => JSON.parse(l) as { level: number; msg: string });
    expect(logged.map(({ level, msg }) => ({ level, msg }))).toEqual([
      { level: 40, msg: 'NUM_GPUS=2 but 1 GPU(s) were detected; using 1' },
      { level: 40, msg: `GPU_MODEL="RTX 4090" but the detected model is "${H100}"; using the detected one` },
      { level: 40, msg: 'GPU_MEMORY_GB=24 but the detected memory is 79.6 GiB per GPU; using the detected figure' },
    ]);
  });

  it('detectGpus logs nothing when the hints match (8 x H100, total memory)', async () => {
    const { detected, lines } = await detectWith('h100x8', { NUM_GPUS: '8', GPU_MODEL: 'H100', GPU_MEMORY_GB: '640' });
    expect(detected.count).toBe(8);
    expect(lines).toEqual([]);
  });
});

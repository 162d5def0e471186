import { access, constants } from 'node:fs/promises';
import path from 'node:path';
import { parse as parseCsv } from 'csv-parse/sync';
import type { Logger } from 'pino';
import { z } from 'zod';
import type { Config } from '../config.js';
import { NoGpuError } from '../errors.js';
import { withTimeout } from '../timeout.js';

export interface GpuInfo {
  index: number;
  name: string;
  memoryMiB: number;
  uuid: string;
}

export interface HostInfo {
  cpu: string;
  cores: number;
  memoryGiB: number;
}

/** CPU and memory from systeminformation (what it does well: /proc, no GPU tools needed); null if it fails or is slow. */
export async function detectHost(timeoutMs = 3000): Promise<HostInfo | null> {
  const query = (async () => {
    const si = await import('systeminformation');
    const [cpu, mem] = await Promise.all([si.cpu(), si.mem()]);
    return {
      cpu: `${cpu.manufacturer} ${cpu.brand}`.trim(),
      cores: cpu.cores,
      memoryGiB: Math.round((mem.total / 1024 ** 3) * 10) / 10,
    };
  })().catch(() => null);
  return (await withTimeout(query, timeoutMs)) ?? null;
}

export type GpuSource = 'nvidia-smi' | 'systeminformation' | 'mock';

export interface GpuDetection {
  count: number;
  model: string;
  /** Memory of one GPU (the smallest, when they differ), GiB with one decimal. */
  memoryGb: number;
  driver: string | null;
  source: GpuSource;
  gpus: GpuInfo[];
  /** CPU and memory of the machine, from systeminformation; null when it could not tell. */
  host?: HostInfo | null;
}

/** The one query this program sends to nvidia-smi; the stand-in in test/fixtures answers it. */
export const NVIDIA_SMI_QUERY_ARGS = [
  '--query-gpu=index,name,memory.total,uuid,driver_version',
  '--format=csv,noheader,nounits',
] as const;

const NvidiaSmiRow = z.tuple([
  z.coerce.number().int().min(0),
  z.string().min(1),
  z.coerce.number().int().positive(),
  z.string(),
  z.string(),
]);

export class NvidiaSmiError extends Error {
  override name = 'NvidiaSmiError';
}

/** Parse `nvidia-smi --query-gpu=... --format=csv,noheader,nounits`; throws on anything else. */
export function parseNvidiaSmiCsv(text: string): { gpus: GpuInfo[]; driver: string | null } {
  let rows: string[][];
  try {
    rows = parseCsv(text, { trim: true, skip_empty_lines: true, relax_quotes: true }) as string[][];
  } catch (error) {
    throw new NvidiaSmiError(`nvidia-smi printed output that is not CSV (${(error as Error).message.split('\n')[0]})`);
  }
  if (rows.length === 0) throw new NvidiaSmiError('nvidia-smi printed no GPU rows');
  const gpus: GpuInfo[] = [];
  let driver: string | null = null;
  rows.forEach((row, line) => {
    const parsed = NvidiaSmiRow.safeParse(row);
    if (!parsed.success) {
      throw new NvidiaSmiError(
        `nvidia-smi printed an unexpected line ${line + 1} (expected index, name, memory.total in MiB, uuid, driver_version)`,
      );
    }
    const [index, name, memoryMiB, uuid, rowDriver] = parsed.data;
    gpus.push({ index, name, memoryMiB, uuid });
    driver ??= rowDriver;
  });
  gpus.sort((a, b) => a.index - b.index);
  return { gpus, driver };
}

// execa is imported where it is used: `start` in mock mode never needs it (~20 ms and ~2 MB saved).
async function queryNvidiaSmi(config: Config): Promise<{ gpus: GpuInfo[]; driver: string | null }> {
  const result = await (await import('execa')).execa(config.nvidiaSmiPath, [...NVIDIA_SMI_QUERY_ARGS], {
    timeout: config.nvidiaSmiTimeoutMs,
    reject: false,
    stdin: 'ignore',
    // Kill the whole call, not just ask: a hung driver ignores SIGTERM.
    killSignal: 'SIGKILL',
    env: { LC_ALL: 'C' },
  });
  if (result.timedOut) {
    throw new NvidiaSmiError(`${config.nvidiaSmiPath} did not answer within NVIDIA_SMI_TIMEOUT_MS=${config.nvidiaSmiTimeoutMs}`);
  }
  if (result.failed) {
    const code = (result as { code?: string }).code;
    if (code === 'ENOENT') throw new NvidiaSmiError(`${config.nvidiaSmiPath} was not found on PATH`);
    const firstLine = `${result.stdout}\n${result.stderr}`.trim().split('\n')[0]?.slice(0, 200) ?? '';
    throw new NvidiaSmiError(
      `${config.nvidiaSmiPath} failed (exit ${result.exitCode ?? result.signal ?? 'unknown'})${firstLine ? `: ${firstLine}` : ''}`,
    );
  }
  return parseNvidiaSmiCsv(result.stdout);
}

async function onPath(command: string): Promise<boolean> {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    try {
      await access(path.join(dir, command), constants.X_OK);
      return true;
    } catch {
      // not in this folder
    }
  }
  return false;
}

/**
 * systeminformation finds GPUs through lspci; without lspci it returns none, and
 * it runs nvidia-smi synchronously with no timeout. So it is asked only when
 * nvidia-smi is absent and lspci present (a host with the driver tools missing).
 */
async function querySystemInformation(): Promise<GpuInfo[]> {
  if (!(await onPath('lspci'))) throw new NvidiaSmiError('lspci is not installed, so systeminformation cannot list GPUs');
  const si = await import('systeminformation');
  const graphics = await si.graphics();
  return graphics.controllers
    .filter((c) => /nvidia/i.test(`${c.vendor} ${c.model}`))
    .map((c, index) => ({ index, name: c.model, memoryMiB: c.vram ?? 0, uuid: '' }));
}

function summarize(gpus: GpuInfo[], driver: string | null, source: GpuSource): GpuDetection {
  const smallest = Math.min(...gpus.map((g) => g.memoryMiB));
  return {
    count: gpus.length,
    model: gpus[0]?.name ?? '',
    memoryGb: Math.round((smallest / 1024) * 10) / 10,
    driver,
    source,
    gpus,
  };
}

function mockDetection(config: Config): GpuDetection {
  const count = config.numGpusHint ?? 1;
  const name = config.gpuModelHint ?? 'Mock GPU';
  const memoryMiB = Math.round((config.gpuMemoryGbHint ?? 24) * 1024);
  const gpus = Array.from({ length: count }, (_, index) => ({
    index,
    name,
    memoryMiB,
    uuid: `MOCK-${index.toString().padStart(4, '0')}`,
  }));
  return summarize(gpus, null, 'mock');
}

/** Compare what the platform says (NUM_GPUS, GPU_MODEL, GPU_MEMORY_GB) with what was found; detection wins. */
export function hintMismatches(config: Config, detected: GpuDetection): string[] {
  const warnings: string[] = [];
  if (config.numGpusHint !== undefined && config.numGpusHint !== detected.count) {
    warnings.push(`NUM_GPUS=${config.numGpusHint} but ${detected.count} GPU(s) were detected; using ${detected.count}`);
  }
  if (config.gpuModelHint !== undefined) {
    const hint = config.gpuModelHint.toLowerCase().replace(/^nvidia\s+/, '');
    if (!detected.model.toLowerCase().includes(hint)) {
      warnings.push(`GPU_MODEL="${config.gpuModelHint}" but the detected model is "${detected.model}"; using the detected one`);
    }
  }
  if (config.gpuMemoryGbHint !== undefined) {
    // Platforms give either per-GPU or total memory, in GB or GiB: allow 10%.
    const perGpu = detected.memoryGb;
    const total = perGpu * detected.count;
    const close = (a: number, b: number): boolean => Math.abs(a - b) <= 0.1 * Math.max(a, b);
    const hint = config.gpuMemoryGbHint;
    if (!close(hint, perGpu) && !close(hint, total) && !close(hint, perGpu * 1.074) && !close(hint, total * 1.074)) {
      warnings.push(`GPU_MEMORY_GB=${hint} but the detected memory is ${perGpu} GiB per GPU; using the detected figure`);
    }
  }
  return warnings;
}

/**
 * `withHost`: also ask systeminformation for CPU and memory (detect, check). `start`
 * leaves it out: it costs ~40 ms of imports and /proc reads on the boot's hot path.
 */
export async function detectGpus(config: Config, logger: Logger, withHost = true): Promise<GpuDetection> {
  const host = withHost ? detectHost() : undefined;
  const gpus = await detectGpuList(config, logger);
  return host ? { ...gpus, host: await host } : gpus;
}

async function detectGpuList(config: Config, logger: Logger): Promise<GpuDetection> {
  if (config.gpuMode === 'mock') return mockDetection(config);

  const attempts: string[] = [];
  let nvidiaSmiMissing = false;
  try {
    const { gpus, driver } = await queryNvidiaSmi(config);
    const detected = summarize(gpus, driver, 'nvidia-smi');
    for (const warning of hintMismatches(config, detected)) logger.warn(warning);
    return detected;
  } catch (error) {
    if (!(error instanceof NvidiaSmiError)) throw error;
    attempts.push(error.message);
    nvidiaSmiMissing = /not found on PATH/.test(error.message);
  }

  if (nvidiaSmiMissing) {
    try {
      const gpus = await querySystemInformation();
      if (gpus.length > 0) {
        const detected = summarize(gpus, null, 'systeminformation');
        for (const warning of hintMismatches(config, detected)) logger.warn(warning);
        return detected;
      }
      attempts.push('systeminformation (lspci) listed no NVIDIA controller');
    } catch (error) {
      attempts.push(error instanceof Error ? error.message : String(error));
    }
  } else {
    attempts.push('systeminformation was not asked: it would call the same failing nvidia-smi without a timeout');
  }

  throw new NoGpuError('no GPU found (GPU_MODE=actual). Set GPU_MODE=mock to run without a GPU', attempts);
}

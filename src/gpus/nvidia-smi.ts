import { parse as parseCsv } from 'csv-parse/sync';
import * as z from 'zod';

/**
 * What gpu-boot asks nvidia-smi and how it reads the answers. Two calls at most: the GPU query,
 * and `-L` only when a GPU is in MIG mode (the query lists parent GPUs, never their MIG devices).
 * The stand-in in test/fixtures answers exactly these, from test/fixtures/gpus/.
 */
export const NVIDIA_SMI_QUERY_ARGS = [
  '--query-gpu=index,name,memory.total,uuid,driver_version,mig.mode.current',
  '--format=csv,noheader,nounits',
] as const;
export const NVIDIA_SMI_LIST_ARGS = ['-L'] as const;

/** `Enabled` / `Disabled`, or `[N/A]` on a GPU without MIG (GeForce, older cards). */
export type MigMode = 'enabled' | 'disabled' | 'unsupported';

export interface MigDeviceInfo {
  /** nvidia-smi's `Device N` under its GPU. */
  index: number;
  /** The profile, as NVIDIA names it: `1g.10gb`, `3g.40gb`, `1g.18gb`... */
  profile: string;
  /** `MIG-<uuid>` (R470 and later) or `MIG-GPU-<uuid>/<gi>/<ci>` (older drivers): what CUDA_VISIBLE_DEVICES takes. */
  uuid: string;
  /** From the profile's name (NVIDIA names each profile by its memory), at most its GPU's: a nominal figure, a little above the slice's usable memory. */
  memoryMiB: number;
}

export interface GpuInfo {
  index: number;
  name: string;
  memoryMiB: number;
  uuid: string;
  migMode: MigMode;
  /** Its MIG devices, as `nvidia-smi -L` lists them; empty when not in MIG mode. */
  migDevices: MigDeviceInfo[];
  /** In MIG mode, why its MIG devices are not known (`-L` failed, or does not list this GPU). */
  migError?: string;
}

export class NvidiaSmiError extends Error {
  override name = 'NvidiaSmiError';
}

const MigModeField = z.string().transform((text, ctx): MigMode => {
  const mode = text.trim().toLowerCase();
  if (mode === 'enabled') return 'enabled';
  if (mode === 'disabled') return 'disabled';
  if (mode === '[n/a]' || mode === 'n/a' || mode === '[not supported]') return 'unsupported';
  ctx.addIssue({ code: 'custom', message: 'unknown MIG mode' });
  return z.NEVER;
});

const NvidiaSmiRow = z.tuple([
  z.coerce.number().int().min(0),
  z.string().min(1),
  z.coerce.number().int().positive(),
  z.string(),
  z.string(),
  MigModeField,
]);

/** Parse the query's CSV; throws on anything else. */
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
        `nvidia-smi printed an unexpected line ${line + 1} (expected index, name, memory.total in MiB, uuid, driver_version, mig.mode.current)`,
      );
    }
    const [index, name, memoryMiB, uuid, rowDriver, migMode] = parsed.data;
    gpus.push({ index, name, memoryMiB, uuid, migMode, migDevices: [] });
    driver ??= rowDriver;
  });
  gpus.sort((a, b) => a.index - b.index);
  return { gpus, driver };
}

// `nvidia-smi -L`, as the nvidia-smi manual and NVIDIA's MIG user guide print it:
//   GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5f8e8a3c-...)
//     MIG 1g.10gb     Device  0: (UUID: MIG-c6d4f1ef-...)
const GPU_LINE = /^GPU (\d+): (.+) \(UUID: (GPU-[^)\s]+)\)$/;
const MIG_LINE = /^\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: (MIG-[^)\s]+)\)$/;
// The profile names the memory: `1g.10gb` has about 10 GB (`3g.71gb`, `7g.141gb`); a compute instance
// inside a GPU instance is `1c.3g.20gb`; media and graphics variants end `+me`, `-me`, `+me.all`, `+gfx`.
const PROFILE = /^(?:\d+c\.)?\d+g\.(\d+)gb(?:[+-][\w.]+)*$/i;

/** The MIG devices of each GPU (by GPU UUID, as printed) from `nvidia-smi -L`; throws on a line it cannot read. */
export function parseNvidiaSmiList(text: string): Map<string, MigDeviceInfo[]> {
  const byGpu = new Map<string, MigDeviceInfo[]>();
  let current: MigDeviceInfo[] | undefined;
  text.split('\n').forEach((raw, line) => {
    const text = raw.trimEnd();
    if (text.trim() === '') return;
    const gpu = GPU_LINE.exec(text);
    if (gpu) {
      current = [];
      byGpu.set(gpu[3]!, current);
      return;
    }
    const mig = MIG_LINE.exec(text);
    const profile = mig ? PROFILE.exec(mig[1]!) : null;
    if (!mig || !profile || !current) {
      throw new NvidiaSmiError(`nvidia-smi -L printed an unexpected line ${line + 1} (expected "GPU <n>: <name> (UUID: GPU-...)" or "  MIG <profile> Device <n>: (UUID: MIG-...)")`);
    }
    current.push({ index: Number(mig[2]), profile: mig[1]!, uuid: mig[3]!, memoryMiB: Number(profile[1]) * 1024 });
  });
  return byGpu;
}

/** Each GPU in MIG mode gets the MIG devices `-L` lists under it; one that `-L` does not list gets the reason. */
export function attachMigDevices(gpus: GpuInfo[], byGpu: Map<string, MigDeviceInfo[]>): void {
  // The two calls need not print a UUID in the same case.
  const lower = new Map([...byGpu].map(([uuid, devices]) => [uuid.toLowerCase(), devices]));
  for (const gpu of gpus) {
    if (gpu.migMode !== 'enabled') continue;
    const devices = lower.get(gpu.uuid.toLowerCase());
    if (!devices) {
      gpu.migError = '`nvidia-smi -L` does not list it';
      continue;
    }
    // `7g.80gb` would be 81920 MiB, more than the card's 81559: no slice has more than its GPU.
    gpu.migDevices = devices.map((d) => ({ ...d, memoryMiB: Math.min(d.memoryMiB, gpu.memoryMiB) }));
  }
}

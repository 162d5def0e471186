import type { Registry } from 'prom-client';
import { withTimeout } from '../timeout.js';
import { degradedReport, liveness, readiness, type HealthDeps } from './rules.js';

/**
 * /metrics, written by prom-client. Prometheus' conventions: one prefix (`gpu_boot_`), base units
 * in the names (`_bytes`, `_celsius`, `_watts`, `_seconds`, `_ratio`), `_total` for counters, and
 * labels for the GPU (index, uuid) and the instance. Loaded on the first scrape, not on the boot's path.
 */
export async function buildRegistry(deps: HealthDeps): Promise<Registry> {
  const { collectDefaultMetrics, Counter, Gauge, Registry } = await import('prom-client');
  const registry = new Registry();
  // prom-client names its own `process_*`: with this prefix, `gpu_boot_process_cpu_seconds_total`.
  collectDefaultMetrics({ register: registry, prefix: 'gpu_boot_' });
  const { state } = deps;
  // Every series is filled anew at each scrape from what the state and PM2 know: the registry keeps
  // nothing between scrapes. A counter is typed as one, its count (kept elsewhere) set by inc from 0.
  type Sink = { set: (labels: Record<string, string>, value: number) => void };
  type Collect = (sink: Sink) => void | Promise<void>;
  const gauge = (name: string, help: string, labelNames: string[], collect: Collect) =>
    new Gauge({
      name,
      help,
      labelNames,
      registers: [registry],
      async collect() {
        this.reset();
        await collect({ set: (labels, value) => this.set(labels, value) });
      },
    });
  const counter = (name: string, help: string, labelNames: string[], collect: Collect) =>
    new Counter({
      name,
      help,
      labelNames,
      registers: [registry],
      async collect() {
        this.reset();
        await collect({ set: (labels, value) => this.inc(labels, value) });
      },
    });
  const single = (name: string, help: string, value: () => number | Promise<number>) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      async collect() {
        this.set(await value());
      },
    });

  single('gpu_boot_ready', '1 when /ready says 200 (READY_MIN_INSTANCES)', async () => ((await readiness(deps)).ready ? 1 : 0));
  single('gpu_boot_live', '1 when /health says 200', async () => ((await liveness(deps)).live ? 1 : 0));
  single('gpu_boot_degraded', '1 when an instance or a GPU is out or not answering', () => (degradedReport(deps).degraded ? 1 : 0));
  single('gpu_boot_gpus', 'GPUs detected', () => state.gpus?.count ?? 0);
  counter('gpu_boot_hung_restarts_total', 'restarts of hung instances since start', [], (g) => g.set({}, state.hungRestarts));
  gauge('gpu_boot_device_used', '1 for each device (whole GPU or MIG device) gpu-boot runs instances on, 0 for one it leaves alone', ['device', 'uuid', 'gpu'], (g) => {
    for (const d of state.gpus?.selection.devices ?? []) g.set({ device: d.id, uuid: d.uuid, gpu: String(d.gpuIndex) }, d.used ? 1 : 0);
  });

  // Per GPU: detection, then the watchdog's last sample.
  const gpuLabels = ['index', 'uuid'];
  const uuidOf = (index: number): string => state.gpus?.gpus.find((x) => x.index === index)?.uuid ?? '';
  gauge('gpu_boot_gpu_memory_bytes', 'memory of each GPU', gpuLabels, (g) => {
    for (const x of state.gpus?.gpus ?? []) g.set({ index: String(x.index), uuid: x.uuid }, x.memoryMiB * 1024 * 1024);
  });
  const watch = () => deps.gpuHealth?.()?.gpus ?? [];
  gauge('gpu_boot_gpu_healthy', '1 while the GPU watchdog finds the GPU healthy, 0 failing or cordoned', gpuLabels, (g) => {
    for (const x of watch()) if (x.state !== 'unknown') g.set({ index: String(x.index), uuid: x.uuid }, x.state === 'healthy' ? 1 : 0);
  });
  gauge('gpu_boot_gpu_cordoned', '1 once the GPU watchdog cordoned the GPU (its instances stopped)', gpuLabels, (g) => {
    for (const x of watch()) g.set({ index: String(x.index), uuid: x.uuid }, x.state === 'cordoned' ? 1 : 0);
  });
  const sampled = (name: string, help: string, pick: (s: NonNullable<ReturnType<typeof watch>[number]['sample']>) => number | null) =>
    gauge(name, help, gpuLabels, (g) => {
      for (const x of watch()) {
        const value = x.sample ? pick(x.sample) : null;
        if (value !== null && Number.isFinite(value)) g.set({ index: String(x.index), uuid: x.uuid || uuidOf(x.index) }, value);
      }
    });
  sampled('gpu_boot_gpu_utilization_ratio', 'GPU utilization, 0 to 1 (nvidia-smi utilization.gpu)', (s) => (s.utilizationPct === null ? null : s.utilizationPct / 100));
  sampled('gpu_boot_gpu_memory_used_bytes', 'GPU memory in use', (s) => (s.memoryUsedMiB === null ? null : s.memoryUsedMiB * 1024 * 1024));
  sampled('gpu_boot_gpu_temperature_celsius', 'GPU temperature', (s) => s.temperatureC);
  sampled('gpu_boot_gpu_power_watts', 'GPU power draw', (s) => s.powerW);
  counter('gpu_boot_gpu_ecc_uncorrected_errors_total', 'uncorrected volatile ECC errors (nvidia-smi; since the driver loaded)', gpuLabels, (g) => {
    for (const x of watch()) if (x.sample?.eccUncorrected != null) g.set({ index: String(x.index), uuid: x.uuid }, x.sample.eccUncorrected);
  });
  sampled('gpu_boot_gpu_pages_pending', '1 when retired pages or remapped rows are pending (the GPU needs a reset)', (s) =>
    s.retiredPagesPending === null && s.remappedRowsPending === null ? null : s.retiredPagesPending || s.remappedRowsPending ? 1 : 0,
  );

  // Per instance.
  // `app`, PM2's word, not `instance`: Prometheus gives every target an `instance` label of its own.
  const instanceLabels = ['app', 'gpu', 'uuid', 'device'];
  const labelsOf = (name: string): Record<string, string> => {
    const plan = state.instances.find((i) => i.name === name);
    return { app: name, gpu: String(plan?.gpuIndex ?? ''), uuid: plan?.device.uuid ?? '', device: plan?.device.id ?? '' };
  };
  gauge('gpu_boot_instance_up', '1 while PM2 runs the instance (online); absent while PM2 does not answer', instanceLabels, async (g) => {
    const list = await withTimeout(deps.listInstances().catch(() => undefined), 2000);
    if (!list) return;
    for (const plan of state.instances) g.set(labelsOf(plan.name), list.find((p) => p.name === plan.name)?.status === 'online' ? 1 : 0);
  });
  gauge('gpu_boot_instance_ready', '1 when the instance is ready (/ready/<instance>)', instanceLabels, async (g) => {
    const r = await readiness(deps);
    for (const plan of state.instances) g.set(labelsOf(plan.name), r.instances[plan.name] ? 1 : 0);
  });
  // The supervisor's count: PM2's own restarts from 0 whenever gpu-boot re-creates the app (a rotation, a hang).
  counter('gpu_boot_instance_restarts_total', 'restarts of the instance since the boot (crashes, hangs, rotations not counted)', instanceLabels, (g) => {
    for (const plan of state.instances) g.set(labelsOf(plan.name), state.health.get(plan.name)?.totalRestarts ?? 0);
  });
  counter('gpu_boot_instance_hung_restarts_total', 'restarts of the instance because it was hung', instanceLabels, (g) => {
    for (const plan of state.instances) g.set(labelsOf(plan.name), state.health.get(plan.name)?.hungRestarts ?? 0);
  });
  gauge('gpu_boot_instance_out_of_service', '1 once the instance is failed (restart budget) or cordoned (its GPU), by kind', [...instanceLabels, 'kind'], (g) => {
    for (const plan of state.instances) {
      const out = state.health.get(plan.name)?.out;
      for (const kind of ['failed', 'cordoned']) g.set({ ...labelsOf(plan.name), kind }, out?.kind === kind ? 1 : 0);
    }
  });
  gauge('gpu_boot_instance_last_exit_code', 'exit code of the instance\'s last exit (absent before one; -1 for a signal)', instanceLabels, (g) => {
    for (const plan of state.instances) {
      const exit = state.instanceRecords.get(plan.name)?.lastExit;
      if (exit) g.set(labelsOf(plan.name), exit.code ?? -1);
    }
  });
  gauge('gpu_boot_instance_queue_running', 'prompts running (ComfyUI /queue)', instanceLabels, (g) => {
    for (const plan of state.instances) {
      const q = state.health.get(plan.name)?.queue;
      if (q) g.set(labelsOf(plan.name), q.running);
    }
  });
  gauge('gpu_boot_instance_queue_pending', 'prompts waiting (ComfyUI /queue)', instanceLabels, (g) => {
    for (const plan of state.instances) {
      const q = state.health.get(plan.name)?.queue;
      if (q) g.set(labelsOf(plan.name), q.pending);
    }
  });
  gauge('gpu_boot_instance_node_loaded', '1 when the custom node loaded in the instance, 0 when its import failed (from the instance\'s output)', ['app', 'node'], (g) => {
    for (const [app, record] of state.instanceRecords) for (const [node, s] of record.nodes) g.set({ app, node }, s.loaded ? 1 : 0);
  });
  gauge('gpu_boot_phase_duration_seconds', 'duration of each boot phase', ['phase'], (g) => {
    for (const p of state.phases) g.set({ phase: p.name }, p.ms / 1000);
  });
  counter('gpu_boot_rotations_total', 'secret rotations since start, by result', ['result'], (g) => {
    g.set({ result: 'ok' }, state.rotations.ok);
    g.set({ result: 'failed' }, state.rotations.failed);
  });
  return registry;
}

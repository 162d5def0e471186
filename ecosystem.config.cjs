// PM2's view of the plan. The one place the ComfyUI apps are declared: gpu-boot
// computes the plan (GPUs, ports, arguments; no secrets) into plan.json, and both
// gpu-boot and a person running `pm2 start ecosystem.config.cjs` in the container
// read it here, so they see the same apps.
//
// Secrets never pass through PM2: `filter_env` drops the caller's environment,
// and the environment given back leaves out every variable that carried a secret
// (plan.withheldVariables). Custom nodes get their secrets from their own .env.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

function planFile() {
  if (process.env.GPU_BOOT_PLAN_FILE) return process.env.GPU_BOOT_PLAN_FILE;
  const workspace = process.env.WORKSPACE_PATH || '/workspace';
  const stateDir = process.env.GPU_BOOT_STATE_DIR || path.join(workspace, '.gpu-boot');
  return path.join(stateDir, 'plan.json');
}

// As root, the plan decides what runs and as whom: only a plan (and a folder) no other user can
// write is used, never through a link, never a FIFO. A plan planted in a workspace the instances'
// user can write would otherwise run its script as root.
function readPlanText(file) {
  const euid = process.geteuid ? process.geteuid() : -1;
  if (euid !== 0) return fs.readFileSync(file, 'utf8');
  const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  try {
    const stat = fs.fstatSync(fd);
    const folder = fs.statSync(path.dirname(file));
    if (!stat.isFile()) throw Object.assign(new Error('not a regular file'), { code: 'EFTYPE' });
    if (stat.uid !== 0 || (stat.mode & 0o022) !== 0 || folder.uid !== 0 || (folder.mode & 0o022) !== 0) {
      throw Object.assign(new Error(`not root's alone (file uid ${stat.uid}, folder uid ${folder.uid}, or writable by others): refused as root`), { code: 'not gpu-boot\'s' });
    }
    return fs.readFileSync(fd, 'utf8');
  } finally {
    fs.closeSync(fd);
  }
}

function loadPlan() {
  const file = planFile();
  try {
    return JSON.parse(readPlanText(file));
  } catch (error) {
    throw new Error(`ecosystem.config.cjs: cannot read the plan ${file} (${error.code ? `${error.code}: ${error.message}` : error.message}); run \`gpu-boot plan\` or start gpu-boot first`);
  }
}

const plan = loadPlan();
const withheld = new Set(plan.withheldVariables);
// Someone running `pm2 start ecosystem.config.cjs` by hand may have the platform's secrets in
// their shell: drop them from this process before PM2 can copy its environment anywhere.
for (const name of withheld) delete process.env[name];
// PM2's own bookkeeping variables of a calling process must not leak into the apps.
const internal = /^(pm_|PM2_(?!HOME$))/;
// gpu-boot's own settings (HEALTH_PORT, GPU_MODE...) are not the instances': left out (an older plan has none).
// So is the plan's location: the instances never read it.
const own = new Set([...(plan.ownSettings || []), 'GPU_BOOT_PLAN_FILE']);

function instanceEnv(extra) {
  const env = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (value === undefined || withheld.has(name) || own.has(name) || internal.test(name)) continue;
    env[name] = value;
  }
  return Object.assign(env, extra);
}

module.exports = {
  apps: plan.instances.map((instance) => ({
    name: instance.name,
    script: instance.script,
    interpreter: instance.interpreter,
    args: instance.args,
    cwd: instance.cwd,
    env: instanceEnv(instance.env),
    // gpu-boot as root runs the instances as COMFYUI_USER (or the owner of COMFYUI_PATH).
    ...(instance.uid !== undefined ? { uid: instance.uid, gid: instance.gid } : {}),
    // PM2 7 ignores `filter_env: true` (it tests .length); [''] matches every name, so nothing of
    // the calling process's environment is copied: the app gets exactly `env` above.
    filter_env: [''],
    exec_mode: 'fork',
    instances: 1,
    autorestart: true,
    // Back off on a crash loop (x1.5 per restart, up to 15 s) instead of restarting in a tight loop.
    exp_backoff_restart_delay: plan.pm2.restartDelayMs,
    min_uptime: plan.pm2.minUptimeMs,
    max_restarts: plan.pm2.maxRestarts,
    // ComfyUI needs longer than PM2's default 1.6 s to stop cleanly.
    kill_timeout: plan.pm2.killTimeoutMs,
    treekill: true,
    // No log files: an instance's output reaches gpu-boot's log (masked) through PM2's bus, and
    // `pm2 logs` shows it live; a file under PM2_HOME would keep an unmasked copy on disk.
    out_file: '/dev/null',
    error_file: '/dev/null',
    merge_logs: true,
    vizion: false,
    autostart: true,
  })),
};

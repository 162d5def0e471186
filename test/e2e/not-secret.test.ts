import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { makeWorkspace, startBoot, type Workspace } from '../helpers/boot.js';

const SECRET = 'canary-not-secret-test-61d2';

let ws: Workspace | undefined;
afterEach(async () => {
  await ws?.cleanup();
  ws = undefined;
});

describe('what is not a secret', () => {
  it('a manifest referencing ${HOME}, ${WORKSPACE_PATH} and a not_secret variable: the log shows them, the instances keep them', async () => {
    ws = await makeWorkspace({
      nodes: ['hf_node'],
      manifest: {
        not_secret: ['STAGE'],
        custom_nodes: [
          {
            name: 'hf_node',
            env: { HF_TOKEN: '${HF_TOKEN}', DATA_DIR: '${WORKSPACE_PATH}/data', CACHE: '${HOME}/.cache', BUCKET: 'models-${STAGE}' },
          },
        ],
      },
      gpus: 1,
    });
    const boot = startBoot(['start'], { ...ws.env, HF_TOKEN: SECRET, STAGE: 'dev' });
    const started = await boot.waitForLog((l) => l.phase === 'pm2-start', 'the instances started');
    await boot.waitForLog((l) => l.phase === 'ready', 'ready', 60_000);

    // The log keeps the real paths: neither WORKSPACE_PATH nor HOME (nor STAGE) is masked.
    // The secrets phase's line comes after the values are known to the masker.
    const secrets = boot.logs().find((l) => l.phase === 'secrets');
    expect(secrets?.manifest).toBe(path.join(ws.workspace, 'config_nodes.json'));
    const log = boot.lines.join('\n');
    expect(log).not.toMatch(/\[masked:(WORKSPACE_PATH|HOME|STAGE|hf_node\.(DATA_DIR|CACHE|BUCKET))\]/);
    expect(log).not.toContain(SECRET);

    // The instance's environment still has HOME, WORKSPACE_PATH and STAGE; the secret and the node's keys stay out.
    const pid = (started.instances as Array<{ pid: number }>)[0]!.pid;
    const environ = (await readFile(`/proc/${pid}/environ`, 'utf8')).split('\0');
    expect(environ).toContain(`HOME=${ws.root}`);
    expect(environ).toContain(`WORKSPACE_PATH=${ws.workspace}`);
    expect(environ).toContain(`PM2_HOME=${ws.pm2Home}`);
    expect(environ).toContain('LOG_LEVEL=debug');
    expect(environ).toContain('STAGE=dev');
    // gpu-boot's own settings are not the instance's: not passed (each variable costs every node's load_dotenv()).
    const names = environ.map((e) => e.slice(0, e.indexOf('=')));
    for (const own of ['GPU_MODE', 'NUM_GPUS', 'COMFYUI_PYTHON', 'COMFYUI_LISTEN', 'COMFYUI_PORT_START', 'HEALTH_PORT', 'HEALTH_BIND', 'COMFYUI_KILL_TIMEOUT_MS', 'SECRETS_TMPFS', 'GPU_BOOT_STATE_DIR', 'GPU_BOOT_PLAN_FILE']) {
      expect(names).not.toContain(own);
    }
    // Nor is the PM2 option `time` (false is PM2's default): one variable fewer.
    expect(names).not.toContain('time');
    expect(environ.filter((e) => /^(HF_TOKEN|DATA_DIR|CACHE|BUCKET)=/.test(e))).toEqual([]);
    expect(environ.join('\n')).not.toContain(SECRET);

    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
  });
});

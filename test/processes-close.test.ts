import { existsSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ProcessManager } from '../src/instances/processes.js';
import { ECOSYSTEM_FILE } from '../src/runner.js';
import { pm2HomeForThisFile } from './helpers/boot.js';
import { captureLogger } from './helpers/logger.js';

// Its own file, so its own worker: PM2 reads PM2_HOME once, and is hosted at most once per process.
const home = pm2HomeForThisFile('gpu-boot-pm2close-');

describe('ProcessManager.close during connect', () => {
  it('a close while PM2 is still coming up leaves nothing served and no pid file or socket behind', async () => {
    const { logger } = captureLogger();
    const processes = new ProcessManager(logger, ECOSYSTEM_FILE);
    const connecting = processes.connect();
    await processes.close();
    await expect(connecting).rejects.toThrow('PM2 was closed while it came up');
    // Had the connect gone on, it would have bound these after close returned.
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(processes.connected).toBe(false);
    expect(processes.hostsPm2).toBe(false);
    for (const name of ['pm2.pid', 'rpc.sock', 'pub.sock']) expect(existsSync(path.join(home.pm2Home, name))).toBe(false);
  });
});

// PM2_HOME's own layout, as PM2's client makes it. Apart from pm2-host.ts so that the build's
// code-cache script (scripts/pm2-code-cache.mjs) can use it: this file imports nothing of gpu-boot's.
import { mkdirSync, writeFileSync } from 'node:fs';

/** The paths PM2's constants give for PM2_HOME's folders and module configuration. */
export interface Pm2HomePaths {
  PM2_HOME: string;
  DEFAULT_LOG_PATH: string;
  DEFAULT_PID_PATH: string;
  DEFAULT_MODULE_PATH: string;
  PM2_MODULE_CONF_FILE: string;
}

/** What PM2's client (Client.initFileStructure) creates in PM2_HOME before anything else: its log, pid and module folders, and an empty module configuration. */
export function createPm2HomeFolders(paths: Pm2HomePaths): void {
  // As PM2's client: what cannot be made is left to PM2's daemon to report (a boot does not end here).
  for (const folder of [paths.DEFAULT_LOG_PATH, paths.DEFAULT_PID_PATH, paths.DEFAULT_MODULE_PATH]) {
    try {
      mkdirSync(folder, { recursive: true });
    } catch {
      // there as something else, or not writable
    }
  }
  try {
    // Never through a link (O_EXCL), unlike PM2's own writeFileSync.
    writeFileSync(paths.PM2_MODULE_CONF_FILE, '{}', { flag: 'wx' });
  } catch {
    // there already, or not writable
  }
}

import { PM2_DAEMON_BUNDLE, pm2DaemonCode } from '../../src/instances/pm2-host.js';

/** The God that Pm2Host serves in this process (dist/pm2-daemon.cjs's, or node_modules' without it): tests read its tables. */
export function hostedGod<T>(): T {
  return pm2DaemonCode(PM2_DAEMON_BUNDLE).daemonCode().God as unknown as T;
}

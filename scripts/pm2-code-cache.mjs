// Run by scripts/bundle.mjs as `node <gpu-boot's Node flags> scripts/pm2-code-cache.mjs`, with a
// PM2_HOME of the build's own: writes dist/pm2-daemon.cjs.cache and its record for this Node and
// these flags (src/instances/code-cache.ts).
import { writePm2DaemonCodeCache } from '../dist/instances/pm2-host.js';

writePm2DaemonCodeCache();
// PM2's code, loaded, keeps nothing running that should hold the build.
process.exit(0);

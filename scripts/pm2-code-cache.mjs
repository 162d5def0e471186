// Run by scripts/bundle.mjs as `node <gpu-boot's Node flags> scripts/pm2-code-cache.mjs <bundle>`,
// with a fresh PM2_HOME of the build's own: writes <bundle>.cache and its record for this Node and
// these flags (src/instances/code-cache.ts), warmed by loading what a boot loads of the bundle: the
// constants, PM2_HOME's folders as a boot makes them, then Daemon, God and Common (which read
// PM2_HOME's module configuration as they load). Only code-cache.js and pm2-home.js are imported:
// the image's build stage has no more than package.json, scripts/ and src/ (no
// ecosystem.config.cjs, by which pm2-host.js finds the package's root).
import path from 'node:path';
import { writeCodeCache } from '../dist/instances/code-cache.js';
import { createPm2HomeFolders } from '../dist/instances/pm2-home.js';

const [bundle] = process.argv.slice(2);
writeCodeCache(path.resolve(bundle), (exports) => {
  createPm2HomeFolders(exports.constants());
  exports.daemonCode();
});
// PM2's code, loaded, keeps nothing running that should hold the build.
process.exit(0);

// Run by scripts/bundle.mjs as `node <gpu-boot's Node flags> scripts/pm2-code-cache.mjs <bundle>`,
// with a fresh PM2_HOME of the build's own: writes <bundle>.cache and its record for this Node and
// these flags (src/instances/code-cache.ts), warmed by loading what a boot loads of the bundle: the
// constants, then Daemon, God and Common (which read PM2_HOME's module configuration as they load).
// Only dist/instances/code-cache.js is imported: the image's build stage has no more than
// package.json, scripts/ and src/ (no ecosystem.config.cjs, which the package's root is found by).
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { writeCodeCache } from '../dist/instances/code-cache.js';

const [bundle] = process.argv.slice(2);
writeCodeCache(path.resolve(bundle), (exports) => {
  exports.constants();
  const home = process.env.PM2_HOME;
  for (const folder of ['logs', 'pids', 'modules']) mkdirSync(path.join(home, folder), { recursive: true });
  writeFileSync(path.join(home, 'module_conf.json'), '{}');
  exports.daemonCode();
});
// PM2's code, loaded, keeps nothing running that should hold the build.
process.exit(0);

import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The folder of gpu-boot's package.json: where launcher/, demo/ and ecosystem.config.cjs are. Found
 * by walking up from this module, so it is the same whether the code runs as tsc's dist/ (one file
 * per module, two levels deep for some) or as the one bundle in dist/ (npm run build), or from src/.
 */
function findPackageRoot(from: string): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(dir, 'ecosystem.config.cjs'))) return dir;
    if (path.dirname(dir) === dir) throw new Error(`gpu-boot's package folder not found above ${from}`);
  }
}

export const PACKAGE_ROOT = findPackageRoot(path.dirname(fileURLToPath(import.meta.url)));

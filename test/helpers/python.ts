import { execFileSync } from 'node:child_process';

/**
 * A python3 that can import python-dotenv: Debian's (python3-dotenv) first, since the tests also run
 * instances as other users (COMFYUI_USER), who cannot reach one under root's home (pyenv).
 */
export function findPythonWithDotenv(): string {
  for (const candidate of [process.env.TEST_PYTHON, '/usr/bin/python3', 'python3']) {
    if (!candidate) continue;
    try {
      execFileSync(candidate, ['-c', 'import dotenv'], { stdio: 'ignore' });
      return candidate;
    } catch {
      // try the next one
    }
  }
  throw new Error('no python3 with python-dotenv: apt-get install -y python3-dotenv');
}

export const PYTHON = findPythonWithDotenv();

import { execFileSync } from 'node:child_process';

/** A python3 that can import python-dotenv (pyenv's, or Debian's python3-dotenv in /usr/bin). */
export function findPythonWithDotenv(): string {
  for (const candidate of [process.env.TEST_PYTHON, 'python3', '/usr/bin/python3']) {
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

/**
 * For instances that run as another user (COMFYUI_USER, tests as root): a python3 with
 * python-dotenv that `nobody` can run too (a pyenv under root's 0700 home is out of its reach).
 * Undefined, with the reason, where there is none.
 */
export function pythonForAnyUser(): { python?: string; reason?: string } {
  if (process.getuid?.() !== 0) return { reason: 'not root' };
  for (const candidate of [process.env.TEST_PYTHON, '/usr/bin/python3']) {
    if (!candidate) continue;
    try {
      execFileSync('runuser', ['-u', 'nobody', '--', candidate, '-c', 'import dotenv'], { stdio: 'ignore' });
      return { python: candidate };
    } catch {
      // try the next one
    }
  }
  return { reason: 'no python3 with python-dotenv that other users can run: apt-get install -y python3-dotenv' };
}

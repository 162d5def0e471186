import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { SETTINGS_DOC, SETTING_NAMES } from '../src/config.js';

describe('documentation stays true', () => {
  it('documents exactly the settings the schema reads', () => {
    expect(SETTINGS_DOC.map((s) => s.name).sort()).toEqual([...SETTING_NAMES].sort());
  });

  it('the README table lists every setting with its default', async () => {
    const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8');
    for (const setting of SETTINGS_DOC) {
      expect(readme).toContain(`| \`${setting.name}\` | ${setting.default} |`);
    }
  });

  it('the README opens with the install-and-demo command, then the test command', async () => {
    const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8');
    const commands = [...readme.matchAll(/^```sh\n([\s\S]*?)```/gm)][0]![1]!.split('\n').filter(Boolean);
    expect(commands[0]).toMatch(/^npm ci && npm start\b/);
    expect(commands[1]).toMatch(/^npm test\b/);
    const ci = await readFile(new URL('../.ci/run', import.meta.url), 'utf8');
    expect(ci).toContain('\nnpm test\n');
  });
});

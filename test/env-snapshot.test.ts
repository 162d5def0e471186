import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';

const MODULE = fileURLToPath(new URL('../dist/env-snapshot.js', import.meta.url));

/** Run `environmentSnapshot()` in a fresh Node with exactly `env`, after `before` (JS) has run. */
async function snapshotIn(env: Record<string, string>, before = ''): Promise<{ snapshot: Record<string, string>; live: Record<string, string> }> {
  const script = `${before}; const { environmentSnapshot } = await import(${JSON.stringify(MODULE)}); console.log(JSON.stringify({ snapshot: environmentSnapshot(), live: { ...process.env } }));`;
  const { stdout } = await execa(process.execPath, ['--input-type=module', '-e', script], { env, extendEnv: false });
  return JSON.parse(stdout) as { snapshot: Record<string, string>; live: Record<string, string> };
}

describe('environmentSnapshot', () => {
  it('equals process.env, values with =, newlines, quotes, spaces, Unicode and empty ones included', async () => {
    const env = {
      PATH: process.env.PATH ?? '/usr/bin',
      WITH_EQUALS: 'a=b=c',
      MULTI_LINE: 'line1\nline2\n',
      QUOTES: `'single' "double" \`back\``,
      SPACES: '  padded  ',
      UNICODE: 'clé-🔑-ключ',
      EMPTY: '',
      ...Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`SECRET_${i}`, `value-${i}-${'x'.repeat(i % 50)}`])),
    };
    const { snapshot, live } = await snapshotIn(env);
    expect(snapshot).toEqual(live);
    expect(snapshot.MULTI_LINE).toBe('line1\nline2\n');
    expect(snapshot.WITH_EQUALS).toBe('a=b=c');
    expect(snapshot.EMPTY).toBe('');
    expect(Object.keys(snapshot)).toHaveLength(Object.keys(env).length);
  });

  it('copies process.env when a variable was added or removed since the start', async () => {
    const env = { PATH: process.env.PATH ?? '/usr/bin', KEPT: 'k', GONE: 'g' };
    const added = await snapshotIn(env, 'process.env.ADDED = "later"');
    expect(added.snapshot).toEqual(added.live);
    expect(added.snapshot.ADDED).toBe('later');
    const removed = await snapshotIn(env, 'delete process.env.GONE');
    expect(removed.snapshot).toEqual(removed.live);
    expect(removed.snapshot).not.toHaveProperty('GONE');
  });
});

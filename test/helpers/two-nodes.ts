import { existsSync } from 'node:fs';
import path from 'node:path';
import { afterEach, expect } from 'vitest';
import { makeWorkspace, type Workspace } from './boot.js';

/** Two installed nodes: one with a required and an optional reference, one with a token. */
export const TWO_NODE_MANIFEST = {
  custom_nodes: [
    { name: 'emprops_custom_nodes', env: { AZURE_STORAGE_KEY: '${AZURE_STORAGE_KEY}', CLOUD_PROVIDER: '${CLOUD_PROVIDER:-azure}' } },
    { name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}' } },
  ],
};

/** A fresh two-node workspace per test, cleaned up (PM2 killed by pid) after each. */
export function useTwoNodeWorkspace(gpus: number): () => Promise<Workspace> {
  let ws: Workspace | undefined;
  afterEach(async () => {
    await ws?.cleanup();
    ws = undefined;
  });
  return async () => {
    ws = await makeWorkspace({ nodes: ['emprops_custom_nodes', 'hf_node'], manifest: TWO_NODE_MANIFEST, gpus });
    return ws;
  };
}

/** When the boot refuses its input (or only checks), nothing is written and nothing started. */
export function expectNothingWritten(w: Workspace): void {
  expect(existsSync(w.envFile('emprops_custom_nodes'))).toBe(false);
  expect(existsSync(w.envFile('hf_node'))).toBe(false);
  expect(existsSync(path.join(w.stateDir, 'written-files.json'))).toBe(false);
  expect(existsSync(path.join(w.stateDir, 'plan.json'))).toBe(false);
  expect(existsSync(path.join(w.pm2Home, 'pm2.pid'))).toBe(false);
}

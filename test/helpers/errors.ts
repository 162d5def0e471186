import { expect } from 'vitest';
import { BootError, ConfigError } from '../../src/errors.js';

/** The ConfigError (exit 78) that `run` throws; fails the test when it throws nothing or something else. */
export function expectConfigError(run: () => unknown): ConfigError {
  let caught: unknown;
  try {
    run();
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(ConfigError);
  expect(caught).toBeInstanceOf(BootError);
  expect((caught as ConfigError).exitCode).toBe(78);
  return caught as ConfigError;
}

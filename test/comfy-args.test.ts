import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, SETTING_NAMES } from '../src/config.js';
import {
  checkComfyArgsAtStart,
  cliArgsFile,
  extractFlagNames,
  extractFlags,
  parseListen,
  probeHost,
  readComfyFlags,
  reservedFlagProblems,
  RESERVED_FLAGS,
  unknownFlagProblems,
  validateComfyArgs,
} from '../src/instances/comfy-args.js';
import { runBoot } from './helpers/boot.js';
import { PYTHON } from './helpers/python.js';
import { expectNothingWritten, useTwoNodeWorkspace } from './helpers/two-nodes.js';

const FIXTURE_FLAGS = path.join(import.meta.dirname, 'fixtures', 'comfyui', 'cli-flags-2026-01.txt');

/** A small cli_args.py in ComfyUI's own shape: groups, a multi-line call, a short alias, an import that must never run. */
const SMALL_CLI_ARGS = `import argparse
import comfy.options  # never importable here: the file is parsed, not run
raise SystemExit("cli_args.py was run, not parsed")

parser = argparse.ArgumentParser()
parser.add_argument("--listen", type=str, default="127.0.0.1", nargs="?", const="0.0.0.0,::")
parser.add_argument("--port", type=int, default=8188)
parser.add_argument("--preview-method", type=str, default="none")
parser.add_argument("--preview-size", type=int, default=512)
parser.add_argument("-v", "--verbose", default="INFO", nargs="?")
vram_group = parser.add_mutually_exclusive_group()
vram_group.add_argument("--lowvram", action="store_true")
vram_group.add_argument("--cpu", action="store_true")
parser.add_argument(
    "--front-end-version",
    type=str,
    help="""multi-line: a line-by-line grep misses it""",
)
parser.add_argument("--fp8_e4m3fn-unet", action="store_true")
parser.add_argument("--temp-directory", type=str)
parser.add_argument("--output-directory", type=str)
def not_a_flag():
    other.add_argument("positional")
`;

let root: string;
let counter = 0;
beforeAll(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'gpu-boot-comfy-args-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** A ComfyUI folder whose comfy/cli_args.py holds `text` (none when undefined). */
async function comfyui(text: string | undefined): Promise<string> {
  const dir = path.join(root, `ComfyUI-${(counter += 1)}`);
  await mkdir(path.join(dir, 'comfy'), { recursive: true });
  if (text !== undefined) await writeFile(cliArgsFile(dir), text);
  return dir;
}

const settings = (comfyuiPath: string, comfyArgs: string, python = PYTHON) => ({ comfyuiPath, comfyArgs, comfyuiPython: python });

describe('extractFlags / extractFlagNames (pure)', () => {
  it('names each option up to its =, skips values, a lone - and negative numbers, and stops at --', () => {
    const argv = ['--preview-method', 'auto', '--port=9000', '-v', '-', '--reserve-vram', '-1.5', '--cache-lru', '-3', '--', '--not-a-flag'];
    expect(extractFlags(argv)).toEqual({
      flags: [
        { flag: '--preview-method', index: 0, inlineValue: false },
        { flag: '--port', index: 2, inlineValue: true },
        { flag: '-v', index: 3, inlineValue: false },
        { flag: '--reserve-vram', index: 5, inlineValue: false },
        { flag: '--cache-lru', index: 7, inlineValue: false },
      ],
      positionalsFrom: 9,
    });
    expect(extractFlagNames(['--a', '--a=1', 'value', '--b'])).toEqual(['--a', '--b']);
    expect(extractFlagNames([])).toEqual([]);
  });
});

describe('reservedFlagProblems (pure)', () => {
  it.each([
    ['--port', 'COMFYUI_PORT_START'],
    ['--listen', 'COMFYUI_LISTEN'],
    ['--cuda-device', 'CUDA_VISIBLE_DEVICES'],
    ['--cpu', 'GPU_MODE'],
    ['--temp-directory', 'WORKSPACE_PATH'],
    ['--output-directory', 'COMFYUI_SHARED_FOLDERS'],
    ['--input-directory', 'COMFYUI_SHARED_FOLDERS'],
    ['--user-directory', 'COMFYUI_SHARED_FOLDERS'],
    ['--base-directory', 'COMFYUI_PATH'],
  ])('refuses %s, naming %s', (flag, setting) => {
    for (const argv of [[flag, '/some/value'], [`${flag}=/some/value`]]) {
      const problems = reservedFlagProblems(argv);
      expect(problems).toHaveLength(1);
      expect(problems[0]).toMatch(new RegExp(`^COMFY_ARGS: ${flag} `));
      expect(problems[0]).toContain(setting);
      // A flag's name only, never its value.
      expect(problems[0]).not.toContain('/some/value');
    }
  });

  it('refuses abbreviations argparse would take for a reserved flag, --help, and positionals after --', () => {
    expect(reservedFlagProblems(['--temp', '/x'])).toEqual([expect.stringMatching(/^COMFY_ARGS: --temp abbreviates --temp-directory \(argparse takes a unique prefix of a flag\)/)]);
    expect(reservedFlagProblems(['--out=/x'])[0]).toMatch(/^COMFY_ARGS: --out abbreviates --output-directory .*COMFYUI_SHARED_FOLDERS/);
    expect(reservedFlagProblems(['--cu'])[0]).toMatch(/^COMFY_ARGS: --cu abbreviates --cuda-device /);
    expect(reservedFlagProblems(['-h'])[0]).toMatch(/^COMFY_ARGS: -h prints the usage and exits/);
    expect(reservedFlagProblems(['--', 'x'])).toEqual(['COMFY_ARGS: -- ends the flags, and ComfyUI takes no positional arguments; remove it']);
    // Each flag once, however often it is given.
    expect(reservedFlagProblems(['--port', '1', '--port', '2'])).toHaveLength(1);
  });

  it('lets every other flag through, including the ones reserved flags are prefixes of', () => {
    expect(reservedFlagProblems(['--preview-method', 'auto', '--cpu-vae', '--listen-all', '--portable', '--lowvram', '-v'])).toEqual([]);
  });
});

describe('unknownFlagProblems (pure)', () => {
  const known = new Set(['--preview-method', '--preview-size', '--lowvram', '--verbose', '-v', '--cpu', '--cpu-vae', '--port']);
  it('accepts exact flags and unique abbreviations; refuses unknown and ambiguous ones, naming the ComfyUI', () => {
    expect(unknownFlagProblems(['--preview-method', 'auto', '--low', '-v', '--verb=DEBUG', '--cpu-v'], known, '/w/ComfyUI')).toEqual([]);
    expect(unknownFlagProblems(['--no-such-flag', 'x', '--preview', '--lowvram=1', '-x'], known, '/w/ComfyUI')).toEqual([
      'COMFY_ARGS: --no-such-flag is not a flag of the ComfyUI in /w/ComfyUI (comfy/cli_args.py)',
      'COMFY_ARGS: --preview is ambiguous in the ComfyUI in /w/ComfyUI (comfy/cli_args.py): it abbreviates --preview-method, --preview-size; give the whole flag',
      'COMFY_ARGS: -x is not a flag of the ComfyUI in /w/ComfyUI (comfy/cli_args.py)',
    ]);
  });

  it('leaves reserved flags to reservedFlagProblems (each problem reported once)', () => {
    expect(unknownFlagProblems(['--port', '1', '--temp-directory', '/t', '--out', 'x'], known, '/w/ComfyUI')).toEqual([]);
  });
});

describe('readComfyFlags: comfy/cli_args.py parsed with ast, never imported', () => {
  it('collects the leading - strings of every add_argument call, groups and multi-line calls included', async () => {
    const dir = await comfyui(SMALL_CLI_ARGS);
    const result = await readComfyFlags({ comfyuiPath: dir, comfyuiPython: PYTHON });
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    expect([...result.flags].sort()).toEqual(
      ['--listen', '--port', '--preview-method', '--preview-size', '-v', '--verbose', '--lowvram', '--cpu', '--front-end-version', '--fp8_e4m3fn-unet', '--temp-directory', '--output-directory', '-h', '--help'].sort(),
    );
  });

  it('reads every flag of a cli_args.py shaped like the recorded list of 2026-01 (test/fixtures/comfyui/cli-flags-2026-01.txt)', async () => {
    const recorded = (await readFile(FIXTURE_FLAGS, 'utf8')).split('\n').filter(Boolean);
    expect(recorded.length).toBeGreaterThan(50);
    // The real file's shapes: top-level calls, group calls, calls over several lines.
    const lines = ['import argparse', 'import comfy.options', 'parser = argparse.ArgumentParser()', 'vram_group = parser.add_mutually_exclusive_group()'];
    recorded.forEach((flag, i) => {
      if (i % 3 === 0) lines.push(`parser.add_argument("${flag}", action="store_true", help="${flag} help")`);
      else if (i % 3 === 1) lines.push(`vram_group.add_argument('${flag}', type=str, default=None)`);
      else lines.push(`parser.add_argument(\n    "${flag}",\n    type=int,\n    help="""several\nlines""",\n)`);
    });
    lines.push('if comfy.options.args_parsing:\n    args = parser.parse_args()\nelse:\n    args = parser.parse_args([])');
    const dir = await comfyui(`${lines.join('\n')}\n`);
    const result = await readComfyFlags({ comfyuiPath: dir, comfyuiPython: PYTHON });
    expect(result.ok && [...result.flags].filter((f) => f !== '-h' && f !== '--help').sort()).toEqual([...recorded].sort());
  });

  it('says why where the file is missing, does not parse, declares no flag, or Python cannot run', async () => {
    const missing = await readComfyFlags({ comfyuiPath: await comfyui(undefined), comfyuiPython: PYTHON });
    expect(missing).toMatchObject({ ok: false, reason: expect.stringMatching(/^cannot read .*comfy\/cli_args\.py: No such file or directory$/) });
    const broken = await readComfyFlags({ comfyuiPath: await comfyui('parser.add_argument("--a"\n'), comfyuiPython: PYTHON });
    expect(broken).toMatchObject({ ok: false, reason: expect.stringMatching(/cli_args\.py does not parse: .*\(line \d+\)$/) });
    const empty = await readComfyFlags({ comfyuiPath: await comfyui('x = 1\n'), comfyuiPython: PYTHON });
    expect(empty).toMatchObject({ ok: false, reason: expect.stringMatching(/^no add_argument\("--\.\.\."\) call in /) });
    const noPython = await readComfyFlags({ comfyuiPath: await comfyui(SMALL_CLI_ARGS), comfyuiPython: path.join(root, 'no-such-python') });
    expect(noPython).toMatchObject({ ok: false, reason: expect.stringMatching(/^COMFYUI_PYTHON \(.*no-such-python\) could not be run \(ENOENT\)$/) });
  });

  it('gives up after the timeout', async () => {
    const slow = path.join(root, 'slow-python');
    await writeFile(slow, '#!/bin/sh\nexec sleep 5\n', { mode: 0o755 });
    const started = Date.now();
    const result = await readComfyFlags({ comfyuiPath: await comfyui(SMALL_CLI_ARGS), comfyuiPython: slow }, { timeoutMs: 300 });
    expect(result).toMatchObject({ ok: false, reason: expect.stringMatching(/^COMFYUI_PYTHON took longer than 300 ms to parse /) });
    expect(Date.now() - started).toBeLessThan(3000);
  });
});

describe('validateComfyArgs: the check of `check` and `start`', () => {
  it('passes known flags; empty COMFY_ARGS reads nothing', async () => {
    const dir = await comfyui(SMALL_CLI_ARGS);
    await expect(validateComfyArgs(settings(dir, '--preview-method auto --low -v'))).resolves.toEqual({ warnings: [] });
    // Not even a Python that does not exist is run.
    await expect(validateComfyArgs(settings(dir, '', '/no/such/python'))).resolves.toEqual({ warnings: [] });
  });

  it('refuses unknown and reserved flags together with exit 78, naming each and never a value', async () => {
    const dir = await comfyui(SMALL_CLI_ARGS);
    const error = await validateComfyArgs(settings(dir, '--preview-method auto --no-such-flag s3cret-value --port=s3cret-port')).catch((e: unknown) => e);
    expect(error).toMatchObject({ exitCode: 78 });
    const problems = (error as { problems: string[] }).problems;
    expect(problems).toEqual([
      expect.stringMatching(/^COMFY_ARGS: --port is set by gpu-boot: .*COMFYUI_PORT_START \(and INSTANCES_PER_GPU\)$/),
      `COMFY_ARGS: --no-such-flag is not a flag of the ComfyUI in ${dir} (comfy/cli_args.py)`,
    ]);
    expect(JSON.stringify(problems)).not.toContain('s3cret');
  });

  it('where cli_args.py cannot be read: a warning, not a refusal (reserved flags are still refused)', async () => {
    const dir = await comfyui(undefined);
    const { warnings } = await validateComfyArgs(settings(dir, '--anything-goes'));
    expect(warnings).toEqual([expect.stringMatching(/^COMFY_ARGS not validated: cannot read .*cli_args\.py: No such file or directory$/)]);
    await expect(validateComfyArgs(settings(dir, '--listen 1.2.3.4'))).rejects.toMatchObject({ problems: [expect.stringMatching(/^COMFY_ARGS: --listen .*COMFYUI_LISTEN/)] });
    await expect(validateComfyArgs(settings(dir, 'a ; b'))).rejects.toMatchObject({ exitCode: 78, problems: ['COMFY_ARGS: contains shell operators or comments; give plain arguments (quote them as in a shell)'] });
  });

  it('checkComfyArgsAtStart logs the warning and throws the refusal', async () => {
    const warned: string[] = [];
    const logger = { warn: (m: string) => warned.push(m) };
    await checkComfyArgsAtStart(settings(await comfyui(undefined), '--x'), logger);
    expect(warned).toEqual([expect.stringMatching(/^COMFY_ARGS not validated: /)]);
    await expect(checkComfyArgsAtStart(settings(await comfyui(SMALL_CLI_ARGS), '--x'), logger)).rejects.toMatchObject({ exitCode: 78 });
  });

  it('every reserved flag names a setting to use, and only real settings', () => {
    for (const [flag, reason] of RESERVED_FLAGS) {
      const named = reason.match(/\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b/g) ?? [];
      for (const name of named) expect(SETTING_NAMES, `${flag}: ${name}`).toContain(name);
      if (!['--help', '-h', '--quick-test-for-ci'].includes(flag)) expect(named.length, flag).toBeGreaterThan(0);
    }
  });
});

describe('COMFYUI_LISTEN: a comma-separated list, as --listen takes', () => {
  it('takes IPv4, IPv6 (brackets dropped), host names and lists of them', () => {
    expect(parseListen('0.0.0.0')).toEqual({ addresses: ['0.0.0.0'] });
    expect(parseListen('0.0.0.0,::')).toEqual({ addresses: ['0.0.0.0', '::'] });
    expect(parseListen(' 10.0.0.5 , [fe80::1] ,comfy-host.internal,localhost')).toEqual({ addresses: ['10.0.0.5', 'fe80::1', 'comfy-host.internal', 'localhost'] });
    expect(loadConfig({ COMFYUI_LISTEN: '127.0.0.1, [::1]' }).comfyuiListen).toBe('127.0.0.1,::1');
    expect(loadConfig({}).comfyuiListen).toBe('0.0.0.0');
  });

  it('refuses bad elements by position, never echoing them, and the same address twice', () => {
    expect(parseListen('256.1.1.1').problem).toMatch(/^must be an IPv4 or IPv6 address or a host name/);
    expect(parseListen('127.0.0.1,,bad_host!,::1').problem).toMatch(/^elements 2, 3 of the comma-separated list must each be an IPv4 or IPv6 address/);
    expect(parseListen('[10.0.0.1]').problem).toBeDefined();
    expect(parseListen('-host').problem).toBeDefined();
    expect(parseListen('::,0:0:0:0:0:0:0:0').problem).toMatch(/same address twice/);
    const error = (() => {
      try {
        loadConfig({ COMFYUI_LISTEN: '127.0.0.1,secret-canary!' });
      } catch (e) {
        return e as { exitCode: number; problems: string[] };
      }
      return undefined;
    })();
    expect(error?.exitCode).toBe(78);
    expect(error?.problems).toEqual([expect.stringMatching(/^COMFYUI_LISTEN: element 2 of the comma-separated list must be an IPv4/)]);
    expect(JSON.stringify(error?.problems)).not.toContain('canary');
  });

  it('probeHost: loopback for a wildcard (127.0.0.1 when both), else the first address', () => {
    expect(probeHost('0.0.0.0')).toBe('127.0.0.1');
    expect(probeHost('::')).toBe('::1');
    expect(probeHost('[::]')).toBe('::1');
    expect(probeHost('0.0.0.0,::')).toBe('127.0.0.1');
    expect(probeHost('::,0.0.0.0')).toBe('127.0.0.1');
    expect(probeHost('10.0.0.5,::')).toBe('::1');
    expect(probeHost('10.0.0.5,192.168.1.2')).toBe('10.0.0.5');
    expect(probeHost('[::1],10.0.0.5')).toBe('::1');
    expect(probeHost('comfy-host,10.0.0.5')).toBe('comfy-host');
    expect(probeHost(['0:0:0:0:0:0:0:0'])).toBe('::1');
    expect(probeHost(['fe80::1'])).toBe('fe80::1');
  });
});

describe('gpu-boot check: COMFY_ARGS against the ComfyUI in COMFYUI_PATH', () => {
  const workspace = useTwoNodeWorkspace(2);
  const secrets = { HF_TOKEN: 'canary-Secret-comfy-args-1', AZURE_STORAGE_KEY: 'canary-Secret-comfy-args-2' };

  it('refuses reserved and unknown flags (78), each once, naming the setting; never a value', async () => {
    const w = await workspace();
    await mkdir(path.join(w.comfyui, 'comfy'), { recursive: true });
    await writeFile(cliArgsFile(w.comfyui), SMALL_CLI_ARGS);
    const result = await runBoot(['check', '--json'], { ...w.env, ...secrets, LOG_LEVEL: 'warn', COMFY_ARGS: '--lowvram --cuda-device=s3cret-1 --no-such-flag s3cret-2' });
    expect(result.exitCode).toBe(78);
    const report = JSON.parse(result.stdout) as { ok: boolean; problems: string[]; warnings: string[] };
    expect(report.problems).toEqual([
      expect.stringMatching(/^COMFY_ARGS: --cuda-device would undo gpu-boot's pinning: .*CUDA_VISIBLE_DEVICES/),
      `COMFY_ARGS: --no-such-flag is not a flag of the ComfyUI in ${w.comfyui} (comfy/cli_args.py)`,
    ]);
    expect(report.warnings).toEqual([]);
    expect(result.stdout + result.stderr).not.toMatch(/s3cret|canary-Secret/);
    expectNothingWritten(w);
  });

  it('`start` refuses an unknown flag of the stand-in\'s real flag list (78) before anything is written or started', async () => {
    const w = await workspace();
    const result = await runBoot(['start'], { ...w.env, ...secrets, COMFY_ARGS: '--preview-method auto --no-such-flag' });
    expect(result.exitCode).toBe(78);
    expect(result.stderr).toContain(`COMFY_ARGS: --no-such-flag is not a flag of the ComfyUI in ${w.comfyui} (comfy/cli_args.py)`);
    expectNothingWritten(w);
  });

  it('where comfy/cli_args.py is missing: OK, with "COMFY_ARGS not validated" among the warnings', async () => {
    const w = await workspace();
    // A ComfyUI checkout without its flag definitions (the stand-in's copy removed).
    await rm(path.join(w.comfyui, 'comfy'), { recursive: true, force: true });
    const result = await runBoot(['check'], { ...w.env, ...secrets, LOG_LEVEL: 'warn', COMFY_ARGS: '--anything' });
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toContain('gpu-boot check: OK');
    expect(result.stdout).toMatch(/\nwarnings:\n {2}- COMFY_ARGS not validated: cannot read .*comfy\/cli_args\.py: No such file or directory$/);
  });
});

import { DockerfileParser, type Arg, type Entrypoint, type Env, type Healthcheck, type Instruction } from 'dockerfile-ast';

/** Names an ARG or ENV must not have: they would bake a secret into the image's layers or config. */
export const SECRET_NAME = /TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE|CREDENTIAL/i;

/** A COPY/ADD source that is a dotenv file (`.env`, `.env.production`, `dir/.env`). */
const DOTENV_SOURCE = /(^|\/)\.env($|[./])/;

function words(instruction: Instruction): string[] {
  return instruction.getArguments().map((a) => a.getValue());
}

/**
 * The image's rules, as problems (empty: the Dockerfile passes). No secret-looking ARG/ENV, no
 * .env copied in, multi-stage, and a final stage that runs as non-root behind an init (tini),
 * stops on SIGTERM and has a HEALTHCHECK on /ready.
 */
export function dockerfileProblems(text: string): string[] {
  const dockerfile = DockerfileParser.parse(text);
  const problems: string[] = [];
  const froms = dockerfile.getFROMs();
  if (froms.length < 2) problems.push(`not multi-stage: ${froms.length} FROM`);

  for (const instruction of dockerfile.getInstructions()) {
    const keyword = instruction.getKeyword();
    if (keyword === 'ARG') {
      const name = (instruction as Arg).getProperty()?.getName();
      if (name && SECRET_NAME.test(name)) problems.push(`ARG ${name} looks like a secret`);
    }
    if (keyword === 'ENV') {
      for (const property of (instruction as Env).getProperties()) {
        if (SECRET_NAME.test(property.getName())) problems.push(`ENV ${property.getName()} looks like a secret`);
      }
    }
    if (keyword === 'COPY' || keyword === 'ADD') {
      // Expanded: `COPY ${NODES_MANIFEST} ...` is checked with the ARG's default.
      const sources = instruction.getExpandedArguments().map((a) => a.getValue()).slice(0, -1);
      for (const source of sources) if (DOTENV_SOURCE.test(source)) problems.push(`${keyword} of a .env file: ${source}`);
    }
  }

  const lastFrom = froms.at(-1);
  if (!lastFrom) return [...problems, 'no FROM'];
  const finalStageStart = lastFrom.getRange().start.line;
  const finalStage = dockerfile.getInstructions().filter((i) => i.getRange().start.line >= finalStageStart);
  const last = (keyword: string) => finalStage.filter((i) => i.getKeyword() === keyword).at(-1);

  const user = last('USER');
  if (!user) problems.push('final stage has no USER: it runs as root');
  else {
    const name = (words(user)[0] ?? '').split(':')[0];
    if (name === 'root' || name === '0') problems.push(`final stage runs as root (USER ${words(user).join(' ')})`);
  }

  const entrypoint = last('ENTRYPOINT') as Entrypoint | undefined;
  const entry = entrypoint?.getJSONStrings().map((s) => s.getJSONValue()) ?? [];
  if (!entrypoint) problems.push('no ENTRYPOINT');
  else if (entry.length === 0) problems.push('ENTRYPOINT is not in exec (JSON) form: a shell would be PID 1');
  else if (!/(^|\/)tini(-static)?$/.test(entry[0] ?? '')) problems.push(`ENTRYPOINT does not start with tini: ${entry[0]}`);
  else if (!entry.some((word) => /dist\/entrypoint\.js$/.test(word))) problems.push('ENTRYPOINT does not run dist/entrypoint.js');

  const stopSignal = last('STOPSIGNAL');
  if (!stopSignal) problems.push('no STOPSIGNAL');
  else if (!['SIGTERM', '15'].includes(words(stopSignal)[0] ?? '')) problems.push(`STOPSIGNAL is ${words(stopSignal)[0]}, not SIGTERM`);

  const healthcheck = last('HEALTHCHECK') as Healthcheck | undefined;
  if (!healthcheck) problems.push('no HEALTHCHECK');
  else if (healthcheck.getSubcommand()?.getValue().toUpperCase() !== 'CMD') problems.push('HEALTHCHECK has no CMD');
  else if (!/https?:\/\/(127\.0\.0\.1|localhost):[^/\s"]*\/ready\b/.test(healthcheck.getRawArgumentsContent() ?? '')) {
    problems.push('HEALTHCHECK does not probe /ready');
  } else if (!/https?:\/\/(127\.0\.0\.1|localhost):\$\{HEALTH_PORT:-9090\}\/ready\b/.test(healthcheck.getRawArgumentsContent() ?? '')) {
    // A fixed port is never healthy once HEALTH_PORT is changed (`-e HEALTH_PORT=9191`).
    problems.push('HEALTHCHECK does not probe the port HEALTH_PORT names (${HEALTH_PORT:-9090})');
  }
  return problems;
}

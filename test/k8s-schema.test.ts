import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Deployment, type IDeployment } from 'kubernetes-models/apps/v1/Deployment';
import { Secret, type ISecret } from 'kubernetes-models/v1/Secret';
import { Service, type IService } from 'kubernetes-models/v1/Service';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';

/**
 * deploy/kubernetes/ checked against Kubernetes' own resource schemas. kubernetes-models ships,
 * for each built-in kind, an ajv validator compiled from the Kubernetes OpenAPI spec, inside the
 * npm package: nothing is fetched at test time. Every document of every *.yaml file is validated
 * by its apiVersion and kind; a kind with no schema here fails, so a new manifest cannot slip in
 * unvalidated (add its kubernetes-models class to SCHEMAS).
 *
 * What those schemas reject: a wrong type (a string where an integer goes), a missing required
 * field, a value outside an enum (Service type, port protocol, apiVersion, kind), a bad format
 * (int32, quantity, base64). What they let through, as the OpenAPI spec does not say it: unknown
 * fields (no additionalProperties: false, so a misspelt `readinesProbe` passes), numeric ranges
 * (a port of 70000 passes; the API server's own validation rejects it), name syntax (DNS-1123).
 * test/deploy.test.ts checks the values this project depends on.
 */

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const DIR = path.join(ROOT, 'deploy', 'kubernetes');

type Dict = Record<string, unknown>;
const isDict = (value: unknown): value is Dict => Boolean(value) && typeof value === 'object' && !Array.isArray(value);

/**
 * Kustomization is not a Kubernetes resource: the API server never sees it, the OpenAPI spec has
 * no schema for it, and kubernetes-models has no class for it (nor does any maintained npm
 * package ship kustomize's types). So its fields are checked here: only the fields this check
 * knows (any other, e.g. patches or images, fails until the check learns it), and `resources` a
 * list of files in this folder, each of which exists (the loop over the folder validates their
 * documents). Directories and remote bases, which kustomize also accepts, fail for the same reason.
 */
const KUSTOMIZATION_FIELDS = ['apiVersion', 'kind', 'resources'];
function validateKustomization(doc: Dict): void {
  const unknown = Object.keys(doc).filter((key) => !KUSTOMIZATION_FIELDS.includes(key));
  if (unknown.length > 0) throw new Error(`Kustomization: field(s) ${unknown.join(', ')} not checked here (known: ${KUSTOMIZATION_FIELDS.join(', ')})`);
  const { resources } = doc;
  if (!Array.isArray(resources) || resources.length === 0) throw new Error('Kustomization: resources must be a non-empty list');
  resources.forEach((resource: unknown, i) => {
    if (typeof resource !== 'string') throw new Error(`Kustomization: resources/${i} must be string`);
    const file = path.resolve(DIR, resource);
    if (path.dirname(file) !== DIR) throw new Error(`Kustomization: resources/${i} (${resource}) is not a file of deploy/kubernetes/, so it is not validated here`);
    if (!existsSync(file) || !statSync(file).isFile()) throw new Error(`Kustomization: resources/${i} (${resource}) does not exist`);
  });
}

/** `apiVersion kind` -> a check that throws, naming the offending path, when the document breaks the schema. */
const SCHEMAS: Record<string, (doc: Dict) => void> = {
  'apps/v1 Deployment': (doc) => new Deployment(doc as unknown as IDeployment).validate(),
  'v1 Service': (doc) => new Service(doc as unknown as IService).validate(),
  'v1 Secret': (doc) => new Secret(doc as unknown as ISecret).validate(),
  'kustomize.config.k8s.io/v1beta1 Kustomization': validateKustomization,
};

const kindOf = (doc: Dict): string => `${String(doc.apiVersion)} ${String(doc.kind)}`;

function validateDocument(doc: unknown): void {
  if (!isDict(doc)) throw new Error(`a manifest must be a mapping, not ${JSON.stringify(doc)}`);
  const check = SCHEMAS[kindOf(doc)];
  if (!check) throw new Error(`no schema for apiVersion ${String(doc.apiVersion)} kind ${String(doc.kind)}: add it to SCHEMAS`);
  check(doc);
}

/** The file's documents, as Kubernetes reads them: YAML 1.1 (`defaultMode: 0440` is octal), empty documents skipped. */
function documentsOf(file: string): Dict[] {
  const docs = parseAllDocuments(readFileSync(path.join(DIR, file), 'utf8'), { version: '1.1' });
  const parsed = Array.from(docs, (doc) => {
    if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors.map((e) => e.message).join('; ')}`);
    return doc.toJS() as unknown;
  }).filter((doc) => doc !== null && doc !== undefined);
  if (parsed.length === 0) throw new Error(`${file}: no document`);
  return parsed.map((doc) => {
    if (!isDict(doc)) throw new Error(`${file}: a manifest must be a mapping, not ${JSON.stringify(doc)}`);
    return doc;
  });
}

const FILES = readdirSync(DIR).filter((name) => /\.ya?ml$/.test(name)).sort();
const docs = Object.fromEntries(FILES.map((file) => [file, documentsOf(file)]));
const first = (file: string): Dict => docs[file]![0]!;

/** The message validateDocument throws for doc; fails the test when it throws none. */
function failure(doc: unknown): string {
  try {
    validateDocument(doc);
  } catch (error) {
    return (error as Error).message;
  }
  throw new Error(`expected a validation error for ${JSON.stringify(doc).slice(0, 120)}..., none was thrown`);
}

const REMOVE = Symbol('remove');
/** A copy of doc with the value at path replaced (or removed); the path must already exist, so the copy really differs. */
function broken(doc: Dict, at: string, value: unknown): Dict {
  const copy = structuredClone(doc);
  const keys = at.split('/');
  const last = keys.pop()!;
  let node: unknown = copy;
  for (const key of keys) node = (node as Record<string, unknown>)[key];
  const parent = node as Record<string, unknown>;
  expect(parent, `${at} exists`).toHaveProperty([last]);
  if (value === REMOVE) delete parent[last];
  else parent[last] = value;
  return copy;
}

describe('deploy/kubernetes against the Kubernetes schemas', () => {
  it('finds every manifest: one Deployment, one Service, one Secret, one Kustomization', () => {
    expect(Object.fromEntries(Object.entries(docs).map(([file, list]) => [file, list.map(kindOf)]))).toEqual({
      'deployment.yaml': ['apps/v1 Deployment'],
      'kustomization.yaml': ['kustomize.config.k8s.io/v1beta1 Kustomization'],
      'secret.example.yaml': ['v1 Secret'],
      'service.yaml': ['v1 Service'],
    });
  });

  it.each(FILES)('%s validates, every document by its apiVersion and kind', (file) => {
    for (const doc of docs[file]!) expect(() => validateDocument(doc)).not.toThrow();
  });

  it('fails a kind it has no schema for, and a document that is not a mapping', () => {
    expect(failure({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'x' } })).toBe('no schema for apiVersion v1 kind ConfigMap: add it to SCHEMAS');
    // A Deployment under the wrong apiVersion is a kind without a schema, too.
    expect(failure({ ...first('deployment.yaml'), apiVersion: 'apps/v1beta1' })).toBe('no schema for apiVersion apps/v1beta1 kind Deployment: add it to SCHEMAS');
    expect(failure(['a', 'list'])).toBe('a manifest must be a mapping, not ["a","list"]');
  });

  describe('fails a broken copy, naming the bad path', () => {
    const deployment = first('deployment.yaml');
    const service = first('service.yaml');
    const secret = first('secret.example.yaml');
    const kustomization = first('kustomization.yaml');
    const container = 'spec/template/spec/containers/0';

    it('Deployment', () => {
      expect(failure(broken(deployment, 'spec/replicas', 'two'))).toBe('data/spec/replicas must be integer');
      expect(failure(broken(deployment, `${container}/ports/0/containerPort`, 'abc'))).toBe(`data/${container}/ports/0/containerPort must be integer`);
      expect(failure(broken(deployment, `${container}/ports/0/containerPort`, 2 ** 31))).toBe(`data/${container}/ports/0/containerPort must match format "int32"`);
      expect(failure(broken(deployment, 'spec/selector', REMOVE))).toBe('data/spec must have required property selector');
      expect(failure(broken(deployment, `${container}/name`, REMOVE))).toBe(`data/${container} must have required property name`);
      expect(failure(broken(deployment, `${container}/resources/requests/cpu`, 'four'))).toContain(`data/${container}/resources/requests/cpu must match format "quantity"`);
      expect(failure(broken(deployment, `${container}/readinessProbe/httpGet/port`, true))).toContain(`data/${container}/readinessProbe/httpGet/port must be`);
      expect(failure(broken(deployment, 'spec/strategy/type', 'BlueGreen'))).toBe('data/spec/strategy/type must be equal to one of the allowed values');
    });

    it('Service', () => {
      expect(failure(broken(service, 'spec/ports/0/port', '8188'))).toBe('data/spec/ports/0/port must be integer');
      expect(failure(broken(service, 'spec/ports/0/port', 2 ** 31))).toBe('data/spec/ports/0/port must match format "int32"');
      expect(failure(broken(service, 'spec/ports/0/port', REMOVE))).toBe('data/spec/ports/0 must have required property port');
      expect(failure(broken(service, 'spec/type', 'Public'))).toBe('data/spec/type must be equal to one of the allowed values');
      expect(failure(broken(service, 'kind', 'Sevice'))).toBe('no schema for apiVersion v1 kind Sevice: add it to SCHEMAS');
    });

    it('Secret', () => {
      expect(failure(broken(secret, 'stringData/hf_token', 123))).toBe('data/stringData/hf_token must be string');
      expect(failure({ ...secret, data: { hf_token: 'not base64!' } })).toBe('data/data/hf_token must match format "byte"');
      expect(failure(broken(secret, 'metadata/labels', ['app.kubernetes.io/name']))).toBe('data/metadata/labels must be object');
    });

    it('Kustomization', () => {
      expect(failure(broken(kustomization, 'resources/1', 'servce.yaml'))).toBe('Kustomization: resources/1 (servce.yaml) does not exist');
      expect(failure(broken(kustomization, 'resources/0', '../../docker/docker-compose.yml'))).toMatch(/^Kustomization: resources\/0 \(\.\.\/\.\.\/docker\/docker-compose\.yml\) is not a file of deploy\/kubernetes\//);
      expect(failure(broken(kustomization, 'resources', 'deployment.yaml'))).toBe('Kustomization: resources must be a non-empty list');
      expect(failure({ ...kustomization, namePrefix: 'prod-' })).toBe('Kustomization: field(s) namePrefix not checked here (known: apiVersion, kind, resources)');
      expect(failure(broken(kustomization, 'apiVersion', 'kustomize.config.k8s.io/v1'))).toBe('no schema for apiVersion kustomize.config.k8s.io/v1 kind Kustomization: add it to SCHEMAS');
    });
  });
});

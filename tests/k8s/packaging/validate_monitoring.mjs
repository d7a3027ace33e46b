// Validate monitoring.coreos.com/v1 objects against prometheus-operator's API schemas
// (the @kubernetes-models/prometheus-operator validators, installed by `make tools`).
// Usage: node validate_monitoring.mjs NODE_MODULES < objects.json
// Prints one JSON line per object: {"kind", "name", "errors": [...]}; exit 0 always.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
const objects = JSON.parse(readFileSync(0, "utf8"));
for (const obj of objects) {
  const file = join(modules, "@kubernetes-models/prometheus-operator", obj.apiVersion, `${obj.kind}.js`);
  let errors = [];
  try {
    const mod = await import(pathToFileURL(file).href);
    new mod[obj.kind](obj).validate();
  } catch (e) {
    errors = [String(e.message ?? e)];
  }
  console.log(JSON.stringify({ kind: obj.kind, name: obj.metadata?.name, errors }));
}

// Validate a .glb with the Khronos glTF validator (npm gltf-validator); print its report as JSON.
// Usage: node tests/gltf_validate.js VALIDATOR_DIR FILE.glb
const path = require("path");
const fs = require("fs");
const validator = require(path.join(process.argv[2], "node_modules", "gltf-validator"));
validator
  .validateBytes(new Uint8Array(fs.readFileSync(process.argv[3])), { maxIssues: 0, writeTimestamp: false })
  .then((report) => console.log(JSON.stringify(report.issues)))
  .catch((e) => { console.error(String(e)); process.exit(1); });

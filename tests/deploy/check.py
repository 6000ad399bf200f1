#!/usr/bin/env python3
"""Check deploy/base: every manifest listed in the kustomization (and the
other way round), each valid against the Kubernetes schemas (strict:
unknown fields are errors), and the agent's least-privilege settings.

Usage: check.py DEPLOY_DIR KUBERNETES_VERSION
Prints the agent config (agent.toml) from the ConfigMap to AGENT_TOML_OUT
if that variable is set, for the agent itself to parse.
Exit 0 when everything holds; 1 with the reasons otherwise."""
import os
import subprocess
import sys

import yaml

deploy, version = sys.argv[1], sys.argv[2]
errors = []

kust = yaml.safe_load(open(os.path.join(deploy, "kustomization.yaml")))
listed = set(kust.get("resources", []))
present = {f for f in os.listdir(deploy) if f.endswith(".yaml") and f != "kustomization.yaml"}
if listed != present:
    errors.append(f"kustomization resources {sorted(listed)} != files {sorted(present)}")

for f in sorted(present):
    r = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "kubernetes-validate"), "--strict", "-k", version,
         os.path.join(deploy, f)],
        capture_output=True, text=True)
    if r.returncode != 0:
        errors.append(f"{f}: {r.stdout.strip()} {r.stderr.strip()}")

docs = {}
for f in sorted(present):
    for d in yaml.safe_load_all(open(os.path.join(deploy, f))):
        if d:
            docs[(d["kind"], d["metadata"]["name"])] = d

ds = docs.get(("DaemonSet", "spyglass-agent"))
if ds is None:
    errors.append("no DaemonSet spyglass-agent")
else:
    spec = ds["spec"]["template"]["spec"]
    c = spec["containers"][0]
    sc = c.get("securityContext", {})
    if sc.get("privileged"):
        errors.append("agent runs privileged")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        errors.append("agent does not drop ALL capabilities")
    for cap in ("BPF", "PERFMON"):
        if cap not in sc.get("capabilities", {}).get("add", []):
            errors.append(f"agent lacks {cap}")
    if not spec.get("hostPID"):
        errors.append("agent without hostPID")
    if not any(t.get("operator") == "Exists" for t in spec.get("tolerations", [])):
        errors.append("agent does not tolerate every taint")
    paths = {v["hostPath"]["path"] for v in spec.get("volumes", []) if "hostPath" in v}
    for p in ("/sys/kernel/btf", "/run/containerd", "/sys/fs/cgroup"):
        if p not in paths:
            errors.append(f"agent does not mount {p}")
    if "/run/containerd/containerd.sock" in paths:
        errors.append(
            "agent mounts the containerd socket file: mount /run/containerd "
            "(containerd re-creates its socket on restart)"
        )
    if "limits" not in c.get("resources", {}):
        errors.append("agent without resource limits")

cm = docs.get(("ConfigMap", "spyglass-agent"))
if cm is None or "agent.toml" not in cm.get("data", {}):
    errors.append("no agent.toml in ConfigMap spyglass-agent")
elif os.environ.get("AGENT_TOML_OUT"):
    open(os.environ["AGENT_TOML_OUT"], "w").write(cm["data"]["agent.toml"])
    if "policy.yaml" not in cm["data"]:
        errors.append("no policy.yaml in ConfigMap spyglass-agent")
    else:
        open(os.environ["AGENT_TOML_OUT"] + ".policy.yaml", "w").write(cm["data"]["policy.yaml"])

for e in errors:
    print(e)
sys.exit(1 if errors else 0)

#!/usr/bin/env python3
"""Render the kustomize overlays documented in a Markdown file.

Usage: overlays.py DOC DEPLOY_BASE SCRATCH KUBERNETES_VERSION

An overlay file in DOC is a fenced ```yaml block whose first line is
`# deploy/overlays/NAME/FILE`. Each overlay NAME is written to
SCRATCH/deploy/overlays/NAME/ next to a copy of DEPLOY_BASE at
SCRATCH/deploy/base, then built with kustomize (pykustomize: the kustomize
Go library, installed by `cargo xtask setup`). A file the kustomization
names that the document does not show is taken from DEPLOY_BASE when it
has one of that name (the document says so: "a copy of
deploy/base/FILE"), and is an error otherwise.

Each rendered overlay is checked against the Kubernetes schemas
(kubernetes-validate --strict, offline), and against what a patch by
name must keep: the DaemonSet and Deployment have the same volumes,
containers and volume mounts (by name) as in the base, and every volume
has exactly one source (a patch that misspells a name adds a volume; one
that swaps a source without deleting the old one leaves two). An overlay
that uses components is compared with the base and those components
alone (a component may add a volume on purpose; the overlay's own
patches may not). Each
rendering must also pass deploy/scripts/check-images.sh (every image set
by the overlay and pinned by digest). The kustomize components next to
DEPLOY_BASE (deploy/components) are copied too, for overlays that use them.

Prints one JSON object to stdout, {"base": [objects], "overlays": {NAME:
[objects]}} (the base and each overlay as kustomize renders them), for
the caller to check the patched values; exit 1 with the reasons on stderr
when an overlay does not build or a check fails."""
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys

import yaml

MARK = re.compile(r"^# deploy/overlays/([A-Za-z0-9._-]+)/([A-Za-z0-9._-]+)\s*$")

# Fields of a Volume that are not its source.
NOT_SOURCE = {"name"}


def documented(doc):
    """{NAME: {FILE: text}} from the marked yaml blocks of doc."""
    overlays = {}
    block = None
    for line in open(doc).read().splitlines(keepends=True):
        if block is None:
            if line.strip() == "```yaml":
                block = []
            continue
        if line.strip() == "```":
            m = MARK.match(block[0]) if block else None
            if m:
                files = overlays.setdefault(m.group(1), {})
                if m.group(2) in files:
                    sys.exit(f"{doc}: deploy/overlays/{m.group(1)}/{m.group(2)} is shown twice")
                files[m.group(2)] = "".join(block)
            block = None
            continue
        block.append(line)
    return overlays


def referenced(kust):
    """Local files a kustomization reads (not directories)."""
    files = []
    for r in kust.get("resources", []):
        files.append(r)
    for p in kust.get("patches", []):
        if "path" in p:
            files.append(p["path"])
    return [f for f in files if "/" not in f]


def build(path):
    from pykustomize import BuildOptions, LoadRestrictions, build as kbuild

    return asyncio.run(kbuild(path, BuildOptions(load_restrictions=LoadRestrictions.ROOT_ONLY))).yaml


def objects(text):
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(text) if d}


def by_name(items):
    return {i["name"]: i for i in items or []}


def pod_spec_checks(label, base, rendered):
    errors = []
    b, r = base["spec"]["template"]["spec"], rendered["spec"]["template"]["spec"]
    if set(by_name(b.get("volumes"))) != set(by_name(r.get("volumes"))):
        errors.append(
            f"{label}: volumes {sorted(by_name(r.get('volumes')))} != the base's "
            f"{sorted(by_name(b.get('volumes')))} (a patch by a name the base does not have adds one)"
        )
    for v in r.get("volumes", []):
        sources = sorted(set(v) - NOT_SOURCE)
        if len(sources) != 1:
            errors.append(f"{label}: volume {v['name']} has {len(sources)} sources {sources}")
    if set(by_name(b.get("containers"))) != set(by_name(r.get("containers"))):
        errors.append(
            f"{label}: containers {sorted(by_name(r.get('containers')))} != the base's "
            f"{sorted(by_name(b.get('containers')))}"
        )
    for name, c in by_name(r.get("containers")).items():
        bc = by_name(b.get("containers")).get(name, {})
        mounts = {m["name"] for m in c.get("volumeMounts", [])}
        if mounts != {m["name"] for m in bc.get("volumeMounts", [])}:
            errors.append(f"{label}: container {name} mounts {sorted(mounts)}, not the base's")
    return errors


def main():
    doc, base_dir, scratch, version = sys.argv[1:5]
    overlays = documented(doc)
    if not overlays:
        sys.exit(f"{doc}: no overlay (a ```yaml block starting `# deploy/overlays/NAME/FILE`)")
    base = objects(build(base_dir))
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(base_dir, os.path.join(scratch, "deploy", "base"))
    deploy_dir = os.path.dirname(os.path.abspath(base_dir))
    components = os.path.join(deploy_dir, "components")
    if os.path.isdir(components):
        shutil.copytree(components, os.path.join(scratch, "deploy", "components"))
    check_images = os.path.join(deploy_dir, "scripts", "check-images.sh")
    validate = os.path.join(os.path.dirname(sys.executable), "kubernetes-validate")
    errors, out = [], {}
    for name, files in sorted(overlays.items()):
        d = os.path.join(scratch, "deploy", "overlays", name)
        os.makedirs(d)
        if "kustomization.yaml" not in files:
            errors.append(f"overlay {name}: no kustomization.yaml shown")
            continue
        for f, text in files.items():
            open(os.path.join(d, f), "w").write(text)
        for f in referenced(yaml.safe_load(files["kustomization.yaml"])):
            if f in files:
                continue
            if os.path.isfile(os.path.join(base_dir, f)):
                shutil.copy(os.path.join(base_dir, f), os.path.join(d, f))
            else:
                errors.append(f"overlay {name}: uses {f}, which the document does not show")
        try:
            text = build(d)
        except Exception as e:  # kustomize's own message
            errors.append(f"overlay {name}: kustomize build failed: {e}")
            continue
        rendered_file = os.path.join(scratch, f"{name}.rendered.yaml")
        open(rendered_file, "w").write(text)
        r = subprocess.run([validate, "--strict", "-k", version, rendered_file], capture_output=True, text=True)
        if r.returncode != 0:
            errors.append(f"overlay {name}: {r.stdout.strip()} {r.stderr.strip()}")
        r = subprocess.run(["sh", check_images], input=text, capture_output=True, text=True)
        if r.returncode != 0:
            errors.append(f"overlay {name}: deploy/scripts/check-images.sh refuses it:\n{r.stdout}{r.stderr}")
        rendered = objects(text)
        reference = base
        used = yaml.safe_load(files["kustomization.yaml"]).get("components") or []
        if used:
            ref_dir = os.path.join(scratch, "deploy", "overlays", f"{name}.reference")
            os.makedirs(ref_dir)
            ref = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                   "resources": ["../../base"], "components": used}
            open(os.path.join(ref_dir, "kustomization.yaml"), "w").write(yaml.safe_dump(ref))
            reference = objects(build(ref_dir))
        for key in (("DaemonSet", "spyglass-agent"), ("Deployment", "spyglass-collector")):
            if key not in rendered:
                errors.append(f"overlay {name}: no {key[0]} {key[1]}")
            else:
                errors += pod_spec_checks(f"overlay {name} {key[0]} {key[1]}", reference[key], rendered[key])
        out[name] = list(rendered.values())
    for e in errors:
        print(e, file=sys.stderr)
    print(json.dumps({"base": list(base.values()), "overlays": out}))
    sys.exit(1 if errors else 0)


main()

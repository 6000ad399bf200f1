#!/usr/bin/env python3
"""Validate a JSON-lines file of OCSF events, offline.

Each line is validated against the JSON Schema (draft 2020-12) of the OCSF class named by
its `class_uid`, generated locally by `ocsf-json-schema` from the OCSF schema export that
the package ships (no network).  Profiles listed in `metadata.profiles` are applied.

Usage: validate.py EVENTS.jsonl [--ocsf-version 1.8.0|auto]
  auto = use each event's metadata.version (must be a packaged version).
Exit: 0 all lines valid, 1 some line invalid, 2 usage/IO error.
"""
import argparse
import json
import sys

from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema, get_packaged_versions

DEFAULT_VERSION = "1.8.0"

_schemas: dict = {}     # version -> OcsfJsonSchemaEmbedded
_validators: dict = {}  # (version, class_uid, profiles) -> validator


def validator_for(version: str, class_uid: int, profiles: tuple) -> Draft202012Validator:
    key = (version, class_uid, profiles)
    if key not in _validators:
        if version not in _schemas:
            _schemas[version] = OcsfJsonSchemaEmbedded(get_ocsf_schema(version))
        ocsf = _schemas[version]
        name = ocsf.lookup_class_name_from_uid(class_uid)  # ValueError if unknown
        _validators[key] = Draft202012Validator(ocsf.get_class_schema(name, list(profiles)))
    return _validators[key]


def check_event(event, version_opt: str, packaged: set) -> list:
    if not isinstance(event, dict):
        return ["event is not a JSON object"]
    class_uid = event.get("class_uid")
    if not isinstance(class_uid, int) or isinstance(class_uid, bool):
        return ["class_uid missing or not an integer"]
    meta = event.get("metadata") if isinstance(event.get("metadata"), dict) else {}
    version = version_opt
    if version_opt == "auto":
        version = meta.get("version")
        if version not in packaged:
            return [f"metadata.version {version!r} is not a packaged OCSF version {sorted(packaged)}"]
    profiles = meta.get("profiles") or []
    profiles = tuple(sorted(p for p in profiles if isinstance(p, str))) if isinstance(profiles, list) else ()
    try:
        v = validator_for(version, class_uid, profiles)
    except ValueError as e:
        return [f"OCSF {version}: {e}"]
    errors = [f"{e.json_path}: {e.message[:300]}"
              for e in sorted(v.iter_errors(event), key=lambda e: list(e.absolute_path))]
    # OCSF rule not expressible in the generated JSON Schema: type_uid = class_uid*100 + activity_id
    a, t = event.get("activity_id"), event.get("type_uid")
    if isinstance(a, int) and isinstance(t, int) and t != class_uid * 100 + a:
        errors.append(f"$.type_uid: {t} != class_uid*100 + activity_id ({class_uid * 100 + a})")
    return errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path")
    ap.add_argument("--ocsf-version", default=DEFAULT_VERSION)
    args = ap.parse_args()
    packaged = get_packaged_versions()
    if args.ocsf_version != "auto" and args.ocsf_version not in packaged:
        print(f"unknown OCSF version {args.ocsf_version}; packaged: {sorted(packaged)}", file=sys.stderr)
        return 2
    bad = total = 0
    try:
        with open(args.path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                total += 1
                try:
                    errors = check_event(json.loads(line), args.ocsf_version, packaged)
                except json.JSONDecodeError as e:
                    errors = [f"invalid JSON: {e}"]
                if errors:
                    bad += 1
                    for msg in errors:
                        print(f"line {n}: {msg}")
    except OSError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"{total - bad}/{total} valid (OCSF {args.ocsf_version})", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Render a kustomization with kustomize (pykustomize: the kustomize Go
library, installed by `cargo xtask setup`) and print the YAML, as
`kubectl kustomize DIR` does.

Usage: render.py DIR"""
import asyncio
import sys

from pykustomize import BuildOptions, LoadRestrictions, build

sys.stdout.write(
    asyncio.run(build(sys.argv[1], BuildOptions(load_restrictions=LoadRestrictions.ROOT_ONLY))).yaml
)

#!/bin/sh
# Refuse a rendering of the Spyglass manifests whose images are not set.
#
#   deploy/scripts/check-images.sh deploy/overlays/mycluster
#   kubectl kustomize deploy/overlays/mycluster | deploy/scripts/check-images.sh
#
# deploy/base names its images `image-not-set.invalid/spyglass-agent` and
# `image-not-set.invalid/spyglass-collector`: placeholders that no
# registry can serve (`.invalid` never resolves, RFC 2606). Your overlay
# sets each one with a kustomize `images:` entry, pinned by digest
# (docs/deploy.md#images). This check fails, naming the object and what to
# set, while any container image is still a placeholder or is not pinned
# by a `@sha256:` digest. Exit 0 when every image is set and pinned.
set -eu

if [ "$#" -gt 1 ]; then
    echo "usage: $0 [KUSTOMIZE_DIR]  (or the rendered YAML on stdin)" >&2
    exit 2
fi
if [ "$#" -eq 1 ]; then
    rendered=$(kubectl kustomize "$1")
else
    rendered=$(cat)
fi

printf '%s\n' "$rendered" | awk '
    # Objects are separated by `---`; kind and metadata.name are at the
    # top of each (kustomize writes one key per line, two-space indent).
    /^---/ { kind = ""; name = ""; inmeta = 0; next }
    /^kind:/ { kind = $2; next }
    /^metadata:/ { inmeta = 1; next }
    inmeta && /^  name:/ { name = $2; inmeta = 0; next }
    /^[^ ]/ { inmeta = 0 }
    /^[ -]*image:/ {
        image = $0
        sub(/^[ -]*image:[ ]*/, "", image)
        gsub(/["\047]/, "", image)
        sub(/[ ]+#.*$/, "", image)
        images++
        what = kind "/" name
        if (image ~ /^image-not-set\.invalid\//) {
            short = image
            sub(/^image-not-set\.invalid\//, "", short)
            sub(/[:@].*$/, "", short)
            printf "%s: image %s is the placeholder of deploy/base. Set it in your overlay'"'"'s kustomization.yaml:\n", what, image
            printf "  images:\n    - name: image-not-set.invalid/%s\n", short
            printf "      newName: REGISTRY/PATH/%s   # where you pushed or imported the image\n", short
            printf "      digest: sha256:...            # the \"digest\" of %s in target/images/images.json\n", short
            bad++
        } else if (!(match(image, /@sha256:[0-9a-f]+$/) && RLENGTH == 72)) {
            printf "%s: image %s is not pinned by digest: set `digest: sha256:...` (target/images/images.json) in its kustomize images: entry, not a tag\n", what, image
            bad++
        } else {
            printf "ok %s: %s\n", what, image
        }
    }
    END {
        if (images == 0) { print "no container image found in the rendering"; exit 1 }
        if (bad > 0) { printf "%d image(s) not set; see docs/deploy.md#images\n", bad; exit 1 }
    }
' >&2

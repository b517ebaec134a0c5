#!/usr/bin/env bash
# Build the CPU or the CUDA image from images/Dockerfile (`make image-cpu`, `make image-cuda`).
#
#   images/build.sh cpu|cuda [--base IMAGE] [--torch-index URL | --torch-wheel FILE]
#                            [--ca-bundle FILE] [--constraints FILE] [--tag NAME] [-- ENGINE-ARGS...]
#   images/build.sh --source-digest      print the digest of what the image is built from
#
# Each option has an environment variable, also read by `runner run --image` when it builds a
# missing image: RUNNER_BASE_IMAGE, RUNNER_TORCH_INDEX, RUNNER_TORCH_WHEEL, RUNNER_CA_BUNDLE
# (default: $PIP_CERT, the bundle pip already trusts on this machine), RUNNER_CONSTRAINTS. Files
# named by options are copied into images/local/, the git-ignored part of the build context.
# ENGINE=docker|podman (default: docker when its daemon answers, else podman).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")

# sha256 over "<sha256>  <path>" lines of every file the image's code comes from, sorted by path;
# runner/docker.py computes the same to tell whether an image is older than the checkout.
source_digest() {
    (cd "$root" && find pyproject.toml requirements.lock images/Dockerfile images/install.sh runner -type f \
        -not -name '*.pyc' -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum \
        | sha256sum | cut -c1-64)
}

stage() {  # stage FILE [NAME]: copy FILE into images/local/ (unless it is there); print its name there
    local name=${2:-$(basename "$1")}
    [ -f "$1" ] || { echo "build.sh: no such file $1" >&2; exit 2; }
    [ "$(realpath "$1")" = "$(realpath -m "$here/local/$name")" ] || cp "$1" "$here/local/$name"
    echo "$name"
}

if [ "${1:-}" = "--source-digest" ]; then source_digest; exit 0; fi
flavor=${1:-}
[ -f "$here/$flavor.args" ] || { echo "usage: images/build.sh cpu|cuda [options]" >&2; exit 2; }
shift

base=${RUNNER_BASE_IMAGE:-} index=${RUNNER_TORCH_INDEX:-} wheel=${RUNNER_TORCH_WHEEL:-}
ca=${RUNNER_CA_BUNDLE:-${PIP_CERT:-}} constraints=${RUNNER_CONSTRAINTS:-} tag=""
while [ $# -gt 0 ]; do
    case "$1" in
    --base) base=$2; shift 2 ;;
    --torch-index) index=$2; shift 2 ;;
    --torch-wheel) wheel=$2; shift 2 ;;
    --ca-bundle) ca=$2; shift 2 ;;
    --constraints) constraints=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "build.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml")
# torch's version comes from the lock, like every other version; the flavor picks only its build.
torch_version=$(sed -n 's/^torch==//p' "$root/requirements.lock")
args=(--build-arg "VERSION=$version" --build-arg "SOURCE_DIGEST=$(source_digest)" --build-arg "TORCH_VERSION=$torch_version")
while IFS= read -r line; do  # the flavor's defaults: KEY=VALUE lines
    case "$line" in ''|'#'*) ;; *) args+=(--build-arg "$line") ;; esac
done < "$here/$flavor.args"
[ -z "$base" ] || args+=(--build-arg "BASE_IMAGE=$base")
[ -z "$index" ] || args+=(--build-arg "TORCH_INDEX=$index")
[ -z "$wheel" ] || args+=(--build-arg "TORCH_WHEEL=$(stage "$wheel")")
[ -z "$ca" ] || args+=(--build-arg "CA_BUNDLE=$(stage "$ca" ca-bundle.crt)")
[ -z "$constraints" ] || args+=(--build-arg "CONSTRAINTS=images/local/$(stage "$constraints")")

if [ -z "${ENGINE:-}" ]; then
    if command -v docker > /dev/null && docker info > /dev/null 2>&1; then ENGINE=docker; else ENGINE=podman; fi
fi
tag=${tag:-qlora-runner:$flavor}
echo "build.sh: $ENGINE build $tag (${args[*]})" >&2
"$ENGINE" build -f "$here/Dockerfile" -t "$tag" -t "${tag%:*}:$version-$flavor" "${args[@]}" "$@" "$root"

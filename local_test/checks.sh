# What the local_test scripts check before they start a container (sourced, not run):
# a mistake is one line that names the fix, exit status 2.
die() { echo "$(basename "$0"): error: $*" >&2; exit 2; }

# Docker answers and IMAGE exists on this machine.
need_image() {
  command -v docker >/dev/null || die "docker not found: install Docker (https://docs.docker.com/engine/install/)"
  docker info >/dev/null 2>&1 || die "the Docker engine does not answer (docker info failed): start it, or check DOCKER_HOST"
  docker image inspect "$1" >/dev/null 2>&1 || die "no image $1: build it with docker/build.sh $1 (or ./build_and_push.sh)"
}

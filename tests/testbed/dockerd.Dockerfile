# A remote sandbox host stand-in: a Docker daemon in a container (TESTBED.md §4), for the CPU
# smoke's TLS-only sandbox backend. Production hosts are provisioned by `make provision`.
ARG DEBIAN_IMAGE=local/debian:bookworm
FROM ${DEBIAN_IMAGE}
ARG DEBIAN_MIRROR=http://deb.debian.org/debian
# test-bed stand-in, never shipped: it takes the archive's current packages
# hadolint ignore=DL3008
RUN printf 'deb %s trixie main\n' "${DEBIAN_MIRROR}" > /etc/apt/sources.list.d/trixie.list \
 && printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n' > /etc/apt/preferences.d/trixie \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends -t trixie \
      docker.io docker-cli iptables ca-certificates procps \
 && rm -rf /var/lib/apt/lists/*
# containers on the inner bridge: the outer kernel may refuse per-interface IPv6 settings
ENV DOCKER_ALLOW_IPV6_ON_IPV4_INTERFACE=1
VOLUME /var/lib/docker
EXPOSE 2376
ENTRYPOINT ["dockerd"]

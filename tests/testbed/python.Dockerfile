# Stand-in for the production base (python:3.12-slim-bookworm) on machines with no registry.
# The CPython 3.12 prefix is copied in from the build context (never committed), laid out
# like the official image: everything under /usr/local.
ARG DEBIAN_IMAGE=local/debian:bookworm
FROM ${DEBIAN_IMAGE}
# test-bed stand-in, never shipped: it takes the archive's current packages
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates libssl3 libffi8 libsqlite3-0 zlib1g libbz2-1.0 liblzma5 libreadline8 libncursesw6 \
 && rm -rf /var/lib/apt/lists/*
COPY python/ /usr/local/
RUN ldconfig \
 && ln -sf python3.12 /usr/local/bin/python3 \
 && ln -sf python3.12 /usr/local/bin/python \
 && python3 -c "import ssl, sqlite3, ctypes, venv; print('python ok')"
ENV LANG=C.UTF-8
CMD ["python3"]

# Debian's chromium, headless: the CPU smoke's screenshot of the TensorBoard dashboard
# (hvt smoke stack). A test-bed image, never shipped.
ARG DEBIAN_IMAGE=local/debian:bookworm
FROM ${DEBIAN_IMAGE}
# test-bed stand-in, never shipped: it takes the archive's current packages
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      chromium fonts-dejavu-core ca-certificates \
 && rm -rf /var/lib/apt/lists/*
USER 1000:1000
ENV HOME=/tmp
ENTRYPOINT ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"]

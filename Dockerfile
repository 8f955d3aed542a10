# syntax=docker/dockerfile:1.7
# Container images of gearfleet, built from source with static (musl) binaries on a distroless,
# non-root base:
#
#   docker build --target gearfleet       -t gearfleet/gearfleet:0.1.0       .   # operator, broker, drain hook
#   docker build --target example-workers -t gearfleet/example-workers:0.1.0 .
#
# Without a Docker daemon, e2e/images/build writes the same images (same paths, user and ports) as
# Docker-archive tarballs from the release binaries (docs/packaging.md).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/*
RUN rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    triple="$(uname -m)-unknown-linux-musl" \
 && cargo build --release --locked --target "$triple" \
      -p gearfleet-broker --bin gearfleet-broker \
      -p gearfleet-operator --bin gearfleet-operator \
      -p gearfleet-worker --bin gearfleet-example-worker --bin gearfleet-drain \
 && mkdir -p /out/bin /out/data \
 && cp "target/$triple/release/gearfleet-broker" "target/$triple/release/gearfleet-operator" \
       "target/$triple/release/gearfleet-example-worker" "target/$triple/release/gearfleet-drain" /out/bin/

# Operator and broker: the Helm chart runs both containers from this image with explicit commands;
# run alone, it is a broker.
FROM gcr.io/distroless/static-debian12:nonroot AS gearfleet
COPY --from=build /out/bin/gearfleet-broker /out/bin/gearfleet-operator /out/bin/gearfleet-drain /usr/local/bin/
COPY --from=build --chown=65532:65532 /out/data /var/lib/gearfleet
USER 65532:65532
EXPOSE 4730/tcp 9730/tcp 9740/tcp
ENTRYPOINT ["/usr/local/bin/gearfleet-broker"]

FROM gcr.io/distroless/static-debian12:nonroot AS example-workers
COPY --from=build /out/bin/gearfleet-example-worker /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/gearfleet-example-worker"]

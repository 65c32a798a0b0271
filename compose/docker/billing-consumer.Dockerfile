# syntax=docker/dockerfile:1
# Production image of Tollgate's billing-consumer: Kafka -> ClickHouse ingest, quota recompute, invoices, replay audit.
# Build from the repository root:  docker build -f compose/docker/billing-consumer.Dockerfile -t tollgate/billing-consumer .
# (compose/docker-compose.yml does this.)

FROM rust:1-bookworm AS builder
# rdkafka builds its bundled librdkafka with cc, make, pkg-config and zlib; awc links OpenSSL.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The registry and target dir are BuildKit caches, so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin billing-consumer \
    && install -m 0755 target/release/billing-consumer /usr/local/bin/billing-consumer

FROM debian:bookworm-slim
# curl is only for the container health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tollgate \
    && useradd --system --uid 10001 --gid tollgate --home-dir /nonexistent --shell /usr/sbin/nologin tollgate
COPY --from=builder /usr/local/bin/billing-consumer /usr/local/bin/billing-consumer
USER tollgate:tollgate
ENV RUST_LOG=info
EXPOSE 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9464/metrics"]
ENTRYPOINT ["/usr/local/bin/billing-consumer"]
CMD ["run"]

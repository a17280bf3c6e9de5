# Multi-stage build: compile with the Rust toolchain, run on a slim Debian
# image as an unprivileged user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p switchyard --bin switchyard

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin switchyard
COPY --from=build /src/target/release/switchyard /usr/local/bin/switchyard
USER switchyard
EXPOSE 6432 7432
# Listen on all interfaces inside the container; the control API then needs
# SWITCHYARD_CONTROL_TOKEN (it refuses a non-loopback address without one).
ENTRYPOINT ["/usr/local/bin/switchyard"]
CMD ["serve", "--listen", "0.0.0.0:6432", "--control-listen", "0.0.0.0:7432"]

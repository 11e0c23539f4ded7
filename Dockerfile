# pgveil: a static-ish release build on Debian, run as an unprivileged user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY tests ./tests
RUN cargo build --release --locked && strip target/release/pgveil

FROM debian:bookworm-slim
RUN useradd --system --home /var/lib/pgveil --create-home pgveil
COPY --from=build /src/target/release/pgveil /usr/local/bin/pgveil
COPY config/pgveil.toml /etc/pgveil/pgveil.toml
USER pgveil
WORKDIR /var/lib/pgveil
EXPOSE 6432 9187
ENTRYPOINT ["/usr/local/bin/pgveil"]
CMD ["serve", "--config", "/etc/pgveil/pgveil.toml"]

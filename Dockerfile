# allot as a container image.
#   docker build -t allot .
#   docker run -p 8080:8080 -v allot-data:/data allot            # embedded SQLite in the volume
#   docker run -p 8080:8080 -e ALLOT_DATABASE_URL=postgres://... allot
# compose.yaml runs it against PostgreSQL.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, in a layer of their own: it is rebuilt only when
# Cargo.toml or Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/assign.rs \
    && cargo build --release --locked --bin allot \
    && rm -rf src benches
COPY . .
# Make sure cargo sees the real sources as newer than the placeholders.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin allot

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --home-dir /data allot \
    && mkdir -p /data /etc/allot \
    && chown allot /data
COPY --from=build /src/target/release/allot /usr/local/bin/allot
# The defaults are compiled in; the commented file documents every key and is
# a starting point for a file mounted and named by ALLOT_CONFIG.
COPY config/ /etc/allot/
ENV ALLOT_LISTEN=0.0.0.0:8080 \
    ALLOT_DATA_DIR=/data \
    ALLOT_LOG_FORMAT=json
USER allot
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=4s --start-period=10s --retries=3 CMD ["allot", "healthcheck"]
ENTRYPOINT ["allot"]
CMD ["serve"]

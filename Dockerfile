# The `chatai` binary: every part of ChatAI Realtime; the subcommand picks
# one (`chatai gateway`, `chatai chat`, …). Built without a system `protoc`.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p chatai

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/chatai /usr/local/bin/chatai
USER 10001
ENTRYPOINT ["chatai"]

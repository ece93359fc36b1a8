# Images of Ambit's three daemons, built from one stage:
#   docker build --target controller -t ambit/controller:0.1.0 .
#   docker build --target ztunnel    -t ambit/ztunnel:0.1.0 .
#   docker build --target waypoint   -t ambit/waypoint:0.1.0 .
# The chart's defaults expect <global.hub>/<name>:<appVersion>. The sample application of
# examples/shop (images ambit/echo, ambit/front, ambit/tcp-echo, ambit/sleep) is built the same
# way: docker build --target echo -t ambit/echo .   (and front, tcp-echo, sleep)

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin controller --bin ztunnel --bin waypoint --bin ambit-sample \
 && mkdir /out \
 && cp target/release/controller target/release/ztunnel target/release/waypoint target/release/ambit-sample /out/ \
 && strip /out/*

# Control plane: no shell, no package manager, non-root.
FROM gcr.io/distroless/cc-debian12:nonroot AS controller
COPY --from=build /out/controller /usr/local/bin/controller
USER 1337:1337
EXPOSE 15012 15014
ENTRYPOINT ["/usr/local/bin/controller"]

# Waypoint: same base, non-root (the controller's Deployment runs it as 1337).
FROM gcr.io/distroless/cc-debian12:nonroot AS waypoint
COPY --from=build /out/waypoint /usr/local/bin/waypoint
USER 1337:1337
EXPOSE 15008 15020 15021
ENTRYPOINT ["/usr/local/bin/waypoint"]

# ztunnel runs as root with NET_ADMIN, NET_RAW and SYS_ADMIN (see the chart): it installs
# redirect rules inside pod network namespaces with iptables-restore and ip (rules, routes)
# under nsenter, and copies itself to the host as the CNI plugin: a glibc binary built on
# bookworm, so nodes need glibc 2.34 or later (build on an older base for older nodes).
FROM debian:bookworm-slim AS ztunnel
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables iproute2 util-linux \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ztunnel /usr/local/bin/ztunnel
EXPOSE 15020 15021
ENTRYPOINT ["/usr/local/bin/ztunnel"]

# The sample apps: one binary, the image name picks the mode (as in the local sandbox).
FROM gcr.io/distroless/cc-debian12:nonroot AS sample
COPY --from=build /out/ambit-sample /usr/local/bin/ambit-sample
USER 1337:1337

FROM sample AS echo
ENTRYPOINT ["/usr/local/bin/ambit-sample", "echo"]

FROM sample AS front
ENTRYPOINT ["/usr/local/bin/ambit-sample", "front"]

FROM sample AS tcp-echo
ENTRYPOINT ["/usr/local/bin/ambit-sample", "tcp-echo"]

FROM sample AS sleep
ENTRYPOINT ["/usr/local/bin/ambit-sample", "sleep"]

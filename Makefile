# Berth: `make demo` builds Berth and runs a container; `make test` runs the whole suite (as root).
SHELL := /bin/bash
CARGO ?= cargo
APT_PACKAGES := busybox-static tini python3 iptables libseccomp-dev pkg-config file skopeo umoci tar gzip zstd iproute2 procps docker-registry apache2-utils openssl nginx bzip2 xz-utils git
BERTH := $(or $(CARGO_TARGET_DIR),target)/release/berth
DEMO_ROOT ?= /var/lib/berth
DEMO_RUNROOT ?= /run/berth

.PHONY: deps build release demo test lint bench clean

# Installs only the Debian packages that are missing (apt-get update first, as a fresh machine needs).
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo is needed (rustup)"; exit 1; }

build: deps
	$(CARGO) build --workspace

release: deps
	$(CARGO) build --release -p berth

# Builds Berth, makes a local busybox:latest image from Debian's busybox-static, runs a container.
demo: release
	scripts/busybox-rootfs.sh /tmp/berth-busybox.tar
	$(BERTH) --root $(DEMO_ROOT) --runroot $(DEMO_RUNROOT) import -c 'CMD ["sh"]' /tmp/berth-busybox.tar busybox:latest
	$(BERTH) --root $(DEMO_ROOT) --runroot $(DEMO_RUNROOT) run --rm busybox echo hello from berth

test: deps
	$(CARGO) test --workspace -- --test-threads=4

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: release
	bench/run.sh
	bench/network.sh
	bench/build.sh
	bench/registry.sh

clean:
	$(CARGO) clean

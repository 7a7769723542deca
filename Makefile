# Bulkhead: the two commands of README.md, and a few more.
#   make run    build the test guests and bulkhead, then boot the default guest (hello)
#   make test   build the test guests, then run every test (KVM tests skip without /dev/kvm),
#               the fuzz targets' smoke runs, and Linux guests in the Linux test environment
#               (with the release binaries, as installed)
SWIFT ?= swift
GUESTS := .build/guests

.PHONY: run test guests build release bench fuzz surface clean

# As root the guest runs in a jailed worker; without root, in an unjailed worker (--no-jail),
# since the jail needs root.
run: guests build
	.build/debug/bulkhead run $$([ "$$(id -u)" = 0 ] || echo --no-jail)

# All tests, then a short smoke run of every fuzz target (FUZZ_SECONDS each) with a fixed seed,
# so that CI is repeatable; `make fuzz` explores with fresh randomness.
FUZZ_SECONDS ?= 10
test: guests
	# PyNaCl (PyPI): the Ed25519 of tools/audit_verify.py, the audit log's independent verifier.
	# Into the user's site when the system's Python refuses a global install (PEP 668).
	python3 -c 'import nacl.signing' 2>/dev/null \
	  || python3 -m pip install --quiet --disable-pip-version-check 'pynacl>=1.5' 2>/dev/null \
	  || python3 -m pip install --user --break-system-packages --quiet --disable-pip-version-check 'pynacl>=1.5'
	$(SWIFT) build --build-tests
	cd .build/debug && sha256sum bulkhead-worker > bulkhead-worker.sha256
	BULKHEAD_REQUIRE_GUESTS=1 BULKHEAD_REQUIRE_PYNACL=1 $(SWIFT) test --skip-build
	# The independent verifier's own tests, on a log the appender writes.
	d=$$(mktemp -d) && .build/debug/bulkhead-audit-writer $$d/log --writers 8 --records 25 --segment-bytes 8192 >/dev/null \
	  && AUDIT_SAMPLE=$$d/log python3 tools/test_audit_verify.py; s=$$?; rm -rf $$d; exit $$s
	FUZZ_ARGS="-seed=1 $(FUZZ_ARGS)" bash Fuzz/run.sh $(FUZZ_SECONDS)
	$(MAKE) release
	bash Tests/LinuxEnvironment/check.sh $(CURDIR)/.build/release

guests:
	bash Guest/build.sh $(GUESTS)

# The worker's SHA-256 goes next to it: `bulkhead run` runs only a binary with that digest.
build:
	$(SWIFT) build --product bulkhead
	$(SWIFT) build --product bulkhead-worker
	cd .build/debug && sha256sum bulkhead-worker > bulkhead-worker.sha256

# The binary to install: optimised, with the Swift runtime linked in (starts ~3 ms sooner and
# uses ~3 MiB less than the dynamically linked build; see docs/benchmarks.md).
release:
	$(SWIFT) build -c release --static-swift-stdlib --product bulkhead
	$(SWIFT) build -c release --static-swift-stdlib --product bulkhead-worker
	cd .build/release && sha256sum bulkhead-worker > bulkhead-worker.sha256

bench:
	python3 Benchmarks/run.py

fuzz:
	bash Fuzz/run.sh

# Regenerate the pinned attack surface after an intended change (then update docs/threat-model.md).
surface: build
	.build/debug/bulkhead surface --json > docs/attack-surface.json

clean:
	rm -rf .build
